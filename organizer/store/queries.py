"""Named queries over a library database. Each takes a SQLAlchemy Connection inside the
caller's transaction; none commits. Core statements, because ingest moves many rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, update

from organizer.embed import ModelSpec
from organizer.store.models import Embedding, Image, IndexState, IngestRun, Model, Root

images = Image.__table__
embeddings = Embedding.__table__
roots_t = Root.__table__
models_t = Model.__table__
runs_t = IngestRun.__table__
state_t = IndexState.__table__

OK, FAILED, MISSING = "ok", "failed", "missing"


def now() -> datetime:
    """UTC now, naive (SQLite stores no zone); every timestamp in the database is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class KnownImage:
    """The part of an image row that ingest compares against a scan."""

    id: int
    relpath: bytes
    size: int
    mtime_ns: int
    status: str
    content_hash: str | None


@dataclass(frozen=True)
class LibraryModel:
    id: int
    spec: ModelSpec
    dim: int


# -- model -------------------------------------------------------------------------------


def library_model(conn: Connection) -> LibraryModel | None:
    """The model this library's vectors were made with (the first one recorded), if any."""
    row = conn.execute(select(models_t).order_by(models_t.c.id).limit(1)).first()
    if row is None:
        return None
    spec = ModelSpec(row.name, row.pretrained, row.weights_sha256, row.config_json)
    return LibraryModel(row.id, spec, row.dim)


def insert_model(conn: Connection, spec: ModelSpec, dim: int) -> int:
    values = dict(
        name=spec.name,
        pretrained=spec.pretrained,
        weights_sha256=spec.weights_sha256,
        config_json=spec.config_json,
        dim=dim,
        created_at=now(),
    )
    return conn.execute(insert(models_t).values(**values)).inserted_primary_key[0]


# -- roots -------------------------------------------------------------------------------


def all_roots(conn: Connection) -> dict[int, str]:
    """Root id -> absolute path."""
    return dict(conn.execute(select(roots_t.c.id, roots_t.c.path).order_by(roots_t.c.id)).all())


def add_root(conn: Connection, path: str) -> int:
    stmt = insert(roots_t).values(path=path, added_at=now())
    return conn.execute(stmt).inserted_primary_key[0]


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


def touch_root(conn: Connection, root_id: int) -> None:
    conn.execute(update(roots_t).where(roots_t.c.id == root_id).values(last_scan_at=now()))


# -- images ------------------------------------------------------------------------------


def known_images(conn: Connection, root_id: int, prefix: bytes = b"") -> dict[bytes, KnownImage]:
    """Images recorded under a root (optionally only under the subfolder ``prefix``)."""
    stmt = select(
        images.c.id,
        images.c.relpath,
        images.c.size,
        images.c.mtime_ns,
        images.c.status,
        images.c.content_hash,
    ).where(images.c.root_id == root_id)
    if prefix:
        stmt = stmt.where(func.substr(images.c.relpath, 1, len(prefix) + 1) == prefix + b"/")
    return {row.relpath: KnownImage(*row) for row in conn.execute(stmt)}


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
    return conn.execute(insert(images).values(**values)).inserted_primary_key[0]


def update_image(conn: Connection, image_id: int, **values: object) -> None:
    conn.execute(update(images).where(images.c.id == image_id).values(updated_at=now(), **values))


def image_row(conn: Connection, image_id: int):
    return conn.execute(select(images).where(images.c.id == image_id)).one()


def delete_images(conn: Connection, image_ids: list[int]) -> None:
    for start in range(0, len(image_ids), 500):
        conn.execute(delete(images).where(images.c.id.in_(image_ids[start : start + 500])))


def mark_missing(conn: Connection, image_ids: list[int]) -> None:
    stamp = now()
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start : start + 500]
        conn.execute(
            update(images).where(images.c.id.in_(chunk)).values(status=MISSING, updated_at=stamp)
        )


@dataclass(frozen=True)
class ImageInfoRow:
    """What results show about an image."""

    id: int
    root: str
    relpath: bytes
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    captured_at: datetime | None
    status: str
    content_hash: str | None


def describe_images(conn: Connection, image_ids: list[int]) -> dict[int, ImageInfoRow]:
    """Display metadata of the given images (any status)."""
    out: dict[int, ImageInfoRow] = {}
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start : start + 500]
        stmt = (
            select(
                images.c.id,
                roots_t.c.path,
                images.c.relpath,
                images.c.size,
                images.c.mtime_ns,
                images.c.width,
                images.c.height,
                images.c.captured_at,
                images.c.status,
                images.c.content_hash,
            )
            .join(roots_t, roots_t.c.id == images.c.root_id)
            .where(images.c.id.in_(chunk))
        )
        out.update({row.id: ImageInfoRow(*row) for row in conn.execute(stmt)})
    return out


def find_image(conn: Connection, root_id: int, relpath: bytes):
    """The image row at a path, or None."""
    stmt = select(images).where(images.c.root_id == root_id, images.c.relpath == relpath)
    return conn.execute(stmt).first()


def status_counts(conn: Connection) -> dict[str, int]:
    counts = {OK: 0, FAILED: 0, MISSING: 0}
    stmt = select(images.c.status, func.count()).group_by(images.c.status)
    counts.update(dict(conn.execute(stmt).all()))
    return counts


@dataclass(frozen=True)
class Failure:
    root: str
    relpath: bytes
    reason: str
    updated_at: datetime


def failures(conn: Connection) -> list[Failure]:
    stmt = (
        select(roots_t.c.path, images.c.relpath, images.c.failure_reason, images.c.updated_at)
        .join(roots_t, roots_t.c.id == images.c.root_id)
        .where(images.c.status == FAILED)
        .order_by(roots_t.c.path, images.c.relpath)
    )
    return [Failure(*row) for row in conn.execute(stmt)]


# -- vectors -----------------------------------------------------------------------------


def put_vector(conn: Connection, image_id: int, model_id: int, vector: np.ndarray) -> None:
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    stmt = sqlite_insert(embeddings).values(
        image_id=image_id, model_id=model_id, vector=blob, created_at=now()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["image_id", "model_id"],
        set_={"vector": stmt.excluded.vector, "created_at": stmt.excluded.created_at},
    )
    conn.execute(stmt)


def get_vector(conn: Connection, image_id: int, model_id: int) -> np.ndarray | None:
    stmt = select(embeddings.c.vector).where(
        embeddings.c.image_id == image_id, embeddings.c.model_id == model_id
    )
    blob = conn.execute(stmt).scalar()
    return None if blob is None else np.frombuffer(blob, dtype=np.float32)


def delete_vector(conn: Connection, image_id: int) -> None:
    conn.execute(delete(embeddings).where(embeddings.c.image_id == image_id))


def ok_vectors(conn: Connection, model_id: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of every image the index must contain (status ok), ordered by id."""
    stmt = (
        select(embeddings.c.image_id, embeddings.c.vector)
        .join(images, images.c.id == embeddings.c.image_id)
        .where(embeddings.c.model_id == model_id, images.c.status == OK)
        .order_by(embeddings.c.image_id)
    )
    count = conn.execute(
        select(func.count())
        .select_from(embeddings.join(images, images.c.id == embeddings.c.image_id))
        .where(embeddings.c.model_id == model_id, images.c.status == OK)
    ).scalar()
    ids = np.empty(count, dtype=np.int64)
    matrix = np.empty((count, dim), dtype=np.float32)
    n = 0
    for image_id, blob in conn.execute(stmt.execution_options(yield_per=10_000)):  # streamed
        if n == count:
            break
        ids[n] = image_id
        matrix[n] = np.frombuffer(blob, dtype=np.float32)
        n += 1
    return ids[:n], matrix[:n]


def ok_ids(conn: Connection, model_id: int) -> np.ndarray:
    """Ids of every image the index must contain, ordered."""
    stmt = (
        select(embeddings.c.image_id)
        .join(images, images.c.id == embeddings.c.image_id)
        .where(embeddings.c.model_id == model_id, images.c.status == OK)
        .order_by(embeddings.c.image_id)
    )
    return np.fromiter(conn.execute(stmt).scalars(), dtype=np.int64)


def vectors_of(conn: Connection, model_id: int, dim: int, image_ids: list[int]) -> np.ndarray:
    """Vectors of the given images, in the given order."""
    found: dict[int, bytes] = {}
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start : start + 500]
        stmt = select(embeddings.c.image_id, embeddings.c.vector).where(
            embeddings.c.model_id == model_id, embeddings.c.image_id.in_(chunk)
        )
        found.update(conn.execute(stmt).all())
    blob = b"".join(found[i] for i in image_ids)
    return np.frombuffer(blob, dtype=np.float32).reshape(len(image_ids), dim)


# -- index state -------------------------------------------------------------------------


def index_state(conn: Connection) -> IndexState:
    row = conn.execute(select(state_t).where(state_t.c.id == 1)).one()
    return IndexState(**row._asdict())


def record_index_file(
    conn: Connection,
    generation: int,
    sha256: str,
    count: int,
    kind: str,
    description: str,
    recall: float | None,
) -> bool:
    """Record the file just written; False if the vectors changed meanwhile (file is stale)."""
    result = conn.execute(
        update(state_t)
        .where(state_t.c.id == 1, state_t.c.generation == generation)
        .values(
            file_generation=generation,
            file_sha256=sha256,
            file_count=count,
            index_type=kind,
            index_description=description,
            recall_at_10=recall,
            built_at=now(),
        )
    )
    return result.rowcount == 1


# -- ingest runs -------------------------------------------------------------------------


def start_run(conn: Connection, pid: int) -> int:
    stmt = insert(runs_t).values(started_at=now(), pid=pid, status="running")
    return conn.execute(stmt).inserted_primary_key[0]


def finish_run(
    conn: Connection,
    run_id: int,
    status: str,
    summary: dict,
    device: str | None,
    precision: str | None,
) -> None:
    conn.execute(
        update(runs_t)
        .where(runs_t.c.id == run_id)
        .values(
            finished_at=now(),
            status=status,
            summary_json=json.dumps(summary),
            device=device,
            precision=precision,
        )
    )


def last_run(conn: Connection) -> IngestRun | None:
    row = conn.execute(
        select(runs_t)
        .where(runs_t.c.finished_at.is_not(None))
        .order_by(runs_t.c.id.desc())
        .limit(1)
    ).first()
    return None if row is None else IngestRun(**row._asdict())
