"""An IVF index's lists read back: each list's image ids and the vectors it stores.

A duplicate search joins the lists with each other (see :mod:`organizer.vectors.pairs`),
reading what the index already holds rather than the database's vectors a second time: an
ivf-fp16 or ivf-sq8 list decodes its codes (which hold each vector's residual from the
list's centroid), an ivf-pq list reads its vectors' exact half-precision copies from the
re-rank store. Shards searched side by side each hold part of every list: read as one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from organizer.vectors.kinds import FaissIndex
from organizer.vectors.rerank import RerankStore


class Lists:
    """The lists of one IVF index (or of shards of one template), read-only."""

    def __init__(
        self,
        parts: Sequence[tuple[FaissIndex, RerankStore | None]],
        to_list_space: Callable[[np.ndarray], np.ndarray],
    ):
        """``parts``: (IVF faiss index, its re-rank store or None) of each shard (one for a
        whole index); ``to_list_space`` turns vectors into what the lists' quantizer sees
        (an ivf-pq index rotates them)."""
        import faiss

        self.parts = [(faiss.downcast_index(ivf), store) for ivf, store in parts]
        first = self.parts[0][0]
        self.nlist = first.nlist
        self.dim = first.d
        self.centroids = first.quantizer.reconstruct_n(0, self.nlist)
        self.to_list_space = to_list_space

    def nearest(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` lists whose centroids score highest with each of ``vectors``."""
        quantizer = self.parts[0][0].quantizer
        _, found = quantizer.search(self.to_list_space(vectors), min(k, self.nlist))
        return found

    def ids(self, list_no: int) -> np.ndarray:
        """The image ids in list ``list_no`` (the order :meth:`vectors` reads them in)."""
        import faiss

        parts = []
        for ivf, _ in self.parts:
            lists = ivf.invlists
            size = lists.list_size(list_no)
            if size:
                parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def vectors(self, list_no: int, rows: np.ndarray) -> np.ndarray:
        """The stored vectors (float32) at positions ``rows`` (ascending) of the list."""
        out = np.empty((len(rows), self.dim), np.float32)
        start = 0
        for ivf, store in self.parts:
            size = ivf.invlists.list_size(list_no)
            lo, hi = np.searchsorted(rows, [start, start + size])
            if hi > lo:
                mine = rows[lo:hi] - start
                if store is not None:
                    out[lo:hi] = _exact(store, self.ids_of(ivf, list_no)[mine])
                else:
                    out[lo:hi] = self._decoded(ivf, list_no, mine)
            start += size
        return out

    @staticmethod
    def ids_of(ivf: FaissIndex, list_no: int) -> np.ndarray:
        import faiss

        lists = ivf.invlists
        return faiss.rev_swig_ptr(lists.get_ids(list_no), lists.list_size(list_no))

    def _decoded(self, ivf: FaissIndex, list_no: int, rows: np.ndarray) -> np.ndarray:
        import faiss

        lists = ivf.invlists
        size, width = lists.list_size(list_no), ivf.code_size
        codes = lists.get_codes(list_no)
        try:
            picked = faiss.rev_swig_ptr(codes, size * width).reshape(size, width)[rows]
        finally:
            lists.release_codes(list_no, codes)
        if ivf.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
            # The codes are the halves themselves: faiss's decode costs ~0.1 ms a call.
            vectors = picked.view(np.float16).astype(np.float32)
        else:
            vectors = ivf.sq.decode(picked)
        if ivf.by_residual:
            vectors += self.centroids[list_no]
        return vectors


def _exact(store: RerankStore, ids: np.ndarray) -> np.ndarray:
    """The re-rank store's vectors of ``ids`` (all held, in any order), read front to back."""
    rows = store.rows_of(ids)
    order = np.argsort(rows)
    out = np.empty((len(ids), store.dim), np.float32)
    out[order] = store.vectors[rows[order]]
    return out
