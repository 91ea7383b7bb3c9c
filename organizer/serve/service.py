"""What the web app asks of a library, safe to call from the server's worker threads.

One :class:`Library` stays open for the server's life: its model stays loaded (a text query
costs one text-tower pass, not a model load) and its vector index stays in memory. The index
follows the database's generation counter, but while an ingest is writing, the index of the
last finished state is kept: new images appear when the ingest is done, and no request ever
rebuilds the index batch by batch or waits for the writer.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from organizer import search
from organizer.cluster_runs import Clustering
from organizer.errors import ClusterError, ImageError, QueryError
from organizer.finder import DuplicateGroup, Finder, Result, Results
from organizer.imaging import decode, thumbnail
from organizer.library import Library
from organizer.redact import hide_passwords
from organizer.report import projection
from organizer.scan import display_path, is_raw_name
from organizer.serve.uploads import query_pixels
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.records import ClusterRunSummary, ImageRecord, ImageStatus
from organizer.vectors import VectorIndex

THUMB_SIDES = {"s": 256, "l": 1280}
THUMB_QUALITY = 82
MAX_SOURCE_BYTES = 512 * 1024 * 1024
MAP_POINTS = 5_000
NEAR_DUPLICATE = 0.96
MAX_TERMS = 16
MAX_QUERY_CHARS = 1000


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


class Service:
    """A library opened for serving: searches, pages' data, files and thumbnails."""

    def __init__(self, lib: Library):
        self.lib = lib
        self._lock = threading.RLock()  # guards the model's loading and the index swap
        self._live: tuple[int, VectorIndex] | None = None  # (generation, index)
        self._loading = False  # a newer index is being loaded in the background
        self._cache: dict[tuple, object] = {}  # per-generation results (duplicates, maps)
        self.thumbs = lib.home.cache_dir / "thumbs"

    # -- the model and the index -------------------------------------------------------------

    def warm_up(self) -> None:
        """Load the index and the model now (the server calls this in the background)."""
        self.index()
        if self.lib.model() is not None:
            self.embedder().embed_texts(["a photo"])  # opens (or exports) the text tower

    def embedder(self):
        with self._lock:
            return self.lib.embedder()

    def generation(self) -> int:
        with self.lib.engine.connect() as conn:
            return q.index_generation(conn)

    def index(self) -> VectorIndex:
        """The index of the last state the server has loaded. When the database has moved
        on and no ingest is writing, the new state is loaded in the background and swapped
        in when ready: no request waits for an index to be read or rebuilt (but the first)."""
        with self._lock:
            generation = self.generation()
            if self._live is None:
                self._live = (generation, self.lib.vectors(save=False))
            elif (
                self._live[0] != generation and not self._loading and not self.lib.ingest_running()
            ):
                self._loading = True
                threading.Thread(
                    target=self._reload, args=(generation,), name="organizer-index", daemon=True
                ).start()
            return self._live[1]

    def _reload(self, generation: int) -> None:
        try:
            index = self.lib.vectors(save=False)
            with self._lock:
                self._live = (generation, index)
                self._cache.clear()
        except Exception as exc:  # the old index keeps serving; say why
            print(hide_passwords(f"warning: could not load the new index: {exc}"), file=sys.stderr)
        finally:
            self._loading = False

    def finder(self) -> Finder:
        return Finder(self.lib.engine, self.index, self.embedder, self.lib.hidden_roots())

    # -- searches ----------------------------------------------------------------------------

    def search_text(self, text: str, limit: int, offset: int = 0) -> Results:
        """Text search with the CLI's grammar: words, ``+term`` adds, ``-term`` subtracts.
        Every term is a text: the server never reads a path a client names."""
        query, plus, minus = parse_query(text)
        finder = self.finder()
        texts = [*([query] if query else []), *plus, *minus]
        weights = [*([1.0] if query else []), *([1.0] * len(plus)), *([-1.0] * len(minus))]
        vectors = finder.text_vectors(texts)
        hits = finder.ranked(
            search.combine(list(zip(vectors, weights, strict=True))), limit + offset, (), None
        )
        return Results(" ".join(text.split()), _page(hits, offset))

    def search_image(self, data: bytes, name: str, limit: int, offset: int = 0) -> Results:
        """Images like an uploaded picture (embedded, not added to the library), decoded
        within what an upload may cost (see :mod:`organizer.serve.uploads`)."""
        embedder = self.embedder()
        pixels = query_pixels(data, embedder.preprocess)
        vector = embedder.embed_pixels(pixels[None])[0]
        hits = self.finder().ranked(vector, limit + offset, (), None)
        return Results(display_path(os.fsencode(name)) or "uploaded image", _page(hits, offset))

    def similar_to(self, image_id: int, limit: int, offset: int = 0) -> Results:
        record = self.image(image_id)
        vector = self._vector(image_id)
        hits = self.finder().ranked(vector, limit + offset, (image_id,), None)
        return Results(display_path(record.relpath), _page(hits, offset))

    def duplicates(self, threshold: float = NEAR_DUPLICATE) -> list[DuplicateGroup]:
        """Duplicate groups of the index served now, computed once per index."""
        index = self.index()
        with self._lock:
            key = ("duplicates", threshold, self._live[0] if self._live else None)
            cached = self._cache.get(key)
        if cached is None:
            finder = Finder(self.lib.engine, lambda: index, self.embedder, self.lib.hidden_roots())
            cached = finder.duplicates(threshold)
            with self._lock:
                if self._live is not None and self._live[1] is index:  # not swapped meanwhile
                    self._cache[key] = cached
        return cached  # type: ignore[return-value]

    def image_page(self, image_id: int, limit: int = 12) -> ImagePage:
        record = self.image(image_id)
        # One ranking serves both lists: the near-duplicates are the top of the similar ones.
        hits = self.finder().ranked(self._vector(image_id), max(limit, 50), (image_id,), None)
        similar = hits[:limit]
        near = [h for h in hits if h.score >= NEAR_DUPLICATE]
        with self.lib.engine.connect() as conn:
            cluster = cq.cluster_of(conn, image_id)
        return ImagePage(record, cluster, similar, near)

    def _vector(self, image_id: int) -> np.ndarray:
        with self.lib.engine.connect() as conn:
            model = q.library_model(conn)
            vector = q.get_vector(conn, image_id, model.id) if model else None
        if vector is None:
            raise NotFound(image_id)
        return vector

    # -- clusters ----------------------------------------------------------------------------

    def clustering(self) -> Clustering:
        return Clustering(self.lib.engine, self.embedder, self.lib.home.cache_dir)

    def runs(self):
        return self.lib.runs()

    def run(self, run_id: int | None) -> ClusterRunSummary:
        try:
            return self.clustering().summary(run_id)
        except ClusterError as exc:
            raise NotFound(str(exc)) from None

    def map_points(self, run_id: int | None) -> dict:
        """The run's t-SNE map (a seeded sample of at most MAP_POINTS images), computed once
        per run and library state: ``{"run", "points": [[image_id, x, y, cluster], ...]}``."""
        summary = self.run(run_id)
        key = ("map", summary.run.id)
        self.index()  # a changed library clears the cache
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        members = [(number, m.image_id) for number, m in summary.members]
        rows = projection.sample_rows(len(members), MAP_POINTS, seed=0)
        chosen = [members[i] for i in rows]
        ids = [image_id for _, image_id in chosen]
        with self.lib.engine.connect() as conn:
            model = q.library_model(conn)
            vectors = q.vectors_of(conn, model.id, model.dim, ids) if ids else np.zeros((0, 1))
        xy = projection.project(vectors, seed=0).xy if ids else np.zeros((0, 2))
        result = {
            "run": summary.run.id,
            "points": [
                [image_id, round(float(x), 5), round(float(y), 5), number]
                for (number, image_id), (x, y) in zip(chosen, xy, strict=True)
            ],
            "clusters": [
                {"number": c.number, "label": c.label, "size": c.size} for c in summary.clusters
            ],
        }
        with self._lock:
            self._cache[key] = result
        return result

    # -- files -------------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageRecord:
        """An image the server may show: ok, under a present root, and (symlinks resolved)
        still inside that root."""
        with self.lib.engine.connect() as conn:
            record = q.describe_images(conn, [image_id]).get(image_id)
        if record is None or record.status != ImageStatus.OK:
            raise NotFound(image_id)
        if record.root in self.lib.hidden_roots():
            raise NotFound(image_id)
        return record

    def file_path(self, image_id: int) -> str:
        """The real path of an image's file, refused if it leads out of its root."""
        record = self.image(image_id)
        return _locate(record.root, record.relpath)

    def unshown(self, item) -> str | None:
        """Why the file of a result, member or record (anything with ``root`` and
        ``relpath``) will not be served, or None: pages show a tile that says so rather than
        a broken picture."""
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
        real = _locate(record.root, record.relpath)
        stamp = (record.content_hash or f"{record.size}-{record.mtime_ns}")[:24]
        target = self.thumbs / str(side) / f"{image_id}-{stamp}.jpg"
        if target.is_file():
            return target
        try:
            if os.path.getsize(real) > MAX_SOURCE_BYTES:
                raise NotFound(image_id)
            with open(real, "rb") as fh:
                image, _ = decode(
                    fh.read(), min_size=(side // 2, side // 2), raw=is_raw_name(os.fsencode(real))
                )
        except (OSError, ImageError):
            raise NotFound(image_id) from None
        small = Image.fromarray(np.asarray(thumbnail(image, side).convert("RGB")))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=THUMB_QUALITY)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".thumb-", dir=target.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(buffer.getvalue())
        os.replace(tmp, target)
        return target

    def failures(self):
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
    if not real.startswith(real_root.rstrip("/") + "/"):
        raise Unshown(LEADS_OUT)
    if not os.path.isfile(real):
        raise Unshown(NOT_A_FILE if os.path.exists(real) else GONE)
    return real


def _page(results: Sequence[Result], offset: int) -> list[Result]:
    return list(results[offset:])
