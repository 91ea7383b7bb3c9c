"""SQLAlchemy 2.0 ORM models: the schema of a library database.

The schema itself is created and changed only by Alembic revisions in ``migrations/``; these
classes describe it for queries. Paths are stored as the raw bytes the filesystem gave
(``os.fsencode``) so that names that are not valid UTF-8 survive unchanged.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Row ids: INTEGER on SQLite (only an INTEGER PRIMARY KEY is the fast rowid), BIGINT on
# PostgreSQL, for catalogues of more than two billion rows.
ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (its ``__table__``, typed as a table)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Root(Base):
    """A folder the user ingested; image paths are stored relative to it."""

    __tablename__ = "roots"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    added_at: Mapped[datetime] = mapped_column(DateTime)
    last_scan_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # A tar shard's fingerprint as of its last whole read (revision 0010); NULL for the rest.
    version: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The endpoint a bucket root was ingested through, when not the default (revision 0010).
    endpoint_url: Mapped[str | None] = mapped_column(Text, nullable=True)


class Model(Base):
    """The embedding model a library's vectors were made with."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    pretrained: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dim: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    preprocess_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class Image(Base):
    """One file under a root, whatever became of it (ok, failed or missing)."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("root_id", "relpath", name="uq_images_root_relpath"),
        # On SQLite enforced by triggers (revision 0004 says why), elsewhere a real CHECK.
        CheckConstraint("status IN ('ok', 'failed', 'missing')", name="ck_images_status"),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id", ondelete="CASCADE"), index=True)
    relpath: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    captured_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # The ETag a bucket listed for the object (revision 0010); NULL for files on a disk.
    etag: Mapped[str | None] = mapped_column(Text, nullable=True)


class Embedding(Base):
    """An image's L2-normalised vector under one model, as float32 bytes."""

    __tablename__ = "embeddings"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class IngestRun(Base):
    """One run of ``organizer ingest``: when, with what, and what it found."""

    __tablename__ = "ingest_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'finished', 'failed', 'interrupted')",
            name="ck_ingest_runs_status",
        ),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pid: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    device: Mapped[str | None] = mapped_column(String(16), nullable=True)
    precision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    summary_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class IndexState(Base):
    """What the vector-index cache must contain, and what the file on disk does contain.

    Read through :class:`organizer.store.records.IndexStateRecord`. ``generation`` is bumped by
    triggers whenever the set of indexed vectors can have changed;
    the file is trusted only when its checksum and generation match this row.
    """

    __tablename__ = "index_state"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    generation: Mapped[int] = mapped_column(ID)
    file_generation: Mapped[int | None] = mapped_column(ID, nullable=True)
    file_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_count: Mapped[int | None] = mapped_column(ID, nullable=True)
    index_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    built_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    recall_at_10: Mapped[float | None] = mapped_column(Float, nullable=True)
    index_description: Mapped[str | None] = mapped_column(Text, nullable=True)
    file_quick: Mapped[str | None] = mapped_column(String(64), nullable=True)
    wanted_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    memory_budget: Mapped[int | None] = mapped_column(ID, nullable=True)
    # JSON: what the index holds beyond its build's files (revision 0011; IndexGrowthRecord).
    file_growth: Mapped[str | None] = mapped_column(Text, nullable=True)


class ClusterRun(Base):
    """One clustering of the library: how it was made and how good it is."""

    __tablename__ = "cluster_runs"

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    algorithm: Mapped[str] = mapped_column(String(16))
    k: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    auto: Mapped[bool] = mapped_column(Boolean)
    params_json: Mapped[str] = mapped_column(Text)
    silhouette: Mapped[float | None] = mapped_column(Float, nullable=True)
    sweep_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    vocabulary: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_images: Mapped[int] = mapped_column(Integer)


class Cluster(Base):
    """A cluster of a run: numbered 1..k by decreasing size, with its centroid and name."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_clusters_run_number"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    silhouette: Mapped[float | None] = mapped_column(Float, nullable=True)
    centroid: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[str | None] = mapped_column(Text, nullable=True)
    labels_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class ClusterMember(Base):
    """An image's cluster in a run, its cosine distance to the centroid and its silhouette."""

    __tablename__ = "cluster_members"
    __table_args__ = (Index("ix_cluster_members_run_number", "run_id", "number"),)

    run_id: Mapped[int] = mapped_column(
        ForeignKey("cluster_runs.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer)
    distance: Mapped[float] = mapped_column(Float)
    silhouette: Mapped[float | None] = mapped_column(Float, nullable=True)
    assigned_later: Mapped[bool] = mapped_column(Boolean)


class Catalogue(Base):
    """The library's identity: a UUID made once (it names each machine's index cache)."""

    __tablename__ = "catalogue"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class Camera(Base):
    """A camera make and model as its files name it, with the label results show."""

    __tablename__ = "cameras"
    __table_args__ = (UniqueConstraint("make", "model", name="uq_cameras_make_model"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    make: Mapped[str | None] = mapped_column(String(120), nullable=True)
    model: Mapped[str | None] = mapped_column(String(120), nullable=True)
    label: Mapped[str] = mapped_column(String(250))


class Place(Base):
    """A named place (city or town, region, country) that photos' coordinates fall in."""

    __tablename__ = "places"
    __table_args__ = (UniqueConstraint("label", name="uq_places_label"),)

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    city: Mapped[str] = mapped_column(Text)
    region: Mapped[str | None] = mapped_column(Text, nullable=True)
    country: Mapped[str] = mapped_column(Text)
    country_code: Mapped[str] = mapped_column(String(2))
    label: Mapped[str] = mapped_column(Text)


class PhotoMetaRow(Base):
    """An image's header facts (organizer.photo_meta.PhotoMeta); a row exists once read."""

    __tablename__ = "photo_meta"
    __table_args__ = (Index("ix_photo_meta_position", "latitude", "longitude"),)

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    reader: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    taken_offset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    altitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    place_id: Mapped[int | None] = mapped_column(ForeignKey("places.id"), nullable=True, index=True)
    camera_id: Mapped[int | None] = mapped_column(
        ForeignKey("cameras.id"), nullable=True, index=True
    )
    lens: Mapped[str | None] = mapped_column(String(120), nullable=True)
    focal_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    exposure_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    f_number: Mapped[float | None] = mapped_column(Float, nullable=True)
    iso: Mapped[int | None] = mapped_column(Integer, nullable=True)
    orientation: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)


class DuplicateDecision(Base):
    """What a user decided about some files as duplicates (organizer.choices.Decision)."""

    __tablename__ = "duplicate_decisions"
    __table_args__ = (
        CheckConstraint(
            "decision IN ('not-duplicates', 'keep-all', 'keeper')",
            name="ck_duplicate_decisions_decision",
        ),
    )

    id: Mapped[int] = mapped_column(ID, primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DuplicateDecisionFile(Base):
    """A file a decision names, by its content (SHA-256): moves and renames keep it."""

    __tablename__ = "duplicate_decision_files"

    decision_id: Mapped[int] = mapped_column(
        ForeignKey("duplicate_decisions.id", ondelete="CASCADE"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
