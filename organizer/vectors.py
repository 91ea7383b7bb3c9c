"""The FAISS index: a derived cache of the vectors stored in the database.

Vectors are L2-normalised, so inner product is cosine similarity; FAISS ids are image ids.
Small libraries get an exact flat index; past ``FLAT_MAX`` vectors an IVF index with
half-precision vectors (half the file, memory and checksum time) whose ``nprobe`` is
calibrated at build time until its recall@10 against exact search reaches ``TARGET_RECALL``
(the measured recall is recorded). bench/search.py measured the switch: at 100k vectors
the flat index answered in 55 ms, IVF in about 5 ms at 1M.

The file is written atomically (temp file, fsync, rename) and is only ever read after its
SHA-256 matches the checksum the database recorded for it, so a truncated, bit-flipped or
foreign file is never handed to FAISS: it is rebuilt from the database instead. faiss is
imported only by the code that needs it, so checking the file (status) stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine

from organizer.errors import LibraryError
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import IndexFileRecord

FLAT_MAX = 50_000
TARGET_RECALL = 0.97
_CALIBRATION_QUERIES = 200


Batch = tuple[np.ndarray, np.ndarray]  # (ids, vectors) of some images
_BATCH = 16_384


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _i64(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


def _pick_rows(
    batches: Iterable[Batch], count: int, dim: int, wanted: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The vectors (and ids) at the given row positions of a stream, in the order asked."""
    out = []
    for rows in wanted:
        out.append((np.empty((len(rows), dim), np.float32), np.empty(len(rows), np.int64)))
    orders = [np.argsort(rows) for rows in wanted]
    sorted_rows = [rows[order] for rows, order in zip(wanted, orders, strict=True)]
    offset = 0
    for ids, vectors in batches:
        end = offset + len(ids)
        for (vecs, picked_ids), rows, order in zip(out, sorted_rows, orders, strict=True):
            lo, hi = np.searchsorted(rows, [offset, end])
            take = order[lo:hi]
            vecs[take] = vectors[rows[lo:hi] - offset]
            picked_ids[take] = ids[rows[lo:hi] - offset]
        offset = end
    if offset != count:
        raise RuntimeError(f"internal error: the vectors changed while read ({offset} != {count})")
    return out


class _TopK:
    """Exact top-k (inner product) of a few queries over a stream of batches."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.empty((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        all_ids = np.concatenate(
            [self.ids, np.broadcast_to(ids, (len(self.queries), len(ids)))], axis=1
        )
        keep = min(self.k, scores.shape[1])
        best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        self.scores = np.take_along_axis(scores, best, axis=1)
        self.ids = np.take_along_axis(all_ids, best, axis=1)


@dataclass(frozen=True)
class Hits:
    """Search results for one query: image ids and cosine scores, best first."""

    ids: np.ndarray
    scores: np.ndarray


class VectorIndex:
    """Inner-product search over (image id, unit vector) pairs; flat (exact) or IVF."""

    def __init__(self, index, recall: float | None = None):
        self._index = index
        self.recall = recall

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, dim: int, kind: str = "auto"
    ) -> VectorIndex:
        """A new index holding ``vectors`` (N x dim float32, unit length) under ``ids``.

        ``kind`` is "flat", "ivf", or "auto" (flat up to FLAT_MAX vectors).
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def batches() -> Iterator[Batch]:
            for start in range(0, len(ids), _BATCH):
                yield ids[start : start + _BATCH], vectors[start : start + _BATCH]

        return cls.build_from(batches, len(ids), dim, kind)

    @classmethod
    def build_from(
        cls, batches: Callable[[], Iterable[Batch]], count: int, dim: int, kind: str = "auto"
    ) -> VectorIndex:
        """A new index from a stream of (ids, vectors) batches of ``count`` vectors in all.

        ``batches()`` is called once per pass (twice for IVF: a training sample and the
        calibration queries are drawn in the first, everything is added in the second), so
        memory holds the index being built and a training sample, never all the vectors.
        """
        import faiss

        if kind == "auto":
            kind = "flat" if count <= FLAT_MAX else "ivf"
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            for ids, vectors in batches():
                index.add_with_ids(_f32(vectors), _i64(ids))
            return cls(index, recall=1.0)
        # ~4 sqrt(N) lists, and at least the 39 training points per list faiss asks for.
        nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim),
            dim,
            nlist,
            faiss.ScalarQuantizer.QT_fp16,
            faiss.METRIC_INNER_PRODUCT,
        )
        rng = np.random.default_rng(0)
        train_rows = rng.choice(count, min(count, 40 * nlist), replace=False)
        query_rows = rng.choice(count, min(count, _CALIBRATION_QUERIES), replace=False)
        (train, _), (queries, _) = _pick_rows(batches(), count, dim, [train_rows, query_rows])
        index.train(train)
        del train
        exact = _TopK(queries, 10)
        for ids, vectors in batches():
            vectors = _f32(vectors)
            index.add_with_ids(vectors, _i64(ids))
            exact.update(_i64(ids), vectors)
        built = cls(index)
        built.recall = built._calibrate(queries, exact.ids)
        return built

    def _calibrate(self, queries: np.ndarray, truth: np.ndarray) -> float:
        """Raise nprobe until recall@10 against exact search reaches TARGET_RECALL."""
        import faiss

        ivf = faiss.extract_index_ivf(self._index)
        recall, nprobe = 0.0, 1
        while True:
            ivf.nprobe = nprobe
            _, found = self._index.search(queries, 10)
            recall = float(
                np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
            )
            if recall >= TARGET_RECALL or nprobe >= ivf.nlist:
                return recall
            nprobe = min(2 * nprobe, ivf.nlist)

    # -- reading ---------------------------------------------------------------------------

    def _ivf(self):
        import faiss

        try:
            return faiss.extract_index_ivf(self._index)
        except RuntimeError:
            return None

    @property
    def kind(self) -> str:
        return "flat" if self._ivf() is None else "ivf"

    def describe(self) -> str:
        ivf = self._ivf()
        if ivf is None:
            return "flat (exact)"
        recall = f", recall@10 {self.recall:.3f}" if self.recall is not None else ""
        return f"ivf-fp16 (nlist {ivf.nlist}, nprobe {ivf.nprobe}{recall})"

    @property
    def dim(self) -> int:
        return self._index.d

    def __len__(self) -> int:
        return self._index.ntotal

    def ids(self) -> np.ndarray:
        """All image ids in the index."""
        import faiss

        ivf = self._ivf()
        if ivf is None:
            return faiss.vector_to_array(self._index.id_map).astype(np.int64)
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if lists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """The ``k`` nearest ids for each query vector (fewer when the index is smaller)."""
        k = min(k, len(self))
        if k <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [Hits(i[i >= 0], s[i >= 0]) for s, i in zip(scores, ids, strict=True)]

    def within(self, queries: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, the ids and scores of every vector with similarity >= threshold."""
        if len(self) == 0:
            return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        lims, scores, ids = self._index.range_search(
            np.ascontiguousarray(queries, dtype=np.float32), float(threshold)
        )
        return [
            (ids[lims[i] : lims[i + 1]], scores[lims[i] : lims[i + 1]]) for i in range(len(queries))
        ]

    # -- changing --------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids) -> None:
        import faiss

        ids = np.asarray(sorted(ids), dtype=np.int64)
        if len(ids):
            self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def fits(self, size: int) -> bool:
        """Whether this kind of index still suits a library of ``size`` vectors."""
        ivf = self._ivf()
        if ivf is None:
            return size <= FLAT_MAX
        return size > FLAT_MAX // 2 and ivf.nlist >= int(2 * math.sqrt(size))


def file_sha256(path: Path) -> str | None:
    """SHA-256 of the index file, or None when it does not exist or cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def read_index(
    path: Path, expected_sha256: str, recall: float | None = None, mmap: bool = False
) -> VectorIndex | None:
    """Load the index file only if its content has the recorded checksum; else None.

    With ``mmap`` the file is mapped read-only (a one-off query then reads only what it
    probes); such an index cannot be changed.
    """
    import faiss

    if file_sha256(path) != expected_sha256:
        return None
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return VectorIndex(faiss.read_index(str(path), flags), recall)
    except RuntimeError:
        return None


def write_index(path: Path, index: VectorIndex) -> str:
    """Write the index atomically (temp file, fsync, rename, fsync folder); return its SHA-256.

    Raises:
        OSError: the folder is not writable or the disk is full; the old file is untouched.
    """
    import faiss

    fd, tmp = tempfile.mkstemp(prefix=".vectors-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            faiss.write_index(index._index, tmp)
        except RuntimeError as exc:  # faiss reports a full disk as a RuntimeError
            raise OSError(f"cannot write the vector index: {str(exc).splitlines()[0]}") from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
            fh.seek(0)
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return sha


# -- the cache, kept in step with the database ----------------------------------------------


@dataclass(frozen=True)
class IndexDelta:
    """What an ingest changed: ids whose vector it wrote, and the index generation it began at."""

    base_generation: int | None
    written: frozenset[int]


class DatabaseFileRecord:
    """A folder library: the index file's record lives in the database, beside the counter."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def read(self, conn: Connection) -> IndexFileRecord | None:
        return q.index_file(conn)

    def write(self, file: IndexFileRecord) -> bool:
        """Record the file; False when the vectors changed since it was built (it is stale)."""
        with write_transaction(self.engine) as conn:
            return q.record_index_file(conn, file)


class SidecarFileRecord:
    """A shared catalogue: each machine's cached file describes itself in a JSON file beside
    it, so that machines never invalidate each other's caches through the database."""

    def __init__(self, engine: Engine, path: Path):
        self.engine = engine
        self.path = path

    def read(self, conn: Connection | None = None) -> IndexFileRecord | None:
        try:
            return IndexFileRecord(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, file: IndexFileRecord) -> bool:
        with self.engine.connect() as conn:
            if q.index_generation(conn) != file.generation:
                return False
        fd, tmp = tempfile.mkstemp(prefix=".record-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(file.to_dict(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True


FileRecord = DatabaseFileRecord | SidecarFileRecord


class IndexCache:
    """The index file of one library, verified against and rebuilt from its database."""

    def __init__(
        self,
        engine: Engine,
        path: Path,
        record: FileRecord | None = None,
        may_write: Callable[[], AbstractContextManager[bool]] | None = None,
    ):
        """``record`` keeps what the file holds (default: in the database); ``may_write()`` is a
        context manager yielding whether this process may write the file now (readers must
        not rewrite it under a running ingest); default: always."""
        self.engine = engine
        self.path = path
        self.record = record or DatabaseFileRecord(engine)
        self.problem: str | None = None
        self.may_write = may_write or (lambda: contextlib.nullcontext(True))

    def _state(self) -> tuple[int, IndexFileRecord | None]:
        with self.engine.connect() as conn, conn.begin():
            return q.index_generation(conn), self.record.read(conn)

    def file(self) -> IndexFileRecord | None:
        """What the index file holds, as recorded when it was written (None: no file yet)."""
        return self._state()[1]

    def base_generation(self) -> int | None:
        """The generation the file is current at, if it is current now (writes start here)."""
        generation, file = self._state()
        return generation if file is not None and file.generation == generation else None

    def load(self) -> VectorIndex:
        """The index from its file when checksum and generation match the database, else
        rebuilt from the database (and saved when the folder is writable)."""
        generation, file = self._state()
        if file is not None and file.generation == generation:
            index = read_index(self.path, file.sha256, file.recall_at_10, mmap=True)
            if index is not None and len(index) == file.count:
                return index
        return self._rebuild()

    def in_sync(self) -> bool:
        generation, file = self._state()
        return (
            file is not None
            and file.generation == generation
            and file_sha256(self.path) == file.sha256
        )

    def refresh(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the file in step after writes: apply ``delta`` to the old file when it is
        exactly the state the writes started from, else rebuild from the database.

        Returns a warning when the file could not be written (it is rebuilt on next use).
        """
        self.problem = None
        if self.in_sync():
            return None
        index = self._apply(delta) if delta is not None else None
        if index is None:
            self._rebuild()
        return self.problem

    def _apply(self, delta: IndexDelta) -> VectorIndex | None:
        with self.engine.connect() as conn, conn.begin():
            file = self.record.read(conn)
            if file is None or file.generation != delta.base_generation:
                return None
            index = read_index(self.path, file.sha256, file.recall_at_10)
            if index is None:
                return None
            model = q.library_model(conn)
            db_ids = set(q.ok_ids(conn, model.id).tolist())
            have = set(index.ids().tolist())
            remove = (have - db_ids) | (delta.written & have)
            add = sorted((db_ids - have) | (delta.written & db_ids))
            if not index.fits(len(db_ids)):
                return None
            vectors = q.vectors_of(conn, model.id, model.dim, add)
            generation = q.index_generation(conn)
        index.remove(remove)
        index.add(np.asarray(add, dtype=np.int64), vectors)
        if len(index) != len(db_ids):
            return None
        self._save(index, generation)
        return index

    def _rebuild(self) -> VectorIndex:
        """Build from the database, streaming its vectors in one read transaction (one
        snapshot for every pass), so memory holds the index, not the vectors too."""
        with self.engine.connect() as conn, conn.begin():
            generation = q.index_generation(conn)
            model = q.library_model(conn)
            if model is None:
                return VectorIndex.build(np.empty(0, np.int64), np.empty((0, 1), np.float32), 1)
            index = VectorIndex.build_from(
                lambda: q.iter_ok_vectors(conn, model.id, model.dim),
                q.count_ok_vectors(conn, model.id),
                model.dim,
            )
        self._save(index, generation)
        return index

    def _save(self, index: VectorIndex, generation: int) -> None:
        try:
            with self.may_write() as allowed:
                if not allowed:
                    return
                sha = write_index(self.path, index)
                self.record.write(
                    IndexFileRecord(
                        generation, sha, len(index), index.kind, index.describe(), index.recall
                    )
                )
        except (OSError, LibraryError) as exc:
            # Read-only folder or full disk: the index serves from memory this time, and the
            # record still says the file is stale, so it is rebuilt on next use.
            reason = getattr(exc, "strerror", None) or str(exc)
            self.problem = (
                f"the vector index could not be saved ({reason}); it will be rebuilt on next use"
            )
