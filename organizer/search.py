"""Similar images, text search and near-duplicate groups over the vector index.

Pure functions over vectors and ids; the Library resolves files, models and metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from organizer.errors import QueryError
from organizer.vectors import filtered, pairs

if TYPE_CHECKING:
    from organizer.vectors.index import VectorIndex

# open_clip's zero-shot classifiers wrap class names in prompts like this; a free-text query
# ("kids on a beach") reads naturally inside it too.
PROMPT = "a photo of {}."


@dataclass(frozen=True)
class Hit:
    """One result: image id and cosine similarity to the query."""

    image_id: int
    score: float


def normalise(vector: np.ndarray) -> np.ndarray:
    """Unit-length copy of ``vector``; a zero vector is a QueryError (the terms cancelled)."""
    norm = float(np.linalg.norm(vector))
    if norm < 1e-6:
        raise QueryError("the query terms cancel each other out: nothing is left to search for")
    return (vector / norm).astype(np.float32)


def combine(terms: Iterable[tuple[np.ndarray, float]]) -> np.ndarray:
    """The normalised weighted sum of unit vectors (``--plus`` weight 1, ``--minus`` weight -1)."""
    terms = list(terms)
    if not terms:
        raise QueryError("empty query: give a text, an image, or --plus/--minus terms")
    total = np.zeros_like(terms[0][0], dtype=np.float64)
    for vector, weight in terms:
        total += weight * vector.astype(np.float64)
    return normalise(total)


def rank(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    exclude: Iterable[int] = (),
    threshold: float | None = None,
    allowed: Callable[[list[int]], set[int]] | None = None,
    among: np.ndarray | None = None,
) -> list[Hit]:
    """The ``k`` best hits for a query vector, best first: ``k`` of them whenever that many
    pass every condition.

    Args:
        index: a VectorIndex.
        query: unit vector.
        k: how many hits to return.
        exclude: image ids never to return (the query image itself).
        threshold: drop hits below this cosine similarity.
        allowed: optional callable(ids) -> set of ids that may be shown (e.g. status ok).
        among: optional image ids (a metadata filter's answer) to search among; the index
            searches them itself, so a filter that keeps few images still gets k hits.
    """
    if k < 1:
        raise QueryError(f"-k must be at least 1, not {k}")
    exclude = set(exclude)
    want = k + len(exclude)
    if among is not None:
        among = np.setdiff1d(among, np.fromiter(exclude, np.int64, len(exclude)))
        want = k
    while True:
        if among is None:
            hits = index.search(query[None, :], want)[0]
        else:
            hits = index.search_among(query[None, :], want, among)[0]
        ids = hits.ids.tolist()
        ok = allowed(ids) if allowed is not None else set(ids)
        out = [
            Hit(int(i), float(s))
            for i, s in zip(ids, hits.scores.tolist(), strict=True)
            if i not in exclude and i in ok and (threshold is None or s >= threshold)
        ]
        exhausted = len(ids) < want or (
            threshold is not None and ids and hits.scores[-1] < threshold
        )
        if len(out) >= k or exhausted:
            return out[:k]
        want *= 2


def duplicate_pairs(
    index: VectorIndex,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    among: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """Pairs ``(a, b, cosine)``, ``a < b``, of distinct images whose cosine similarity is at
    least ``threshold``, sorted by ``(a, b)``.

    ``batches`` yields (ids, vectors) of every image to pair up, a batch at a time; with
    ``among`` (image ids, e.g. a metadata filter's answer) only pairs of two of those. Uses
    the index's range search, every image a query: exact for the flat index; on an IVF
    index limited to the lists a copy at the threshold needs probed, a pair found from
    either end (see :mod:`organizer.vectors.pairs`).
    """
    allowed = None if among is None else filtered.allowed_ids(among)
    found = pairs.near_pairs(index, batches, threshold, allowed)
    return list(zip(found.low.tolist(), found.high.tolist(), found.scores.tolist(), strict=True))


def groups_from_pairs(pairs: Iterable[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (union-find) of the pair graph, largest first."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, _ in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for x in parent:
        components.setdefault(find(x), []).append(x)
    return sorted((sorted(c) for c in components.values()), key=lambda c: (-len(c), c[0]))
