"""The engine of a library database: its URL, write transactions, errors in a sentence,
and migrate-on-open. What differs between SQLite and PostgreSQL is in
:mod:`organizer.store.dialect`; DDL is transactional on both (organizer's own BEGIN on
SQLite), and two machines opening a new catalogue at once do not both migrate it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, InterfaceError, OperationalError

from organizer.choices import is_url
from organizer.errors import ConnectionLostError, LibraryError, LibraryURLError, SchemaError
from organizer.redact import hide_passwords, redact_url, remember, screen, split_url
from organizer.resources import migrations_dir
from organizer.store.dialect import lock_migrations, new_engine, server_url, writing_connection

SCHEMES = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
DRIVERS = ("postgresql+psycopg", "sqlite")


def library_url(value: str) -> URL:
    """The SQLAlchemy URL of a library on a database server (psycopg 3 for PostgreSQL).

    The user and password are split off by position first (the password ends at the last
    ``@``, so it may hold an unencoded ``@``), then remembered so that no output shows it.

    Raises:
        LibraryURLError: not a URL organizer can use (scheme, driver, or syntax).
    """
    user, password, rest = split_url(value)
    remember(password)
    try:
        url = make_url(rest)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise LibraryURLError(f"not a database URL: {redact(value)}") from None
    in_query = url.query.get("password")
    if isinstance(in_query, tuple):
        for each in in_query:
            remember(each)
        raise LibraryURLError(f"the library URL gives password more than once: {redact(value)}")
    remember(in_query)
    if user is not None:
        url = url.set(username=user, password=password)
    name = SCHEMES.get(url.drivername, url.drivername)
    if name not in DRIVERS:
        raise LibraryURLError(
            f"unsupported library URL scheme {url.drivername!r}: use a folder, or "
            "postgresql://USER@HOST/DATABASE (pip install 'organizer[postgres]')"
        )
    if name.startswith("postgresql") and not url.database:
        raise LibraryURLError(f"the library URL names no database: {redact(value)}")
    return url.set(drivername=name)


def redact(url: str | URL) -> str:
    """A URL fit to show: its password (in either place libpq takes it) replaced by ***."""
    if isinstance(url, str):
        return redact_url(url)
    return redact_url(url.render_as_string(hide_password=True))


def describe(url: URL) -> str:
    """'database photos on db.example' for messages (a socket folder for a local server)."""
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    return f"database {url.database} on {host}"


def create_engine_for(url_or_path: str | os.PathLike[str] | URL) -> Engine:
    """An engine for a SQLite file (or ``sqlite:///`` URL) with organizer's pragmas, or for a
    PostgreSQL URL.

    SQLite write transactions should use ``write_transaction`` (BEGIN IMMEDIATE) so that they
    take the write lock up front and wait (busy timeout) instead of failing.
    """
    if isinstance(url_or_path, URL):
        return new_engine(url_or_path)
    if is_url(url_or_path):
        return new_engine(library_url(str(url_or_path)))
    return new_engine(f"sqlite:///{url_or_path}")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE), waiting up to
    the busy timeout for another writer; commits on success, rolls back on any exception.

    Raises:
        LibraryError: the database could not be written (disk full, read-only, locked, I/O);
            ConnectionLostError, a LibraryError, when the connection to it broke.
    """
    try:
        with writing_connection(engine) as conn, conn.begin():
            yield conn
    except (OperationalError, DatabaseError, InterfaceError) as exc:
        lost = getattr(exc, "connection_invalidated", False)
        raise (ConnectionLostError if lost else LibraryError)(explain(exc, engine)) from None


def explain(exc: Exception, where: str | Engine | None = None) -> str:
    """One sentence for a database failure, saying what the user can do; never a password."""
    if isinstance(where, Engine):
        url = server_url(where)
        if url is not None:
            return _explain_server(exc, url)
        where = where.url.database
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


def _explain_server(exc: Exception, url: URL) -> str:
    lines = [line.strip() for line in str(getattr(exc, "orig", exc)).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    # psycopg puts "connection failed: connection to server at ... failed: " before the cause
    reason = re.sub(
        r"^(connection (failed|is bad): )?(connection to server .*? failed: )?", "", reason
    )
    reason = reason.removeprefix("FATAL:").strip()
    remember(url.password)
    return hide_passwords(f"cannot use the library {describe(url)}: {screen(reason)}")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for a new database."""
    with engine.connect() as conn:
        return current_revision_in(conn)


def head_revision() -> str:
    """The newest revision this program knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None  # migrations/ has one head
    return head


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
    with writing_connection(engine) as conn, conn.begin():
        if lock_migrations(conn) and current_revision_in(conn) == head:
            return  # another process migrated it while this one waited
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def current_revision_in(conn: Connection) -> str | None:
    """The Alembic revision, read in the caller's transaction."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
