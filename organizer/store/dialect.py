"""Every SQL difference between a library's two homes, each behind a name.

SQLite (a folder library): pragmas, organizer's own BEGIN so that DDL is transactional,
BEGIN IMMEDIATE for writers, vectors read through an IN list. PostgreSQL (a shared
catalogue): psycopg 3, REPEATABLE READ readers and READ COMMITTED writers, an advisory lock
around migrations, bulk loads by binary COPY, a cursor planned for whole reads.

The rest of organizer calls these functions and never asks which database it is talking
to; ``tests/test_chores.py`` keeps it so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.engine.cursor import CursorFetchStrategy
from sqlalchemy.sql import Select

from organizer.errors import SchemaError
from organizer.store.models import Embedding, Image, table_of
from organizer.store.records import ImageStatus

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
PAGE_SIZE = 16384
# Two processes migrating a new catalogue at once: the second waits for the first.
MIGRATION_LOCK_KEY = 0x6F7267616E697A6D

images = table_of(Image)
embeddings = table_of(Embedding)


def _on_server(bind: Connection | Engine) -> bool:
    return bind.dialect.name == "postgresql"


# -- engines and transactions --------------------------------------------------------------


def new_engine(url: URL | str) -> Engine:
    """An engine with organizer's settings for the database at ``url`` (PostgreSQL, or a
    ``sqlite:///`` file)."""
    if make_url(url).get_backend_name() == "postgresql":
        # REPEATABLE READ: every read transaction sees one snapshot, as on SQLite, so
        # a reader never mixes the batches a writer commits meanwhile. Writers do not
        # conflict: one at a time holds the advisory lock.
        # TCP keepalives: a writer whose machine vanished without closing its connection
        # loses its advisory lock in about a minute, not the kernel's default two hours.
        return create_engine(
            url,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
            isolation_level="REPEATABLE READ",
            pool_size=2,
            max_overflow=8,
        )
    engine = create_engine(url)
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


def _on_connect(dbapi_connection: Any, _record: object) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below: pysqlite's own implicit
    # BEGIN skips DDL, which would leave an interrupted migration half-applied.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA synchronous = FULL")
    # Only a new, empty database takes it (before WAL): 4 KiB pages hold one 2 KiB vector
    # row each, so half the file was slack (a 10M-image library took 44 GB).
    cursor.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    # Write-ahead logging: readers never block the writer, nor the writer readers. Persistent,
    # so this is a no-op after the first connection; it must run outside a transaction.
    mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    cursor.close()
    if str(mode).lower() != "wal":
        raise SchemaError(f"could not switch the database to WAL mode (got {mode!r})")


def _on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def writing_connection(engine: Engine) -> Connection:
    """A connection for writes: BEGIN IMMEDIATE on SQLite; READ COMMITTED on PostgreSQL, so
    that a write next to another (a cluster run beside an ingest) never fails to serialise:
    reads keep REPEATABLE READ snapshots, writers need only see what is committed."""
    if _on_server(engine):
        return engine.connect().execution_options(isolation_level="READ COMMITTED")
    return engine.connect().execution_options(sqlite_begin="IMMEDIATE")


def server_url(engine: Engine) -> URL | None:
    """The URL of the database server behind ``engine``; None for a SQLite file."""
    return engine.url if _on_server(engine) else None


def lock_migrations(conn: Connection) -> bool:
    """Make a second process that migrates the same database wait for the first, until the
    end of ``conn``'s transaction. True when it may have waited (PostgreSQL's advisory lock:
    read the revision again); SQLite's BEGIN IMMEDIATE already serialised writers (False)."""
    if not _on_server(conn):
        return False
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    return True


def server_started_at(conn: Connection) -> datetime | None:
    """When the database server last started (naive UTC); None for SQLite, which has none."""
    if not _on_server(conn):
        return None
    return conn.exec_driver_sql("SELECT pg_postmaster_start_time() AT TIME ZONE 'UTC'").scalar_one()


# -- statements ----------------------------------------------------------------------------


def _upsert_vector(upsert: Any) -> Any:
    """Insert a vector, or replace the one the image has for that model (built once: see
    :func:`organizer.store.queries.insert_image`)."""
    stmt = upsert(embeddings)
    return stmt.on_conflict_do_update(
        index_elements=["image_id", "model_id"],
        set_={"vector": stmt.excluded.vector, "created_at": stmt.excluded.created_at},
    )


_UPSERT_VECTOR = {
    "postgresql": _upsert_vector(postgresql_insert),
    "sqlite": _upsert_vector(sqlite_insert),
}


def upsert_vector(conn: Connection) -> Any:
    """The statement that inserts a vector or replaces the image's one for that model."""
    return _UPSERT_VECTOR.get(conn.dialect.name, _UPSERT_VECTOR["sqlite"])


def ok_vectors_select(
    conn: Connection, columns: list, model_id: int, roots: Sequence[int] | None
) -> Select:
    """``columns`` of the embeddings of ``model_id`` whose image is ok (under ``roots`` when
    given), by image id, in the shape each database reads fastest."""
    if not _on_server(conn):
        # As a join, SQLite drives from the images' status index and sorts every vector in
        # a temporary B-tree for the ORDER BY (12.5 s for 1M rows); with the ok ids as an
        # IN list it walks the embeddings' primary key in order, no sort (2.0 s).
        ok = select(images.c.id).where(images.c.status == ImageStatus.OK)
        if roots is not None:
            ok = ok.where(images.c.root_id.in_(list(roots)))
        return (
            select(*columns)
            .where(embeddings.c.model_id == model_id, embeddings.c.image_id.in_(ok))
            .order_by(embeddings.c.image_id)
        )
    stmt = (
        select(*columns)
        .join(images, images.c.id == embeddings.c.image_id)
        .where(embeddings.c.model_id == model_id, images.c.status == ImageStatus.OK)
        .order_by(embeddings.c.image_id)
    )
    return stmt if roots is None else stmt.where(images.c.root_id.in_(list(roots)))


def int_column(conn: Connection, stmt: Select) -> np.ndarray:
    """A one-column query of integers (ids) as an int64 array, in its order. SQLite's cursor
    is read directly: SQLAlchemy's rows cost 1.5 s a million (a grown index reads every id
    at each update). A server's rows are streamed in partitions (flat memory)."""
    if not _on_server(conn):
        with conn.execute(stmt) as result:
            # Only the plain strategy leaves every row in the cursor (a streamed or
            # buffered one has fetched the first already): otherwise, the rows.
            if type(result.cursor_strategy) is CursorFetchStrategy:
                parts = []
                while chunk := result.cursor.fetchmany(1 << 16):
                    ids = itertools.chain.from_iterable(chunk)
                    parts.append(np.fromiter(ids, np.int64, len(chunk)))
                return np.concatenate(parts) if parts else np.empty(0, np.int64)
            return np.fromiter((r[0] for r in result), np.int64)
    plan_for_all_rows(conn)
    rows = conn.execute(stmt.execution_options(yield_per=1 << 16))
    parts = [np.fromiter((r[0] for r in part), np.int64, len(part)) for part in rows.partitions()]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def plan_for_all_rows(conn: Connection) -> None:
    """Plan this transaction's streamed queries for reading every row."""
    if _on_server(conn):
        # A streamed query runs as a cursor, which PostgreSQL plans for the first rows
        # (cursor_tuple_fraction 0.1): a nested loop 45x slower than the hash join it
        # picks for a whole read (measured on 40k rows). For this transaction only.
        conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")


# -- bulk loads ------------------------------------------------------------------------------


def insert_embedded_rows(
    conn: Connection, model_id: int, rows: list[dict], vectors: np.ndarray, stamp: datetime
) -> list[int]:
    """Insert image ``rows`` and their ``vectors`` (float32, one row each) in two batched
    statements (binary COPY on PostgreSQL); return the new images' ids, in order."""
    if _on_server(conn):
        return _copy_embedded(conn, model_id, rows, vectors, stamp)
    # The ids are given, not returned: SQLite cannot order a multi-row RETURNING by the
    # parameters, so SQLAlchemy would send a statement per row. They are the ones SQLite
    # picks itself (the largest + 1; the write transaction holds its only writer's lock).
    start = conn.execute(select(func.coalesce(func.max(images.c.id), 0))).scalar_one()
    ids = list(range(start + 1, start + 1 + len(rows)))
    columns = list(rows[0])
    values = [(i, *(r[c] for c in columns)) for i, r in zip(ids, rows, strict=True)]
    _send_many(conn, images, ["id", *columns], values)
    _send_many(
        conn,
        embeddings,
        ["image_id", "model_id", "vector", "created_at"],
        [(i, model_id, vectors[n].tobytes(), stamp) for n, i in enumerate(ids)],
    )
    return ids


def _send_many(conn: Connection, table: Any, columns: list[str], rows: list[tuple]) -> None:
    """One INSERT with many rows of parameters, straight to the driver (executemany): each
    value goes through its column's own conversion (a time as SQLAlchemy stores it), but not
    through SQLAlchemy's per-row parameter handling, which costs more than SQLite's insert."""
    dialect = conn.dialect  # SQLite's own type of each column: a DateTime's conversion is there
    convert = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
    if any(convert):
        rows = [
            tuple(v if f is None or v is None else f(v) for f, v in zip(convert, row, strict=True))
            for row in rows
        ]
    marks = ", ".join("?" * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", rows)


_COPY_IMAGE_COLUMNS = {
    "id": "int8",
    "root_id": "int8",
    "relpath": "bytea",
    "size": "int8",
    "mtime_ns": "int8",
    "content_hash": "varchar",
    "width": "int4",
    "height": "int4",
    "format": "varchar",
    "etag": "varchar",
    "status": "varchar",
    "created_at": "timestamp",
    "updated_at": "timestamp",
}


def _copy_embedded(
    conn: Connection, model_id: int, rows: list[dict], vectors: np.ndarray, stamp: datetime
) -> list[int]:
    ids = reserve_ids(conn, "images", len(rows))
    columns = list(_COPY_IMAGE_COLUMNS)
    fields = columns[1:]  # after the id
    for row in rows:  # COPY sends a StrEnum's text only as a plain str
        row["status"] = _plain(row["status"])
    copy_rows(
        conn,
        "images",
        columns,
        list(_COPY_IMAGE_COLUMNS.values()),
        # map(row.get, ...) runs in C: half the client's CPU of a per-column generator
        ((image_id, *map(row.get, fields)) for image_id, row in zip(ids, rows, strict=True)),
    )
    copy_rows(
        conn,
        "embeddings",
        ["image_id", "model_id", "vector", "created_at"],
        ["int8", "int8", "bytea", "timestamp"],
        ((i, model_id, vectors[n].tobytes(), stamp) for n, i in enumerate(ids)),
    )
    return ids


def _plain(value: object) -> object:
    return str(value) if isinstance(value, StrEnum) else value


def reserve_ids(conn: Connection, table: str, count: int) -> list[int]:
    """``count`` new ids of a PostgreSQL table's id sequence (for rows sent by COPY)."""
    rows = conn.execute(
        text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
        {"t": table, "n": count},
    )
    return [row[0] for row in rows]


def copy_rows(
    conn: Connection, table: str, columns: list[str], types: list[str], rows: Iterable[tuple]
) -> None:
    """Send rows to a PostgreSQL table by binary COPY inside the caller's transaction (its
    triggers and constraints apply as for INSERT): 4x the rows/s of batched INSERTs."""
    driver = conn.connection.driver_connection
    assert driver is not None  # a live connection
    cursor = driver.cursor()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
