"""Object versions: what a bucket or a tar shard says about its contents.

``images.etag`` keeps the ETag a bucket listed for an object, so a rewritten object of the
same size and second is still seen as changed. ``roots.version`` keeps the fingerprint of a
tar shard (its ETag, or size and modification time on disk) as of its last whole read, so an
unchanged shard is skipped without reading it. ``roots.endpoint_url`` keeps the endpoint a
bucket root was ingested through (an S3-compatible service that is not AWS), so that later
commands reach it too; never a credential. All are NULL for folders.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("etag", sa.Text, nullable=True))
    op.add_column("roots", sa.Column("version", sa.Text, nullable=True))
    op.add_column("roots", sa.Column("endpoint_url", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("roots") as batch:
        batch.drop_column("endpoint_url")
        batch.drop_column("version")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("etag")
