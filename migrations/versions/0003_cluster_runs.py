"""Cluster runs: parameters, the k sweep, clusters with centroids and names, memberships.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

# Row ids: INTEGER on SQLite (the fast rowid), BIGINT elsewhere (see 0001).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_runs",
        sa.Column("id", ID, primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("model_id", ID, sa.ForeignKey("models.id"), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("k", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("auto", sa.Boolean, nullable=False),
        sa.Column("params_json", sa.Text, nullable=False),
        sa.Column("silhouette", sa.Float, nullable=True),
        sa.Column("sweep_json", sa.Text, nullable=True),
        sa.Column("vocabulary", sa.Text, nullable=True),
        sa.Column("n_images", sa.Integer, nullable=False),
    )
    op.create_table(
        "clusters",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "run_id",
            ID,
            sa.ForeignKey("cluster_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("silhouette", sa.Float, nullable=True),
        sa.Column("centroid", sa.LargeBinary, nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("labels_json", sa.Text, nullable=True),
        sa.UniqueConstraint("run_id", "number", name="uq_clusters_run_number"),
    )
    op.create_table(
        "cluster_members",
        sa.Column(
            "run_id",
            ID,
            sa.ForeignKey("cluster_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("image_id", ID, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("distance", sa.Float, nullable=False),
        sa.Column("silhouette", sa.Float, nullable=True),
        sa.Column("assigned_later", sa.Boolean, nullable=False),
    )
    op.create_index("ix_cluster_members_run_number", "cluster_members", ["run_id", "number"])


def downgrade() -> None:
    op.drop_index("ix_cluster_members_run_number", "cluster_members")
    op.drop_table("cluster_members")
    op.drop_table("clusters")
    op.drop_table("cluster_runs")
