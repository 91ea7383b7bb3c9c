"""What the web app asks of a library, safe to call from the server's worker threads.

One :class:`Library` stays open for the server's life: its model stays loaded (a text query
costs one text-tower pass, not a model load) and its vector index stays in memory. The
library serves its index (see :meth:`Library.serve_index`): while an ingest is writing, the
index of the last finished state is kept, and no request rebuilds it or waits for the writer.

Every answer is the library's own (the CLI's answer to the same question); this module adds
only what a web app needs: its query grammar, pages of results, files and thumbnails, and a
memo of the answers that cost most, kept per index state and dropped after every change the
server makes (with ``--allow-changes``: the duplicate decisions of :mod:`.changes`).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from organizer.atomic import write_bytes_atomic
from organizer.choices import DuplicateKind, Sort
from organizer.duplicates.find import DuplicateOptions
from organizer.duplicates.groups import DuplicateGroup, Duplicates
from organizer.errors import ClusterError, ImageError, QueryError
from organizer.events import Event, EventList
from organizer.filters import PhotoFilter
from organizer.finder import Result, Results
from organizer.imaging import decode, thumbnail
from organizer.library import Library
from organizer.paths import is_within
from organizer.photo_words import PhotoFacts, photo_facts
from organizer.redact import hide_passwords
from organizer.scan import display_text, is_raw_name
from organizer.serve.uploads import query_pixels
from organizer.sources import is_local_folder, read_stored
from organizer.store.records import ClusterRunRecord, ClusterRunSummary, Failure, ImageRecord

THUMB_SIDES = {"s": 256, "l": 1280}
THUMB_QUALITY = 82
MAX_SOURCE_BYTES = 512 * 1024 * 1024
NEAR_DUPLICATE = 0.96
MAX_TERMS = 16
MAX_QUERY_CHARS = 1000
GROUPS_PAGE = 30

T = TypeVar("T")


class NotFound(LookupError):
    """No such image (or not one that may be shown): the server answers 404."""


class Unshown(NotFound):
    """An image of the library whose file the server will not serve; says why, for people."""


LEADS_OUT = "Not shown: a link that leads out of its folder"
GONE = "Not shown: the file is no longer there"
NOT_A_FILE = "Not shown: not a regular file"


@dataclass(frozen=True)
class ImagePage:
    """An image with what its page shows."""

    record: ImageRecord
    cluster: tuple[int, int, str | None] | None  # (run id, cluster number, label)
    similar: list[Result]
    duplicates: list[Result]
    facts: PhotoFacts  # with coordinates: this page is the one place the web app shows them


@dataclass(frozen=True)
class Original:
    """An image's original as the server sends it: a file on this machine (``path``), or the
    bytes of an object in a bucket or of a shard's member (``data``); ``name`` gives its
    type."""

    name: str
    path: str | None = None
    data: bytes = b""


@dataclass(frozen=True)
class FoundDuplicates:
    """The duplicate groups of an index state, with each kind's list made once."""

    found: Duplicates
    by_kind: dict[DuplicateKind, list[DuplicateGroup]]
    by_id: dict[str, DuplicateGroup]

    @classmethod
    def of(cls, found: Duplicates) -> FoundDuplicates:
        by_kind: dict[DuplicateKind, list[DuplicateGroup]] = {k: [] for k in DuplicateKind}
        for g in found.groups:
            by_kind[g.kind].append(g)
        return cls(found, by_kind, {g.id: g for g in found.groups})


@dataclass(frozen=True)
class DuplicatePage:
    """One page of one kind's duplicate groups: ``groups`` are numbers ``first`` to
    ``first + len(groups) - 1`` (from 1) of ``total``."""

    kind: DuplicateKind
    counts: dict[DuplicateKind, int]
    groups: list[DuplicateGroup]
    number: int
    pages: int
    first: int
    total: int

    @property
    def last(self) -> int:
        return self.first + len(self.groups) - 1


class Service:
    """A library opened for serving: searches, pages' data, files and thumbnails."""

    def __init__(self, lib: Library):
        self.lib = lib
        lib.serve_index(lambda why: print(hide_passwords(f"warning: {why}"), file=sys.stderr))
        self._lock = threading.Lock()  # guards the memo
        self._memo: dict[tuple, object] = {}  # answers for the state of ``_memo_of``
        self._memo_of: tuple[int, int] | None = None  # (index generation, changes made)
        self._changes = 0  # changes this server made: each starts the memo afresh
        self.thumbs = lib.home.cache_dir / "thumbs"

    def warm_up(self) -> None:
        """Load the index and the model now (the server calls this in the background)."""
        self.lib.vectors()
        if self.lib.model() is not None:
            self.lib.embedder().embed_texts(["a photo"])  # opens (or exports) the text tower

    def _remembered(self, key: tuple, compute: Callable[[], T]) -> T:
        """``compute()``, once per index state and change made: a changed library starts
        the memo afresh."""
        state = self._state()
        with self._lock:
            if self._memo_of != state:
                self._memo, self._memo_of = {}, state
            found = self._memo.get(key)
        if found is None:
            found = compute()
            now = self.lib.index_generation()
            with self._lock:
                # Neither the index was swapped nor a change made meanwhile.
                if self._memo_of == state == (now, self._changes):
                    self._memo[key] = found
        return found  # type: ignore[return-value]

    def _state(self) -> tuple[int, int]:
        generation = self.lib.index_generation()
        with self._lock:
            return generation, self._changes

    def changed(self) -> None:
        """Forget every remembered answer: this server changed the library."""
        with self._lock:
            self._changes += 1
            self._memo, self._memo_of = {}, None

    # -- searches ----------------------------------------------------------------------------

    def search_text(
        self,
        text: str,
        limit: int,
        offset: int = 0,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Text search with the CLI's grammar: words, ``+term`` adds, ``-term`` subtracts.
        Every term is a text: the server never reads a path a client names. ``where`` and
        ``sort`` as on the command line."""
        query, plus, minus = parse_query(text)
        found = self.lib.search(
            query, plus, minus, limit, offset=offset, texts_only=True, where=where, sort=sort
        )
        return replace(found, query=" ".join(text.split()))

    def search_image(
        self,
        data: bytes,
        name: str,
        limit: int,
        offset: int = 0,
        where: PhotoFilter | None = None,
        sort: Sort = Sort.SCORE,
    ) -> Results:
        """Images like an uploaded picture (embedded, not added to the library), decoded
        within what an upload may cost (see :mod:`organizer.serve.uploads`)."""
        pixels = query_pixels(data, self.lib.embedder().preprocess)
        label = display_text(name) or "uploaded image"
        return self.lib.similar_pixels(pixels, label, limit, offset, where, sort)

    def similar_to(self, image_id: int, limit: int, offset: int = 0) -> Results:
        self.image(image_id)
        return self.lib.similar_to(image_id, limit, offset)

    def duplicates(self) -> FoundDuplicates:
        """Duplicate groups of the index served now (the CLI's defaults, with the decisions
        standing), computed once per index state and change made."""
        return self._remembered(
            ("duplicates",),
            lambda: FoundDuplicates.of(
                self.lib.duplicates(DuplicateOptions(threshold=NEAR_DUPLICATE, show_decided=True))
            ),
        )

    def duplicate_page(
        self, kind: DuplicateKind | None, number: int, size: int = GROUPS_PAGE
    ) -> DuplicatePage:
        """Page ``number`` (from 1; past the last: the last) of a kind's groups; no kind: the
        first kind that has groups. Slices the remembered groups: as fast at 10,000 groups."""
        found = self.duplicates()
        counts = {k: len(v) for k, v in found.by_kind.items()}
        if kind is None:
            kind = next((k for k in DuplicateKind if counts[k]), DuplicateKind.EXACT)
        groups = found.by_kind[kind]
        pages = max(1, -(-len(groups) // size))
        number = min(max(number, 1), pages)
        start = (number - 1) * size
        return DuplicatePage(
            kind, counts, groups[start : start + size], number, pages, start + 1, len(groups)
        )

    def image_page(self, image_id: int, limit: int = 12) -> ImagePage:
        record = self.image(image_id)
        # One ranking serves both lists: the near-duplicates are the top of the similar ones.
        hits = self.lib.similar_to(image_id, max(limit, 50)).results
        near = [h for h in hits if h.score >= NEAR_DUPLICATE]
        facts = photo_facts(record.meta, record.place, coordinates=True)
        return ImagePage(record, self.lib.cluster_of(image_id), hits[:limit], near, facts)

    # -- clusters ----------------------------------------------------------------------------

    def runs(self) -> list[ClusterRunRecord]:
        return self.lib.runs()

    def run(self, run_id: int | None) -> ClusterRunSummary:
        try:
            return self.lib.clusters(run_id)
        except ClusterError as exc:
            raise NotFound(str(exc)) from None

    def map_points(self, run_id: int | None) -> dict:
        """The run's t-SNE map (a seeded sample of its images), computed once per run and
        library state: ``{"run", "points": [[image_id, x, y, cluster], ...], "clusters"}``."""
        summary = self.run(run_id)
        return self._remembered(("map", summary.run.id), lambda: self._map(summary.run.id))

    def _map(self, run_id: int) -> dict:
        try:
            return self.lib.run_map(run_id).to_dict()
        except ClusterError as exc:  # the run was deleted meanwhile
            raise NotFound(str(exc)) from None

    # -- events ------------------------------------------------------------------------------

    def events(self) -> EventList:
        """The library's events (the CLI's defaults), computed once per library state."""
        return self._remembered(("events",), self.lib.events)

    def event(self, number: int) -> Event:
        found = self.events().event(number)
        if found is None:
            raise NotFound(number)
        return found

    # -- files -------------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRecord:
        """An image the server may show: ok and under a present root."""
        record = self.lib.image(image_id)
        if record is None:
            raise NotFound(image_id)
        return record

    def original(self, image_id: int) -> Original:
        """An image's original: the real path of a file (refused if it leads out of its
        root), or the bytes of an object or a shard's member.

        Raises:
            NotFound: no such image, or its original cannot be read now.
            StorageError: a bucket's service fails (the server answers 503).
        """
        record = self.image(image_id)
        if is_local_folder(record.root):
            real = _locate(record.root, record.relpath)
            return Original(real, path=real)
        return Original(os.fsdecode(record.relpath), data=self._stored(record, image_id))

    def _stored(self, record: ImageRecord, image_id: int) -> bytes:
        """The bytes of an image under a bucket or a shard root, within MAX_SOURCE_BYTES."""
        try:
            data = read_stored(
                record.root, record.relpath, self.lib.storage(), limit=MAX_SOURCE_BYTES
            )
        except ImageError:
            raise NotFound(image_id) from None
        if len(data) > MAX_SOURCE_BYTES:  # a shard's member is only measured once read
            raise NotFound(image_id)
        return data

    def unshown(self, item: Any) -> str | None:
        """Why the file of a result, member or record (anything with ``root`` and
        ``relpath``) will not be served, or None: pages show a tile that says so rather than
        a broken picture. Objects in buckets and shards' members are not checked here (a
        request each): one that cannot be read gets a 404 when asked for."""
        if not is_local_folder(item.root):
            return None
        try:
            _locate(item.root, item.relpath)
        except Unshown as exc:
            return str(exc)
        return None

    def thumb(self, image_id: int, size: str = "s") -> Path:
        """A cached JPEG no larger than the size's side, made from the pixels alone (no EXIF,
        GPS or ICC of the original); the cache is keyed by the file's content hash."""
        side = THUMB_SIDES.get(size)
        if side is None:
            raise NotFound(size)
        record = self.image(image_id)
        local = is_local_folder(record.root)
        real = _locate(record.root, record.relpath) if local else None
        stamp = (record.content_hash or f"{record.size}-{record.mtime_ns}")[:24]
        target = self.thumbs / str(side) / f"{image_id}-{stamp}.jpg"
        if target.is_file():
            return target
        data = self._read_local(real, image_id) if real else self._stored(record, image_id)
        try:
            image, _ = decode(
                data, min_size=(side // 2, side // 2), raw=is_raw_name(record.relpath)
            )
        except ImageError:
            raise NotFound(image_id) from None
        small = Image.fromarray(np.asarray(thumbnail(image, side).convert("RGB")))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=THUMB_QUALITY)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, buffer.getvalue(), fsync=False, prefix=".thumb-")
        return target

    @staticmethod
    def _read_local(real: str, image_id: int) -> bytes:
        try:
            if os.path.getsize(real) > MAX_SOURCE_BYTES:
                raise NotFound(image_id)
            with open(real, "rb") as fh:
                return fh.read()
        except OSError:
            raise NotFound(image_id) from None

    def failures(self) -> list[Failure]:
        return self.lib.failures()


def parse_query(text: str) -> tuple[str | None, list[str], list[str]]:
    """``"beach -people +sunset"`` -> ("beach", ["sunset"], ["people"]): words without a sign
    form the query; a word starting with ``+``/``-`` is a term of its own (quote-free)."""
    words, plus, minus = [], [], []
    for word in text.split():
        if word.startswith("+") and len(word) > 1:
            plus.append(word[1:])
        elif word.startswith("-") and len(word) > 1:
            minus.append(word[1:])
        else:
            words.append(word)
    query = " ".join(words) or None
    if query is None and not plus:
        raise QueryError("empty query: type what to look for")
    if len(text) > MAX_QUERY_CHARS or len(plus) + len(minus) + 1 > MAX_TERMS:
        raise QueryError(
            f"a query of at most {MAX_QUERY_CHARS} characters and {MAX_TERMS} terms, please"
        )
    return query, plus, minus


def _locate(root: str, relpath: bytes) -> str:
    """The real path of a file the server may serve: inside its root once links are
    resolved, and a regular file. Else :class:`Unshown` says why."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.fsdecode(os.path.join(os.fsencode(root), relpath)))
    if not is_within(real, real_root, strictly=True):
        raise Unshown(LEADS_OUT)
    if not os.path.isfile(real):
        raise Unshown(NOT_A_FILE if os.path.exists(real) else GONE)
    return real
