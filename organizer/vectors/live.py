"""The vector index an open library keeps in memory, in step with its database.

The database's generation counter says when the vectors changed. A command loads the new
state when it next asks. A server (see :meth:`LiveIndex.follow_in_background`) keeps the
index of the last finished state while an ingest writes, and loads a newer one in the
background, swapped in when ready: no request waits for an index to be read or rebuilt (but
the first), and none rebuilds it batch by batch behind a writer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from organizer.redact import screen
from organizer.store.records import IndexSettingsRecord
from organizer.vectors import sharded
from organizer.vectors.cache import IndexBuild, IndexCache, IndexDelta
from organizer.vectors.index import VectorIndex


@dataclass(frozen=True)
class _Background:
    busy: Callable[[], bool]  # whether an ingest is writing now: keep the index served
    warn: Callable[[str], None]  # hears why a newer index could not be loaded


class LiveIndex:
    """One library's index: in memory, with the generation it holds, and on disk."""

    def __init__(self, cache: Callable[[], IndexCache]):
        """``cache()`` gives the library's index files (see :class:`IndexCache`)."""
        self.cache = cache
        self._lock = threading.Lock()
        self._live: tuple[int, VectorIndex] | None = None
        self._background: _Background | None = None
        self._loading = False  # a newer index is being loaded in the background

    def follow_in_background(self, busy: Callable[[], bool], warn: Callable[[str], None]) -> None:
        """From now on, serve: never write the index files, keep the index in memory while
        ``busy()``, and load a newer one on a thread of its own (``warn`` hears a failure;
        the old index goes on serving)."""
        self._background = _Background(busy, warn)

    def current(self, save: bool = True) -> tuple[int, VectorIndex]:
        """(generation, index) of the state searches answer from now."""
        if self._background is not None:
            return self._served()
        generation = self.cache().generation()
        live = self._live
        if live is not None and live[0] == generation:
            return live
        live = (generation, self._load(save))
        self._live = live
        return live

    def build(self, settings: IndexSettingsRecord) -> IndexBuild:
        """Rebuild the files now, as ``settings`` ask (the caller holds the writer lock)."""
        built = self.cache().build(settings)
        self._live = None
        return built

    def merge(self, folder: Path) -> IndexBuild:
        """Make the files of the shards filled in ``folder`` (the caller holds the lock)."""
        cache = self.cache()
        built = sharded.merge(cache.engine, folder, cache)
        self._live = None
        return built

    def refresh(self, delta: IndexDelta | None = None) -> str | None:
        """Bring the files in step with the database; a warning when they could not be
        written."""
        return self.cache().refresh(delta)

    def _load(self, save: bool) -> VectorIndex:
        cache = self.cache()
        if not save:
            cache.may_write = lambda: contextlib.nullcontext(False)
        return cache.load()

    def _served(self) -> tuple[int, VectorIndex]:
        assert self._background is not None
        with self._lock:
            generation = self.cache().generation()
            if self._live is None:
                self._live = (generation, self._load(False))
            elif self._live[0] != generation and not self._loading and not self._background.busy():
                self._loading = True
                threading.Thread(
                    target=self._reload, args=(generation,), name="organizer-index", daemon=True
                ).start()
            return self._live

    def catch_up(self) -> None:
        """Serve the database's state now, loaded on the caller's thread: for a server that
        has just changed the vectors itself, whose next answer must show the change."""
        generation = self.cache().generation()
        index = self._load(False)
        with self._lock:
            # A background load may have swapped in a later state meanwhile (the counter only
            # grows): keep that one.
            if self._live is None or self._live[0] < generation:
                self._live = (generation, index)

    def _reload(self, generation: int) -> None:
        assert self._background is not None
        try:
            index = self._load(False)
            with self._lock:
                self._live = (generation, index)
        except Exception as exc:  # the old index keeps serving; say why
            self._background.warn(f"could not load the new index: {screen(str(exc))}")
        finally:
            self._loading = False
