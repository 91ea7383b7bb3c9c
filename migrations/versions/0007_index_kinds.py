"""Index kinds for 10M+ images: a quick fingerprint of the index files, and the index a
library asks for.

``file_quick`` lets opening check the index files by their sizes and sampled blocks instead
of hashing them whole (1M images: 2.4 s of a 2.5 s `similar` went to the hash).
``wanted_kind`` and ``memory_budget`` keep what ``organizer index build --kind/--memory``
chose, so that rebuilds after later ingests honour it (None: auto, the default budget).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("index_state", sa.Column("file_quick", sa.String(64), nullable=True))
    op.add_column("index_state", sa.Column("wanted_kind", sa.String(16), nullable=True))
    op.add_column("index_state", sa.Column("memory_budget", ID, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("index_state") as batch:
        batch.drop_column("memory_budget")
        batch.drop_column("wanted_kind")
        batch.drop_column("file_quick")
