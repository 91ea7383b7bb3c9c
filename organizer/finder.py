"""The search side of a library: similar images, text queries, near-duplicate groups.

A thin layer between the store (metadata, stored vectors), the vector index and the model,
each handed in by the caller, and the pure ranking in :mod:`organizer.search`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from organizer import search
from organizer.choices import Sort
from organizer.embed import Embedder
from organizer.errors import QueryError
from organizer.filters import PhotoFilter
from organizer.paths import is_within
from organizer.photo_meta import PhotoMeta
from organizer.pipeline import Job, prepare
from organizer.scan import display_path, display_text, exact_path, is_image_name, shown_path
from organizer.sources import is_local_folder, is_remote, normalise
from organizer.store import queries as q
from organizer.store.filter_queries import kept_ids
from organizer.store.records import ImageRecord, ImageStatus, KnownImage, OfflineImages, facts_of
from organizer.vectors import VectorIndex

IndexProvider = Callable[[], VectorIndex]
EmbedderProvider = Callable[[], Embedder]


@dataclass(frozen=True)
class Result:
    """One ranked result."""

    rank: int
    image_id: int
    score: float
    root: str
    relpath: bytes
    meta: PhotoMeta | None = None  # when, where, with what (None: header not read yet)
    place: str | None = None

    @property
    def taken_at(self) -> datetime | None:
        return self.meta.taken_at if self.meta is not None else None

    def to_dict(self, absolute: bool = False, coordinates: bool = False) -> dict:
        """The result as JSON; ``coordinates`` adds the GPS position (the command line's
        ``--json`` does, pages never)."""
        return {
            "rank": self.rank,
            "path": shown_path(self.root, self.relpath, absolute),
            **exact_path(self.root, self.relpath),
            "root": self.root,
            "score": round(self.score, 6),
            "image_id": self.image_id,
            **facts_of(self.meta, self.place, coordinates),
        }


@dataclass(frozen=True)
class Results:
    query: str
    results: list[Result]
    offline: OfflineImages = field(default_factory=OfflineImages)  # what absent roots left out
    sort: Sort = Sort.SCORE
    where: PhotoFilter = field(default_factory=PhotoFilter)  # the filter the results passed

    def sorted(self, by: Sort) -> Results:
        """The same results in another order: by score (best first) or by date taken (oldest
        first, undated last); each keeps its rank by score."""
        if by == Sort.SCORE:
            ordered = sorted(self.results, key=lambda r: r.rank)
        else:
            ordered = sorted(
                self.results, key=lambda r: (r.taken_at is None, r.taken_at or datetime.min, r.rank)
            )
        return replace(self, results=ordered, sort=by)

    def to_dict(self, absolute: bool = False, coordinates: bool = False) -> dict:
        return {
            "query": self.query,
            "sort": str(self.sort),
            "filter": self.where.to_dict(),
            "results": [r.to_dict(absolute, coordinates) for r in self.results],
            "offline": self.offline.to_dict(),
        }


class Finder:
    """Search operations over a library's store, vector index and model."""

    def __init__(
        self,
        engine: Engine,
        index: IndexProvider,
        embedder: EmbedderProvider,
        hidden_roots: frozenset[str] = frozenset(),
        where: PhotoFilter | None = None,
    ):
        """``index()`` gives the current vector index and ``embedder()`` the model (loaded
        only when a query needs it: a file outside the library, or a text). Images under
        ``hidden_roots`` (absent folders) are never in the results, nor those ``where``
        leaves out (a filter by date, place, camera or folder)."""
        self.engine = engine
        self.index = index
        self.embedder = embedder
        self.hidden_roots = hidden_roots
        self.where = where or PhotoFilter()
        self._kept: np.ndarray | None = None

    def kept(self) -> np.ndarray | None:
        """The ids the filter keeps (sorted), or None when there is no filter: asked once."""
        if self.where.empty:
            return None
        if self._kept is None:
            with self.engine.connect() as conn:
                self._kept = kept_ids(conn, self.where)
        return self._kept

    # -- query vectors ---------------------------------------------------------------------

    def known_at(self, path: str | Path) -> KnownImage | None:
        """The library's image at a path (any status), or None: a file under a folder root
        (links resolved), a member under a tar shard root (``/x/000001.tar/a.jpg``), or an
        object under a bucket root, by its URL (exactly the root, '/' and its key)."""
        found = self._lookup(path)
        return None if found is None else found[1]

    def _lookup(self, path: str | Path) -> tuple[str, KnownImage | None] | None:
        """(the innermost root ``path`` is under, the image there or None), or None."""
        text = os.fspath(path)
        where = normalise(text) if is_remote(text) else os.path.realpath(text)
        with self.engine.connect() as conn:
            under = [
                (i, r) for i, r in q.all_roots(conn).items() if is_within(where, r, strictly=True)
            ]
            if not under:
                return None
            root_id, root = max(under, key=lambda found: len(found[1]))
            relpath = os.fsencode(where[len(root.rstrip("/")) + 1 :])
            return root, q.find_image(conn, root_id, relpath)

    def stored_vector(self, path: str | Path) -> tuple[int, np.ndarray] | None:
        """The stored vector of an image the library holds, without loading a model: a file
        unchanged since its ingest, an object in a bucket or a shard's member (as ingested:
        they are not asked for again here)."""
        looked = self._lookup(path)
        found = None if looked is None else looked[1]
        if looked is None or found is None or found.status != ImageStatus.OK:
            return None
        if is_local_folder(looked[0]):
            try:
                st = os.stat(os.path.realpath(path))
            except OSError:
                return None
            if (found.size, found.mtime_ns) != (st.st_size, st.st_mtime_ns):
                return None
        with self.engine.connect() as conn:
            model = q.library_model(conn)
            assert model is not None  # the image was embedded by it
            vector = q.get_vector(conn, found.id, model.id)
        return None if vector is None else (found.id, vector)

    def embed_file(self, path: Path) -> np.ndarray:
        """Embed an image file with the library's model (it is not added to the library)."""
        embedder = self.embedder()
        prepared = prepare(Job(0, os.fsencode(path), -1, -1), embedder.preprocess)
        if prepared.error:
            raise QueryError(f"cannot read {path}: {prepared.error}")
        assert prepared.pixels is not None  # decoded for the model, without an error
        return embedder.embed_pixels(prepared.pixels[None])[0]

    def image_vector(self, path: Path) -> tuple[int | None, np.ndarray]:
        found = self.stored_vector(path)
        if found is not None:
            return found
        return None, self.embed_file(path)

    @staticmethod
    def check_term(term: str) -> Path | None:
        """The image file a term names, None for a text; a QueryError for an empty term, a
        path-like term whose file does not exist, or a path to a folder (or anything else
        that is not a file). A bare word stays a text even if a folder of that name is
        here: "people" is a query; "./people" or "~/people" is a path."""
        if not term or not term.strip():
            raise QueryError("empty query: give a text or an image path")
        path = Path(term).expanduser()
        if path.is_file():
            return path
        path_like = os.sep in term or term.startswith("~") or term in (".", "..")
        if path_like and path.exists():
            what = "a folder" if path.is_dir() else "not a file"
            raise QueryError(f"{display_text(term)} is {what}: give an image file, or a text")
        if is_image_name(os.fsencode(term)) or (os.sep in term and path.suffix):
            raise QueryError(f"image not found: {term}")
        return None

    def text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Texts' vectors in one pass of the model (each in open_clip's prompt)."""
        if any(not t.strip() for t in texts):
            raise QueryError("empty query: give a text or an image path")
        return self.embedder().embed_texts([search.PROMPT.format(t.strip()) for t in texts])

    # -- the searches ------------------------------------------------------------------------

    def similar(
        self,
        photo: str | Path,
        limit: int = 12,
        threshold: float | None = None,
        offset: int = 0,
    ) -> Results:
        """Images most like the image file ``photo``, leaving the photo itself out; an image
        of the library in a bucket (its URL) or a tar shard (``/x/000001.tar/a.jpg``) too."""
        text = os.fspath(photo)
        path = None if is_remote(text) else Path(text).expanduser()
        if path is not None and path.is_dir():
            raise QueryError(f"{photo} is a folder: similar takes one image file")
        if path is not None and path.is_file():
            image_id, vector = self.image_vector(path)
        else:
            found = self.stored_vector(text if path is None else path)
            if found is None:
                raise QueryError(f"image not found: {photo}")
            image_id, vector = found
        exclude = () if image_id is None else (image_id,)
        return Results(
            display_text(str(photo)), self.ranked(vector, limit, exclude, threshold, offset)
        )

    def similar_to(
        self, image_id: int, limit: int = 12, threshold: float | None = None, offset: int = 0
    ) -> Results:
        """Images most like the library's image ``image_id`` (its stored vector), leaving it
        out; a QueryError when no image of that id is shown."""
        record = self.image(image_id)
        with self.engine.connect() as conn:
            model = q.library_model(conn)
            vector = q.get_vector(conn, image_id, model.id) if model and record else None
        if record is None or vector is None:
            raise QueryError(f"no image {image_id} in this library")
        hits = self.ranked(vector, limit, (image_id,), threshold, offset)
        return Results(display_path(record.relpath), hits)

    def similar_pixels(
        self, pixels: np.ndarray, label: str, limit: int = 12, offset: int = 0
    ) -> Results:
        """Images most like a picture already decoded into the model's input (``pixels``,
        one image); it is not added to the library. ``label`` names it in the results."""
        vector = self.embedder().embed_pixels(pixels[None])[0]
        return Results(label, self.ranked(vector, limit, (), None, offset))

    def search(
        self,
        query: str | None,
        plus: Sequence[str] = (),
        minus: Sequence[str] = (),
        limit: int = 12,
        threshold: float | None = None,
        offset: int = 0,
        texts_only: bool = False,
    ) -> Results:
        """Images most like the query and each ``plus`` term, least like each ``minus`` term
        (the normalised weighted sum of their vectors). A term is an image path or a text;
        with ``texts_only`` every term is a text (a server never reads a path it is given)."""
        terms = [
            *([(query, 1.0)] if query is not None else []),
            *((t, 1.0) for t in plus),
            *((t, -1.0) for t in minus),
        ]
        # Every bad term is reported before the model is loaded.
        paths = [None if texts_only else self.check_term(t) for t, _ in terms]
        texts = [t for (t, _), p in zip(terms, paths, strict=True) if p is None]
        text_vectors = iter(self.text_vectors(texts) if texts else [])  # one pass of the model
        vectors = [next(text_vectors) if p is None else self.image_vector(p)[1] for p in paths]
        vector = search.combine(zip(vectors, (w for _, w in terms), strict=True))
        described = " ".join(
            [query or "", *(f"+{t}" for t in plus), *(f"-{t}" for t in minus)]
        ).strip()
        return Results(described, self.ranked(vector, limit, (), threshold, offset))

    def similar_pairs(self, threshold: float) -> list[tuple[int, int, float]]:
        """Pairs (a < b, cosine) of ok images at least ``threshold`` alike, of those the
        filter keeps, from the index's range search (vectors stream from the database)."""
        index = self.index()
        with self.engine.connect() as conn, conn.begin():
            model = q.library_model(conn)
            if model is None:
                return []
            batches = q.iter_ok_vectors(conn, model.id, model.dim)
            return search.duplicate_pairs(index, batches, threshold, self.kept())

    def image(self, image_id: int) -> ImageRecord | None:
        """The record of an image that may be shown (ok, under a present root), or None."""
        with self.engine.connect() as conn:
            record = q.describe_images(conn, [image_id]).get(image_id)
        return record if record is not None and self.visible(record) else None

    def visible(self, record: ImageRecord) -> bool:
        """Whether an image may be shown: ok, under a present root."""
        return record.status == ImageStatus.OK and record.root not in self.hidden_roots

    # -- helpers ---------------------------------------------------------------------------

    def ranked(
        self,
        vector: np.ndarray,
        limit: int,
        exclude: Sequence[int],
        threshold: float | None,
        offset: int = 0,
    ) -> list[Result]:
        """The best ``limit`` ok, shown images for a query vector after the first ``offset``
        (a page), leaving out ``exclude``, of those the filter keeps (searched among them, so
        that a filter keeping few images still gives ``limit``); each candidate is read
        once."""
        records: dict[int, ImageRecord] = {}

        def shown_ok(ids: list[int]) -> set[int]:
            unseen = [i for i in ids if i not in records]
            if unseen:
                with self.engine.connect() as conn:
                    records.update(q.describe_images(conn, unseen))
            return {i for i in ids if i in records and self.visible(records[i])}

        hits = search.rank(
            self.index(), vector, limit + offset, exclude, threshold, shown_ok, self.kept()
        )
        return [
            _result(rank, h.image_id, h.score, records[h.image_id])
            for rank, h in enumerate(hits, start=1)
        ][offset:]


def _result(rank: int, image_id: int, score: float, record: ImageRecord) -> Result:
    return Result(rank, image_id, score, record.root, record.relpath, record.meta, record.place)
