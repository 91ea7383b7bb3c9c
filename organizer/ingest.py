"""Ingest: diff a scan against the store, decode and embed what is new, write it in batches.

The run is crash-safe by construction: every batch is one transaction holding image rows
and their vectors together, so after a kill the next run sees committed files as unchanged
and redoes only the rest. Files that vanished are marked missing only at the end, and only
where the walk actually looked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from organizer.embed import Embedder
from organizer.errors import Interrupted, ModelError
from organizer.pipeline import Job, Prepared, default_workers, prepare_all, prepare_parallel
from organizer.scan import ScanResult, scan_root
from organizer.store import queries as q
from organizer.store.db import write_transaction


@dataclass
class Target:
    """A folder to walk: an existing root (``root_id``) or a new one, maybe only a subfolder."""

    root_path: str
    root_id: int | None = None
    prefix: bytes = b""
    absorb: list[tuple[int, bytes]] = field(default_factory=list)
    scan: ScanResult | None = None


@dataclass
class IngestSummary:
    """What a run did, by file. ``embedded`` counts model passes, ``reused`` copied vectors."""

    new: int = 0
    changed: int = 0
    moved: int = 0
    unchanged: int = 0
    missing: int = 0
    failed: int = 0
    embedded: int = 0
    reused: int = 0
    elapsed_s: float = 0.0
    model_load_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    device: str | None = None
    precision: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["model_load_s"] = round(self.model_load_s, 3)
        return data

    @property
    def images_per_s(self) -> float:
        """Embedding throughput, model loading excluded."""
        busy = self.elapsed_s - self.model_load_s
        return self.embedded / busy if self.embedded and busy > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    """Reported after every file: ``done`` of ``total`` files to read, ``embedded`` so far."""

    done: int
    total: int
    embedded: int


@dataclass
class _Work:
    target: Target
    relpath: bytes
    size: int
    mtime_ns: int
    known: q.KnownImage | None


@dataclass
class _Plan:
    work: list[_Work] = field(default_factory=list)
    unchanged: int = 0
    restore: list[int] = field(default_factory=list)
    vanished: dict[int, q.KnownImage] = field(default_factory=dict)
    broken: list[tuple[Target, bytes, str, q.KnownImage | None]] = field(default_factory=list)


EmbedderProvider = Callable[[], Embedder]


@dataclass(frozen=True)
class IngestOptions:
    """How a run behaves (the what-to-ingest is the list of targets)."""

    batch_size: int | None = None  # None: the settings' batch size, else 32
    workers: int | None = None  # decode processes; None = automatic, 0 = in this process
    retry_failed: bool = False
    follow_symlinks: bool = False
    exclude: tuple[Path, ...] = ()


def plan(engine: Engine, targets: list[Target], retry_failed: bool) -> _Plan:
    """Compare each target's scan with the images recorded under it (reads only)."""
    result = _Plan()
    with engine.connect() as conn:
        for target in targets:
            known = _known_for(conn, target)
            seen = set()
            for entry in target.scan.files:
                seen.add(entry.relpath)
                k = known.get(entry.relpath)
                same_stat = k is not None and (k.size, k.mtime_ns) == (entry.size, entry.mtime_ns)
                if same_stat and k.status == q.OK:
                    result.unchanged += 1
                elif same_stat and k.status == q.MISSING and k.content_hash:
                    result.restore.append(k.id)
                elif same_stat and k.status == q.FAILED and not retry_failed:
                    result.unchanged += 1
                else:
                    result.work.append(_Work(target, entry.relpath, entry.size, entry.mtime_ns, k))
            listed = set(target.scan.unlisted_dirs)
            broken = {p.relpath: p.reason for p in target.scan.problems if p.relpath not in listed}
            for relpath, k in known.items():
                if relpath in seen or relpath in broken:
                    continue
                if target.scan.covers(relpath, target.prefix) and k.status != q.MISSING:
                    result.vanished[k.id] = k
            for relpath, reason in broken.items():
                k = known.get(relpath)
                if k is not None and k.status == q.FAILED:
                    result.unchanged += 1
                else:
                    result.broken.append((target, relpath, reason, k))
    return result


def _known_for(conn, target: Target) -> dict[bytes, q.KnownImage]:
    known = q.known_images(conn, target.root_id, target.prefix) if target.root_id else {}
    for child_id, child_prefix in target.absorb:
        for relpath, k in q.known_images(conn, child_id).items():
            joined = child_prefix + b"/" + relpath
            known[joined] = q.KnownImage(k.id, joined, k.size, k.mtime_ns, k.status, k.content_hash)
    return known


class IngestRun:
    """One ingest over some targets. Construct, then call :meth:`run`."""

    def __init__(
        self,
        engine: Engine,
        get_embedder: EmbedderProvider,
        model_id: int | None,
        options: IngestOptions = IngestOptions(),
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ):
        self.engine = engine
        self.get_embedder = get_embedder
        self.model_id = model_id
        self.options = options
        self.progress = progress
        self.cancel = cancel
        self.summary = IngestSummary()
        self._embedder: Embedder | None = None
        self._ops: list[tuple] = []
        self._batch: list[tuple[_Work, Prepared]] = []
        self._pending_hashes: dict[str, list[_Work]] = {}
        # content hash -> an image whose stored vector has that content, for copies; a vector
        # about to be replaced or removed moves to _orphans first (with its image's info)
        self._hash_to_id: dict[str, int] = {}
        self._orphans: dict[str, tuple] = {}
        self._vanished_by_hash: dict[str, q.KnownImage] = {}
        self._vanished: dict[int, q.KnownImage] = {}
        self._written: set[int] = set()
        self._base_generation: int | None = None

    # -- orchestration -------------------------------------------------------------------

    def run(self, targets: list[Target]) -> IngestSummary:
        started = time.perf_counter()
        with self.engine.connect() as conn:
            state = q.index_state(conn)
            if state.file_generation == state.generation:
                self._base_generation = state.generation
        for target in targets:
            target.scan = scan_root(
                Path(target.root_path),
                start=target.prefix,
                exclude=self.options.exclude,
                follow_symlinks=self.options.follow_symlinks,
            )
            self.summary.problems += [
                f"{target.root_path}/{os.fsdecode(p.relpath)}: {p.reason}"
                for p in target.scan.problems
                if p.relpath in target.scan.unlisted_dirs
            ]
        the_plan = plan(self.engine, targets, self.options.retry_failed)
        self._vanished = the_plan.vanished  # what is left of it at the end goes missing
        self.summary.unchanged = the_plan.unchanged
        if the_plan.work:
            self._load_model()  # before any write: unreachable weights leave the library as it was
        self._ensure_targets(targets)
        if the_plan.work:
            self._process(the_plan)
        self._finish(the_plan, targets)
        self.summary.elapsed_s = time.perf_counter() - started
        return self.summary

    def index_delta(self):
        """What this run changed, for updating the index file instead of rebuilding it."""
        from organizer.vectors import IndexDelta

        return IndexDelta(self._base_generation, frozenset(self._written))

    def _load_model(self) -> None:
        started = time.perf_counter()
        self._embedder = self.get_embedder()
        self.summary.model_load_s = time.perf_counter() - started
        if self.model_id is not None:
            with self.engine.connect() as conn:
                recorded = q.library_model(conn)
            if recorded.dim != self._embedder.dim:
                raise ModelError(
                    f"the model gives {self._embedder.dim}-d vectors but this library holds "
                    f"{recorded.dim}-d vectors of {recorded.spec.describe()}"
                )
        self.summary.device = self._embedder.device
        self.summary.precision = self._embedder.precision

    def _write(self):
        return write_transaction(self.engine)

    def _ensure_targets(self, targets: list[Target]) -> None:
        with self._write() as conn:
            if self.model_id is None and self._embedder is not None:
                self.model_id = q.insert_model(conn, self._embedder.spec, self._embedder.dim)
            for target in targets:
                if target.root_id is None:
                    target.root_id = q.add_root(conn, target.root_path)
                for child_id, child_prefix in target.absorb:
                    q.absorb_root(conn, target.root_id, child_id, child_prefix)
                target.absorb = []

    def _process(self, the_plan: _Plan) -> None:
        with self.engine.connect() as conn:
            self._hash_to_id = q.embedded_hashes(conn, self.model_id) if self.model_id else {}
        for k in the_plan.vanished.values():
            if k.status == q.OK and k.content_hash in self._hash_to_id:
                self._vanished_by_hash.setdefault(k.content_hash, k)
        skip = set(self._hash_to_id)
        jobs = (
            Job(i, os.path.join(os.fsencode(w.target.root_path), w.relpath), w.size, w.mtime_ns)
            for i, w in enumerate(the_plan.work)
        )
        total = len(the_plan.work)
        for done, prepared in enumerate(self._prepared(jobs, frozenset(skip)), start=1):
            self._classify(the_plan.work[prepared.key], prepared)
            if len(self._batch) >= (self.options.batch_size or 32) or len(self._ops) >= 256:
                self._flush()
            if self.progress:
                self.progress(Progress(done, total, self.summary.embedded))
            if self.cancel is not None and self.cancel():
                self._flush()
                raise Interrupted(
                    f"stopped after {done} of {total} files; what was done is kept, run "
                    "the same command again to finish"
                )
        self._flush()

    def _prepared(self, jobs: Iterator[Job], skip: frozenset[str]) -> Iterator[Prepared]:
        spec = self._embedder.preprocess
        workers = self.options.workers
        if workers is None:
            workers = default_workers(self._embedder.device)
        if workers == 0:
            return prepare_all(jobs, spec, skip)
        return prepare_parallel(jobs, spec, skip, workers)

    # -- classification ------------------------------------------------------------------

    def _classify(self, work: _Work, p: Prepared) -> None:
        h = p.content_hash
        known = work.known
        if h is None:
            self._ops.append(("failed", work, p, p.error))
        elif known and known.status == q.OK and known.content_hash == h:
            self._ops.append(("stat", known.id, p.size, p.mtime_ns))
            self.summary.unchanged += 1
        elif known is None and h in self._vanished_by_hash:
            source = self._vanished_by_hash.pop(h)
            self._vanished.pop(source.id, None)
            self._ops.append(("move", source.id, work, p))
            self.summary.moved += 1
        elif h in self._hash_to_id or h in self._orphans:
            self._ops.append(("copy", work, p))
        elif h in self._pending_hashes:
            self._pending_hashes[h].append((work, p))
        elif p.error:
            self._ops.append(("failed", work, p, p.error))
        else:
            self._batch.append((work, p))
            self._pending_hashes[h] = []

    def _flush(self) -> None:
        vectors = None
        if self._batch:
            pixels = np.stack([p.pixels for _, p in self._batch])
            vectors = self._embedder.embed_pixels(pixels)
            self.summary.embedded += len(self._batch)
        if not self._batch and not self._ops:
            return
        with self._write() as conn:
            for op in self._ops:
                self._apply(conn, op)
            for i, (work, p) in enumerate(self._batch):
                image_id = self._store(conn, work, p)
                self._set_vector(conn, image_id, vectors[i])
                self._hash_to_id[p.content_hash] = image_id
                for dup_work, dup_p in self._pending_hashes.pop(p.content_hash, []):
                    self._apply(conn, ("copy", dup_work, dup_p))
        self._ops.clear()
        self._batch.clear()

    def _apply(self, conn, op: tuple) -> None:
        kind = op[0]
        if kind == "stat":
            _, image_id, size, mtime_ns = op
            q.update_image(conn, image_id, size=size, mtime_ns=mtime_ns)
        elif kind == "move":
            _, image_id, work, p = op
            q.update_image(
                conn,
                image_id,
                root_id=work.target.root_id,
                relpath=work.relpath,
                size=p.size,
                mtime_ns=p.mtime_ns,
                status=q.OK,
                failure_reason=None,
            )
        elif kind == "copy":
            _, work, p = op
            vector, source = self._vector_for(conn, p.content_hash)
            p.info = None
            image_id = self._store(conn, work, p, source=source)
            self._set_vector(conn, image_id, vector)
            self._hash_to_id.setdefault(p.content_hash, image_id)
            self.summary.reused += 1
        elif kind == "failed":
            _, work, p, reason = op
            self._store_failure(conn, work, p.size, p.mtime_ns, p.content_hash, reason)

    def _vector_for(self, conn, content_hash: str) -> tuple[np.ndarray, object]:
        """The stored vector (and image row) of some image with this content, as of now."""
        if content_hash in self._hash_to_id:
            source_id = self._hash_to_id[content_hash]
            return q.get_vector(conn, source_id, self.model_id), q.image_row(conn, source_id)
        return self._orphans[content_hash]

    def _set_vector(self, conn, image_id: int, vector: np.ndarray | None) -> None:
        """Every vector write goes through here, so the index update knows about it."""
        if vector is None or vector.shape != (self._embedder.dim,):
            raise RuntimeError(f"internal error: no valid vector for image {image_id}")
        q.put_vector(conn, image_id, self.model_id, vector)
        self._written.add(image_id)

    def _release(self, conn, known: q.KnownImage | None) -> None:
        """Before a known image's vector is replaced or removed: keep it for files of its old
        content that this run still has to copy it to."""
        if known is None or not known.content_hash:
            return
        if self._hash_to_id.get(known.content_hash) == known.id:
            del self._hash_to_id[known.content_hash]
            vector = q.get_vector(conn, known.id, self.model_id)
            if vector is not None:
                self._orphans[known.content_hash] = (vector, q.image_row(conn, known.id))

    def _store(self, conn, work: _Work, p: Prepared, source=None) -> int:
        info = p.info
        values = dict(
            size=p.size,
            mtime_ns=p.mtime_ns,
            content_hash=p.content_hash,
            status=q.OK,
            failure_reason=None,
            width=info.width if info else source.width,
            height=info.height if info else source.height,
            format=info.format if info else source.format,
            captured_at=info.captured_at if info else source.captured_at,
        )
        if work.known is None:
            self.summary.new += 1
            return q.insert_image(conn, root_id=work.target.root_id, relpath=work.relpath, **values)
        self.summary.changed += 1
        self._release(conn, work.known)
        q.update_image(conn, work.known.id, **values)
        return work.known.id

    def _store_failure(self, conn, work: _Work, size, mtime_ns, content_hash, reason) -> None:
        self.summary.failed += 1
        values = dict(
            size=size,
            mtime_ns=mtime_ns,
            content_hash=content_hash,
            status=q.FAILED,
            failure_reason=reason,
        )
        if work.known is None:
            q.insert_image(conn, root_id=work.target.root_id, relpath=work.relpath, **values)
        else:
            self._release(conn, work.known)
            q.delete_vector(conn, work.known.id)
            self._written.add(work.known.id)
            q.update_image(conn, work.known.id, **values)

    # -- the end -------------------------------------------------------------------------

    def _finish(self, the_plan: _Plan, targets: list[Target]) -> None:
        vanished = self._vanished
        gone_ok = [k.id for k in vanished.values() if k.status == q.OK]
        gone_failed = [k.id for k in vanished.values() if k.status == q.FAILED]
        with self._write() as conn:
            for target, relpath, reason, known in the_plan.broken:
                work = _Work(target, relpath, 0, 0, known)
                size, mtime_ns = _lstat(os.path.join(os.fsencode(target.root_path), relpath))
                self._store_failure(conn, work, size, mtime_ns, None, reason)
            for image_id in the_plan.restore:
                q.update_image(conn, image_id, status=q.OK)
            self.summary.unchanged += len(the_plan.restore)
            q.mark_missing(conn, gone_ok)
            q.delete_images(conn, gone_failed)
            for target in targets:
                q.touch_root(conn, target.root_id)
        self.summary.missing = len(gone_ok)


def _lstat(path: bytes) -> tuple[int, int]:
    try:
        st = os.lstat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return 0, 0
