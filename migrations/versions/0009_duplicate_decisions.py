"""Duplicate decisions: what a user said about a duplicate group, keyed by content.

A decision (``not-duplicates``, ``keep-all``, ``keeper``) names files by their SHA-256, not by
image id or path, so it survives moves, renames, re-scans, a new model and a rebuilt index.
Taking a decision back deletes its row (its files go with it).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "duplicate_decisions",
        sa.Column("id", ID, primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.CheckConstraint(
            "decision IN ('not-duplicates', 'keep-all', 'keeper')",
            name="ck_duplicate_decisions_decision",
        ),
    )
    op.create_table(
        "duplicate_decision_files",
        sa.Column(
            "decision_id",
            ID,
            sa.ForeignKey("duplicate_decisions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sha256", sa.String(64), primary_key=True),
    )
    op.create_index("ix_duplicate_decision_files_sha256", "duplicate_decision_files", ["sha256"])


def downgrade() -> None:
    op.drop_table("duplicate_decision_files")
    op.drop_table("duplicate_decisions")
