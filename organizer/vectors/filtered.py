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

The crossover (bench/filtered_search.py, 1M 512-d vectors in ivf-pq, two cores): reading
and scoring an allowed vector from the re-rank store costs about 0.35 us, testing an id
against the selector in a probed list about 6 ns, and a small set probes every list: a
scan wins while the set is below 1/64 of the index (~1.6 %; 10k ids: 3.5 ms against
7 ms), a probe beyond (30k ids: 11 ms against 5 ms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

SCAN_SHARE = 64  # a re-ranked index scans a set of at most 1/SCAN_SHARE of its vectors
SCAN_ROWS = 16_384  # vectors read and scored at a time (16 MB at 512-d)
_BITMAP_MIN_BYTES = 1 << 20  # a bitmap this small is always fine, however sparse the set
_BITMAP_BYTES_PER_ID = 64  # beyond: a hash set (about 40 bytes an id) is the smaller


def scanned(among: int, indexed: int) -> bool:
    """Whether a set of ``among`` ids is scanned (rather than probed) in a re-ranked index
    of ``indexed`` vectors (see the module)."""
    return among * SCAN_SHARE <= indexed


def best_of_stored(
    queries: np.ndarray, ids: np.ndarray, stored: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` (ids, inner products; rows best first) of each query over the
    vectors of ``ids``, which ``stored(ids)`` reads (float16, as a re-rank store keeps
    them) a chunk at a time.

    faiss scores the half-precision rows as they are (its fp16 scalar quantizer stores
    IEEE halves): no float32 copy, and no BLAS thread pool waking beside faiss's.
    """
    import faiss

    scan = faiss.IndexScalarQuantizer(
        queries.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    best_scores = np.empty((len(queries), 0), np.float32)
    best_ids = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(ids), SCAN_ROWS):
        chunk = ids[start : start + SCAN_ROWS]
        codes = np.ascontiguousarray(stored(chunk), dtype=np.float16)
        faiss.copy_array_to_vector(codes.view(np.uint8).ravel(), scan.codes)
        scan.ntotal = len(chunk)
        scores, rows = scan.search(queries, min(k, len(chunk)))
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, chunk[rows]], axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_ids, order, 1), np.take_along_axis(best_scores, order, 1)


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
