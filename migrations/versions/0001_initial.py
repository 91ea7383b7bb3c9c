"""Initial schema: roots, models, images, embeddings, ingest runs, index state.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Row ids: INTEGER on SQLite (there only an INTEGER PRIMARY KEY is the fast rowid), BIGINT
# elsewhere, for catalogues of more than two billion rows.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Every change to the set of indexed vectors bumps index_state.generation in the same
# transaction, so a vector-index file built at an older generation is known to be stale.
_BUMP = "UPDATE index_state SET generation = generation + 1 WHERE id = 1;"
_TRIGGERS = {
    "trg_embeddings_insert": f"AFTER INSERT ON embeddings BEGIN {_BUMP} END",
    "trg_embeddings_update": f"AFTER UPDATE ON embeddings BEGIN {_BUMP} END",
    "trg_embeddings_delete": f"AFTER DELETE ON embeddings BEGIN {_BUMP} END",
    "trg_images_status": (
        f"AFTER UPDATE OF status ON images WHEN OLD.status IS NOT NEW.status BEGIN {_BUMP} END"
    ),
    "trg_images_delete": f"AFTER DELETE ON images BEGIN {_BUMP} END",
}
# PostgreSQL: the same bumps, once per statement, never per row: each bump writes a new
# version of the one index_state row, and thousands of them in one transaction (marking a
# lost folder missing) made every next update walk the chain (100k rows: 96 s, now 1 s).
_PG_FUNCTIONS = (
    "CREATE FUNCTION organizer_bump_generation() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN {_BUMP} RETURN NULL; END $$",
    "CREATE FUNCTION organizer_bump_on_status() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n ON n.id = o.id "
    f"WHERE o.status IS DISTINCT FROM n.status) THEN {_BUMP} END IF; RETURN NULL; END $$",
)
_PG_TRIGGERS = {
    "trg_embeddings_change": (
        "AFTER INSERT OR UPDATE OR DELETE ON embeddings FOR EACH STATEMENT "
        "EXECUTE FUNCTION organizer_bump_generation()"
    ),
    "trg_images_status": (
        "AFTER UPDATE ON images REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION organizer_bump_on_status()"
    ),
    "trg_images_delete": (
        "AFTER DELETE ON images FOR EACH STATEMENT EXECUTE FUNCTION organizer_bump_generation()"
    ),
}


def upgrade() -> None:
    op.create_table(
        "roots",
        sa.Column("id", ID, primary_key=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("added_at", sa.DateTime, nullable=False),
        sa.Column("last_scan_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "models",
        sa.Column("id", ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("pretrained", sa.Text, nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=True),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("config_json", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", ID, primary_key=True),
        sa.Column("root_id", ID, sa.ForeignKey("roots.id", ondelete="CASCADE"), nullable=False),
        sa.Column("relpath", sa.LargeBinary, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("captured_at", sa.DateTime, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("root_id", "relpath", name="uq_images_root_relpath"),
    )
    op.create_index("ix_images_root_id", "images", ["root_id"])
    op.create_index("ix_images_content_hash", "images", ["content_hash"])
    op.create_index("ix_images_status", "images", ["status"])
    op.create_table(
        "embeddings",
        sa.Column(
            "image_id",
            ID,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model_id", ID, sa.ForeignKey("models.id"), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "ingest_runs",
        sa.Column("id", ID, primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("device", sa.String(16), nullable=True),
        sa.Column("precision", sa.String(16), nullable=True),
        sa.Column("summary_json", sa.Text, nullable=True),
    )
    index_state = op.create_table(
        "index_state",
        sa.Column("id", ID, primary_key=True),
        sa.Column("generation", ID, nullable=False),
        sa.Column("file_generation", ID, nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=True),
        sa.Column("file_count", ID, nullable=True),
        sa.Column("index_type", sa.String(32), nullable=True),
        sa.Column("built_at", sa.DateTime, nullable=True),
    )
    op.bulk_insert(index_state, [{"id": 1, "generation": 0}])
    if op.get_bind().dialect.name == "sqlite":
        for name, body in _TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    else:
        for function in _PG_FUNCTIONS:
            op.execute(function)
        for name, body in _PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP FUNCTION IF EXISTS organizer_bump_generation() CASCADE")
        op.execute("DROP FUNCTION IF EXISTS organizer_bump_on_status() CASCADE")
    for table in ("index_state", "ingest_runs", "embeddings", "images", "models", "roots"):
        op.drop_table(table)
