"""An IVF index's lists read back: each list's image ids and the vectors it stores.

A duplicate search joins the lists with each other (see :mod:`organizer.vectors.pairs`),
reading what the index already holds rather than the database's vectors a second time: an
ivf-fp16 or ivf-sq8 list decodes its codes (which hold each vector's residual from the
list's centroid), an ivf-pq list reads its vectors' exact half-precision copies from the
re-rank store. Shards searched side by side each hold part of every list, and so do an
index's build and the vectors updates added since: read as one, leaving out the ids an
update masked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from organizer.vectors.filtered import held_in
from organizer.vectors.kinds import FaissIndex
from organizer.vectors.rerank import RerankStore, StackedRerank

Store = RerankStore | StackedRerank


class Lists:
    """The lists of one IVF index (or of shards of one template), read-only."""

    def __init__(
        self,
        parts: Sequence[tuple[FaissIndex, Store | None, np.ndarray]],
        to_list_space: Callable[[np.ndarray], np.ndarray],
    ):
        """``parts``: (IVF faiss index, its re-rank store or None, the sorted ids it holds
        but masks) of each shard or layer (one for a whole index); ``to_list_space`` turns
        vectors into what the lists' quantizer sees (an ivf-pq index rotates them)."""
        import faiss

        self.parts = [(faiss.downcast_index(ivf), store, masked) for ivf, store, masked in parts]
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
        parts = [
            self.ids_of(ivf, list_no)[self._live(ivf, masked, list_no)]
            for ivf, _, masked in self.parts
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    def _live(self, ivf: FaissIndex, masked: np.ndarray, list_no: int) -> np.ndarray:
        """Positions in the list of one part of the ids it does not mask."""
        ids = self.ids_of(ivf, list_no)
        if not len(masked):
            return np.arange(len(ids))
        return np.flatnonzero(~held_in(ids, masked))

    def vectors(self, list_no: int, rows: np.ndarray) -> np.ndarray:
        """The stored vectors (float32) at positions ``rows`` (ascending) of the list."""
        out = np.empty((len(rows), self.dim), np.float32)
        start = 0
        for ivf, store, masked in self.parts:
            live = self._live(ivf, masked, list_no)
            lo, hi = np.searchsorted(rows, [start, start + len(live)])
            if hi > lo:
                mine = live[rows[lo:hi] - start]
                if store is not None:
                    out[lo:hi] = _exact(store, self.ids_of(ivf, list_no)[mine])
                else:
                    out[lo:hi] = self._decoded(ivf, list_no, mine)
            start += len(live)
        return out

    @staticmethod
    def ids_of(ivf: FaissIndex, list_no: int) -> np.ndarray:
        import faiss

        lists = ivf.invlists
        size = lists.list_size(list_no)
        if not size:
            return np.empty(0, np.int64)
        return faiss.rev_swig_ptr(lists.get_ids(list_no), size)

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


def _exact(store: Store, ids: np.ndarray) -> np.ndarray:
    """The re-rank store's vectors of ``ids`` (all held, in any order), read front to back."""
    return store.lookup(ids)[1].astype(np.float32)
