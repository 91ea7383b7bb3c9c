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
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from organizer import status as state
from organizer.choices import Decision, KSpec, Sort
from organizer.cluster_runs import AssignResult, Clustering, ExportSummary
from organizer.config import Settings
from organizer.duplicates import find as dupes
from organizer.duplicates.clean import CleanSummary, CleanUp, UndoSummary
from organizer.duplicates.find import DuplicateOptions
from organizer.duplicates.groups import DecidedFiles, Duplicates
from organizer.duplicates.journal import FOLDER as CLEAN_UPS
from organizer.embed import Embedder, ModelSpec
from organizer.events import EventList, EventRules, Events
from organizer.export import check_target
from organizer.filters import PhotoFilter
from organizer.finder import Finder, Results
from organizer.ingest import IngestOptions, IngestSummary, Progress
from organizer.ingest.session import check_ingest, filled_options, ingest_run
from organizer.location import Home, Lock, index_cache, open_home
from organizer.model_source import EmbedderLoader, ModelSource, load_open_clip
from organizer.report import ReportProgress, ReportSummary, write_report
from organizer.report.runmap import MAP_POINTS, RunMap, run_map
from organizer.roots import RootChange, Roots, RootStatus
from organizer.sources import Storage
from organizer.status import LibraryStatus, SkippedFiles
from organizer.store.records import (
    ClusterRunRecord,
    ClusterRunSummary,
    Failure,
    ImageRecord,
    IndexSettingsRecord,
    LibraryModel,
)
from organizer.vectors import IndexBuild, IndexDelta, VectorIndex, sharded
from organizer.vectors.live import LiveIndex

Found = TypeVar("Found", Results, Duplicates)

__all__ = ["EmbedderLoader", "Library", "LibraryStatus", "SkippedFiles", "load_open_clip"]


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
        self._model = ModelSource(
            self.engine, settings, embedder_loader, embedder_loader is load_open_clip
        )
        self._writing = False  # this process holds the writer lock
        self._files = lambda: index_cache(home, lambda: self._writing)  # the index's files
        self._index = LiveIndex(self._files)
        self._roots = Roots(
            self.engine, lambda purpose: self._writer(purpose, False), self.refresh_index
        )

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
        return self._model.recorded()

    def requested_spec(self) -> ModelSpec:
        """The model the settings ask for, gaps filled from the library's record or defaults.

        Raises:
            ModelMismatchError: the settings name another model than the library's.
        """
        return self._model.requested_spec()

    def embedder(self) -> Embedder:
        """The library's model (or the requested one for a new library), loaded once."""
        return self._model.embedder()

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
        options = filled_options(options or IngestOptions(), self.settings, self.home.exclude)
        options = replace(options, storage=self.storage())
        if options.ray is not None:  # the workers load it; it must still be the library's
            self._model.checked_spec()
        with self._writer("ingest", wait):
            targets = functools.partial(self._roots.targets, list(paths))
            return ingest_run(self._model, self._index, targets, options, progress, cancel)

    check_ingest = staticmethod(check_ingest)  # see organizer.ingest.session.check_ingest

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

    # -- roots -----------------------------------------------------------------------------

    def storage(self) -> Storage:
        """How this library's buckets are reached (an endpoint given now, or recorded)."""
        return self._roots.storage(self.settings.endpoint_url)

    def roots(self) -> list[RootStatus]:
        """Every root: is its folder there now, and its images by status."""
        return self._roots.all()

    def remove_root(self, path: str | Path, dry_run: bool = False) -> RootChange:
        """Forget a root and everything recorded under it (never touches its files).

        Raises:
            LibraryError: ``path`` is not a root; LibraryBusyError: another writer is busy.
        """
        return self._roots.remove(path, dry_run)

    def move_root(self, old: str | Path, new: str | Path, dry_run: bool = False) -> RootChange:
        """Point a root at the folder its files moved to, once a sample of them is checked;
        ids, vectors and clusters are kept (see :meth:`Roots.move`, and what it raises)."""
        return self._roots.move(old, new, dry_run)

    # -- the vector index ------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.home.index_path

    def vectors(self, save: bool = True) -> VectorIndex:
        """The vector index: kept in memory while the database's vectors do not change, read
        from its file when that matches the database, else rebuilt (and, with ``save``,
        written back when no writer runs; a server never writes it)."""
        return self._index.current(save)[1]

    def index_generation(self) -> int:
        """The database state the index in memory holds: searches answer from it."""
        return self._index.current(save=False)[0]

    def serve_index(self, warn: Callable[[str], None]) -> None:
        """Keep the index of the last finished state while an ingest writes, and load a
        newer one in the background (``warn`` hears a failure): for a server, whose
        requests never wait for an index to be rebuilt, nor write its files."""
        self._index.follow_in_background(self.ingest_running, warn)

    def index_catch_up(self) -> None:
        """For a server: serve the index of the database's state now, loaded on this thread
        (after a change the server made, such as a clean-up, that its next page must show)."""
        self._index.catch_up()

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
            return self._index.build(settings)

    @property
    def shards(self) -> sharded.Shards:
        """The index built by several machines: train, fill a part, merge (see
        organizer.vectors.sharded)."""
        return sharded.Shards(self.engine, self._writer, self._index.merge)

    def refresh_index(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the index file in step with the database (after writes, or when damaged);
        returns a warning when the file could not be written."""
        return self._index.refresh(delta)

    # -- search ----------------------------------------------------------------------------
    # Each search leaves out the images under absent roots, unless ``include_offline``, and
    # its results say what that left out. ``offset`` skips the first results (a page).

    def finder(self, include_offline: bool = False) -> Finder:
        """Search over the library; images under absent roots are left out unless asked."""
        return Finder(self.engine, self.vectors, self.embedder, self._roots.hidden(include_offline))

    def _search(
        self,
        include_offline: bool,
        ask: Callable[[Finder], Found],
        where: PhotoFilter | None = None,
    ) -> Found:
        shown = self._roots.shown(include_offline)
        found = ask(Finder(self.engine, self.vectors, self.embedder, shown.hidden, where))
        return replace(found, offline=shown.offline)

    def _results(
        self,
        include_offline: bool,
        ask: Callable[[Finder], Results],
        where: PhotoFilter | None,
        sort: Sort,
    ) -> Results:
        found = self._search(include_offline, ask, where)
        return replace(found, where=where or PhotoFilter()).sorted(sort)

    def similar(
        self,
        photo: str | Path,
        limit: int = 12,
        threshold: float | None = None,
        include_offline: bool = False,
        offset: int = 0,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Images most like ``photo`` (a library file: its stored vector, no model; any other
        image: embedded on the fly, not added). The photo itself is not among the results.
        ``where`` keeps only images it matches (``limit`` of them whenever that many match);
        ``sort`` orders the results by score or by date taken."""
        return self._results(
            include_offline, lambda f: f.similar(photo, limit, threshold, offset), where, sort
        )

    def similar_to(
        self,
        image_id: int,
        limit: int = 12,
        offset: int = 0,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Images most like the library's image ``image_id``, itself left out.

        Raises:
            QueryError: no image of that id is shown (not ok, or under an absent root).
        """
        return self._results(
            False, lambda f: f.similar_to(image_id, limit, None, offset), where, sort
        )

    def similar_pixels(
        self,
        pixels: np.ndarray,
        label: str,
        limit: int = 12,
        offset: int = 0,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Images most like a picture decoded into the model's input (see
        ``embedder().preprocess``); it is not added. ``label`` names it in the results."""
        return self._results(
            False, lambda f: f.similar_pixels(pixels, label, limit, offset), where, sort
        )

    def search(
        self,
        query: str | None,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        limit: int = 12,
        threshold: float | None = None,
        include_offline: bool = False,
        offset: int = 0,
        texts_only: bool = False,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Text-to-image search; each term (query, --plus, --minus) is a text or an image path
        (with ``texts_only``, always a text: a server never reads a path it is sent)."""
        return self._results(
            include_offline,
            lambda f: f.search(query, plus, minus, limit, threshold, offset, texts_only),
            where,
            sort,
        )

    def duplicates(
        self,
        options: DuplicateOptions | None = None,
        include_offline: bool = False,
        where: PhotoFilter | None = None,
    ) -> Duplicates:
        """Groups of exact copies, near copies and bursts, each with its keeper and why; with
        ``where``, groups of the images it keeps. Decided groups are left out."""
        options = options or DuplicateOptions()
        return self._search(include_offline, lambda f: dupes.find(self.engine, f, options), where)

    def mark_duplicates(
        self, decision: Decision, targets: Sequence[str], threshold: float | None = None
    ) -> DecidedFiles:
        """Record a decision about a duplicate group (its id) or files (their paths): kept by
        content, so it holds through moves, renames, re-scans and a new model."""
        finder = self.finder()
        return dupes.mark(
            self.engine, finder, decision, targets, threshold or DuplicateOptions().threshold
        )

    def unmark_duplicates(self, decision_id: int) -> None:
        """Take a duplicate decision back."""
        dupes.take_back(self.engine, decision_id)

    def image(self, image_id: int) -> ImageRecord | None:
        """An image that may be shown (ok, under a present root), or None."""
        return self.finder().image(image_id)

    # -- clean-ups --------------------------------------------------------------------------

    def clean(
        self, plan: str | Path, to: str | Path | None = None, dry_run: bool = False
    ) -> CleanSummary:
        """Move the files a clean-up plan names into the trash, each after checking it still
        has the planned content (see organizer.duplicates.clean); the moves are journalled
        first, trashed images leave every result, and :meth:`undo_clean` puts them back.
        An interrupted clean-up of the same plan is completed instead.

        Raises:
            PlanError: the plan cannot be read or names no file under this library's roots;
            OptionsError: ``to`` is inside a root, not hidden; LibraryBusyError: another
            writer is busy; CleanError: the journal or the library cannot be written.
        """
        target = None if to is None else Path(to)
        return self._clean_ups().clean(Path(plan).expanduser(), target, dry_run)

    def undo_clean(self, journal: str | Path) -> UndoSummary:
        """Put back what a clean-up moved (``journal``: its path, or "last"), refusing any
        file whose old path is taken now or whose trashed copy changed.

        Raises:
            CleanError: no such journal, a damaged one, or another library's;
            LibraryBusyError: another writer is busy.
        """
        return self._clean_ups().undo(journal)

    def last_clean(self) -> Path | None:
        """The journal of the latest clean-up, or None."""
        return self._clean_ups().last()

    def _clean_ups(self) -> CleanUp:
        return CleanUp(
            self.engine,
            self.home.cache_dir / CLEAN_UPS,
            self.home.name,
            lambda: self._writer("clean", False),
            self.refresh_index,
            self.storage(),
        )

    # -- clusters --------------------------------------------------------------------------

    @property
    def clustering(self) -> Clustering:
        return Clustering(self.engine, self.embedder, self.home.cache_dir)

    def cluster(
        self,
        k: KSpec = "auto",
        include_offline: bool = False,
        where: PhotoFilter | None = None,
        **options: Any,
    ) -> ClusterRunSummary:
        """K-means over the library's vectors (not those under absent roots, unless
        ``include_offline``; only those ``where`` keeps), stored as a new run (see
        Clustering.run); it says what absent roots left out."""
        shown = self._roots.shown(include_offline)
        clustering = Clustering(self.engine, self.embedder, self.home.cache_dir, shown.roots, where)
        return replace(clustering.run(k, **options), offline=shown.offline)

    def clusters(self, run_id: int | None = None) -> ClusterRunSummary:
        """A stored run (default: the latest) with its clusters and their members."""
        return self.clustering.summary(run_id)

    def runs(self) -> list[ClusterRunRecord]:
        """Every stored cluster run, oldest first."""
        return self.clustering.runs()

    def cluster_of(self, image_id: int) -> tuple[int, int, str | None] | None:
        """(run id, cluster number, label) of an image in the latest run that holds it."""
        return self.clustering.cluster_of(image_id)

    def run_map(self, run_id: int | None = None, max_points: int = MAP_POINTS) -> RunMap:
        """A run's 2-D map: a seeded sample of at most ``max_points`` of its images."""
        return run_map(self.engine, self.clusters(run_id), max_points)

    def assign_new(self, run_id: int | None = None) -> AssignResult:
        """Put images ingested after a run into its nearest clusters (see Clustering)."""
        return self.clustering.assign_new(run_id)

    def export(
        self,
        run_id: int | None,
        target: Path,
        mode: str | None = None,
        force: bool = False,
        where: PhotoFilter | None = None,
    ) -> ExportSummary:
        """One folder per cluster of links to (or copies of) its images (see export_run);
        warns when the folder is inside a root (ingest skips it: it is marked). ``mode``
        None links to files on this machine and copies images in buckets and tar shards.

        Raises:
            OptionsError: ``mode`` "symlink" for images in a bucket or a tar shard.
            ClusterError: the folder holds photos of the library (marked, ingest would skip
                them and they would drop out of the library).
        """
        clustering = Clustering(self.engine, self.embedder, self.home.cache_dir, where=where)
        storage = self.storage()
        return self._export(target, lambda: clustering.export(run_id, target, mode, force, storage))

    def _export(self, target: Path, write: Callable[[], ExportSummary]) -> ExportSummary:
        real = os.path.realpath(Path(target).expanduser())
        warnings = check_target(real, self._roots.containing(real), self._roots.photos_under(real))
        summary = write()
        return replace(summary, warnings=[*summary.warnings, *warnings]) if warnings else summary

    # -- events ----------------------------------------------------------------------------

    def events(
        self,
        rules: EventRules | None = None,
        where: PhotoFilter | None = None,
        include_offline: bool = False,
    ) -> EventList:
        """The dated photos (those ``where`` keeps) split into named events by gaps in time
        and changes of place (see organizer.events); absent roots as :meth:`cluster`."""
        return self._events(include_offline).find(rules, where)

    def export_events(
        self,
        target: Path,
        mode: str | None = None,
        force: bool = False,
        rules: EventRules | None = None,
        where: PhotoFilter | None = None,
    ) -> ExportSummary:
        """One folder per event, as :meth:`export` makes one per cluster (and its checks)."""
        events = self._events(include_offline=False)
        storage = self.storage()
        return self._export(
            target, lambda: events.export(target, mode, force, rules, where, storage)
        )

    def _events(self, include_offline: bool) -> Events:
        shown = self._roots.shown(include_offline)
        return Events(self.engine, self.embedder, self.home.cache_dir, shown.roots, shown.offline)

    # -- report ----------------------------------------------------------------------------

    def report(
        self,
        output: Path,
        run_id: int | None = None,
        progress: Callable[[ReportProgress], None] | None = None,
        include_offline: bool = False,
        where: PhotoFilter | None = None,
        **options: Any,
    ) -> ReportSummary:
        """Write the self-contained HTML report (see organizer.report.write_report); images
        under absent roots are left out unless ``include_offline``, and it says so."""
        shown = self._roots.shown(include_offline)
        return write_report(
            self.engine,
            Path(output).expanduser(),
            run_id,
            progress=progress,
            roots=shown.roots,
            offline=shown.offline,
            where=where,
            storage=self.storage(),
            **options,
        )

    # -- status ----------------------------------------------------------------------------

    def status(self, verify: bool = False) -> LibraryStatus:
        """Roots, model, counts by status, index health, last ingest; with ``verify`` the
        index files are checked in full (see organizer.status.library_status)."""
        return state.library_status(self.engine, self.home, self._files(), verify)

    def ingest_running(self) -> bool:
        """Whether an ingest is writing now, as far as a reader can tell without touching the
        writer lock (see organizer.status.ingest_running)."""
        return state.ingest_running(self.engine, self.home)

    def skipped(self) -> SkippedFiles:
        """What ingest leaves out under the present roots, found by walking them now: files
        that are not images (by type), and organizer export folders."""
        return state.skipped_files(self.roots(), self.home.exclude)

    def failures(self) -> list[Failure]:
        """Files recorded as failed, with the reason, sorted by root and path."""
        return state.failures(self.engine)
