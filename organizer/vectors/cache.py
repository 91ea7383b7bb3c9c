"""The index files of a library, kept in step with its database (the truth).

The files are trusted only when the generation they were built at is the database's now and
their quick fingerprint matches (see organizer.vectors.files); otherwise the index is
rebuilt from the database's vectors, streamed, never re-embedded.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine

from organizer.errors import IndexPlanError, LibraryError
from organizer.filelock import FileLock
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import IndexFileRecord, IndexGrowthRecord, IndexSettingsRecord
from organizer.vectors.files import (
    file_sha256,
    files_size,
    growth_whole,
    index_files,
    matches,
    read_index,
    remove_leftovers,
    write_index,
    write_json,
)
from organizer.vectors.grown import Change, Rebuild, grow, imbalance, sweep
from organizer.vectors.index import VectorIndex
from organizer.vectors.kinds import IndexPlan, plan


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
            return IndexFileRecord.from_dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def write(self, file: IndexFileRecord) -> bool:
        with self.engine.connect() as conn:
            if q.index_generation(conn) != file.generation:
                return False
        write_json(self.path, file.to_dict())
        return True


FileRecord = DatabaseFileRecord | SidecarFileRecord


@dataclass(frozen=True)
class IndexBuild:
    """What ``organizer index build`` made."""

    kind: str
    description: str
    count: int
    recall_at_10: float | None
    build_s: float
    ram_mb: float  # the index structure held in memory (the memory-mapped vectors aside)
    file_mb: float  # every file on disk, re-rank vectors included
    note: str | None = None  # why the kind built is not the kind asked

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "description": self.description,
            "count": self.count,
            "recall_at_10": self.recall_at_10,
            "build_s": round(self.build_s, 3),
            "ram_mb": round(self.ram_mb, 1),
            "file_mb": round(self.file_mb, 1),
            "note": self.note,
        }

    @classmethod
    def of(
        cls, index: VectorIndex, path: Path, started: float, note: str | None = None
    ) -> IndexBuild:
        """What building ``index`` (saved at ``path``) since ``started`` made."""
        return cls(
            index.kind,
            index.describe(),
            len(index),
            index.recall,
            time.perf_counter() - started,
            (path.stat().st_size if path.exists() else 0) / 1e6,
            files_size(path, index.rerank is not None) / 1e6,
            note,
        )


class IndexCache:
    """The index files of one library, verified against and rebuilt from its database."""

    def __init__(
        self,
        engine: Engine,
        path: Path,
        record: FileRecord | None = None,
        may_write: Callable[[], AbstractContextManager[bool]] | None = None,
    ):
        """``record`` keeps what the files hold (default: in the database); ``may_write()`` is
        a context manager yielding whether this process may write the files now (readers must
        not rewrite them under a running ingest); default: always."""
        self.engine = engine
        self.path = path
        self.record = record or DatabaseFileRecord(engine)
        self.problem: str | None = None
        self.rebuild_because: str | None = None  # why an update chose to rebuild instead
        self.may_write = may_write or (lambda: contextlib.nullcontext(True))

    @contextlib.contextmanager
    def _files_lock(self, exclusive: bool) -> Iterator[None]:
        """Serialise replacing and updating the files between this machine's processes (a
        server library lets any of them save its cache); readers take it shared to open."""
        lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        try:
            lock.acquire(shared=not exclusive)
        except OSError:  # a read-only folder: nobody can change the files there either
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def _state(self) -> tuple[int, IndexFileRecord | None]:
        with self.engine.connect() as conn, conn.begin():
            return q.index_generation(conn), self.record.read(conn)

    def generation(self) -> int:
        """The database's index generation now: it moves whenever the vectors change."""
        with self.engine.connect() as conn:
            return q.index_generation(conn)

    def file(self) -> IndexFileRecord | None:
        """What the index files hold, as recorded when written (None: no file yet)."""
        return self._state()[1]

    def base_generation(self) -> int | None:
        """The generation the files are current at, if current now (writes start here)."""
        generation, file = self._state()
        return generation if file is not None and file.generation == generation else None

    def load(self) -> VectorIndex:
        """The index from its files when they match the database, else rebuilt from the
        database (and saved when the folder is writable)."""
        with self._files_lock(exclusive=False):  # an update sweeps the files it replaced
            generation, file = self._state()
            if file is not None and file.generation == generation:
                index = read_index(self.path, file, mmap=True)
                if index is not None:
                    return index
        self.rebuild_because = None
        return self._rebuild()

    def in_sync(self) -> bool:
        """Whether the files hold the database's vectors now, by the recorded generation and
        quick fingerprint."""
        generation, file = self._state()
        return file is not None and file.generation == generation and matches(self.path, file)

    def verify(self) -> bool:
        """Whether files that pass the quick check are also whole: their full checksum and,
        for re-ranked indexes, every stored vector against the database's. Damaged files
        are removed (when this process may write them) so that next use rebuilds them.

        Returns False only for damage; stale or missing files are not damage."""
        with self._files_lock(exclusive=False):  # an update would sweep what it opens
            generation, file = self._state()
            if file is None or file.generation != generation or not matches(self.path, file):
                return True
            whole = file_sha256(self.path) == file.sha256 and growth_whole(self.path, file.growth)
            index = read_index(self.path, file, mmap=True) if file.kind == "ivf-pq" else None
        # The re-rank vectors are compared outside the lock (minutes at millions, and an
        # ingest's update waits for it); what is mapped stays readable if swept meanwhile.
        if whole and (file.kind != "ivf-pq" or self._rerank_matches(index)):
            return True
        with contextlib.suppress(OSError), self.may_write() as allowed:
            if allowed:
                with self._files_lock(exclusive=True):
                    if self._state()[1] != file:  # replaced meanwhile: not what was checked
                        return True
                    for part in index_files(self.path, reranked=True):
                        part.unlink(missing_ok=True)
                    sweep(self.path, keep=())
        return False

    def _rerank_matches(self, index: VectorIndex | None) -> bool:
        """Every stored re-rank vector of ``index`` (opened) equals the database's."""
        if index is None:
            return False
        with self.engine.connect() as conn, conn.begin():
            model = q.library_model(conn)
            assert model is not None  # an index file exists only for a library with vectors
            for ids, vectors in q.iter_ok_vectors(conn, model.id, model.dim, batch=16_384):
                found, stored = index.stored(ids)
                if not found.all() or not np.array_equal(stored, vectors.astype(np.float16)):
                    return False
        return True

    def refresh(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the files in step after writes: apply ``delta`` to the old index when it is
        exactly the state the writes started from, else rebuild from the database.

        Returns a warning when the files could not be written (rebuilt on next use).
        """
        self.problem = self.rebuild_because = None
        if self.in_sync():
            return None
        index = self._apply(delta if delta is not None else self._no_ingest_since())
        if index is None:
            self._rebuild()
        return self.problem

    def _no_ingest_since(self) -> IndexDelta:
        """The change since the files were written when the caller knows of no vectors
        written (a root removed, images cleaned away): none, provided no ingest has run since
        (only an ingest embeds; one killed before it brought the index in step would have
        left vectors it rewrote unknown)."""
        with self.engine.connect() as conn, conn.begin():
            file = self.record.read(conn)
            runs = q.last_run_id(conn)
        known = file is not None and file.growth is not None and file.growth.runs == runs
        return IndexDelta(file.generation if known and file else None, frozenset())

    def _apply(self, delta: IndexDelta) -> VectorIndex | None:
        with self._files_lock(exclusive=True):
            try:
                return self._apply_locked(delta)
            except OSError as exc:  # a full disk while the re-rank files grow: rebuild
                self.problem = f"the vector index could not be updated ({exc.strerror or exc})"
                return None

    def _apply_locked(self, delta: IndexDelta) -> VectorIndex | None:
        """Grow the index by the writes of ``delta`` (see organizer.vectors.grown); None
        when it must be rebuilt instead (``self.rebuild_because`` says why, if it is
        news to the user)."""
        with self.engine.connect() as conn, conn.begin():
            file = self.record.read(conn)
            if file is None or delta.base_generation is None:
                return None
            if file.generation != delta.base_generation:
                return None
            with self.may_write() as allowed:
                if not allowed:
                    return None
            index = read_index(self.path, file, mmap=True)
            if index is None:
                return None
            if file.growth is None or (index.nlist and index.calibration is None):
                self.rebuild_because = "the index was built before indexes grew in place"
                return None
            model = q.library_model(conn)
            assert model is not None  # an index file exists only for a library with vectors
            db_ids = q.ok_ids(conn, model.id)  # sorted; numpy, not sets: 10M ids are 80 MB
            change = _change(conn, model.id, model.dim, db_ids, np.sort(index.ids()), delta)
            wanted = self._plan(conn, len(db_ids), model.dim)
            if not index.fits(len(db_ids), wanted):
                self.rebuild_because = (
                    f"{len(db_ids):,} images call for {wanted.kind} with {wanted.nlist:,} "
                    f"lists, not the {index.kind} with {index.nlist:,} built"
                )
                return None
            generation = q.index_generation(conn)
            runs = q.last_run_id(conn)
        try:
            made = grow(self.path, index, file.growth, generation, change)
        except Rebuild as why:
            self.rebuild_because = str(why)
            return None
        except (RuntimeError, ValueError, MemoryError):  # the rebuild is the safe way
            return None
        if len(made.index) != len(db_ids):  # never seen: the rebuild is the safe way
            for path in made.written:
                path.unlink(missing_ok=True)
            return None
        record = made.record(file, generation, runs)
        if not self._record(record):
            for path in made.written:
                path.unlink(missing_ok=True)
            return None
        sweep(self.path, keep=made.growth.files)
        return made.index

    def _record(self, record: IndexFileRecord) -> bool:
        """Name the files in the record, when this process may write them."""
        with self.may_write() as allowed:
            return allowed and self.record.write(record)

    def _plan(self, conn: Connection, count: int, dim: int) -> IndexPlan:
        """The index the library asks for at ``count`` vectors; when its budget no longer
        fits, auto without a budget (and a warning), so that an ingest never fails here."""
        wanted = q.index_settings(conn)
        try:
            return plan(count, dim, wanted.kind or "auto", wanted.memory)
        except IndexPlanError as exc:
            self.problem = f"{exc}; built the automatic kind instead"
            return plan(count, dim, "auto", None)

    def build(self, settings: IndexSettingsRecord | None = None) -> IndexBuild:
        """Rebuild now (with ``settings``, which are kept for later rebuilds), and report.

        Raises:
            IndexPlanError: the settings cannot be built for this library.
        """
        started = time.perf_counter()
        if settings is not None:
            with self.engine.connect() as conn:
                model = q.library_model(conn)
                count = q.count_ok_vectors(conn, model.id) if model else 0
            if model is not None:
                plan(count, model.dim, settings.kind or "auto", settings.memory)  # may raise
            with write_transaction(self.engine) as conn:
                q.set_index_settings(conn, settings)
        self.problem = self.rebuild_because = None
        index = self._rebuild()
        if self.problem is not None:
            raise LibraryError(self.problem)
        note = None
        if settings is not None and settings.kind not in (None, index.kind):
            note = (
                f"{len(index):,} images are too few for {settings.kind}: built {index.kind}; "
                f"rebuilds after later ingests make {settings.kind} once there are enough"
            )
        return IndexBuild.of(index, self.path, started, note)

    def adopt(self, index: VectorIndex, generation: int) -> bool:
        """Install ``index``, built elsewhere from the vectors of ``generation`` (merged
        shards), as the files; False (nothing written) when the database has moved on.

        Raises:
            OSError: the folder is not writable or the disk is full.
        """
        with self._files_lock(exclusive=True):
            if self._state()[0] != generation:
                return False
            self.rebuild_because = None
            self._write(index, generation)
        return self.in_sync()

    def _rebuild(self) -> VectorIndex:
        """Build from the database, streaming its vectors in one read transaction (one
        snapshot for every pass), so memory holds the index, not the vectors too."""
        with self.engine.connect() as conn, conn.begin():
            generation = q.index_generation(conn)
            model = q.library_model(conn)
            if model is None:
                return VectorIndex.build(np.empty(0, np.int64), np.empty((0, 1), np.float32), 1)
            count = q.count_ok_vectors(conn, model.id)
            chosen = self._plan(conn, count, model.dim)

            ids: list[np.ndarray] = []  # the ok ids in stream order, read when first needed

            def rows_at(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                # The training sample and calibration queries by id lookups, instead of a
                # pass over every vector (at 1M: 2 GB read twice, then once).
                if not ids:
                    ids.append(q.ok_ids(conn, model.id))
                    if len(ids[0]) != count:
                        raise RuntimeError("internal error: the vectors changed while read")
                picked = ids[0][positions]
                return q.vectors_of(conn, model.id, model.dim, picked), picked

            def build(workdir: Path | None) -> VectorIndex:
                return VectorIndex.build_from(
                    lambda: q.iter_ok_vectors(conn, model.id, model.dim, batch=4096),
                    count,
                    model.dim,
                    chosen,
                    workdir,
                    rows_at,
                )

            try:
                index = build(self.path.parent if os.access(self.path.parent, os.W_OK) else None)
            except OSError as exc:
                if not chosen.reranked:
                    raise
                # The folder is full: build the re-rank vectors in the temporary folder.
                self.problem = f"the vector index could not be saved ({exc.strerror or exc})"
                try:
                    index = build(None)
                except OSError as again:
                    raise LibraryError(
                        f"cannot build the vector index: {again.strerror or again}"
                    ) from None
        self._save(index, generation)
        return index

    def _save(self, index: VectorIndex, generation: int, locked: bool = False) -> None:
        try:
            with self.may_write() as allowed:
                if not allowed:
                    return
                with contextlib.nullcontext() if locked else self._files_lock(exclusive=True):
                    self._write(index, generation)
        except (OSError, LibraryError) as exc:
            # Read-only folder or full disk: the index serves from memory this time, and the
            # record still says the files are stale, so they are rebuilt on next use.
            reason = getattr(exc, "strerror", None) or str(exc)
            self.problem = (
                f"the vector index could not be saved ({reason}); it will be rebuilt on next use"
            )

    def _write(self, index: VectorIndex, generation: int) -> None:
        remove_leftovers(self.path.parent)
        sha, quick = write_index(self.path, index)
        with self.engine.connect() as conn:
            runs = q.last_run_id(conn)
        growth = IndexGrowthRecord(
            built_imbalance=imbalance(index),
            built_recall=index.recall,
            rebuilt_because=self.rebuild_because,
            runs=runs,
        )
        self.record.write(
            IndexFileRecord(
                generation,
                sha,
                len(index),
                index.kind,
                index.describe(),
                index.recall,
                quick,
                growth,
            )
        )
        sweep(self.path, keep=())  # the updates of the index it replaced


def _change(
    conn: Connection,
    model_id: int,
    dim: int,
    db_ids: np.ndarray,
    have: np.ndarray,
    delta: IndexDelta,
) -> Change:
    """What an update brings to an index holding ``have`` (sorted) for a database holding
    ``db_ids`` (sorted), ``delta.written`` re-embedded meanwhile."""
    written = np.fromiter(sorted(delta.written), np.int64, len(delta.written))
    removed = np.union1d(
        np.setdiff1d(have, db_ids, assume_unique=True),
        np.intersect1d(written, have, assume_unique=True),
    )
    added = np.union1d(
        np.setdiff1d(db_ids, have, assume_unique=True),
        np.intersect1d(written, db_ids, assume_unique=True),
    )
    vectors = q.vectors_of(conn, model_id, dim, added.tolist())
    return Change(removed, added, np.asarray(vectors, np.float32).reshape(len(added), dim))
