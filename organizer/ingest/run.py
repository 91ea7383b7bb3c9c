"""Running an ingest: walk, plan, decode and embed what is new, hand the writes to the writer.

The run is crash-safe by construction: every batch is one transaction holding image rows
and their vectors together (:mod:`.writer`), so after a kill the next run sees committed
files as unchanged and redoes only the rest. Files that vanished are marked missing only at
the end, and only where the walk actually looked.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import Engine

from organizer.background import Background
from organizer.choices import JpegDecode
from organizer.embed import Embedder, ModelShape, ModelSpec
from organizer.embed.runtime import usable_cores
from organizer.errors import Interrupted, ModelError, NotFoundError, StorageError
from organizer.imaging import PreprocessSpec
from organizer.ingest import distributed
from organizer.ingest.distributed import RayOptions
from organizer.ingest.metadata import backfill
from organizer.ingest.plan import FileWork, Plan, Target, plan
from organizer.ingest.summary import IngestSummary, Progress
from organizer.ingest.writer import BatchWriter, Copy, Embed, Fail, Move, Op, Touch
from organizer.pipeline import (
    Job,
    Prepared,
    default_workers,
    prepare,
    prepare_all,
    prepare_encoded,
    prepare_parallel,
)
from organizer.scan import ScanResult, extension
from organizer.sources import Storage, scan_source
from organizer.store import queries as q
from organizer.store.records import ImageStatus, KnownImage, LibraryModel

if TYPE_CHECKING:  # torch: imported only once JPEGs are left for the model's device
    from organizer.embed.device_decode import DeviceDecoder

# Ops (stat updates, copies, failures) are flushed at least this often, with or without a
# model batch, so that a long run of unchanged files still commits steadily.
MAX_PENDING_OPS = 256
DEFAULT_BATCH_SIZE = 32
RAY_WRITE_ROWS = 256
RAY_WRITE_EVERY_S = 1.0
# Decoded images held while the model loads (nothing is written before it has): the decode
# workers get ahead by seconds of loading, and memory stays bounded.
LOADING_BUFFER_BYTES = 256 * 2**20
LOADING_BUFFER_OPS = 100_000


EmbedderProvider = Callable[[], Embedder]


@dataclass(frozen=True)
class IngestOptions:
    """How a run behaves (the what-to-ingest is the list of targets)."""

    batch_size: int | None = None  # None: the settings' batch size, else 32
    workers: int | None = None  # decode processes; None = automatic, 0 = in this process
    device: str = "auto"  # where the model will run (decode workers leave it room)
    jpeg_decode: str = "auto"  # where JPEGs are decoded: auto, device or workers (JpegDecode)
    retry_failed: bool = False
    rehash: bool = False  # read and hash files whose size and time are unchanged too
    follow_symlinks: bool = False
    exclude: tuple[Path, ...] = ()
    ray: RayOptions | None = None  # decode and embed on a Ray cluster (--engine ray)
    storage: Storage = field(default_factory=Storage)  # how buckets are reached

    @property
    def engine(self) -> str:
        return "ray" if self.ray is not None else "local"


class Ingestor:
    """One ingest over some targets. Construct, then call :meth:`run` once."""

    def __init__(
        self,
        engine: Engine,
        get_embedder: EmbedderProvider,
        model: LibraryModel | None,
        options: IngestOptions = IngestOptions(),
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        run_id: int | None = None,
        describe: Callable[[], ModelShape] | None = None,
        input_hint: PreprocessSpec | None = None,
    ):
        """``describe()`` gives the model's shape without its weights: a new library on
        Ray records its model from it (the actors load the model, this process need not).
        ``input_hint`` is the input the model is expected to want (a new library's model,
        remembered from an earlier load): files are decoded for it while the model loads,
        and decoded again should the loaded model want another."""
        self.engine = engine
        self.get_embedder = get_embedder
        self.describe = describe
        self._shape: ModelShape | None = None
        self._ray: RayOptions | None = None  # settled for this run by _join_ray
        self._ray_workers = 0
        self.model = model
        self.model_id = model.id if model else None
        self.options = options
        self.progress = progress
        self.cancel = cancel
        self.summary = IngestSummary()
        self.writer = BatchWriter(engine, self.model_id, self.summary, run_id, options.storage)
        self._done, self._total = 0, 0  # files read, files to read
        self._written_at = time.monotonic()  # the last write (see _write_due)
        self._embedder: Embedder | None = None
        self._decoder: DeviceDecoder | None = None  # JPEGs on the model's device
        self._decoder_checked = False
        # The model's input, as the library recorded it: files can be decoded before (and
        # without) loading the model, which only embedding needs.
        self._preprocess = (
            PreprocessSpec.from_dict(model.preprocess) if model and model.preprocess else None
        )
        self._input_hint = input_hint
        self._loading: Background[tuple[Embedder, float]] | None = None
        self._targets: list[Target] | None = None  # until recorded (see _record_targets)
        self._ops: list[Op] = []
        self._batch: list[tuple[FileWork, Prepared]] = []
        # content hash -> later files of that content, copied once the first is embedded
        self._waiting: dict[str, list[Copy]] = {}
        self._vanished_by_hash: dict[str, KnownImage] = {}
        self._vanished: dict[int, KnownImage] = {}

    # -- orchestration -------------------------------------------------------------------

    def run(self, targets: list[Target]) -> IngestSummary:
        started = time.perf_counter()
        self._scan(targets)
        the_plan = plan(self.engine, targets, self.options.retry_failed, self.options.rehash)
        self._vanished = the_plan.vanished  # what is left of it at the end goes missing
        self.summary.unchanged = the_plan.unchanged
        if the_plan.work and self.options.ray is not None:
            self._join_ray(the_plan)
        if the_plan.work and self._preprocess is None:
            # A new library: its model is recorded before anything else is written, so
            # unreachable weights leave the library as it was.
            if self.options.ray is not None and self.describe is not None:
                self._shape = self.describe()
                self._preprocess = self._shape.preprocess
            elif self._input_hint is not None:
                self._preprocess = self._input_hint  # decode while the model loads
                self._start_loading()
            else:
                self._load_model()
        self.summary.engine = self.options.engine
        self._targets = targets
        if self._loading is None:
            self._record_targets()  # else once the model has loaded: see _model_ready
        if the_plan.work:
            self._process_restartable(the_plan)
        self._model_ready(wait=True)
        self.writer.finish(
            the_plan.unlistable, the_plan.restore, list(self._vanished.values()), targets
        )
        self.summary.metadata_filled = backfill(
            self.engine,
            [t.root_id for t in targets if t.root_id is not None],
            workers=usable_cores() if self.options.workers != 0 else 0,
            storage=self.options.storage,
        )
        self.summary.elapsed_s = time.perf_counter() - started
        return self.summary

    @property
    def written(self) -> frozenset[int]:
        """Images whose vector this run wrote or removed (so far)."""
        return frozenset(self.writer.written)

    def _scan(self, targets: list[Target]) -> None:
        for target in targets:
            known_version = None
            # A shard is skipped whole when unchanged, unless its failed members are to be
            # tried again, or every member read again.
            again = self.options.retry_failed or self.options.rehash
            if target.shard and target.root_id is not None and not again:
                with self.engine.connect() as conn:
                    known_version = q.root_version(conn, target.root_id)
            target.scan = self._listed(target, known_version)
            self.summary.problems += [
                f"{target.root_path}/{os.fsdecode(p.relpath)}: {p.reason}"
                for p in target.scan.problems
                if p.relpath in target.scan.unlisted_dirs
            ]
            for relpath in target.scan.skipped:
                kind = extension(relpath)
                self.summary.skipped[kind] = self.summary.skipped.get(kind, 0) + 1
            self.summary.export_folders += [
                os.path.join(target.root_path, os.fsdecode(d)) if d else target.root_path
                for d in target.scan.export_dirs
            ]

    def _listed(self, target: Target, known_version: str | None) -> ScanResult:
        """A target's listing. A shard gone from its bucket has nothing left in it (its
        images go missing); a root that is walked only because it is one, and cannot be
        listed now (a bucket out of reach), is left as it is, with a problem saying why."""
        try:
            return scan_source(
                target.root_path,
                start=target.prefix,
                exclude=self.options.exclude,
                follow_symlinks=self.options.follow_symlinks,
                storage=self.options.storage,
                known_version=known_version,
            )
        except StorageError as exc:
            if isinstance(exc, NotFoundError) and target.shard and target.root_id is not None:
                self.summary.problems.append(f"{exc}: its images are missing now")
                return ScanResult(root=target.root_path)
            if not target.optional:
                raise
            self.summary.problems.append(f"{exc} (skipped)")
            target.skipped = True
            return ScanResult(root=target.root_path, unlisted_dirs=[b""])

    def _record_targets(self) -> None:
        """Record the model (a new library's) and the new roots: the run's first write."""
        if self._targets is None:
            return
        known = self._embedder or self._shape
        dim = known.dim if known else self.model.dim if self.model else None
        preprocess = asdict(self._preprocess) if self._preprocess else None
        endpoint = self.options.storage.endpoint_url
        self.writer.prepare_targets(self._targets, known, dim, preprocess, endpoint)
        self._targets = None

    def _open_embedder(self) -> tuple[Embedder, float]:
        started = time.perf_counter()
        embedder = self.get_embedder()
        embedder.dim  # noqa: B018 - a lazy embedder builds its model or opens its tower now
        return embedder, time.perf_counter() - started

    def _start_loading(self) -> None:
        """Load the model on a thread while files are read and decoded."""
        self._loading = Background(lambda _: self._open_embedder(), "organizer-model-load")

    def _model_ready(self, wait: bool) -> bool:
        """Whether the model is loaded (if one was being loaded), waiting for it if ``wait``;
        once it is, the targets are recorded. Raises what loading raised (a missing model's
        error), or :class:`_InputChanged` when files were decoded for another input."""
        if self._loading is not None:
            if not wait and not self._loading.done():
                return False
            loading, self._loading = self._loading, None
            started = time.perf_counter()
            outcome = loading.result()
            self.summary.model_wait_s += time.perf_counter() - started
            self._adopt(*outcome)
        self._record_targets()
        return True

    def _load_model(self) -> None:
        embedder, load_s = self._open_embedder()
        self.summary.model_wait_s += load_s
        self._adopt(embedder, load_s)

    def _adopt(self, embedder: Embedder, load_s: float) -> None:
        self._embedder = embedder
        dim = embedder.dim
        self.summary.model_load_s = load_s
        changed = self._input_hint is not None and self._preprocess != embedder.preprocess
        if changed and self._targets is None:  # never so: nothing is written before a load
            raise ModelError("internal error: files were decoded for another model input")
        if changed:
            self._preprocess = embedder.preprocess
        if self._preprocess is None:
            self._preprocess = self._embedder.preprocess
            if self.model_id is not None:  # made before the input was recorded: record it
                self.writer.record_preprocess(asdict(self._preprocess))
        if self.model_id is not None:
            with self.engine.connect() as conn:
                recorded = q.library_model(conn)
            assert recorded is not None  # model_id names it
            if recorded.dim != dim:
                raise ModelError(
                    f"the model gives {dim}-d vectors but this library holds "
                    f"{recorded.dim}-d vectors of {recorded.spec.describe()}"
                )
        self.summary.device = self._embedder.device
        self.summary.precision = self._embedder.precision
        self.summary.runtime = getattr(self._embedder, "runtime", "torch")
        if changed:
            raise _InputChanged

    def _process_restartable(self, the_plan: Plan) -> None:
        """:meth:`_process`, once more from the start should the files have been decoded for
        an input the loaded model does not want (nothing was written before it loaded)."""
        unchanged, moved, vanished = self.summary.unchanged, self.summary.moved, self._vanished
        try:
            self._process(the_plan)
        except _InputChanged:
            self.summary.unchanged, self.summary.moved = unchanged, moved
            self._vanished = vanished
            self._ops, self._batch, self._waiting, self._vanished_by_hash = [], [], {}, {}
            self._input_hint = None
            self._record_targets()
            self._process(the_plan)

    def _process(self, the_plan: Plan) -> None:
        self._vanished = dict(self._vanished)  # kept as it was, should _process restart
        for k in the_plan.vanished.values():
            if (
                k.status == ImageStatus.OK
                and k.content_hash is not None
                and self.writer.has_vector_for(k.content_hash)
            ):
                self._vanished_by_hash.setdefault(k.content_hash, k)
        storage = self.options.storage
        jobs = (w.job(i, storage) for i, w in enumerate(the_plan.work))
        self._total = len(the_plan.work)
        try:
            self._read_all(the_plan, jobs)
        except StorageError as exc:
            self._flush()  # what was read before the service failed is kept
            raise StorageError(
                f"{exc}; stopped after {self._finished()} of {self._total} files: what was "
                "done is kept, run the same command again to finish"
            ) from None

    def _read_all(self, the_plan: Plan, jobs: Iterator[Job]) -> None:
        batch_size = self._rows_per_write()
        with contextlib.closing(self._prepared(jobs)) as results:
            for done, prepared in enumerate(results, start=1):
                self._done = done
                self._classify(the_plan.work[prepared.key], prepared)
                if self._first_to_embed():
                    self._start_loading()  # while more files are read
                due = len(self._batch) >= batch_size or len(self._ops) >= MAX_PENDING_OPS
                due = due or self._write_due()
                if due and self._model_ready(wait=self._buffer_full()):
                    self._flush()  # what waited for the model: a batch per file read
                self._report_progress()
                self._stop_if_cancelled()
            while True:  # what is left: more batches when files were read while the model loaded
                self._flush()
                self._report_progress()
                if not self._batch:
                    return
                self._stop_if_cancelled()

    def _rows_per_write(self) -> int:
        """Files embedded per transaction: a model batch, or on Ray (where the actors embed)
        up to RAY_WRITE_ROWS, so that each file's share of a commit is small."""
        batch_size = self.options.batch_size or DEFAULT_BATCH_SIZE
        return max(batch_size, RAY_WRITE_ROWS) if self.options.ray is not None else batch_size

    def _write_due(self) -> bool:
        """On Ray, what was embedded is written at least every RAY_WRITE_EVERY_S, however few
        files that is: progress moves, and a kill loses seconds of work at most."""
        return (
            self.options.ray is not None
            and bool(self._batch)
            and time.monotonic() - self._written_at >= RAY_WRITE_EVERY_S
        )

    def _stop_if_cancelled(self) -> None:
        if self.cancel is not None and self.cancel():
            self._flush()  # files read beyond that batch are read again next run
            raise Interrupted(
                f"stopped after {self._finished()} of {self._total} files; what was done is kept, "
                "run the same command again to finish"
            )

    def _report_progress(self) -> None:
        if self.progress:
            done, embedded = self._finished(), self.summary.embedded
            self.progress(Progress(done, self._total, embedded, self._done))

    def _finished(self) -> int:
        """Files read and dealt with: not those waiting for the model in a batch (or for the
        vector of a file in one), as after a load many may."""
        return self._done - len(self._batch) - sum(map(len, self._waiting.values()))

    def _first_to_embed(self) -> bool:
        """Whether the file just batched is the run's first that needs the model (a run that
        only copies known vectors, moves or re-reads files never loads it)."""
        return (
            len(self._batch) > 0
            and self._embedder is None
            and self._loading is None
            and self._batch[-1][1].vector is None  # not embedded by a Ray actor
        )

    def _buffer_full(self) -> bool:
        """Whether what waits for the loading model has reached its bounds."""
        return (
            sum(p.held_bytes for _, p in self._batch) >= LOADING_BUFFER_BYTES
            or len(self._ops) >= LOADING_BUFFER_OPS
        )

    def _prepared(self, jobs: Iterator[Job]) -> Generator[Prepared]:
        spec = self._preprocess
        skip = self.writer.known_hashes()
        if self.options.ray is not None:
            known = self._embedder or self._shape or self.model
            assert known is not None  # the library's model, or the one loaded for it
            model = known.spec
            return self._on_ray(jobs, spec, frozenset(skip), model)
        device = self._embedder.device if self._embedder else _expected_device(self.options)
        prepare_fn = prepare_encoded if self._decodes_on_device(device) else prepare
        workers = self.options.workers
        if workers is None:
            workers = default_workers(device)
        if workers == 0:
            return prepare_all(jobs, spec, skip, prepare_fn)
        return prepare_parallel(jobs, spec, skip, workers, prepare_fn)

    def _decodes_on_device(self, device: str) -> bool:
        """Whether the decode processes leave JPEGs for the model's ``device`` to decode: asked
        for (or ``auto`` and CUDA), and the device can, as found out before any file is read
        (a driver on the machine is not enough: a CPU-only torch, CUDA_VISIBLE_DEVICES="", a
        torchvision without nvJPEG would leave every JPEG to this one process)."""
        where = self.options.jpeg_decode
        if where == JpegDecode.WORKERS or (where == JpegDecode.AUTO and device != "cuda"):
            return False
        if self._embedder is not None:
            return self._device_decoder() is not None
        from organizer.embed.device_decode import decodes_on

        return decodes_on(device)

    def _join_ray(self, the_plan: Plan) -> None:
        """Join the cluster, check that every machine sees the files, settle one device and
        precision for the run: all before anything is written."""
        asked = self.options.ray
        assert asked is not None  # only a Ray run joins a cluster
        distributed.connect(asked.address)
        roots = sorted({w.target.root_path for w in the_plan.work})
        step = max(1, len(the_plan.work) // 20)
        samples = [w.job(0, self.options.storage) for w in the_plan.work[::step][:20]]
        cluster = distributed.check_nodes(roots, samples, self.options.storage)
        self._ray = distributed.settle_model(asked, cluster)
        self._ray_workers = distributed.plan_workers(self._ray)

    def _on_ray(
        self,
        jobs: Iterator[Job],
        spec: PreprocessSpec | None,
        skip: frozenset[str],
        model: ModelSpec,
    ) -> Generator[Prepared]:
        seen: dict = {}
        assert self._ray is not None  # settled by _join_ray
        assert spec is not None  # Ray's workers decode to the model's input
        batch_size = self.options.batch_size or DEFAULT_BATCH_SIZE
        ray_options = replace(self._ray, workers=self._ray_workers, batch_size=batch_size)
        for prepared in distributed.prepare_on_ray(
            list(jobs), spec, skip, model, ray_options, distributed.DECODE, seen
        ):
            if seen:
                self.summary.device, self.summary.precision = seen["device"], seen["precision"]
                self.summary.runtime = seen["runtime"]
            yield prepared

    # -- deciding what each file needs -----------------------------------------------------

    def _classify(self, work: FileWork, p: Prepared) -> None:
        h = p.content_hash
        known = work.known
        lean = _lean(p)  # what a file that is not embedded keeps (memory)
        if h is None:
            self._ops.append(Fail(work, lean))
        elif known and known.status == ImageStatus.OK and known.content_hash == h:
            self._ops.append(Touch(known.id, p.size, p.mtime_ns, work.etag))
            self.summary.unchanged += 1
        elif known is None and h in self._vanished_by_hash:
            source = self._vanished_by_hash.pop(h)
            self._vanished.pop(source.id, None)
            self._ops.append(Move(source.id, work, lean))
            self.summary.moved += 1
        elif self.writer.has_vector_for(h):
            self._ops.append(Copy(work, lean))
        elif h in self._waiting:
            self._waiting[h].append(Copy(work, lean))
        elif p.error:
            self._ops.append(Fail(work, lean))
        else:
            self._batch.append((work, p))
            self._waiting[h] = []

    def _flush(self) -> None:
        """Embed a batch (the oldest, when more waited for a loading model), then write the
        pending ops, each embedded file, and the files that were waiting for its vector, in
        one transaction."""
        self._model_ready(wait=True)
        batch_size = self._rows_per_write()
        ops, self._ops = self._ops, []
        batch, self._batch = self._batch[:batch_size], self._batch[batch_size:]
        todo = [p for _, p in batch if p.vector is None]  # not embedded by Ray already
        if todo and self._embedder is None:
            self._load_model()  # the first file that needs embedding
        if batch:
            made, errors = self._embed(todo)
            failed = {p.key: e for p, e in zip(todo, errors, strict=True) if e is not None}
            for work, p in batch:
                assert p.content_hash is not None  # hashed, as everything embedded
                error = failed.get(p.key)
                if error is not None:  # a JPEG left encoded that cannot be decoded after all
                    ops.append(Fail(work, replace(p, encoded=None, error=error)))
                    for copy in self._waiting.pop(p.content_hash, []):
                        ops.append(Fail(copy.work, replace(copy.prepared, error=error)))
                    continue
                vector = p.vector if p.vector is not None else next(made)
                ops.append(Embed(work, _lean(p), vector))
                ops.extend(self._waiting.pop(p.content_hash, []))
                self.summary.embedded += 1
        self.writer.write(ops, {"done": self._finished(), "total": self._total})
        self._written_at = time.monotonic()

    def _embed(self, todo: list[Prepared]) -> tuple[Iterator[np.ndarray], list[str | None]]:
        """The vectors of the files to embed (in order, skipping those that fail) and why
        each failed (None for those that did not): only a JPEG left encoded for the model's
        device can, when neither the device nor Pillow can decode it."""
        errors: list[str | None] = [None] * len(todo)
        if not todo:
            return iter(()), errors
        embedder = self._embedder
        assert embedder is not None  # loaded by _flush for what needs embedding
        if all(p.encoded is None for p in todo):
            pixels = cast(list[np.ndarray], [p.pixels for p in todo])  # decoded, all of them
            return iter(embedder.embed_pixels(np.stack(pixels))), errors
        from organizer.embed.device_decode import embed_items

        assert self._preprocess is not None  # set when the model loaded
        items = [_item_for_device(p) for p in todo]
        vectors, errors = embed_items(embedder, self._device_decoder(), items, self._preprocess)
        return iter(vectors), errors

    def _device_decoder(self) -> DeviceDecoder | None:
        """The model's device's JPEG decoder, checked once (None: it has none)."""
        if not self._decoder_checked:
            from organizer.embed.device_decode import decoder_for

            assert self._preprocess is not None  # set when the model loaded
            self._decoder = decoder_for(self._embedder, self.options.jpeg_decode, self._preprocess)
            self._decoder_checked = True
        return self._decoder


def _lean(p: Prepared) -> Prepared:
    """The file without its pixels or bytes (what is kept of it once embedded or not needed);
    itself when it holds neither, as results embedded by Ray do (a copy costs µs a file)."""
    if p.pixels is None and p.encoded is None:
        return p
    return replace(p, pixels=None, encoded=None)


class _InputChanged(Exception):
    """The loaded model wants another input than the files were decoded for."""


def _item_for_device(p: Prepared) -> Any:
    """A file's pixels, or its JPEG with what the header said, for the device's decoder."""
    from organizer.embed.device_decode import EncodedJpeg

    if p.encoded is None:
        return p.pixels
    assert p.info is not None  # read from the header before it was left encoded
    orientation = p.info.meta.orientation or 1
    return EncodedJpeg(p.encoded, orientation, p.info.width, p.info.height)


def _expected_device(options: IngestOptions) -> str:
    """Where the model will run, before it is loaded (for sizing the decode pool)."""
    if options.device != "auto":
        return options.device
    return "cuda" if os.path.exists("/proc/driver/nvidia/version") else "cpu"
