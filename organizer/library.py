"""Library: the facade over a library directory (database + vector index + lock).

The CLI and Python users call this; it owns behaviour, never prints, never exits.

Example::

    from organizer import Library, resolve_settings
    with Library.open(resolve_settings(library="~/my-library"), create=True) as lib:
        summary = lib.ingest(["~/Photos"])
        print(summary.new, "new images")
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from organizer.choices import KSpec
from organizer.cluster_runs import AssignResult, Clustering, ExportSummary
from organizer.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, Settings
from organizer.embed import (
    Embedder,
    ModelShape,
    ModelSpec,
    loader,
    remembered,
    request_spec,
    sha256_file,
)
from organizer.errors import (
    ClusterError,
    ConnectionLostError,
    Interrupted,
    LibraryError,
    ModelError,
    ModelMismatchError,
    OptionsError,
    OrganizerError,
)
from organizer.finder import Duplicates, Finder, Results
from organizer.ingest import IngestOptions, Ingestor, IngestSummary, Progress, Target, distributed
from organizer.location import FolderHome, Home, Lock, open_home
from organizer.lock import pid_alive
from organizer.report import ReportProgress, ReportSummary, write_report
from organizer.roots import (
    MOVE_SAMPLE,
    RootChange,
    RootStatus,
    check_move,
    find_root,
    ingest_folders,
    targets_for,
)
from organizer.scan import exact_path, extension, scan_root, shown_path
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import (
    ClusterRunRecord,
    ClusterRunSummary,
    Failure,
    IndexSettingsRecord,
    IngestRunRecord,
    LibraryModel,
    OfflineImages,
    RunStatus,
    iso_utc,
)
from organizer.vectors import IndexBuild, IndexCache, IndexDelta, VectorIndex, sharded

EmbedderLoader = Callable[[ModelSpec, Settings], Embedder]


def load_open_clip(spec: ModelSpec, settings: Settings) -> Embedder:
    """The default embedder loader: open_clip in torch or ONNX Runtime (torch imported only
    if it runs)."""
    return loader.load(
        spec, settings.device, settings.precision, settings.runtime, settings.offline
    )


@dataclass(frozen=True)
class IndexStatus:
    type: str | None
    description: str | None
    recall_at_10: float | None
    count: int | None
    in_sync: bool
    path: str
    damaged: bool = False  # found by a full check (status --verify); the files were removed

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "description": self.description,
            "recall_at_10": self.recall_at_10,
            "count": self.count,
            "in_sync": self.in_sync,
            "path": self.path,
            "damaged": self.damaged,
        }


@dataclass(frozen=True)
class LibraryStatus:
    """What ``organizer status`` shows."""

    library: str
    roots: list[str]
    absent_roots: list[str]  # roots whose folder is not there now (an unplugged drive)
    model: LibraryModel | None
    images: dict[str, int]
    index: IndexStatus
    last_ingest: IngestRunRecord | None

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "roots": self.roots,
            "absent_roots": self.absent_roots,
            "model": self.model.to_dict() if self.model else None,
            "images": self.images,
            "index": self.index.to_dict(),
            "last_ingest": self.last_ingest.to_dict() if self.last_ingest else None,
        }


@dataclass(frozen=True)
class SkippedFiles:
    """What ingest leaves out: files that are not images, and organizer export folders."""

    files: list[tuple[str, bytes]]  # (root, relative path)
    export_folders: list[str]

    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, relpath in self.files:
            counts[extension(relpath)] = counts.get(extension(relpath), 0) + 1
        return dict(sorted(counts.items(), key=lambda x: (-x[1], x[0])))

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "by_type": self.by_type(),
            "files": [
                {
                    "root": root,
                    "path": shown_path(root, relpath, absolute),
                    **exact_path(root, relpath),
                    "type": extension(relpath),
                }
                for root, relpath in self.files
            ],
            "export_folders": self.export_folders,
        }


@dataclass(frozen=True)
class _Shown:
    """What the commands that show images show: the present roots, and what is left out."""

    roots: list[int] | None  # ids of the roots whose images are shown; None: every root
    hidden: frozenset[str]  # paths of the absent roots
    offline: OfflineImages  # their images, left out


class Library:
    """An opened library. Use :meth:`open`; close it (or use ``with``) when done.

    The facade: it owns the engine, the writer lock, the model and the index cache, and hands
    each part only what that part uses (:class:`Finder`, :class:`Clustering`, the report).
    """

    def __init__(self, settings: Settings, home: Home, embedder_loader: EmbedderLoader):
        self.settings = settings
        self.home = home
        self.path = home.path  # the folder; for a catalogue on a server, its URL sans password
        self.engine = home.engine
        self._embedder_loader = embedder_loader
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()  # ingest loads it on a thread of its own
        self._index: tuple[int, VectorIndex] | None = None  # (generation, index) while open
        self._writing = False  # this process holds the writer lock

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        create: bool = False,
        embedder_loader: EmbedderLoader | None = None,
    ) -> Library:
        """Open (and with ``create``, make) the library; migrate its schema.

        ``settings.library`` is a folder, or a database URL (a shared catalogue on
        PostgreSQL). ``embedder_loader`` makes the model when a command first needs it
        (default: open_clip); tests pass one that returns a fake.

        Raises:
            LibraryError: no library there (and not ``create``), the folder is unusable, or
                the database server cannot be used (the message never shows a password).
        """
        home = open_home(settings.library, create)
        return cls(settings, home, embedder_loader or load_open_clip)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def writer_lock(self, purpose: str) -> Lock:
        """The library's writer lock (not yet taken)."""
        return self.home.writer_lock(purpose)

    # -- model -----------------------------------------------------------------------------

    def model(self) -> LibraryModel | None:
        """The model this library's vectors were made with (None before the first ingest)."""
        with self.engine.connect() as conn:
            return q.library_model(conn)

    def requested_spec(self) -> ModelSpec:
        """The model the settings ask for, gaps filled from the library's record or defaults.

        Raises:
            ModelMismatchError: the settings name another model than the library's.
        """
        recorded = self.model()
        s = self.settings
        if recorded is None:
            return request_spec(s.model or DEFAULT_MODEL, s.pretrained or DEFAULT_PRETRAINED)
        if s.model is None and s.pretrained is None:
            return recorded.spec
        base = recorded.spec if s.model is None else request_spec(s.model, "none")
        if s.pretrained is None:
            spec = replace(
                base,
                pretrained=recorded.spec.pretrained,
                weights_sha256=recorded.spec.weights_sha256,
            )
        else:
            spec = replace(request_spec(base.name, s.pretrained), config_json=base.config_json)
        if not recorded.spec.same_model(spec):
            raise ModelMismatchError(
                f"this library was built with {recorded.spec.describe()}; it cannot mix in "
                f"vectors of {spec.describe()}: leave out --model/--pretrained, or use another "
                f"--library"
            )
        return recorded.spec

    def embedder(self) -> Embedder:
        """The library's model (or the requested one for a new library), loaded once."""
        with self._embedder_lock:
            if self._embedder is None:
                spec = self.requested_spec()
                if spec.is_checkpoint_path and spec.weights_sha256:
                    _check_checkpoint(spec)
                self._embedder = self._embedder_loader(spec, self.settings)
            return self._embedder

    def model_shape(self) -> ModelShape:
        """The model's spec, vector size and input without loading its weights (when the
        model is open_clip's; another loader's embedder is loaded)."""
        if self._embedder is None and self._embedder_loader is load_open_clip:
            from organizer.embed import openclip

            spec = self.requested_spec()
            if spec.is_checkpoint_path and spec.weights_sha256:
                _check_checkpoint(spec)
            return openclip.describe(spec, self.settings.offline)
        embedder = self.embedder()
        return ModelShape(embedder.spec, embedder.dim, embedder.preprocess)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        paths: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        wait: bool = False,
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> IngestSummary:
        """Embed new and changed images under ``paths`` (all known roots when empty).

        Raises:
            LibraryBusyError: another process is writing (unless ``wait``).
            ModelMismatchError, WeightsUnavailableError: before anything is written.
            LibraryError: a path that is not a folder.
            Interrupted: ``cancel()`` returned True; finished batches are committed.
        """
        self.check_ingest(paths, options)  # before the writer lock and the run's record
        options = self._ingest_options(options or IngestOptions())
        if options.ray is not None:  # the workers load it; it must still be the library's
            spec = self.requested_spec()
            if spec.is_checkpoint_path and spec.weights_sha256:
                _check_checkpoint(spec)
        with self._writer("ingest", wait):
            base = self.index_cache.base_generation()  # what the file holds as the run starts
            model = self.model()
            spec = self.requested_spec()  # refuse a model mismatch before any work
            targets = self._targets(paths)
            with write_transaction(self.engine) as conn:
                run_id = q.start_run(conn, os.getpid())
            status, error = RunStatus.FAILED, None
            ingestor = None
            try:
                ingestor = Ingestor(
                    self.engine,
                    self.embedder,
                    model,
                    options,
                    progress,
                    cancel,
                    run_id,
                    describe=self.model_shape,
                    # A new library's model input, as last loaded: decoded for while it loads.
                    input_hint=(
                        remembered.recall(spec) if model is None and options.ray is None else None
                    ),
                )
                summary = ingestor.run(targets)
                if self._embedder is not None:
                    remembered.remember(spec, self._embedder.preprocess)
                # The index first, then the run is recorded finished: a reader (a server)
                # that waits for the ingest to end then finds the index file in step.
                problem = self.refresh_index(IndexDelta(base, ingestor.written))
                if problem:
                    summary.problems.append(problem)
                status = RunStatus.FINISHED
            except Interrupted:
                status = RunStatus.INTERRUPTED
                self.refresh_index(IndexDelta(base, ingestor.written))
                raise
            except Exception as exc:
                error = _why_failed(exc)
                raise
            finally:
                done = ingestor.summary if ingestor else IngestSummary()
                self._finish_run(run_id, status, done, error)
        return summary

    @staticmethod
    def check_ingest(paths: Sequence[str | Path], options: IngestOptions | None = None) -> None:
        """Refuse an ingest that cannot start, without a library: a path that is not a
        folder; on Ray, Ray missing or its cluster not answering. :meth:`ingest` checks this
        first itself; call it before :meth:`open` with ``create`` so that a refused ingest
        makes no library either.

        Raises:
            LibraryError: what is wrong, in one line.
        """
        ingest_folders(list(paths))
        if options is not None and options.ray is not None:
            distributed.preflight(options.ray.address)

    def _ingest_options(self, options: IngestOptions) -> IngestOptions:
        """Fill the options' gaps from the settings; never walk into the library itself."""
        if options.batch_size is None and self.settings.batch_size:
            options = replace(options, batch_size=self.settings.batch_size)
        if options.workers is None and self.settings.workers is not None:
            options = replace(options, workers=self.settings.workers)
        options = replace(options, device=str(self.settings.device))
        if options.ray is not None:  # the actors load the model as this process would
            s = self.settings
            ray = replace(
                options.ray,
                device=str(s.device),
                precision=str(s.precision),
                runtime=str(s.runtime),
            )
            if ray.workers is None and s.workers:  # ORGANIZER_WORKERS counts actors here
                ray = replace(ray, workers=s.workers)
            options = replace(options, ray=replace(ray, offline=s.offline))
        return replace(options, exclude=(*options.exclude, *self.home.exclude))

    @contextlib.contextmanager
    def _writer(self, purpose: str, wait: bool) -> Iterator[None]:
        lock = self.writer_lock(purpose)
        lock.acquire(wait=wait)
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            lock.release()

    def _finish_run(
        self, run_id: int, status: RunStatus, summary: IngestSummary, error: str | None
    ) -> None:
        # Bookkeeping only: if it fails too (a full disk, a server still down), the first
        # error is the story (status tells a server's restart from the run left running).
        with contextlib.suppress(LibraryError), write_transaction(self.engine) as conn:
            q.finish_run(
                conn, run_id, status, summary.to_dict(), summary.device, summary.precision, error
            )

    def _targets(self, paths: Sequence[str | Path]) -> list[Target]:
        with self.engine.connect() as conn:
            roots = q.all_roots(conn)
            targets = targets_for(list(paths), roots)
            new = any(t.root_id is None for t in targets)  # only a new root can be a moved one
            absent = {i: p for i, p in roots.items() if new and not Path(p).is_dir()}
            samples = {i: q.sample_images(conn, i, MOVE_SAMPLE) for i in absent}
        for target in targets:
            if target.root_id is not None:
                continue
            for root_id, old in absent.items():
                if check_move(samples[root_id], target.root_path).matches:
                    raise LibraryError(
                        f"{target.root_path} holds the files of {old}, which is absent: "
                        f"run `organizer roots move {old} {target.root_path}` to point the "
                        "library there (ids, vectors and clusters kept), or `organizer roots "
                        f"remove {old}` first to start afresh"
                    )
        return targets

    # -- roots -----------------------------------------------------------------------------

    def roots(self) -> list[RootStatus]:
        """Every root: is its folder there now, and its images by status."""
        with self.engine.connect() as conn:
            records = q.root_records(conn)
        return [RootStatus(r, Path(r.path).is_dir()) for r in records]

    def _root(self, path: str | Path) -> RootStatus:
        roots = {r.record.id: r for r in self.roots()}
        found = find_root(path, {i: r.record.path for i, r in roots.items()})
        if found is None:
            raise LibraryError(
                f"{path} is not a root of this library: `organizer roots` lists them"
            )
        return roots[found]

    def remove_root(self, path: str | Path, dry_run: bool = False) -> RootChange:
        """Forget a root and everything recorded under it (never touches its files).

        Raises:
            LibraryError: ``path`` is not a root; LibraryBusyError: another writer is busy.
        """
        root = self._root(path)
        change = RootChange(
            "remove", root.record.path, None, sum(root.record.images.values()), dry_run
        )
        if dry_run:
            return change
        with self._writer("roots remove", wait=False):
            with write_transaction(self.engine) as conn:
                q.delete_root(conn, root.record.id)
            self.refresh_index()
        return change

    def move_root(self, old: str | Path, new: str | Path, dry_run: bool = False) -> RootChange:
        """Point a root at the folder its files moved to (a rename, a new mount point);
        image ids, vectors and clusters are kept. A sample of the files is checked first
        (sizes, and SHA-256 of a few).

        Raises:
            LibraryError: ``old`` is not a root, ``new`` is not a folder, is (or overlaps)
                another root, or does not hold the root's files.
            OptionsError: ``new`` names the root itself (a trailing slash, ./, a link).
        """
        root = self._root(old)
        if find_root(new, {root.record.id: root.record.path}) is not None:
            raise OptionsError(
                f"{new} is the root {root.record.path} itself: nothing to move; give the "
                "folder its files are in now"
            )
        target = Path(new).expanduser()
        if not target.is_dir():
            raise LibraryError(f"not a folder: {new}")
        real = os.path.realpath(target)
        for other in self.roots():
            p = other.record.path
            if other.record.id != root.record.id and (
                p == real
                or p.startswith(real.rstrip("/") + "/")
                or real.startswith(p.rstrip("/") + "/")
            ):
                raise LibraryError(
                    f"{real} overlaps the root {p} of this library: `organizer roots remove {p}` "
                    "first if its images are the same as these"
                )
        with self.engine.connect() as conn:
            sample = q.sample_images(conn, root.record.id, MOVE_SAMPLE)
        check = check_move(sample, real)
        if sample and not check.matches:
            raise LibraryError(
                f"{real} does not hold the files of {root.record.path}: of {check.checked} "
                f"sampled files, {check.same_size} were found with the same size and "
                f"{check.same_hash} of {check.hashed} with the same content; nothing changed"
            )
        change = RootChange(
            "move", root.record.path, real, sum(root.record.images.values()), dry_run, check
        )
        if dry_run:
            return change
        with self._writer("roots move", wait=False), write_transaction(self.engine) as conn:
            q.move_root(conn, root.record.id, real)
        return change

    def _absent_roots(self, include_offline: bool) -> tuple[dict[int, str], dict[int, str]]:
        """(every root, the absent ones) by id; none counts as absent with
        ``include_offline``, and then the database is not even asked."""
        if include_offline:
            return {}, {}
        with self.engine.connect() as conn:
            roots = q.all_roots(conn)
        return roots, {i: p for i, p in roots.items() if not Path(p).is_dir()}

    def _shown(self, include_offline: bool) -> _Shown:
        """What similar, search, duplicates, cluster and report show, and leave out."""
        roots, absent = self._absent_roots(include_offline)
        if not absent:
            return _Shown(None, frozenset(), OfflineImages())
        with self.engine.connect() as conn:
            held = q.ok_counts(conn, list(absent))
        return _Shown(
            [i for i in roots if i not in absent],
            frozenset(absent.values()),
            OfflineImages(tuple(absent[i] for i in sorted(held)), sum(held.values())),
        )

    def hidden_roots(self, include_offline: bool = False) -> frozenset[str]:
        """Paths of the roots whose images searches leave out."""
        return frozenset(self._absent_roots(include_offline)[1].values())

    # -- the vector index ------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.home.index_path

    @property
    def index_cache(self) -> IndexCache:
        return IndexCache(
            self.engine,
            self.home.index_path,
            self.home.file_record(),
            lambda: self.home.may_write_index(self._writing),
        )

    def vectors(self, save: bool = True) -> VectorIndex:
        """The vector index: kept in memory while the database's vectors do not change, read
        from its file when that matches the database, else rebuilt (and, with ``save``,
        written back when no writer runs; a server never writes it)."""
        with self.engine.connect() as conn:
            generation = q.index_generation(conn)
        if self._index is not None and self._index[0] == generation:
            return self._index[1]
        cache = self.index_cache
        if not save:
            cache.may_write = lambda: contextlib.nullcontext(False)
        index = cache.load()
        self._index = (generation, index)
        return index

    def build_index(
        self, kind: str = "auto", memory: int | None = None, wait: bool = False
    ) -> IndexBuild:
        """Rebuild the vector index now as ``kind`` ("auto", "flat", "ivf-fp16", "ivf-pq")
        within ``memory`` bytes (None: the default budget for auto, no limit for a named
        kind); both are kept for the rebuilds later ingests make.

        Raises:
            IndexPlanError: that kind or budget cannot hold this library's vectors;
            LibraryBusyError: an ingest is running (unless ``wait``).
        """
        settings = IndexSettingsRecord(None if kind == "auto" else kind, memory)
        with self._writer("index build", wait=wait):
            built = self.index_cache.build(settings)
        self._index = None
        return built

    # -- an index built by several machines (organizer.vectors.sharded) --------------------

    def train_shards(
        self, folder: Path, parts: int, kind: str = "auto", memory: int | None = None
    ) -> sharded.ShardPlan:
        """Plan ``parts`` shards of the vectors and train their template in ``folder``."""
        settings = IndexSettingsRecord(None if kind == "auto" else kind, memory)
        return sharded.train(self.engine, folder, parts, settings)

    def fill_shard(self, folder: Path, part: int) -> sharded.ShardRecord:
        """Fill shard ``part`` (from 1) of the plan in ``folder``: reads only, no lock."""
        return sharded.fill(self.engine, folder, part)

    def merge_shards(self, folder: Path, wait: bool = False) -> IndexBuild:
        """Merge the filled shards in ``folder`` into the library's index (lists on disk).

        Raises:
            LibraryBusyError: an ingest is running (unless ``wait``).
        """
        with self._writer("index merge", wait=wait):
            built = sharded.merge(self.engine, folder, self.index_cache)
        self._index = None
        return built

    def refresh_index(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the index file in step with the database (after writes, or when damaged);
        returns a warning when the file could not be written."""
        return self.index_cache.refresh(delta)

    # -- search ----------------------------------------------------------------------------

    def finder(self, include_offline: bool = False) -> Finder:
        """Search over the library; images under absent roots are left out unless asked."""
        return self._finder(self.hidden_roots(include_offline))

    def _finder(self, hidden_roots: frozenset[str]) -> Finder:
        return Finder(self.engine, self.vectors, self.embedder, hidden_roots)

    def similar(
        self,
        photo: str | Path,
        limit: int = 12,
        threshold: float | None = None,
        include_offline: bool = False,
    ) -> Results:
        """Images most like ``photo`` (a library file: its stored vector, no model; any other
        image: embedded on the fly, not added). The photo itself is not among the results;
        they say what absent roots left out."""
        shown = self._shown(include_offline)
        found = self._finder(shown.hidden).similar(photo, limit, threshold)
        return replace(found, offline=shown.offline)

    def search(
        self,
        query: str | None,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        limit: int = 12,
        threshold: float | None = None,
        include_offline: bool = False,
    ) -> Results:
        """Text-to-image search; each term (query, --plus, --minus) is a text or an image path.
        The results say what absent roots left out."""
        shown = self._shown(include_offline)
        found = self._finder(shown.hidden).search(query, plus, minus, limit, threshold)
        return replace(found, offline=shown.offline)

    def duplicates(self, threshold: float = 0.96, include_offline: bool = False) -> Duplicates:
        """Groups of identical and near-identical images, each with a suggested keeper, and
        what absent roots left out."""
        shown = self._shown(include_offline)
        return Duplicates(self._finder(shown.hidden).duplicates(threshold), shown.offline)

    # -- clusters --------------------------------------------------------------------------

    @property
    def clustering(self) -> Clustering:
        return Clustering(self.engine, self.embedder, self.home.cache_dir)

    def cluster(
        self, k: KSpec = "auto", include_offline: bool = False, **options: object
    ) -> ClusterRunSummary:
        """K-means over the library's vectors (not those under absent roots, unless
        ``include_offline``), stored as a new run (see Clustering.run); it says what absent
        roots left out."""
        shown = self._shown(include_offline)
        clustering = Clustering(self.engine, self.embedder, self.home.cache_dir, shown.roots)
        return replace(clustering.run(k, **options), offline=shown.offline)

    def clusters(self, run_id: int | None = None) -> ClusterRunSummary:
        """A stored run (default: the latest) with its clusters and their members."""
        return self.clustering.summary(run_id)

    def runs(self) -> list[ClusterRunRecord]:
        """Every stored cluster run, oldest first."""
        with self.engine.connect() as conn:
            return cq.all_runs(conn)

    def assign_new(self, run_id: int | None = None) -> AssignResult:
        """Put images ingested after a run into its nearest clusters (see Clustering)."""
        return self.clustering.assign_new(run_id)

    def export(
        self, run_id: int | None, target: Path, mode: str = "symlink", force: bool = False
    ) -> ExportSummary:
        """One folder per cluster of links to (or copies of) its images (see export_run);
        warns when the folder is inside a root (ingest skips it: it is marked).

        Raises:
            ClusterError: the folder holds photos of the library (marked, ingest would skip
                them and they would drop out of the library).
        """
        real = os.path.realpath(Path(target).expanduser())
        inside = [r.record.path for r in self.roots() if _within(real, r.record.path)]
        held = self._photos_under(real)
        if held:
            raise ClusterError(
                f"{real} holds {held:,} photos of this library: export into a folder of its own "
                "(ingest skips export folders, so these photos would drop out of the library)"
            )
        summary = self.clustering.export(run_id, target, mode, force)
        if inside:
            warning = (
                f"{real} is inside the root {inside[0]}: ingest skips it (it is marked as an "
                "export), but a folder outside your photos is tidier"
            )
            summary = replace(summary, warnings=[*summary.warnings, warning])
        return summary

    # -- report ----------------------------------------------------------------------------

    def report(
        self,
        output: Path,
        run_id: int | None = None,
        progress: Callable[[ReportProgress], None] | None = None,
        include_offline: bool = False,
        **options: object,
    ) -> ReportSummary:
        """Write the self-contained HTML report (see organizer.report.write_report); images
        under absent roots are left out unless ``include_offline``, and it says so."""
        shown = self._shown(include_offline)
        return write_report(
            self.engine,
            Path(output).expanduser(),
            run_id,
            progress=progress,
            roots=shown.roots,
            offline=shown.offline,
            **options,
        )

    # -- status ----------------------------------------------------------------------------

    def status(self, verify: bool = False) -> LibraryStatus:
        """Roots, model, counts by status, index health, last ingest; with ``verify`` the
        index files are checked in full (checksum, and every re-rank vector against the
        database) rather than by their quick fingerprint."""
        with self.engine.connect() as conn, conn.begin():
            roots = list(q.all_roots(conn).values())
            model = q.library_model(conn)
            counts = q.status_counts(conn)
            last = q.last_run(conn)
        cache = self.index_cache
        damaged = verify and not cache.verify()
        file = cache.file()
        index = IndexStatus(
            file.kind if file else None,
            file.description if file else None,
            file.recall_at_10 if file else None,
            file.count if file else None,
            cache.in_sync(),
            str(self.index_path),
            damaged,
        )
        if (
            last is not None
            and last.status == RunStatus.RUNNING
            and not self._writer_alive(last.pid)
        ):
            # Left running by a process that was killed, or that lost its server before it
            # could record why: the next ingest records it interrupted too.
            last = replace(last, status=RunStatus.INTERRUPTED, error=self._lost_server(last))
        absent = [p for p in roots if not Path(p).is_dir()]
        return LibraryStatus(self.home.name, roots, absent, model, counts, index, last)

    def _lost_server(self, run: IngestRunRecord) -> str | None:
        """Why a run left running ended, when the database can tell: its server restarted
        since the run started, which broke the run's connection (a folder library: never)."""
        with self.engine.connect() as conn:
            restarted = q.server_started_at(conn)
        if restarted is None or restarted <= run.started_at:
            return None
        return (
            "the database connection was lost: the server restarted at "
            f"{iso_utc(restarted, 'seconds')}"
        )

    def ingest_running(self) -> bool:
        """Whether an ingest is writing now, as far as a reader can tell without touching the
        writer lock (taking it, even for an instant, could turn an ingest away as busy): the
        latest run is recorded running and, on a folder library, its process is alive."""
        with self.engine.connect() as conn:
            last = q.last_run(conn)
        if last is None or last.status != RunStatus.RUNNING:
            return False
        return self._writer_alive(last.pid)

    def _writer_alive(self, pid: int) -> bool:
        """Whether the ingest run by ``pid`` is still alive. A folder library's writers run on
        this machine: ask the kernel. On a server, whether anyone holds the writer lock."""
        if isinstance(self.home, FolderHome):
            return pid_alive(pid)
        return self.home.writer_lock("status").taken()

    def _photos_under(self, folder: str) -> int:
        """How many images the library holds at or below ``folder``."""
        held = 0
        with self.engine.connect() as conn:
            for root_id, root in q.all_roots(conn).items():
                if _within(folder, root):
                    prefix = os.fsencode(os.path.relpath(folder, root)) if folder != root else b""
                    held += len(q.known_images(conn, root_id, prefix if prefix != b"." else b""))
                elif _within(root, folder):
                    held += len(q.known_images(conn, root_id))
        return held

    def skipped(self) -> SkippedFiles:
        """What ingest leaves out under the present roots, found by walking them now: files
        that are not images (by type), and organizer export folders."""
        files: list[tuple[str, bytes]] = []
        exports: list[str] = []
        for root in self.roots():
            if not root.present:
                continue
            scan = scan_root(Path(root.record.path), exclude=self.home.exclude)
            files += [(root.record.path, relpath) for relpath in scan.skipped]
            exports += [os.path.join(root.record.path, os.fsdecode(d)) for d in scan.export_dirs]
        return SkippedFiles(files, exports)

    def failures(self) -> list[Failure]:
        """Files recorded as failed, with the reason, sorted by root and path."""
        with self.engine.connect() as conn:
            return q.failures(conn)


def _check_checkpoint(spec: ModelSpec) -> None:
    """The library's checkpoint file must still be the one its vectors were made with."""
    try:
        same = sha256_file(Path(spec.pretrained)) == spec.weights_sha256
    except OSError as exc:
        raise ModelError(
            f"checkpoint {spec.pretrained} of this library cannot be read "
            f"({exc.strerror}): put it back, or pass --pretrained with its new path"
        ) from None
    if not same:
        raise ModelError(
            f"checkpoint {spec.pretrained} changed since this library was built: "
            "restore the original file"
        )


def _why_failed(exc: Exception) -> str:
    """A failed ingest's reason, as status shows it."""
    if isinstance(exc, ConnectionLostError) or getattr(exc, "connection_invalidated", False):
        return "the database connection was lost"
    if isinstance(exc, OrganizerError):
        return str(exc)
    return f"unexpected {type(exc).__name__}"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
