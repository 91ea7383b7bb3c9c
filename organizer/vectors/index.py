"""The FAISS index: inner-product search over (image id, unit vector) pairs.

Vectors are L2-normalised, so inner product is cosine similarity; FAISS ids are image ids.
Kinds (see organizer.vectors.kinds for which is chosen when):

- ``flat``: exact.
- ``ivf-fp16`` / ``ivf-sq8``: inverted lists of half-precision (or 8-bit) vectors.
- ``ivf-pq``: an OPQ rotation, inverted lists of product-quantizer codes (a 512-d vector in
  64 bytes), and half-precision vectors memory-mapped from disk: the codes shortlist
  ``RERANK`` times the results asked for, the exact vectors order them (bench/scale.py
  has the figures: codes alone reach recall@10 about 0.5, re-ranked about 0.98).

``nprobe`` (lists searched) is calibrated at build time until recall@10 against exact search
reaches ``TARGET_RECALL`` on sampled queries (each query's own vector left out), and that
recall is recorded. faiss is imported only by the code that needs it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organizer.vectors import filtered
from organizer.vectors.batches import Batch, as_f32, as_i64
from organizer.vectors.build import (
    calibration_rows,
    fill,
    in_list_space,
    pick_rows,
    reserve,
    trained,
    training_rows,
)
from organizer.vectors.calibration import Calibration
from organizer.vectors.kinds import FaissIndex, IndexPlan, plan
from organizer.vectors.lists import Lists
from organizer.vectors.rerank import RerankStore, StackedRerank

TARGET_RECALL = 0.97
RERANK = 16  # PQ candidates per result, re-ranked exactly
PLATEAU = 0.002  # calibration stops when doubling nprobe gains less recall than this
WITHIN_K = 32  # a range search's first shortlist on a re-ranked index

_BATCH = 16_384


def recall_at_10(found: np.ndarray, truth: np.ndarray, query_ids: np.ndarray) -> float:
    """Mean overlap of the top 10 of ``found`` and ``truth`` (rows ranked best first), each
    query's own id left out of both (a query that finds itself proves nothing)."""
    total = 0.0
    for f, t, own in zip(found, truth, query_ids, strict=True):
        f10 = [i for i in f.tolist() if i != own and i >= 0][:10]
        t10 = [i for i in t.tolist() if i != own and i >= 0][:10]
        total += len(set(f10) & set(t10)) / max(1, len(t10))
    return total / max(1, len(found))


@dataclass(frozen=True)
class Coarse:
    """Queries as an IVF index's lists see them, and the lists (with their centroids'
    scores) each one probes."""

    x: np.ndarray
    lists: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Hits:
    """Search results for one query: image ids and cosine scores, best first."""

    ids: np.ndarray
    scores: np.ndarray


class VectorIndex:
    """Inner-product search over (image id, unit vector) pairs; see the module for kinds."""

    def __init__(
        self,
        index: FaissIndex,
        recall: float | None = None,
        rerank: RerankStore | StackedRerank | None = None,
    ) -> None:
        self.faiss = index
        self.recall = recall
        self.rerank = rerank
        self._sorted_ids: np.ndarray | None = None  # ids(), sorted, while the index is unchanged
        # Ids the faiss index still holds but no longer counts (removed since it was
        # written; see organizer.vectors.grown), sorted, and the selector that skips them.
        self.removed = np.empty(0, np.int64)
        self._unmasked: FaissIndex = None
        # Queries and their exact answers, from the build (see organizer.vectors.calibration).
        self.calibration: Calibration | None = None

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        dim: int,
        kind: str | IndexPlan = "auto",
        workdir: Path | None = None,
    ) -> VectorIndex:
        """A new index holding ``vectors`` (N x dim float32, unit length) under ``ids``
        (ascending). ``kind``: a kind name, "auto", or a plan; ``workdir`` holds the re-rank
        files of a PQ index (default: a temporary folder)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def batches() -> Iterator[Batch]:
            for start in range(0, len(ids), _BATCH):
                yield ids[start : start + _BATCH], vectors[start : start + _BATCH]

        return cls.build_from(batches, len(ids), dim, kind, workdir)

    @classmethod
    def build_from(
        cls,
        batches: Callable[[], Iterable[Batch]],
        count: int,
        dim: int,
        kind: str | IndexPlan = "auto",
        workdir: Path | None = None,
        rows_at: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> VectorIndex:
        """A new index from a stream of (ids ascending, vectors) batches, ``count`` in all.

        ``batches()`` is called once per pass (twice for IVF kinds: a training sample and the
        calibration queries are drawn in the first, everything is added in the second), so
        memory holds the index being built and a training sample, never all the vectors.
        ``rows_at(positions)``, when given, returns the (vectors, ids) at sorted positions of
        that stream directly (a database looks them up): the first pass is then not needed.
        """
        import faiss

        chosen = kind if isinstance(kind, IndexPlan) else plan(count, dim, kind, None)
        if chosen.kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            for ids, vectors in batches():
                index.add_with_ids(as_f32(vectors), as_i64(ids))
            return cls(index, recall=1.0)
        wanted = [training_rows(chosen, count), calibration_rows(count)]
        if rows_at is None:
            (sample, _), calibration = pick_rows(batches(), count, dim, wanted)
        else:
            (sample, _), calibration = (rows_at(rows) for rows in wanted)
        empty = trained(chosen, dim, sample)
        reserve(empty, sample, count)
        del sample
        queries, query_ids = calibration
        with contextlib.ExitStack() as stack:
            if chosen.reranked and workdir is None:
                workdir = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="organizer-"))
                )
            filled = fill(empty, batches, dim, queries, workdir if chosen.reranked else None)
            built = cls(filled.index, rerank=filled.rerank)
            built.calibration = Calibration.of(queries, query_ids, *filled.truth)
            built.calibrate(queries, query_ids, filled.truth[0])
        return built

    def calibrate(self, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
        """Raise nprobe until recall@10 against exact search reaches TARGET_RECALL; the
        recall reached (also kept in ``self.recall``)."""
        return self.calibrate_from(1, queries, query_ids, truth)

    def calibrate_from(
        self, nprobe: int, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray
    ) -> float:
        """:meth:`calibrate`, starting at ``nprobe`` lists (an update starts from the
        nprobe the index has: it may rise, never fall)."""
        if self._ivf() is None:
            self.recall = 1.0
            return 1.0
        nlist = self.nlist
        last = None
        while True:
            self.nprobe = nprobe
            recall = self.measure(queries, query_ids, truth)
            if self.rerank is not None and last is not None and recall < last[1] + PLATEAU:
                # Compressed codes cap the recall: probing more lists only costs time.
                self.nprobe, self.recall = last
                return last[1]
            if recall >= TARGET_RECALL or nprobe >= nlist:
                self.recall = recall
                return recall
            last = (nprobe, recall)
            nprobe = min(2 * nprobe, nlist)

    def measure(self, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
        """recall@10 of ``queries`` (their own ids left out) against ``truth``."""
        hits = self.search(queries, 11)
        found = np.full((len(queries), 11), -1, np.int64)
        for row, h in zip(found, hits, strict=True):
            row[: len(h.ids)] = h.ids
        return recall_at_10(found, truth, query_ids)

    @property
    def nprobe(self) -> int:
        ivf = self._ivf()
        return 0 if ivf is None else ivf.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._ivf().nprobe = value

    # -- reading ---------------------------------------------------------------------------

    def _ivf(self) -> FaissIndex:
        import faiss

        try:
            return faiss.extract_index_ivf(self.faiss)
        except RuntimeError:
            return None

    @staticmethod
    def kind_of(index: FaissIndex) -> str:
        """The kind name of a faiss index built here."""
        import faiss

        if isinstance(index, faiss.IndexShards):  # shards searched together
            return VectorIndex.kind_of(faiss.downcast_index(index.at(0)))
        try:
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        except RuntimeError:
            return "flat"
        if isinstance(ivf, faiss.IndexIVFPQ):
            return "ivf-pq"
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer) and (
            ivf.sq.qtype == faiss.ScalarQuantizer.QT_8bit
        ):
            return "ivf-sq8"
        return "ivf-fp16"

    @property
    def kind(self) -> str:
        return self.kind_of(self.faiss)

    @property
    def nlist(self) -> int:
        ivf = self._ivf()
        return 0 if ivf is None else ivf.nlist

    def describe(self) -> str:
        ivf = self._ivf()
        if ivf is None:
            return "flat (exact)"
        recall = f", recall@10 {self.recall:.3f}" if self.recall is not None else ""
        shape = f"nlist {ivf.nlist}, nprobe {ivf.nprobe}"
        if self.lists_file is not None:
            shape += ", lists on disk"
        if self.kind == "ivf-pq":
            import faiss

            code = faiss.downcast_index(ivf).pq.code_size
            return f"ivf-pq (OPQ, {code}-byte codes, {shape}, re-ranked exactly{recall})"
        return f"{self.kind} ({shape}{recall})"

    def lists(self) -> Lists | None:
        """Its IVF lists read back (see :mod:`organizer.vectors.lists`); None when flat."""
        ivf = self._ivf()
        if ivf is None:
            return None
        return Lists([(ivf, self.rerank, self.removed)], lambda x: in_list_space(self.faiss, x))

    @property
    def dim(self) -> int:
        return self.faiss.d

    def _on_disk_lists(self) -> FaissIndex:
        import faiss

        ivf = self._ivf()
        if ivf is None:
            return None
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        # A file read with IO_FLAG_MMAP has on-disk lists too, nameless: not ours to manage.
        on_disk = isinstance(lists, faiss.OnDiskInvertedLists) and lists.filename
        return lists if on_disk else None

    @property
    def lists_file(self) -> Path | None:
        """The file holding the inverted lists when they live on disk (merged shards)."""
        lists = self._on_disk_lists()
        return None if lists is None else Path(lists.filename)

    @lists_file.setter
    def lists_file(self, path: Path) -> None:
        self._on_disk_lists().filename = str(path)  # what the index file will record

    def __len__(self) -> int:
        return self.faiss.ntotal - len(self.removed)

    def mask(self, removed: np.ndarray) -> None:
        """Leave out ``removed`` (sorted ids the faiss index holds) from now on."""
        import faiss

        self.removed = np.asarray(removed, np.int64)
        self._sorted_ids = None
        inner = filtered.selector(self.removed) if len(self.removed) else None
        self._unmasked = None if inner is None else (faiss.IDSelectorNot(inner), inner)

    def _params(self, selector: FaissIndex = None, always: bool = False) -> FaissIndex:
        """faiss search parameters: this index's nprobe, and ``selector`` (else the mask);
        None when there is nothing to select (unless ``always``)."""
        import faiss

        chosen = selector if selector is not None else (self._unmasked or (None,))[0]
        if chosen is None and not always:
            return None
        ivf = self._ivf()
        if ivf is None:
            return faiss.SearchParameters(sel=chosen) if chosen is not None else None
        params = faiss.SearchParametersIVF(nprobe=ivf.nprobe)
        if chosen is not None:
            params.sel = chosen
        return params

    def ids(self) -> np.ndarray:
        """All image ids in the index."""
        import faiss

        ivf = self._ivf()
        if ivf is None:
            found = faiss.vector_to_array(self.faiss.id_map).astype(np.int64)
        else:
            lists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(ivf.nlist)
                if lists.list_size(i)
            ]
            found = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
        if len(self.removed):
            found = found[~filtered.held_in(found, self.removed)]
        return found

    def search(self, queries: np.ndarray, k: int, coarse: Coarse | None = None) -> list[Hits]:
        """The ``k`` nearest ids for each query vector (fewer when the index is smaller).

        ``coarse``, for an IVF index: the queries' lists already found (see
        :meth:`coarse`), by this index or another sharing its quantizer."""
        k = min(k, len(self))
        queries = as_f32(queries)
        if k <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        fetch = k if self.rerank is None else min(len(self), k * RERANK)
        scores, ids = self.candidates(queries, fetch, coarse)
        if self.rerank is None:
            return [Hits(i[i >= 0], s[i >= 0]) for s, i in zip(scores, ids, strict=True)]
        return [self._exact(q, c[c >= 0], k) for q, c in zip(queries, ids, strict=True)]

    def candidates(
        self, queries: np.ndarray, fetch: int, coarse: Coarse | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's own (scores, ids) of the ``fetch`` best of each query (ids -1 past the
        end): for a re-ranked kind, the codes' estimates, before the exact re-rank."""
        if coarse is None:
            return self.faiss.search(queries, fetch, params=self._params())
        return self._preassigned(coarse, fetch)

    def _preassigned(self, coarse: Coarse, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's search of this IVF index's lists that ``coarse`` found, with the mask
        (its Python wrapper takes no parameters: the C++ call does)."""
        import faiss

        params = self._params(always=True)
        params.nprobe = coarse.lists.shape[1]
        n = len(coarse.x)
        scores = np.empty((n, k), np.float32)
        ids = np.empty((n, k), np.int64)
        self._ivf().search_preassigned_c(
            n,
            faiss.swig_ptr(coarse.x),
            k,
            faiss.swig_ptr(coarse.lists),
            faiss.swig_ptr(coarse.scores),
            faiss.swig_ptr(scores),
            faiss.swig_ptr(ids),
            False,
            params,
        )
        return scores, ids

    def coarse(self, queries: np.ndarray) -> Coarse | None:
        """The lists each query probes (None: a flat index), to search several indexes
        sharing this one's trained quantizer without finding them again."""
        ivf = self._ivf()
        if ivf is None:
            return None
        x = as_f32(in_list_space(self.faiss, queries))
        scores, lists = ivf.quantizer.search(x, ivf.nprobe)
        return Coarse(x, as_i64(lists), as_f32(scores))

    def search_among(self, queries: np.ndarray, k: int, among: np.ndarray) -> list[Hits]:
        """The ``k`` nearest ids for each query vector among the image ids ``among`` (a
        filter's answer, in any order; ids the index does not hold are ignored): exactly
        k hits whenever the index holds k of them, all of them otherwise.

        Scores are those :meth:`search` gives (exact but for ivf-sq8, and for ivf-pq
        without its re-rank store). A re-ranked index scores a small set (see
        ``filtered.scanned``) exactly from its re-rank store; otherwise faiss searches
        with the set as an id selector, probing more lists the smaller the set is, every
        list when it found fewer than k (see :mod:`organizer.vectors.filtered`).
        """
        queries = as_f32(queries)
        among = filtered.allowed_ids(among)
        if len(self.removed):
            among = among[~filtered.held_in(among, self.removed)]
        k = min(k, len(among), len(self))
        if k <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        if self.rerank is not None and filtered.scanned(len(among), len(self)):
            held = among[self._holds(among)]
            ids, scores = filtered.best_of_stored(queries, held, self.rerank.vectors_of, k)
            return [Hits(i, s) for i, s in zip(ids, scores, strict=True)]
        return self._probe_among(queries, k, among)

    def stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether found, float16 vector) of each id from the exact vectors kept on disk
        (a re-ranked kind; nothing is found in other kinds), masked ids not found."""
        if self.rerank is None:
            return np.zeros(len(ids), bool), np.zeros((len(ids), self.dim), np.float16)
        found, vectors = self.rerank.lookup(ids)
        if len(self.removed):
            found &= ~filtered.held_in(ids, self.removed)
        return found, vectors

    def _holds(self, ids: np.ndarray) -> np.ndarray:
        """Whether the index holds each of the sorted ``ids``."""
        if isinstance(self.rerank, RerankStore) and len(self.rerank) == self.faiss.ntotal:
            # Every add writes the store first, and removals leave their rows there: the
            # same count means the same ids.
            held = self.rerank.holds(ids)
            return held & ~filtered.held_in(ids, self.removed) if len(self.removed) else held
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self.ids())
        return filtered.held_in(ids, self._sorted_ids)

    def _probe_among(self, queries: np.ndarray, k: int, among: np.ndarray) -> list[Hits]:
        """faiss's search with ``among`` as an id selector (see filtered.probes)."""
        import faiss

        chosen = filtered.selector(among)
        fetch = min(len(self), len(among), k * RERANK if self.rerank is not None else k)
        ivf = self._ivf()
        if ivf is None:
            params = faiss.SearchParameters(sel=chosen)
        else:
            share = len(among) / len(self)
            params = faiss.SearchParametersIVF(
                sel=chosen, nprobe=filtered.probes(ivf.nprobe, ivf.nlist, share)
            )
        scores, found = self.faiss.search(queries, fetch, params=params)
        short = (found >= 0).sum(axis=1) < k
        if ivf is not None and params.nprobe < ivf.nlist and short.any():
            params.nprobe = ivf.nlist  # every list: all the allowed ids there are
            scores[short], found[short] = self.faiss.search(queries[short], fetch, params=params)
        if self.rerank is None:
            return [Hits(i[i >= 0][:k], s[i >= 0][:k]) for s, i in zip(scores, found, strict=True)]
        return [self._exact(q, c[c >= 0], k) for q, c in zip(queries, found, strict=True)]

    def _exact(self, query: np.ndarray, candidates: np.ndarray, k: int) -> Hits:
        assert self.rerank is not None  # only re-ranked indexes search exactly
        scores = self.rerank.scores(query, candidates)
        order = np.argsort(-scores, kind="stable")[:k]
        keep = order[np.isfinite(scores[order])]
        return Hits(candidates[keep], scores[keep])

    def within(self, queries: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, the ids and scores of every vector with similarity >= threshold
        (exact scores for every kind but ivf-sq8)."""
        queries = as_f32(queries)
        if len(self) == 0:
            return [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        if self.rerank is not None:
            return [self._within_reranked(q, threshold) for q in queries]
        lims, scores, ids = self.faiss.range_search(
            queries, float(threshold), params=self._params()
        )
        return [
            (ids[lims[i] : lims[i + 1]], scores[lims[i] : lims[i + 1]]) for i in range(len(queries))
        ]

    def _within_reranked(
        self, query: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray]:
        # PQ scores err by more than near-duplicates differ: shortlist by rank (the exact
        # top k of k * RERANK candidates), widening while the whole shortlist qualifies.
        k = WITHIN_K
        while True:
            hits = self.search(query[None, :], k)[0]
            keep = hits.scores >= threshold
            if not keep.all() or len(hits.ids) < k:
                return hits.ids[keep], hits.scores[keep]
            k *= 4

    # -- changing --------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Add (ids ascending); False when a re-ranked index cannot take them in place."""
        if not len(ids):
            return True
        self._sorted_ids = None
        ids = as_i64(ids)
        if self.rerank is not None and not (
            isinstance(self.rerank, RerankStore) and self.rerank.update(ids, vectors)
        ):
            return False
        self.faiss.add_with_ids(as_f32(vectors), ids)
        return True

    def remove(self, ids: Iterable[int]) -> None:
        import faiss

        ids = np.asarray(sorted(ids), dtype=np.int64)
        self._sorted_ids = None
        if len(ids):
            self.faiss.remove_ids(faiss.IDSelectorBatch(ids))

    def fits(self, size: int, wanted: IndexPlan) -> bool:
        """Whether this index still suits a library of ``size`` vectors planned as ``wanted``
        (same kind; lists not fewer than half the planned number), to grow in place."""
        return self.kind == wanted.kind and self.nlist >= wanted.nlist // 2
