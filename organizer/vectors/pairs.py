"""Near-duplicate pairs: every pair of images whose cosine similarity reaches a threshold.

A flat index answers each image's range search exactly. An IVF index is joined with itself
instead, list by list, in matrix products: each image *probes* the few lists whose
centroids are nearest to it, and each list is compared, in one product, with every image
that probes it. A pair counts when either image probes the other's list. A range search
per image would read the same lists image after image (memory-bound, about ten times the
time); the nprobe calibrated for recall@10 also probes far more lists than near-duplicates
need, whose neighbours lie much closer than an image's tenth.

How many lists each image probes is measured for the threshold on the images themselves
(:func:`probes`): copies of a sample of them at exactly the threshold, each moved toward
one of its image's nearest neighbours in the sample (a crop or a re-encode moves along the
directions in which similar images differ; a random direction would almost never cross a
list's border and would flatter the index), and the fewest lists with which FOUND of the
copies and their images are found from one end or the other. Pairs further inside the
threshold are found more often.

The join reads the vectors the index holds (see :mod:`organizer.vectors.lists`); memory
holds the index, a table of which lists each image probes (8 bytes a probe) and one
list's products at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from organizer.vectors import filtered
from organizer.vectors.batches import Batch, as_f32

if TYPE_CHECKING:
    from organizer.vectors.index import VectorIndex
    from organizer.vectors.lists import Lists

SAMPLE = 1_000  # images whose copies measure the probes
TOWARD = 4  # copies of each, toward its nearest images in the sample
FOUND = 0.99  # share of the copies at the threshold that the probes must find
_PRODUCT = 1 << 23  # scores computed at once (32 MB)


@dataclass(frozen=True)
class Pairs:
    """Distinct pairs of image ids, ``low < high``, with their cosine similarity."""

    low: np.ndarray
    high: np.ndarray
    scores: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, scores: np.ndarray) -> Pairs:
        """The pairs (a[i], b[i]) in either order, an image with itself left out."""
        keep = a != b
        a, b = a[keep], b[keep]
        return cls(np.minimum(a, b), np.maximum(a, b), scores[keep])

    @classmethod
    def joined(cls, parts: Iterable[Pairs]) -> Pairs:
        """The pairs of every part, each once (the best score when found twice), by id."""
        parts = list(parts)
        low = np.concatenate([np.empty(0, np.int64), *(p.low for p in parts)])
        high = np.concatenate([np.empty(0, np.int64), *(p.high for p in parts)])
        scores = np.concatenate([np.empty(0, np.float32), *(p.scores for p in parts)])
        order = np.lexsort((-scores, high, low))
        low, high, scores = low[order], high[order], scores[order]
        first = np.ones(len(low), bool)
        first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
        return cls(low[first], high[first], scores[first])


def near_pairs(
    index: VectorIndex,
    batches: Iterable[Batch],
    threshold: float,
    allowed: np.ndarray | None = None,
) -> Pairs:
    """Every pair of distinct images of ``batches`` (ids, vectors) whose similarity is at
    least ``threshold``, both of them in ``allowed`` (sorted ids) when given. Each image
    that may pair must be in ``batches``: the index's other images are left out."""
    stream = _kept(batches, allowed)
    lists = index.lists()
    if lists is None:
        return _searched(index, stream, threshold)
    images = _Images(stream, lists)
    probed = probes(lists, images.sample, threshold)
    table = _ProbeTable(lists, images.ids, probed)
    found = [_list_pairs(lists, table, j, threshold) for j in range(lists.nlist)]
    if len(images.missing_ids):
        found.append(_unindexed_pairs(index, images, threshold))
    return Pairs.joined(found)


def _kept(batches: Iterable[Batch], allowed: np.ndarray | None) -> Iterator[Batch]:
    for ids, vectors in batches:
        if allowed is not None:
            keep = filtered.held_in(ids, allowed)
            ids, vectors = ids[keep], vectors[keep]
        if len(ids):
            yield ids, vectors


def _searched(index: VectorIndex, stream: Iterable[Batch], threshold: float) -> Pairs:
    """Each batch's exact range search (a flat index), pairs among the stream's images."""
    found, seen = [], []
    for ids, vectors in stream:
        hits = index.within(vectors, threshold)
        a = np.repeat(ids, [len(f) for f, _ in hits])
        b = np.concatenate([np.empty(0, np.int64), *(f for f, _ in hits)])
        scores = np.concatenate([np.empty(0, np.float32), *(s for _, s in hits)])
        found.append(Pairs.of(a, b, scores))
        seen.append(ids)
    pairs = Pairs.joined(found)
    ids = np.sort(np.concatenate([np.empty(0, np.int64), *seen]))
    keep = filtered.held_in(pairs.low, ids) & filtered.held_in(pairs.high, ids)
    return Pairs(pairs.low[keep], pairs.high[keep], pairs.scores[keep])


class _Images:
    """The ids of the stream's images that the index holds (sorted), the first SAMPLE
    vectors, and the ids and vectors of any it does not hold (an index behind the
    database: queried one by one)."""

    def __init__(self, stream: Iterable[Batch], lists: Lists):
        indexed = np.sort(np.concatenate([lists.ids(j) for j in range(lists.nlist)]))
        ids, sample, missing_ids, missing = [], [], [], []
        taken = 0
        for batch_ids, vectors in stream:
            if taken < SAMPLE:
                sample.append(as_f32(vectors[: SAMPLE - taken]))
                taken += len(sample[-1])
            held = filtered.held_in(batch_ids, indexed)
            ids.append(batch_ids[held])
            if not held.all():
                missing_ids.append(batch_ids[~held])
                missing.append(as_f32(vectors[~held]))
        self.ids = np.sort(np.concatenate([np.empty(0, np.int64), *ids]))
        self.sample = np.concatenate([np.empty((0, lists.dim), np.float32), *sample])
        self.missing_ids = np.concatenate([np.empty(0, np.int64), *missing_ids])
        self.missing = np.concatenate([np.empty((0, lists.dim), np.float32), *missing])


def probes(lists: Lists, sample: np.ndarray, threshold: float) -> int:
    """How many lists each image probes for a duplicate search at ``threshold`` (see the
    module), measured on ``sample`` (a few hundred of the images' vectors, float32)."""
    if len(sample) <= TOWARD:
        return min(lists.nlist, 8)  # too few images to measure on: too few to cost much
    near = sample @ sample.T
    np.fill_diagonal(near, -np.inf)
    nearest = np.argpartition(-near, TOWARD - 1, axis=1)[:, :TOWARD]
    needed = []
    for start in range(0, len(sample), 256):  # 1,024 copies' scores with every centroid
        origin = np.repeat(sample[start : start + 256], TOWARD, axis=0)
        toward = sample[nearest[start : start + 256].ravel()]
        copies = at_cosine(origin, toward, np.full(len(origin), threshold))
        to_origin = lists.to_list_space(origin) @ lists.centroids.T
        to_copy = lists.to_list_space(copies) @ lists.centroids.T
        rows = np.arange(len(origin))
        at_copy = to_origin[rows, to_copy.argmax(axis=1)]
        at_origin = to_copy[rows, to_origin.argmax(axis=1)]
        # The lists probed before reaching the other's: those scoring higher.
        before = np.minimum(
            (to_origin > at_copy[:, None]).sum(axis=1), (to_copy > at_origin[:, None]).sum(axis=1)
        )
        needed.append(before + 1)
    return int(min(lists.nlist, np.quantile(np.concatenate(needed), FOUND, method="higher")))


def at_cosine(x: np.ndarray, toward: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """Unit vectors at exactly cosine ``cos`` to the rows of ``x`` (unit), each in the plane
    of its row and the row of ``toward``, turned toward it (a random direction where the
    two are parallel)."""
    x = np.asarray(x, np.float64)
    u = np.asarray(toward, np.float64)
    u = u - (u * x).sum(axis=1, keepdims=True) * x
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    flat = norms[:, 0] < 1e-6
    if flat.any():
        v = np.random.default_rng(0).standard_normal((int(flat.sum()), x.shape[1]))
        u[flat] = v - (v * x[flat]).sum(axis=1, keepdims=True) * x[flat]
        norms[flat] = np.linalg.norm(u[flat], axis=1, keepdims=True)
    cos = np.asarray(cos, np.float64)[:, None]
    return (cos * x + np.sqrt(1 - cos**2) * u / norms).astype(np.float32)


class _ProbeTable:
    """Which images probe each list: every image in its list's order (a *member number*),
    and for each list the member numbers of the images that probe it."""

    def __init__(self, lists: Lists, ids: np.ndarray, probed: int):
        self.rows: list[np.ndarray] = []  # positions in its list of each list's members
        self.ids: list[np.ndarray] = []
        probe_parts, member_parts = [], []
        start = 0
        for j in range(lists.nlist):
            listed = lists.ids(j)
            rows = np.flatnonzero(filtered.held_in(listed, ids))
            self.rows.append(rows)
            self.ids.append(listed[rows])
            if len(rows):
                top = lists.nearest(lists.vectors(j, rows), probed)
                probe_parts.append(top.ravel().astype(np.int32))
                members = np.arange(start, start + len(rows), dtype=np.int32)
                member_parts.append(np.repeat(members, top.shape[1]))
            start += len(rows)
        self.starts = np.cumsum([0, *(len(r) for r in self.rows)])
        probe = np.concatenate([np.empty(0, np.int32), *probe_parts])
        members = np.concatenate([np.empty(0, np.int32), *member_parts])
        del probe_parts, member_parts
        order = np.argsort(probe, kind="stable")  # by list, then member number
        self.members = members[order]
        self.bounds = np.searchsorted(probe[order], np.arange(lists.nlist + 1))

    def probers(self, list_no: int) -> np.ndarray:
        """Member numbers (ascending) of the images that probe list ``list_no``."""
        return self.members[self.bounds[list_no] : self.bounds[list_no + 1]]


def _list_pairs(lists: Lists, table: _ProbeTable, list_no: int, threshold: float) -> Pairs:
    """The pairs of list ``list_no``'s images with the images that probe it."""
    members = table.ids[list_no]
    probers = table.probers(list_no)
    if not len(members) or not len(probers):
        return Pairs.joined([])
    vectors = lists.vectors(list_no, table.rows[list_no])
    owners = np.searchsorted(table.starts, probers, side="right") - 1
    found = []
    step = max(256, _PRODUCT // len(members))
    for start in range(0, len(probers), step):
        chunk, chunk_owners = probers[start : start + step], owners[start : start + step]
        ids, queries = _gathered(lists, table, chunk, chunk_owners)
        scores = queries @ vectors.T
        # Each image of this list meets itself: left out, so that a row's best score says
        # whether it pairs (a reduction, far faster than finding every score's place).
        own = np.flatnonzero(chunk_owners == list_no)
        scores[own, chunk[own] - table.starts[list_no]] = -np.inf
        rows = np.flatnonzero(scores.max(axis=1) >= threshold)
        q, m = np.nonzero(scores[rows] >= threshold)
        found.append(Pairs.of(ids[rows[q]], members[m], scores[rows[q], m]))
    return Pairs.joined(found)


def _gathered(
    lists: Lists, table: _ProbeTable, chunk: np.ndarray, owners: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors of the images of member numbers ``chunk`` (ascending), whose
    lists are ``owners``."""
    ids = np.empty(len(chunk), np.int64)
    vectors = np.empty((len(chunk), lists.dim), np.float32)
    cuts = np.flatnonzero(np.diff(owners)) + 1
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(chunk)], strict=True):
        owner = int(owners[lo])
        at = chunk[lo:hi] - table.starts[owner]
        ids[lo:hi] = table.ids[owner][at]
        vectors[lo:hi] = lists.vectors(owner, table.rows[owner][at])
    return ids, vectors


def _unindexed_pairs(index: VectorIndex, images: _Images, threshold: float) -> Pairs:
    """Pairs of the images the index lacks: with its images, and with each other."""
    allowed = images.ids
    hits = index.within(images.missing, threshold)
    a = np.repeat(images.missing_ids, [len(f) for f, _ in hits])
    b = np.concatenate([np.empty(0, np.int64), *(f for f, _ in hits)])
    scores = np.concatenate([np.empty(0, np.float32), *(s for _, s in hits)])
    keep = filtered.held_in(b, allowed)
    found = [Pairs.of(a[keep], b[keep], scores[keep])]
    for start in range(0, len(images.missing), 4096):
        block = images.missing[start : start + 4096] @ images.missing.T
        q, m = np.nonzero(block >= threshold)
        found.append(Pairs.of(images.missing_ids[start + q], images.missing_ids[m], block[q, m]))
    return Pairs.joined(found)
