"""Index growth: what the vector index holds beyond the files its build wrote.

``index_state.file_growth`` is JSON (see ``IndexGrowthRecord``): the small files later
updates wrote beside the built index (new vectors, masked ids, calibration, re-rank
segments) with their checksums, the recall the last update measured, and why an update
last rebuilt the index. NULL for an index written before this revision: its first update
rebuilds it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("index_state", sa.Column("file_growth", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("file_growth")
