"""The search side of a library: similar images, text queries, near-duplicate groups.

A thin layer between :class:`~organizer.library.Library` (files, model, database) and the
pure ranking in :mod:`organizer.search`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from organizer import search
from organizer.errors import QueryError
from organizer.scan import display_path, is_image_name
from organizer.store import queries as q


@dataclass(frozen=True)
class Result:
    """One ranked result."""

    rank: int
    image_id: int
    score: float
    root: str
    relpath: bytes


@dataclass(frozen=True)
class Results:
    query: str
    results: list[Result]


@dataclass(frozen=True)
class Member:
    image_id: int
    root: str
    relpath: bytes
    size: int
    width: int | None
    height: int | None
    identical_to_keeper: bool


@dataclass
class DuplicateGroup:
    keep: int
    members: list[Member] = field(default_factory=list)


class Finder:
    """Search operations over an opened library."""

    def __init__(self, library):
        self.lib = library

    # -- query vectors ---------------------------------------------------------------------

    def stored_vector(self, path: Path) -> tuple[int, np.ndarray] | None:
        """The stored vector of a file the library holds unchanged, without loading a model."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return None
        with self.lib.engine.connect() as conn:
            roots = q.all_roots(conn)
            for root_id, root in roots.items():
                if not real.startswith(root.rstrip("/") + "/"):
                    continue
                row = q.find_image(conn, root_id, os.fsencode(os.path.relpath(real, root)))
                if (
                    row is None
                    or row.status != q.OK
                    or (row.size, row.mtime_ns) != (st.st_size, st.st_mtime_ns)
                ):
                    return None
                model = q.library_model(conn)
                vector = q.get_vector(conn, row.id, model.id)
                return None if vector is None else (row.id, vector)
        return None

    def embed_file(self, path: Path) -> np.ndarray:
        """Embed an image file with the library's model (it is not added to the library)."""
        from organizer.pipeline import Job, prepare

        embedder = self.lib.embedder()
        prepared = prepare(Job(0, os.fsencode(path), -1, -1), embedder.preprocess)
        if prepared.error:
            raise QueryError(f"cannot read {path}: {prepared.error}")
        return embedder.embed_pixels(prepared.pixels[None])[0]

    def image_vector(self, path: Path) -> tuple[int | None, np.ndarray]:
        found = self.stored_vector(path)
        if found is not None:
            return found
        return None, self.embed_file(path)

    @staticmethod
    def check_term(term: str) -> Path | None:
        """The image file a term names, None for a text; a QueryError for an empty term or a
        path-like term whose file does not exist."""
        if not term or not term.strip():
            raise QueryError("empty query: give a text or an image path")
        path = Path(term).expanduser()
        if path.is_file():
            return path
        if is_image_name(os.fsencode(term)) or (os.sep in term and path.suffix):
            raise QueryError(f"image not found: {term}")
        return None

    def term_vector(self, term: str) -> np.ndarray:
        """A query term: an existing image file, or else a text (in open_clip's prompt)."""
        path = self.check_term(term)
        if path is not None:
            return self.image_vector(path)[1]
        return self.lib.embedder().embed_texts([search.PROMPT.format(term.strip())])[0]

    # -- the three searches ----------------------------------------------------------------

    def similar(self, photo: str | Path, k: int = 12, threshold: float | None = None) -> Results:
        path = Path(photo).expanduser()
        if not path.is_file():
            raise QueryError(f"image not found: {photo}")
        image_id, vector = self.image_vector(path)
        exclude = () if image_id is None else (image_id,)
        hits = search.rank(self.lib.vectors(), vector, k, exclude, threshold, allowed=self._ok)
        return Results(_shown(str(photo)), self._results(hits))

    def search(
        self, query: str | None, plus=(), minus=(), k: int = 12, threshold: float | None = None
    ) -> Results:
        for term in [*([query] if query is not None else []), *plus, *minus]:
            self.check_term(term)  # every bad term is reported before the model is loaded
        terms = []
        if query is not None:
            terms.append((self.term_vector(query), 1.0))
        terms += [(self.term_vector(t), 1.0) for t in plus]
        terms += [(self.term_vector(t), -1.0) for t in minus]
        vector = search.combine(terms)
        hits = search.rank(self.lib.vectors(), vector, k, (), threshold, allowed=self._ok)
        described = " ".join(
            [query or "", *(f"+{t}" for t in plus), *(f"-{t}" for t in minus)]
        ).strip()
        return Results(described, self._results(hits))

    def duplicates(self, threshold: float = 0.96) -> list[DuplicateGroup]:
        if not 0 < threshold <= 1:
            raise QueryError(f"--threshold must be in (0, 1], not {threshold}")
        index = self.lib.vectors()
        with self.lib.engine.connect() as conn:
            model = q.library_model(conn)
            if model is None:
                return []
            ids, vectors = q.ok_vectors(conn, model.id, model.dim)
        pairs = search.duplicate_pairs(index, ids, vectors, threshold)
        groups = search.groups_from_pairs(pairs)
        with self.lib.engine.connect() as conn:
            meta = q.describe_images(conn, [i for g in groups for i in g])
        return [self._group(g, meta) for g in groups]

    # -- helpers ---------------------------------------------------------------------------

    def _ok(self, ids: list[int]) -> set[int]:
        with self.lib.engine.connect() as conn:
            meta = q.describe_images(conn, ids)
        return {i for i, m in meta.items() if m.status == q.OK}

    def _results(self, hits: list[search.Hit]) -> list[Result]:
        with self.lib.engine.connect() as conn:
            meta = q.describe_images(conn, [h.image_id for h in hits])
        return [
            Result(rank, h.image_id, h.score, meta[h.image_id].root, meta[h.image_id].relpath)
            for rank, h in enumerate(hits, start=1)
        ]

    @staticmethod
    def _group(ids: list[int], meta: dict[int, q.ImageInfoRow]) -> DuplicateGroup:
        def age(m: q.ImageInfoRow) -> float:
            when = m.captured_at or datetime.fromtimestamp(m.mtime_ns / 1e9)
            return when.timestamp()

        def pixels(m: q.ImageInfoRow) -> int:
            return (m.width or 0) * (m.height or 0)

        keeper = min(ids, key=lambda i: (-pixels(meta[i]), age(meta[i]), i))
        group = DuplicateGroup(keep=keeper)
        for i in sorted(ids, key=lambda i: (i != keeper, meta[i].root, meta[i].relpath)):
            m = meta[i]
            identical = m.content_hash is not None and m.content_hash == meta[keeper].content_hash
            group.members.append(Member(i, m.root, m.relpath, m.size, m.width, m.height, identical))
        return group


def _shown(text: str) -> str:
    """A command-line string for people: undecodable bytes (surrogates) as \\xNN."""
    return display_path(os.fsencode(text))
