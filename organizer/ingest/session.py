"""An ingest into a library, start to end: the options its settings fill in, the run as
the database records it, and the index brought in step after.

A run is recorded running when it starts and, whatever happens, finished, interrupted or
failed (with why, as ``organizer status`` shows it) when it ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy import Engine

from organizer.config import Settings
from organizer.embed import remembered
from organizer.errors import (
    ConnectionLostError,
    Interrupted,
    LibraryError,
    OrganizerError,
)
from organizer.ingest import distributed
from organizer.ingest.plan import Target, ingest_folders
from organizer.ingest.run import IngestOptions, Ingestor
from organizer.ingest.summary import IngestSummary, Progress
from organizer.model_source import ModelSource
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import RunStatus
from organizer.vectors.cache import IndexDelta
from organizer.vectors.live import LiveIndex


def check_ingest(paths: Sequence[str | Path], options: IngestOptions | None = None) -> None:
    """Refuse an ingest that cannot start, without a library: a path that is not a folder;
    on Ray, Ray missing or its cluster not answering. ``Library.ingest`` checks this first
    itself; call it before ``Library.open`` with ``create`` so that a refused ingest makes
    no library either.

    Raises:
        LibraryError: what is wrong, in one line.
    """
    ingest_folders(list(paths))
    if options is not None and options.ray is not None:
        distributed.preflight(options.ray.address)


def ingest_run(
    model: ModelSource,
    index: LiveIndex,
    targets: Callable[[], list[Target]],
    options: IngestOptions,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> IngestSummary:
    """Run an ingest of ``targets()`` (the caller holds the writer lock), recorded in the
    database, then bring the index files in step with what it wrote.

    Raises:
        ModelMismatchError: before anything is written.
        Interrupted: ``cancel()`` returned True; finished batches are committed.
    """
    engine = model.engine
    base = index.cache().base_generation()  # what the file holds as the run starts
    recorded = model.recorded()
    spec = model.requested_spec()  # refuse a model mismatch before any work
    walks = targets()
    with RecordedRun(engine) as run:
        # A new library's model input, as last loaded: decoded for while it loads.
        hint = remembered.recall(spec) if recorded is None and options.ray is None else None
        ingestor = Ingestor(
            engine,
            model.embedder,
            recorded,
            options,
            progress,
            cancel,
            run.id,
            describe=model.shape,
            input_hint=hint,
        )
        run.summary = ingestor.summary
        try:
            summary = ingestor.run(walks)
        except Interrupted:
            run.status = RunStatus.INTERRUPTED
            index.refresh(IndexDelta(base, ingestor.written))
            raise
        if model.loaded is not None:
            remembered.remember(spec, model.loaded.preprocess)
        # The index first, then the run is recorded finished: a reader (a server) that
        # waits for the ingest to end then finds the index file in step.
        problem = index.refresh(IndexDelta(base, ingestor.written))
        if problem:
            summary.problems.append(problem)
    return summary


class RecordedRun:
    """``with RecordedRun(engine) as run:`` records the run started (``run.id``) and, at the
    end, how it ended with ``run.summary`` (set it to the ingest's summary as it runs)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.id = 0
        self.summary = IngestSummary()
        self.status: RunStatus | None = None  # set to say how it ended, whatever follows

    def __enter__(self) -> RecordedRun:
        with write_transaction(self.engine) as conn:
            self.id = q.start_run(conn, os.getpid())
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        status = self.status or (
            RunStatus.FINISHED
            if exc is None
            else RunStatus.INTERRUPTED
            if isinstance(exc, Interrupted)
            else RunStatus.FAILED
        )
        failed = status == RunStatus.FAILED and isinstance(exc, Exception)
        error = why_failed(exc) if failed else None  # type: ignore[arg-type]
        # Bookkeeping only: if it fails too (a full disk, a server still down), the first
        # error is the story (status tells a server's restart from the run left running).
        s = self.summary
        with contextlib.suppress(LibraryError), write_transaction(self.engine) as conn:
            q.finish_run(conn, self.id, status, s.to_dict(), s.device, s.precision, error)


def why_failed(exc: Exception) -> str:
    """A failed ingest's reason, as status shows it."""
    if isinstance(exc, ConnectionLostError) or getattr(exc, "connection_invalidated", False):
        return "the database connection was lost"
    if isinstance(exc, OrganizerError):
        return str(exc)
    return f"unexpected {type(exc).__name__}"


def filled_options(
    options: IngestOptions, settings: Settings, exclude: tuple[Path, ...]
) -> IngestOptions:
    """The options' gaps filled from the settings, and the library's own folders (``exclude``)
    left out: an ingest never walks into the library itself."""
    s = settings
    if options.batch_size is None and s.batch_size:
        options = replace(options, batch_size=s.batch_size)
    if options.workers is None and s.workers is not None:
        options = replace(options, workers=s.workers)
    options = replace(options, device=str(s.device), jpeg_decode=str(s.jpeg_decode))
    if options.ray is not None:  # the actors load the model as this process would
        ray = replace(
            options.ray,
            device=str(s.device),
            precision=str(s.precision),
            runtime=str(s.runtime),
            jpeg_decode=str(s.jpeg_decode),
        )
        if ray.workers is None and s.workers:  # ORGANIZER_WORKERS counts actors here
            ray = replace(ray, workers=s.workers)
        options = replace(options, ray=replace(ray, offline=s.offline))
    return replace(options, exclude=(*options.exclude, *exclude))
