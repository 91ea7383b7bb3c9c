"""Searching among a set of image ids (what a metadata filter allows): the pieces that
:meth:`VectorIndex.search_among <organizer.vectors.index.VectorIndex.search_among>` puts
together.

A filter that keeps few images would starve an ordinary search (its nearest hits are
mostly filtered out), so the set is handed to the search itself, in one of two ways:

- **scanned**: the allowed vectors themselves are read and scored exactly
  (:func:`best_of_stored`). Used by a re-ranked (ivf-pq) index, whose re-rank store holds
  every vector by id, while the set is small (:func:`scanned`): its cost is the set's
  size, whatever the index's.
- **probed**: faiss searches with an id selector (:func:`selector`), which skips every
  vector outside the set before scoring it, in more lists than usual (:func:`probes`):
  as many more as the set is smaller than the index, so that about as many allowed
  vectors are scored as an unfiltered search scores. A set of at most ``nprobe / nlist``
  of the index probes every list, which is an exact scan of the set in the precision the
  index stores (exact for flat and ivf-fp16, 8-bit for ivf-sq8, the codes for an ivf-pq
  without its re-rank store). When a probe finds fewer than k, every list is scanned, so
  a search returns k hits whenever the index holds k allowed ids.

The crossover, measured on 1M 512-d vectors in ivf-pq (bench/filtered_search.py, two
cores shared with other work): a scan costs 1.3-1.8 us an allowed vector (read from the
memory-mapped store, widened, scored: 2k ids 3 ms, 5k 8 ms, 10k 14-18 ms), while a small
set probes every list, 7-16 ms at 1M whatever its size (every indexed id is tested
against the selector; then the re-rank). They meet near 0.5 % of the index; below it a
scan is also exact, and it grows with the set, not with the index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

SCAN_SHARE = 200  # a re-ranked index scans a set of at most 1/SCAN_SHARE of its vectors
SCAN_ROWS = 1_024  # vectors read and scored at a time (2 MB of float32 at 512-d)
_BITMAP_MIN_BYTES = 1 << 20  # a bitmap this small is always fine, however sparse the set
_BITMAP_BYTES_PER_ID = 64  # beyond: a hash set (about 40 bytes an id) is the smaller


def scanned(among: int, indexed: int) -> bool:
    """Whether a set of ``among`` ids is scanned (rather than probed) in a re-ranked index
    of ``indexed`` vectors (see the module)."""
    return among * SCAN_SHARE <= indexed


def best_of_stored(
    queries: np.ndarray, ids: np.ndarray, stored: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` (ids, inner products; rows best first) of each query (float32
    rows) over the vectors of ``ids``, which ``stored(ids)`` reads a chunk at a time.

    faiss's SIMD inner products score each chunk on this thread: a faiss search would
    start its OpenMP team for every chunk, and numpy's product its BLAS threads, and
    waking them on a loaded machine cost more than the scoring (up to 10x, measured).
    """
    import faiss

    scores = np.empty((len(queries), len(ids)), np.float32)
    for start in range(0, len(ids), SCAN_ROWS):
        chunk = np.ascontiguousarray(stored(ids[start : start + SCAN_ROWS]), dtype=np.float32)
        for query, out in zip(queries, scores[:, start:], strict=True):
            faiss.fvec_inner_products_ny(
                faiss.swig_ptr(out),
                faiss.swig_ptr(query),
                faiss.swig_ptr(chunk),
                chunk.shape[1],
                len(chunk),
            )
    k = min(k, len(ids))
    if k == 0:
        return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(scores, best, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return ids[np.take_along_axis(best, order, 1)], np.take_along_axis(best_scores, order, 1)


def allowed_ids(among: np.ndarray) -> np.ndarray:
    """``among`` as sorted, distinct, non-negative int64 ids (faiss's -1 means "none")."""
    ids = np.asarray(among, dtype=np.int64).ravel()
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        ids = np.unique(ids)
    return ids[ids >= 0] if len(ids) and ids[0] < 0 else ids


def held_in(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Whether each of ``ids`` is one of ``sorted_ids`` (ascending): a binary search each,
    so that a few ids are looked up in millions without sorting them again."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[at] == ids)


def selector(ids: np.ndarray) -> Any:
    """A faiss id selector for sorted distinct ``ids``: a bitmap (one bit an id up to the
    largest: a test is one memory read) unless the ids are so sparse that a hash set is
    smaller."""
    import faiss

    top = int(ids[-1]) if len(ids) else 0
    size = top // 8 + 1
    if size > max(_BITMAP_MIN_BYTES, _BITMAP_BYTES_PER_ID * len(ids)):
        return faiss.IDSelectorBatch(ids)
    mask = np.zeros(size * 8, bool)  # a byte an id, packed: faster than setting bits
    mask[ids] = True
    bitmap = np.packbits(mask, bitorder="little")  # faiss reads bit (id & 7) of byte id >> 3
    chosen = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bitmap))
    chosen.referenced_objects = [bitmap]  # faiss keeps only a pointer to it
    return chosen


def probes(nprobe: int, nlist: int, share: float) -> int:
    """Lists to probe for a set that is ``share`` of the index: ``nprobe`` (calibrated for
    an unfiltered search) divided by the share, up to every list."""
    if share <= 0:
        return nlist
    return max(nprobe, min(nlist, math.ceil(nprobe / share)))
