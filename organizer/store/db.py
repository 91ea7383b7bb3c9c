"""The SQLite engine of a library: pragmas, transactions that include DDL, migrate-on-open."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DatabaseError, OperationalError

from organizer.errors import LibraryError, SchemaError
from organizer.resources import migrations_dir

BUSY_TIMEOUT_MS = 30_000


def _on_connect(dbapi_connection, _record) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below: pysqlite's own implicit
    # BEGIN skips DDL, which would leave an interrupted migration half-applied.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA synchronous = FULL")
    # Write-ahead logging: readers never block the writer, nor the writer readers. Persistent,
    # so this is a no-op after the first connection; it must run outside a transaction.
    mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    cursor.close()
    if str(mode).lower() != "wal":
        raise SchemaError(f"could not switch the database to WAL mode (got {mode!r})")


def _on_begin(connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine_for(url_or_path: str | os.PathLike[str]) -> Engine:
    """An engine for a SQLite file (or ``sqlite:///`` URL) with organizer's pragmas.

    Write transactions should use ``engine.connect().execution_options(sqlite_begin="IMMEDIATE")``
    so that they take the write lock up front and wait (busy timeout) instead of failing.
    """
    url = str(url_or_path)
    if not url.startswith("sqlite:"):
        url = f"sqlite:///{url}"
    engine = create_engine(url)
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE), waiting up to
    the busy timeout for another writer; commits on success, rolls back on any exception.

    Raises:
        LibraryError: the database could not be written (disk full, read-only, locked, I/O).
    """
    try:
        with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            yield conn
    except (OperationalError, DatabaseError) as exc:
        raise LibraryError(explain(exc, engine.url.database)) from None


def explain(exc: Exception, where: str | None = None) -> str:
    """One sentence for a SQLite failure, saying what the user can do."""
    message = str(getattr(exc, "orig", exc)).strip()
    lowered = message.lower()
    place = f" ({where})" if where else ""
    if "full" in lowered or "disk i/o error" in lowered:
        return (
            f"the disk is full, or failing, writing the library database{place} ({message}); "
            "nothing of the failed step was saved: free some space and run it again"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return f"the library database{place} is read-only: check the library folder's permissions"
    if "locked" in lowered or "busy" in lowered:
        return f"the library database{place} stayed locked by another process: try again later"
    if "not a database" in lowered or "malformed" in lowered:
        return f"the library database{place} is damaged ({message}): restore it from a backup"
    return f"the library database{place} could not be used: {message}"


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for a new database."""
    with engine.connect() as conn:
        has_table = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'")
        ).first()
        if not has_table:
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def head_revision() -> str:
    """The newest revision this program knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head()


_REVISION = re.compile(r"^(down_)?revision\s*=\s*['\"]?([\w]+)['\"]?", re.MULTILINE)


def _head_without_alembic() -> str | None:
    """The head revision read straight from the revision files (a fast path for opening a
    library that is already current; Alembic itself decides whenever there is work)."""
    revisions, parents = set(), set()
    for path in (migrations_dir() / "versions").glob("*.py"):
        found = dict((bool(m.group(1)), m.group(2)) for m in _REVISION.finditer(path.read_text()))
        if False in found:
            revisions.add(found[False])
            if found.get(True) not in (None, "None"):
                parents.add(found[True])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision, all in one transaction.

    Raises:
        SchemaError: the database was written by a newer organizer.
    """
    current = current_revision(engine)
    if current is not None and current == _head_without_alembic():
        return
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_dir()))
    head = script.get_current_head()
    current = current_revision(engine)
    if current == head:
        return
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise SchemaError(
            f"the library was written by a newer organizer (schema {current}); upgrade organizer"
        )
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    with engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
