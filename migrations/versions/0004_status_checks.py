"""Status columns accept only the statuses organizer knows.

images.status is one of ok, failed, missing; ingest_runs.status one of running, finished,
failed, interrupted (organizer.store.records.ImageStatus and RunStatus; spelled out here
because a revision must not change when the code does).

On SQLite, ingest_runs is rebuilt with a real CHECK constraint (nothing refers to it). The
images table is not: rebuilding it means dropping it, and with foreign keys on (they cannot
be switched off inside the migration's transaction) the drop would cascade into embeddings
and cluster_members. There, two triggers raise on a bad status instead, the same guarantee.
Other databases get CHECK constraints on both.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IMAGE_STATUSES = ("ok", "failed", "missing")
RUN_STATUSES = ("running", "finished", "failed", "interrupted")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


_IMAGE_CHECK = _in("status", IMAGE_STATUSES)
_RUN_CHECK = _in("status", RUN_STATUSES)
_RAISE = "SELECT RAISE(ABORT, 'CHECK constraint failed: ck_images_status')"
_TRIGGERS = {
    "trg_images_status_check_insert": (
        f"BEFORE INSERT ON images WHEN NOT (NEW.{_IMAGE_CHECK}) BEGIN {_RAISE}; END"
    ),
    "trg_images_status_check_update": (
        f"BEFORE UPDATE OF status ON images WHEN NOT (NEW.{_IMAGE_CHECK}) BEGIN {_RAISE}; END"
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("ingest_runs") as batch:
        batch.create_check_constraint("ck_ingest_runs_status", _RUN_CHECK)
    if op.get_bind().dialect.name == "sqlite":
        for name, body in _TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:
        op.create_check_constraint("ck_images_status", "images", _IMAGE_CHECK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.drop_constraint("ck_images_status", "images", type_="check")
    with op.batch_alter_table("ingest_runs") as batch:
        batch.drop_constraint("ck_ingest_runs_status", type_="check")
