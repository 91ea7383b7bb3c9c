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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from organizer.choices import KSpec
from organizer.cluster_runs import AssignResult, Clustering, ExportSummary
from organizer.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, Settings
from organizer.embed import Embedder, ModelSpec, request_spec, sha256_file
from organizer.errors import Interrupted, LibraryError, ModelError, ModelMismatchError
from organizer.finder import DuplicateGroup, Finder, Results
from organizer.ingest import IngestOptions, Ingestor, IngestSummary, Progress, Target
from organizer.location import Home, Lock, open_home
from organizer.report import ReportProgress, ReportSummary, write_report
from organizer.roots import targets_for
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import (
    ClusterRunRecord,
    ClusterRunSummary,
    Failure,
    IngestRunRecord,
    LibraryModel,
    RunStatus,
)
from organizer.vectors import IndexCache, IndexDelta, VectorIndex

EmbedderLoader = Callable[[ModelSpec, Settings], Embedder]


def load_open_clip(spec: ModelSpec, settings: Settings) -> Embedder:
    """The default embedder loader: open_clip, imported only now."""
    from organizer.embed import openclip

    return openclip.load(spec, settings.device, settings.precision, settings.offline)


@dataclass(frozen=True)
class IndexStatus:
    type: str | None
    description: str | None
    recall_at_10: float | None
    count: int | None
    in_sync: bool
    path: str

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "description": self.description,
            "recall_at_10": self.recall_at_10,
            "count": self.count,
            "in_sync": self.in_sync,
            "path": self.path,
        }


@dataclass(frozen=True)
class LibraryStatus:
    """What ``organizer status`` shows."""

    library: str
    roots: list[str]
    model: LibraryModel | None
    images: dict[str, int]
    index: IndexStatus
    last_ingest: IngestRunRecord | None

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "roots": self.roots,
            "model": self.model.to_dict() if self.model else None,
            "images": self.images,
            "index": self.index.to_dict(),
            "last_ingest": self.last_ingest.to_dict() if self.last_ingest else None,
        }


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
        if self._embedder is None:
            spec = self.requested_spec()
            if spec.weights_sha256:
                _check_checkpoint(spec)
            self._embedder = self._embedder_loader(spec, self.settings)
        return self._embedder

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
        options = self._ingest_options(options or IngestOptions())
        with self._writer("ingest", wait):
            base = self.index_cache.base_generation()  # what the file holds as the run starts
            model = self.model()
            self.requested_spec()  # refuse a model mismatch before any work
            targets = self._targets(paths)
            ingestor = Ingestor(
                self.engine,
                self.embedder,
                model.id if model else None,
                options,
                progress,
                cancel,
            )
            with write_transaction(self.engine) as conn:
                run_id = q.start_run(conn, os.getpid())
            status = RunStatus.FAILED
            try:
                summary = ingestor.run(targets)
                status = RunStatus.FINISHED
            except Interrupted:
                status = RunStatus.INTERRUPTED
                self.refresh_index(IndexDelta(base, ingestor.written))
                raise
            finally:
                self._finish_run(run_id, status, ingestor.summary)
            problem = self.refresh_index(IndexDelta(base, ingestor.written))
            if problem:
                summary.problems.append(problem)
        return summary

    def _ingest_options(self, options: IngestOptions) -> IngestOptions:
        """Fill the options' gaps from the settings; never walk into the library itself."""
        if options.batch_size is None and self.settings.batch_size:
            options = replace(options, batch_size=self.settings.batch_size)
        if options.workers is None and self.settings.workers is not None:
            options = replace(options, workers=self.settings.workers)
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

    def _finish_run(self, run_id: int, status: RunStatus, summary: IngestSummary) -> None:
        # Bookkeeping only: if it fails too (a full disk), the first error is the story.
        with contextlib.suppress(LibraryError), write_transaction(self.engine) as conn:
            q.finish_run(conn, run_id, status, summary.to_dict(), summary.device, summary.precision)

    def _targets(self, paths: Sequence[str | Path]) -> list[Target]:
        with self.engine.connect() as conn:
            return targets_for(list(paths), q.all_roots(conn))

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

    def vectors(self) -> VectorIndex:
        """The vector index: kept in memory while the database's vectors do not change, read
        from its file when that matches the database, else rebuilt."""
        with self.engine.connect() as conn:
            generation = q.index_generation(conn)
        if self._index is not None and self._index[0] == generation:
            return self._index[1]
        index = self.index_cache.load()
        self._index = (generation, index)
        return index

    def refresh_index(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the index file in step with the database (after writes, or when damaged);
        returns a warning when the file could not be written."""
        return self.index_cache.refresh(delta)

    # -- search ----------------------------------------------------------------------------

    @property
    def finder(self) -> Finder:
        return Finder(self.engine, self.vectors, self.embedder)

    def similar(
        self, photo: str | Path, limit: int = 12, threshold: float | None = None
    ) -> Results:
        """Images most like ``photo`` (a library file: its stored vector, no model; any other
        image: embedded on the fly, not added). The photo itself is not among the results."""
        return self.finder.similar(photo, limit, threshold)

    def search(
        self,
        query: str | None,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        limit: int = 12,
        threshold: float | None = None,
    ) -> Results:
        """Text-to-image search; each term (query, --plus, --minus) is a text or an image path."""
        return self.finder.search(query, plus, minus, limit, threshold)

    def duplicates(self, threshold: float = 0.96) -> list[DuplicateGroup]:
        """Groups of identical and near-identical images, each with a suggested keeper."""
        return self.finder.duplicates(threshold)

    # -- clusters --------------------------------------------------------------------------

    @property
    def clustering(self) -> Clustering:
        return Clustering(self.engine, self.embedder, self.home.cache_dir)

    def cluster(self, k: KSpec = "auto", **options: object) -> ClusterRunSummary:
        """K-means over the library's vectors, stored as a new run (see Clustering.run)."""
        return self.clustering.run(k, **options)

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
        """One folder per cluster of links to (or copies of) its images (see Clustering)."""
        return self.clustering.export(run_id, target, mode, force)

    # -- report ----------------------------------------------------------------------------

    def report(
        self,
        output: Path,
        run_id: int | None = None,
        progress: Callable[[ReportProgress], None] | None = None,
        **options: object,
    ) -> ReportSummary:
        """Write the self-contained HTML report (see organizer.report.write_report)."""
        return write_report(
            self.engine, Path(output).expanduser(), run_id, progress=progress, **options
        )

    # -- status ----------------------------------------------------------------------------

    def status(self) -> LibraryStatus:
        """Roots, model, counts by status, index health, last ingest."""
        with self.engine.connect() as conn, conn.begin():
            roots = list(q.all_roots(conn).values())
            model = q.library_model(conn)
            counts = q.status_counts(conn)
            last = q.last_run(conn)
        cache = self.index_cache
        file = cache.file()
        index = IndexStatus(
            file.kind if file else None,
            file.description if file else None,
            file.recall_at_10 if file else None,
            file.count if file else None,
            cache.in_sync(),
            str(self.index_path),
        )
        return LibraryStatus(self.home.name, roots, model, counts, index, last)

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
