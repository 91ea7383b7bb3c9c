"""Schema: created only by Alembic, matches the ORM models, migrations are transactional."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from organizer.store.db import create_engine_for, current_revision, head_revision, migrate
from organizer.store.models import Base


def test_new_database_is_at_head_and_matches_the_models(tmp_path):
    engine = create_engine_for(tmp_path / "db.sqlite")
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 16384  # vector rows


def test_an_older_database_keeps_its_page_size(tmp_path):
    """A library made with 4 KiB pages opens as it is (WAL fixes the size once set)."""
    path = tmp_path / "db.sqlite"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("CREATE TABLE t (x)")
    old.close()
    engine = create_engine_for(path)
    migrate(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 4096


def test_migrate_is_idempotent(tmp_path):
    engine = create_engine_for(tmp_path / "db.sqlite")
    migrate(engine)
    migrate(engine)
    assert current_revision(engine) == head_revision()


def test_interrupted_migration_leaves_nothing_half_done(tmp_path, monkeypatch):
    """DDL runs inside one transaction: a failure mid-way rolls back every table."""
    import alembic.command

    path = tmp_path / "db.sqlite"
    engine = create_engine_for(path)
    real_upgrade = alembic.command.upgrade

    def failing_upgrade(config, revision):
        real_upgrade(config, revision)
        raise KeyboardInterrupt  # e.g. Ctrl-C after the DDL ran, before the commit

    monkeypatch.setattr(alembic.command, "upgrade", failing_upgrade)
    with contextlib.suppress(KeyboardInterrupt):
        migrate(engine)
    tables = {
        r[0]
        for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert tables == set()
    monkeypatch.setattr(alembic.command, "upgrade", real_upgrade)
    migrate(engine)  # the next open completes it
    assert current_revision(engine) == head_revision()


def test_newer_schema_is_refused(tmp_path):
    import pytest

    from organizer.errors import SchemaError

    engine = create_engine_for(tmp_path / "db.sqlite")
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaError, match="newer organizer"):
        migrate(engine)


def test_fast_head_check_agrees_with_alembic():
    from organizer.store.db import _head_without_alembic

    assert _head_without_alembic() == head_revision()


def test_upgrade_from_each_earlier_revision_keeps_data(tmp_path):
    """A library made by an older organizer is upgraded in place, its rows and triggers intact."""
    from alembic import command
    from alembic.config import Config

    from organizer.resources import migrations_dir
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    for old in ("0001", "0002", "0003", "0004", "0005"):
        engine = create_engine_for(tmp_path / f"from-{old}.sqlite")
        config = Config()
        config.set_main_option("script_location", str(migrations_dir()))
        with engine.connect() as conn, conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, old)
            conn.exec_driver_sql(
                "INSERT INTO roots (id, path, added_at) VALUES (1, '/photos', '2026-01-01')"
            )
            conn.exec_driver_sql(
                "INSERT INTO images (id, root_id, relpath, size, mtime_ns, status, created_at, "
                "updated_at) VALUES (1, 1, x'612e6a7067', 1, 1, 'ok', '2026-01-01', '2026-01-01')"
            )
        assert current_revision(engine) == old
        migrate(engine)
        assert current_revision(engine) == head_revision()
        with write_transaction(engine) as conn:
            before = q.index_generation(conn)
            q.mark_missing(conn, [1])  # the 0001 triggers still bump the generation
            assert q.index_generation(conn) == before + 1
            assert q.known_images(conn, 1)[b"a.jpg"].status == "missing"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO images (root_id, relpath, size, mtime_ns, status, created_at, updated_at) "
        "VALUES (1, x'62', 1, 1, 'deleted', '2026-01-01', '2026-01-01')",
        "UPDATE images SET status = 'OK'",
        "INSERT INTO ingest_runs (started_at, pid, status) VALUES ('2026-01-01', 1, 'done')",
        "UPDATE ingest_runs SET status = 'crashed'",
    ],
)
def test_unknown_statuses_are_refused(tmp_path, statement):
    """Revision 0004: the status columns take only the statuses organizer knows."""
    from sqlalchemy.exc import IntegrityError

    engine = create_engine_for(tmp_path / "db.sqlite")
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO roots (id, path, added_at) VALUES (1, '/p', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO images (root_id, relpath, size, mtime_ns, status, created_at, "
            "updated_at) VALUES (1, x'61', 1, 1, 'ok', '2026-01-01', '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO ingest_runs (started_at, pid, status) VALUES ('2026-01-01', 1, 'running')"
        )
    with pytest.raises(IntegrityError, match="CHECK constraint failed"), engine.begin() as conn:
        conn.exec_driver_sql(statement)


def test_every_status_the_code_writes_is_accepted(tmp_path):
    from organizer.store.records import ImageStatus, RunStatus

    engine = create_engine_for(tmp_path / "db.sqlite")
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO roots (id, path, added_at) VALUES (1, '/p', '2026-01-01')"
        )
        for n, status in enumerate(ImageStatus):
            conn.exec_driver_sql(
                "INSERT INTO images (root_id, relpath, size, mtime_ns, status, created_at, "
                f"updated_at) VALUES (1, x'6{n}', 1, 1, '{status}', '2026-01-01', '2026-01-01')"
            )
        for status in RunStatus:
            conn.exec_driver_sql(
                "INSERT INTO ingest_runs (started_at, pid, status) "
                f"VALUES ('2026-01-01', 1, '{status}')"
            )
