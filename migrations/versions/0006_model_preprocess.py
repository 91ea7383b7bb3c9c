"""The model's input preprocessing (size, normalisation), recorded beside the model.

With it, an ingest can decode files before loading the model, and loads it only when a
file needs embedding: a run whose files all turn out to be copies never loads it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (no batch rebuild: embeddings and cluster runs refer to models).
    op.add_column("models", sa.Column("preprocess_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("preprocess_json")
