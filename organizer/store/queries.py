"""Named queries over a library database. Each takes a SQLAlchemy Connection inside the
caller's transaction; none commits. Core statements, because ingest moves many rows."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Connection, CursorResult, Select, delete, func, insert, select, update

from organizer.embed import ModelSpec
from organizer.photo_meta import PhotoMeta
from organizer.store import dialect
from organizer.store.models import (
    Camera,
    Catalogue,
    Embedding,
    Image,
    IndexState,
    IngestRun,
    Model,
    PhotoMetaRow,
    Place,
    Root,
    table_of,
)
from organizer.store.records import (
    Failure,
    ImageRecord,
    ImageStatus,
    IndexFileRecord,
    IndexGrowthRecord,
    IndexSettingsRecord,
    IngestRunRecord,
    KnownImage,
    LibraryModel,
    RootRecord,
    RunStatus,
)

images = table_of(Image)
embeddings = table_of(Embedding)
roots_t = table_of(Root)
models_t = table_of(Model)
ingest_runs_t = table_of(IngestRun)
state_t = table_of(IndexState)
catalogue_t = table_of(Catalogue)


def new_id(result: CursorResult) -> int:
    """The primary key an INSERT of one row made."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


# SQLite allows 999 bound parameters per statement in older builds: id lists go in chunks.
CHUNK = 500
T = TypeVar("T")


def chunked(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def now() -> datetime:
    """UTC now, naive (SQLite stores no zone); every timestamp in the database is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def catalogue_uuid(conn: Connection) -> str:
    """The library's UUID (made by revision 0005)."""
    return conn.execute(select(catalogue_t.c.uuid).where(catalogue_t.c.id == 1)).scalar_one()


# -- model -------------------------------------------------------------------------------


def library_model(conn: Connection) -> LibraryModel | None:
    """The model this library's vectors were made with (the first one recorded), if any."""
    row = conn.execute(select(models_t).order_by(models_t.c.id).limit(1)).first()
    if row is None:
        return None
    spec = ModelSpec(row.name, row.pretrained, row.weights_sha256, row.config_json)
    preprocess = json.loads(row.preprocess_json) if row.preprocess_json else None
    return LibraryModel(row.id, spec, row.dim, preprocess)


def insert_model(
    conn: Connection, spec: ModelSpec, dim: int, preprocess: dict | None = None
) -> int:
    values = dict(
        name=spec.name,
        pretrained=spec.pretrained,
        weights_sha256=spec.weights_sha256,
        config_json=spec.config_json,
        dim=dim,
        created_at=now(),
        preprocess_json=json.dumps(preprocess) if preprocess else None,
    )
    return new_id(conn.execute(insert(models_t).values(**values)))


def record_preprocess(conn: Connection, model_id: int, preprocess: dict) -> None:
    """Record a model's input preprocessing (libraries made before it was recorded)."""
    conn.execute(
        update(models_t)
        .where(models_t.c.id == model_id, models_t.c.preprocess_json.is_(None))
        .values(preprocess_json=json.dumps(preprocess))
    )


# -- roots -------------------------------------------------------------------------------


def all_roots(conn: Connection) -> dict[int, str]:
    """Root id -> absolute path."""
    return dict(conn.execute(select(roots_t.c.id, roots_t.c.path).order_by(roots_t.c.id)).all())


def add_root(conn: Connection, path: str, endpoint_url: str | None = None) -> int:
    stmt = insert(roots_t).values(path=path, added_at=now(), endpoint_url=endpoint_url)
    return new_id(conn.execute(stmt))


def set_root_endpoint(conn: Connection, root_id: int, endpoint_url: str) -> None:
    """Record the endpoint a bucket root is reached through (given again on an ingest)."""
    conn.execute(update(roots_t).where(roots_t.c.id == root_id).values(endpoint_url=endpoint_url))


def root_endpoints(conn: Connection) -> dict[str, str]:
    """Bucket roots reached through an endpoint of their own: root -> endpoint."""
    stmt = select(roots_t.c.path, roots_t.c.endpoint_url).where(roots_t.c.endpoint_url.is_not(None))
    return {path: url for path, url in conn.execute(stmt)}


def absorb_root(conn: Connection, parent_id: int, child_id: int, prefix: bytes) -> None:
    """Move a root's images under another root that contains it, then drop the child root."""
    rows = conn.execute(
        select(images.c.id, images.c.relpath).where(images.c.root_id == child_id)
    ).all()
    for image_id, relpath in rows:
        conn.execute(
            update(images)
            .where(images.c.id == image_id)
            .values(root_id=parent_id, relpath=prefix + b"/" + relpath)
        )
    conn.execute(delete(roots_t).where(roots_t.c.id == child_id))


def root_records(conn: Connection) -> list[RootRecord]:
    """Every root with its images counted by status, oldest first."""
    counts: dict[int, dict[str, int]] = {}
    stmt = select(images.c.root_id, images.c.status, func.count()).group_by(
        images.c.root_id, images.c.status
    )
    for root_id, status, n in conn.execute(stmt):
        counts.setdefault(root_id, {str(s): 0 for s in ImageStatus})[status] = n
    rows = conn.execute(select(roots_t).order_by(roots_t.c.id))
    return [
        RootRecord(
            r.id,
            r.path,
            r.added_at,
            r.last_scan_at,
            counts.get(r.id, {str(s): 0 for s in ImageStatus}),
        )
        for r in rows
    ]


def ok_counts(conn: Connection, root_ids: Sequence[int]) -> dict[int, int]:
    """How many ok images each of these roots holds (those with none are left out)."""
    stmt = (
        select(images.c.root_id, func.count())
        .where(images.c.root_id.in_(root_ids), images.c.status == ImageStatus.OK)
        .group_by(images.c.root_id)
    )
    return dict(conn.execute(stmt).all())


def delete_root(conn: Connection, root_id: int) -> None:
    """Forget a root: its images, their vectors and cluster memberships go with it."""
    conn.execute(delete(roots_t).where(roots_t.c.id == root_id))


def move_root(conn: Connection, root_id: int, path: str) -> None:
    conn.execute(update(roots_t).where(roots_t.c.id == root_id).values(path=path))


def sample_images(conn: Connection, root_id: int, n: int) -> list[KnownImage]:
    """Up to ``n`` ok images of a root, spread over it (every k-th by path)."""
    count = conn.execute(
        select(func.count()).where(images.c.root_id == root_id, images.c.status == ImageStatus.OK)
    ).scalar_one()
    if count == 0:
        return []
    step = max(1, count // n)
    stmt = (
        select(
            images.c.id,
            images.c.relpath,
            images.c.size,
            images.c.mtime_ns,
            images.c.status,
            images.c.content_hash,
        )
        .where(images.c.root_id == root_id, images.c.status == ImageStatus.OK)
        .order_by(images.c.relpath)
    )
    return [_known(row) for i, row in enumerate(conn.execute(stmt)) if i % step == 0][:n]


def touch_root(
    conn: Connection, root_id: int, version: str | None = None, shard: bool = False
) -> None:
    """Record a root's scan as done now; a ``shard``'s fingerprint as read whole (None: it
    was not, and is listed again next time)."""
    values: dict[str, object] = {"last_scan_at": now()}
    if shard:
        values["version"] = version
    conn.execute(update(roots_t).where(roots_t.c.id == root_id).values(**values))


def root_version(conn: Connection, root_id: int) -> str | None:
    """A tar shard root's fingerprint as of its last whole read (None: never, or a folder)."""
    stmt = select(roots_t.c.version).where(roots_t.c.id == root_id)
    return conn.execute(stmt).scalar_one_or_none()


# -- images ------------------------------------------------------------------------------


_KNOWN_COLUMNS = (
    images.c.id,
    images.c.relpath,
    images.c.size,
    images.c.mtime_ns,
    images.c.status,
    images.c.content_hash,
    images.c.etag,
)


def known_images(conn: Connection, root_id: int, prefix: bytes = b"") -> dict[bytes, KnownImage]:
    """Images recorded under a root (optionally only under the subfolder ``prefix``)."""
    stmt = select(*_KNOWN_COLUMNS).where(images.c.root_id == root_id)
    if prefix:
        stmt = stmt.where(func.substr(images.c.relpath, 1, len(prefix) + 1) == prefix + b"/")
    return {row.relpath: _known(row) for row in conn.execute(stmt)}


def _known(row: Any) -> KnownImage:
    return KnownImage(
        row.id,
        row.relpath,
        row.size,
        row.mtime_ns,
        ImageStatus(row.status),
        row.content_hash,
        getattr(row, "etag", None),
    )


def embedded_hashes(conn: Connection, model_id: int) -> dict[str, int]:
    """Content hash -> an image id that has a vector for it (for dedupe and move detection)."""
    stmt = (
        select(images.c.content_hash, func.min(images.c.id))
        .join(embeddings, embeddings.c.image_id == images.c.id)
        .where(embeddings.c.model_id == model_id, images.c.content_hash.is_not(None))
        .group_by(images.c.content_hash)
    )
    return dict(conn.execute(stmt).all())


def insert_image(conn: Connection, **values: object) -> int:
    stamp = now()
    values = {"created_at": stamp, "updated_at": stamp, **values}
    assert values.keys() <= _IMAGE_COLUMNS, sorted(values.keys() - _IMAGE_COLUMNS)
    # Parameters beside one statement, not built into a new one per row: building costs
    # more than SQLite's insert (ingest writes a row per image).
    return new_id(conn.execute(_INSERT_IMAGE, values))


_INSERT_IMAGE = insert(images)
_IMAGE_COLUMNS = frozenset(images.c.keys())  # a misspelt one would be dropped silently


def insert_embedded(
    conn: Connection, model_id: int, images_rows: Sequence[dict], vectors: np.ndarray
) -> list[int]:
    """Many new images (ok, with their vectors) in two batched statements; returns their ids.

    What an ingest's writer does with the new images of a batch, and bulk loads: the rows
    go in multi-row batches (binary COPY on PostgreSQL) instead of a statement per row.
    """
    stamp = now()
    rows = [
        {"created_at": stamp, "updated_at": stamp, "status": ImageStatus.OK, **r}
        for r in images_rows
    ]
    blobs = np.ascontiguousarray(vectors, dtype=np.float32)
    return dialect.insert_embedded_rows(conn, model_id, rows, blobs, stamp)


def update_image(conn: Connection, image_id: int, **values: object) -> None:
    conn.execute(update(images).where(images.c.id == image_id).values(updated_at=now(), **values))


def delete_images(conn: Connection, image_ids: list[int]) -> None:
    for chunk in chunked(image_ids):
        conn.execute(delete(images).where(images.c.id.in_(chunk)))


def mark_missing(conn: Connection, image_ids: list[int]) -> None:
    stamp = now()
    for chunk in chunked(image_ids):
        conn.execute(
            update(images)
            .where(images.c.id.in_(chunk))
            .values(status=ImageStatus.MISSING, updated_at=stamp)
        )


_IMAGE_RECORD_COLUMNS = (
    images.c.id,
    roots_t.c.path,
    images.c.relpath,
    images.c.size,
    images.c.mtime_ns,
    images.c.width,
    images.c.height,
    images.c.format,
)
_META = table_of(PhotoMetaRow)
_CAMERAS = table_of(Camera)
_PLACES = table_of(Place)
# The PhotoMeta fields stored as they are in photo_meta (make and model go to cameras).
META_FIELDS = (
    "taken_at",
    "taken_offset",
    "latitude",
    "longitude",
    "altitude",
    "lens",
    "focal_mm",
    "exposure_s",
    "f_number",
    "iso",
    "orientation",
)
_META_COLUMNS = tuple(_META.c[name] for name in META_FIELDS)


def _image_record(row: Any) -> ImageRecord:
    image_id, root, relpath, size, mtime_ns, width, height, fmt = row[: len(_IMAGE_RECORD_COLUMNS)]
    meta = None
    if row.meta_read is not None:
        facts = {c.name: row._mapping[c.name] for c in _META_COLUMNS}
        meta = PhotoMeta(make=row.make, model=row.model, **facts)
    return ImageRecord(
        id=image_id,
        root=root,
        relpath=relpath,
        size=size,
        mtime_ns=mtime_ns,
        width=width,
        height=height,
        format=fmt,
        status=ImageStatus(row.status),
        content_hash=row.content_hash,
        meta=meta,
        place=row.place,
    )


def describe_images(conn: Connection, image_ids: Sequence[int]) -> dict[int, ImageRecord]:
    """The records of the given images (any status), with their metadata, by id."""
    out: dict[int, ImageRecord] = {}
    for chunk in chunked(list(image_ids)):
        stmt = (
            select(
                *_IMAGE_RECORD_COLUMNS,
                images.c.status,
                images.c.content_hash,
                _META.c.image_id.label("meta_read"),
                *_META_COLUMNS,
                _CAMERAS.c.make,
                _CAMERAS.c.model,
                _PLACES.c.label.label("place"),
            )
            .join(roots_t, roots_t.c.id == images.c.root_id)
            .outerjoin(_META, _META.c.image_id == images.c.id)
            .outerjoin(_CAMERAS, _CAMERAS.c.id == _META.c.camera_id)
            .outerjoin(_PLACES, _PLACES.c.id == _META.c.place_id)
            .where(images.c.id.in_(chunk))
        )
        out.update({row.id: _image_record(row) for row in conn.execute(stmt)})
    return out


def describe_image(conn: Connection, image_id: int) -> ImageRecord:
    return describe_images(conn, [image_id])[image_id]


def find_image(conn: Connection, root_id: int, relpath: bytes) -> KnownImage | None:
    """The image at a path, or None."""
    stmt = select(*_KNOWN_COLUMNS).where(images.c.root_id == root_id, images.c.relpath == relpath)
    row = conn.execute(stmt).first()
    return None if row is None else _known(row)


def status_counts(conn: Connection) -> dict[str, int]:
    counts = {str(status): 0 for status in ImageStatus}
    stmt = select(images.c.status, func.count()).group_by(images.c.status)
    counts.update(dict(conn.execute(stmt).all()))
    return counts


def failures(conn: Connection) -> list[Failure]:
    stmt = (
        select(roots_t.c.path, images.c.relpath, images.c.failure_reason, images.c.updated_at)
        .join(roots_t, roots_t.c.id == images.c.root_id)
        .where(images.c.status == ImageStatus.FAILED)
        .order_by(roots_t.c.path, images.c.relpath)
    )
    return [Failure(*row) for row in conn.execute(stmt)]


# -- vectors -----------------------------------------------------------------------------


def put_vector(conn: Connection, image_id: int, model_id: int, vector: np.ndarray) -> None:
    blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    values = {"image_id": image_id, "model_id": model_id, "vector": blob, "created_at": now()}
    conn.execute(dialect.upsert_vector(conn), values)


def get_vector(conn: Connection, image_id: int, model_id: int) -> np.ndarray | None:
    stmt = select(embeddings.c.vector).where(
        embeddings.c.image_id == image_id, embeddings.c.model_id == model_id
    )
    blob = conn.execute(stmt).scalar()
    return None if blob is None else np.frombuffer(blob, dtype=np.float32)


def delete_vector(conn: Connection, image_id: int) -> None:
    conn.execute(delete(embeddings).where(embeddings.c.image_id == image_id))


def _ok_vectors_query(
    conn: Connection,
    model_id: int,
    roots: Sequence[int] | None = None,
    vectors: bool = True,
    id_range: tuple[int, int] | None = None,
) -> Select[Any]:
    columns = [embeddings.c.image_id, embeddings.c.vector][: 2 if vectors else 1]
    stmt = dialect.ok_vectors_select(conn, columns, model_id, roots)
    if id_range is not None:  # lo <= id < hi: one shard's share
        stmt = stmt.where(
            (embeddings.c.image_id >= id_range[0]) & (embeddings.c.image_id < id_range[1])
        )
    return stmt


def iter_ok_vectors(
    conn: Connection,
    model_id: int,
    dim: int,
    batch: int = 4096,
    roots: Sequence[int] | None = None,
    id_range: tuple[int, int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of the images the index must contain (only those under ``roots``, or
    with ``lo <= id < hi`` of ``id_range``, when given), ``batch`` at a time, by id: memory
    stays flat in the size of the library."""
    dialect.plan_for_all_rows(conn)
    query = _ok_vectors_query(conn, model_id, roots, id_range=id_range)
    rows = conn.execute(query.execution_options(yield_per=batch))
    for part in rows.partitions(batch):
        ids = np.fromiter((image_id for image_id, _ in part), dtype=np.int64, count=len(part))
        blob = b"".join(vector for _, vector in part)
        yield ids, np.frombuffer(blob, dtype=np.float32).reshape(len(part), dim)


def count_ok_vectors(conn: Connection, model_id: int, roots: Sequence[int] | None = None) -> int:
    """How many vectors the index must contain (under ``roots`` when given)."""
    stmt = (
        select(func.count())
        .select_from(embeddings.join(images, images.c.id == embeddings.c.image_id))
        .where(embeddings.c.model_id == model_id, images.c.status == ImageStatus.OK)
    )
    if roots is not None:
        stmt = stmt.where(images.c.root_id.in_(list(roots)))
    return conn.execute(stmt).scalar_one()


def ok_vectors(
    conn: Connection, model_id: int, dim: int, roots: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of every image the index must contain (status ok), ordered by id;
    with ``roots``, only the images under those roots."""
    count = count_ok_vectors(conn, model_id, roots)
    ids = np.empty(count, dtype=np.int64)
    matrix = np.empty((count, dim), dtype=np.float32)
    n = 0
    for part_ids, part in iter_ok_vectors(conn, model_id, dim, roots=roots):
        take = min(len(part_ids), count - n)
        ids[n : n + take] = part_ids[:take]
        matrix[n : n + take] = part[:take]
        n += take
    return ids[:n], matrix[:n]


def ok_ids(conn: Connection, model_id: int) -> np.ndarray:
    """Ids of every image the index must contain, ordered."""
    return dialect.int_column(conn, _ok_vectors_query(conn, model_id, vectors=False))


def vectors_of(
    conn: Connection, model_id: int, dim: int, image_ids: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Vectors of the given images, in the given order (each read straight into its row).

    Raises:
        KeyError: an image without a vector of this model.
    """
    image_ids = [int(i) for i in image_ids]
    row_of = {image_id: n for n, image_id in enumerate(image_ids)}
    if len(row_of) != len(image_ids):  # repeated ids: read each once, then repeat its row
        unique = list(row_of)
        got = vectors_of(conn, model_id, dim, unique)
        at = {image_id: n for n, image_id in enumerate(unique)}
        return got[[at[i] for i in image_ids]]
    out = np.empty((len(image_ids), dim), dtype=np.float32)
    seen = 0
    for chunk in chunked(image_ids):
        stmt = select(embeddings.c.image_id, embeddings.c.vector).where(
            embeddings.c.model_id == model_id, embeddings.c.image_id.in_(chunk)
        )
        for image_id, vector in conn.execute(stmt):
            out[row_of[image_id]] = np.frombuffer(vector, dtype=np.float32)
            seen += 1
    if seen != len(row_of):
        raise KeyError(f"{len(row_of) - seen} of the images have no vector of this model")
    return out


# -- index state -------------------------------------------------------------------------


def index_generation(conn: Connection) -> int:
    """The counter that every change to the set of indexed vectors bumps (by triggers)."""
    return conn.execute(select(state_t.c.generation).where(state_t.c.id == 1)).scalar_one()


def index_file(conn: Connection) -> IndexFileRecord | None:
    """The index file a folder library last recorded (None: none was written yet)."""
    row = conn.execute(select(state_t).where(state_t.c.id == 1)).one()
    if not row.file_sha256:
        return None
    return IndexFileRecord(
        row.file_generation,
        row.file_sha256,
        row.file_count,
        row.index_type,
        row.index_description,
        row.recall_at_10,
        row.file_quick,
        IndexGrowthRecord(**json.loads(row.file_growth)) if row.file_growth else None,
    )


def record_index_file(conn: Connection, file: IndexFileRecord) -> bool:
    """Record the file just written; False if the vectors changed meanwhile (file is stale)."""
    result = conn.execute(
        update(state_t)
        .where(state_t.c.id == 1, state_t.c.generation == file.generation)
        .values(
            file_generation=file.generation,
            file_sha256=file.sha256,
            file_count=file.count,
            index_type=file.kind,
            index_description=file.description,
            recall_at_10=file.recall_at_10,
            file_quick=file.quick,
            file_growth=None if file.growth is None else json.dumps(file.growth.to_dict()),
            built_at=now(),
        )
    )
    return result.rowcount == 1


def index_settings(conn: Connection) -> IndexSettingsRecord:
    """The index kind and memory budget the library asks for."""
    row = conn.execute(select(state_t.c.wanted_kind, state_t.c.memory_budget)).one()
    return IndexSettingsRecord(row.wanted_kind, row.memory_budget)


def set_index_settings(conn: Connection, settings: IndexSettingsRecord) -> None:
    conn.execute(
        update(state_t)
        .where(state_t.c.id == 1)
        .values(wanted_kind=settings.kind, memory_budget=settings.memory)
    )


# -- ingest runs -------------------------------------------------------------------------


def start_run(conn: Connection, pid: int) -> int:
    """Record a new run; runs left ``running`` by a process that died become interrupted
    (the caller holds the writer lock, so no other run is alive)."""
    t = ingest_runs_t
    conn.execute(
        update(t)
        .where(t.c.status == RunStatus.RUNNING)
        .values(status=RunStatus.INTERRUPTED, finished_at=now())
    )
    stmt = insert(t).values(started_at=now(), pid=pid, status=RunStatus.RUNNING)
    return new_id(conn.execute(stmt))


def run_progress(conn: Connection, run_id: int, summary: dict) -> None:
    """A running ingest's counts so far (written with each batch it commits)."""
    t = ingest_runs_t
    conn.execute(update(t).where(t.c.id == run_id).values(summary_json=json.dumps(summary)))


def finish_run(
    conn: Connection,
    run_id: int,
    status: RunStatus,
    summary: dict,
    device: str | None,
    precision: str | None,
    error: str | None = None,
) -> None:
    """Record how a run ended; ``error`` (why it failed) is kept beside its summary."""
    conn.execute(
        update(ingest_runs_t)
        .where(ingest_runs_t.c.id == run_id)
        .values(
            finished_at=now(),
            status=status,
            summary_json=json.dumps({**summary, _RUN_ERROR: error} if error else summary),
            device=device,
            precision=precision,
        )
    )


_RUN_ERROR = "error"  # the key of a failed run's reason in its summary_json (no column)


def last_run_id(conn: Connection) -> int:
    """The id of the latest ingest run (0: none yet): only ingests write vectors."""
    t = ingest_runs_t
    return conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one()


def last_run(conn: Connection) -> IngestRunRecord | None:
    """The latest ingest run: finished (whichever way), or running."""
    t = ingest_runs_t
    row = conn.execute(select(t).order_by(t.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    summary = json.loads(row.summary_json or "{}")
    error = summary.pop(_RUN_ERROR, None)
    return IngestRunRecord(
        row.id,
        row.started_at,
        row.finished_at,
        row.pid,
        RunStatus(row.status),
        row.device,
        row.precision,
        summary,
        error,
    )
