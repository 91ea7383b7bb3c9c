"""Schema: created only by Alembic, matches the ORM models, migrations are transactional."""

from __future__ import annotations

import contextlib
import sqlite3

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
