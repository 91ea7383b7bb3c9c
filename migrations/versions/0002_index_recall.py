"""Describe the vector index: its parameters and measured recall@10 (approximate indexes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, no batch mode: recreating index_state would break the triggers of
    # 0001 that update it by name.
    op.add_column("index_state", sa.Column("recall_at_10", sa.Float, nullable=True))
    op.add_column("index_state", sa.Column("index_description", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("index_description")
        batch.drop_column("recall_at_10")
