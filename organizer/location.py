"""Where a library lives: a folder, or a database server.

A folder library holds its SQLite database, vector-index file and lock file. A library on
PostgreSQL (a shared catalogue) keeps only the database on the server; each machine caches
the vector index in its per-user cache folder, keyed by the catalogue's UUID, and writers
take a PostgreSQL advisory lock. The rest of organizer sees one interface: an engine, where
the index file goes, a writer lock, and the folders ingest must never walk into.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError, InterfaceError, OperationalError

from organizer.choices import is_url
from organizer.errors import LibraryError
from organizer.lock import AdvisoryLock, WriterLock
from organizer.store import queries as q
from organizer.store.db import (
    create_engine_for,
    current_revision,
    describe,
    explain,
    library_url,
    migrate,
    redact,
)
from organizer.vectors import DatabaseFileRecord, FileRecord, IndexCache, SidecarFileRecord

DB_FILE = "library.db"
INDEX_FILE = "vectors.faiss"
INDEX_RECORD_FILE = "vectors.json"
Lock = WriterLock | AdvisoryLock


class FolderHome:
    """A library folder: library.db (SQLite), vectors.faiss, lock."""

    def __init__(self, path: Path, engine: Engine):
        self.path = path
        self.engine = engine
        self.name = str(path)
        self.index_path = path / INDEX_FILE
        self.cache_dir = path
        self.exclude: tuple[Path, ...] = (path,)

    @classmethod
    def open(cls, path: Path, create: bool) -> FolderHome:
        """Open (and with ``create``, make) the folder; migrate its database.

        Raises:
            LibraryError: no library there (and not ``create``), or the folder is unusable.
        """
        db_path = path / DB_FILE
        if not db_path.exists():
            if path.is_file():
                raise LibraryError(f"--library {path} is a file: give a folder (or a URL)")
            if not create:
                raise LibraryError(
                    f"no library at {path}: run `organizer ingest FOLDER` first, or pass "
                    f"--library / set ORGANIZER_LIBRARY"
                )
            _make_library_dir(path)
        if not os.access(path, os.R_OK | os.X_OK):
            raise LibraryError(f"library {path} cannot be read: check its permissions")
        if not os.access(path, os.W_OK):
            # SQLite's write-ahead log needs to write beside the database even to read it.
            raise LibraryError(
                f"library {path} is read-only: organizer needs to write there (check its permissions)"
            )
        engine = create_engine_for(db_path)
        try:
            migrate(engine)
        except (OperationalError, DatabaseError) as exc:
            engine.dispose()
            raise LibraryError(_sqlite_reason(path, exc)) from None
        return cls(path, engine)

    def writer_lock(self, purpose: str) -> WriterLock:
        if not os.access(self.path, os.W_OK):
            raise LibraryError(f"library {self.path} is read-only: organizer needs to write there")
        return WriterLock(self.path, purpose)

    @contextlib.contextmanager
    def may_write_index(self, writing: bool) -> Iterator[bool]:
        """Whether this process may (re)write the index file now: yes while it holds the writer
        lock; a reader only when no writer is running (its file would be stale at once)."""
        if writing:
            yield True
            return
        lock = WriterLock(self.path, "index rebuild")
        try:
            got = os.access(self.path, os.W_OK) and lock.try_acquire()
        except OSError:
            got = False
        try:
            yield got
        finally:
            if got:
                lock.release()

    def file_record(self) -> FileRecord:
        return DatabaseFileRecord(self.engine)


class ServerHome:
    """A library on a PostgreSQL server; its index is cached per user and machine."""

    def __init__(self, url: URL, engine: Engine, cache_dir: Path):
        self.url = url
        self.engine = engine
        self.name = redact(url)
        self.path = self.name  # for messages: never the password
        self.cache_dir = cache_dir
        self.index_path = cache_dir / INDEX_FILE
        self.exclude: tuple[Path, ...] = (cache_dir,)

    @classmethod
    def open(cls, url: URL, create: bool) -> ServerHome:
        """Connect, migrate (the database must exist; its tables are made on first use).

        Raises:
            LibraryError: the server cannot be reached, refuses the user, has no such
                database, or (without ``create``) the database holds no library yet.
        """
        engine = create_engine_for(url)
        try:
            if not create and current_revision(engine) is None:
                raise LibraryError(
                    f"no library in the {describe(url)}: run `organizer ingest FOLDER` first"
                )
            migrate(engine)
            with engine.connect() as conn:
                catalogue = q.catalogue_uuid(conn)
                # A copy of the database (CREATE DATABASE ... TEMPLATE, a restored backup)
                # keeps the UUID but not the database's oid: it must not share the cache.
                database = conn.exec_driver_sql(
                    "SELECT oid FROM pg_database WHERE datname = current_database()"
                ).scalar_one()
        except (OperationalError, DatabaseError, InterfaceError) as exc:
            engine.dispose()
            raise LibraryError(explain(exc, engine)) from None
        except LibraryError:
            engine.dispose()
            raise
        where = f"{url.host or url.query.get('host')}:{url.port}/{database}"
        key = f"{catalogue}-{hashlib.sha256(where.encode()).hexdigest()[:12]}"
        cache_dir = platformdirs.user_cache_path("organizer", appauthor=False) / key
        try:
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            engine.dispose()
            raise LibraryError(
                f"cannot create the index cache {cache_dir}: {exc.strerror}"
            ) from None
        return cls(url, engine, cache_dir)

    def writer_lock(self, purpose: str) -> AdvisoryLock:
        return AdvisoryLock(self.engine, purpose)

    @contextlib.contextmanager
    def may_write_index(self, writing: bool) -> Iterator[bool]:
        """Always: the file is this machine's own cache, replaced atomically."""
        yield os.access(self.cache_dir, os.W_OK)

    def file_record(self) -> FileRecord:
        return SidecarFileRecord(self.engine, self.cache_dir / INDEX_RECORD_FILE)


Home = FolderHome | ServerHome


def index_cache(home: Home, writing: Callable[[], bool]) -> IndexCache:
    """The index files of the library at ``home``: rewritten by this process while
    ``writing()`` (it holds the writer lock), else only as ``home`` allows a reader."""
    return IndexCache(
        home.engine,
        home.index_path,
        home.file_record(),
        lambda: home.may_write_index(writing()),
    )


def open_home(library: Path | str, create: bool) -> Home:
    """The library at a folder or a database URL, opened and migrated."""
    if is_url(library):
        return ServerHome.open(library_url(str(library)), create)
    return FolderHome.open(Path(library).expanduser(), create)


def _make_library_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path / DB_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    except OSError as exc:
        raise LibraryError(f"cannot create library at {path}: {exc.strerror}") from None


def _sqlite_reason(path: Path, exc: Exception) -> str:
    message = str(getattr(exc, "orig", exc))
    if isinstance(getattr(exc, "orig", None), sqlite3.OperationalError) and (
        "readonly" in message or "unable to open" in message
    ):
        return f"library {path} cannot be opened for writing ({message}): check its permissions"
    return explain(exc, str(path / DB_FILE))
