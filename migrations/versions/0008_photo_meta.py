"""Photo metadata: when, where and with what each image was taken.

``photo_meta`` has one row per image whose header has been read (by reader version
``reader``): a missing row means "never read", so the next ingest reads the headers of
those images only and keeps their vectors. Cameras and places are small tables of their own:
a filter on either resolves to a few ids first, then uses the index on photo_meta.
(Amended before it was released: the position index covers both coordinates.)

``images.captured_at`` (the unchecked EXIF date of earlier versions) is superseded by
``photo_meta.taken_at`` and no longer written; it stays because dropping a column of
``images`` on SQLite rebuilds the table, which revision 0004 explains cannot be done safely.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("id", ID, primary_key=True),
        sa.Column("make", sa.String(120), nullable=True),
        sa.Column("model", sa.String(120), nullable=True),
        sa.Column("label", sa.String(250), nullable=False),
        sa.UniqueConstraint("make", "model", name="uq_cameras_make_model"),
    )
    op.create_table(
        "places",
        sa.Column("id", ID, primary_key=True),
        sa.Column("city", sa.Text, nullable=False),
        sa.Column("region", sa.Text, nullable=True),
        sa.Column("country", sa.Text, nullable=False),
        sa.Column("country_code", sa.String(2), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.UniqueConstraint("label", name="uq_places_label"),
    )
    op.create_table(
        "photo_meta",
        sa.Column(
            "image_id",
            ID,
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("reader", sa.Integer, nullable=False),
        sa.Column("taken_at", sa.DateTime, nullable=True),
        sa.Column("taken_offset", sa.Integer, nullable=True),
        sa.Column("latitude", sa.Float, nullable=True),
        sa.Column("longitude", sa.Float, nullable=True),
        sa.Column("altitude", sa.Float, nullable=True),
        sa.Column("place_id", ID, sa.ForeignKey("places.id"), nullable=True),
        sa.Column("camera_id", ID, sa.ForeignKey("cameras.id"), nullable=True),
        sa.Column("lens", sa.String(120), nullable=True),
        sa.Column("focal_mm", sa.Float, nullable=True),
        sa.Column("exposure_s", sa.Float, nullable=True),
        sa.Column("f_number", sa.Float, nullable=True),
        sa.Column("iso", sa.Integer, nullable=True),
        sa.Column("orientation", sa.SmallInteger, nullable=True),
    )
    op.create_index("ix_photo_meta_taken_at", "photo_meta", ["taken_at"])
    # Both coordinates: a --near box is answered from the index alone (with latitude only,
    # each row in the latitude band was read from the table: 0.5 s at a million photos).
    op.create_index("ix_photo_meta_position", "photo_meta", ["latitude", "longitude"])
    op.create_index("ix_photo_meta_place_id", "photo_meta", ["place_id"])
    op.create_index("ix_photo_meta_camera_id", "photo_meta", ["camera_id"])


def downgrade() -> None:
    op.drop_table("photo_meta")
    op.drop_table("places")
    op.drop_table("cameras")
