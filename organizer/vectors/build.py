"""Building an IVF index in two steps (train on a sample, then fill with every vector),
used by :meth:`VectorIndex.build_from` and on their own for shards. Everything here works
on faiss indexes and streams; wrapping one as a :class:`VectorIndex` is the caller's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organizer.vectors.batches import Batch, as_f32, as_i64
from organizer.vectors.calibration import DEPTH
from organizer.vectors.kinds import FaissIndex, IndexPlan, nlist_for
from organizer.vectors.rerank import RerankStore, RerankWriter

_CALIBRATION_QUERIES = 200
_KMEANS_ITERATIONS = 10  # faiss's default 25 trains 2.5x longer for no recall measured here
_TRAIN_PER_LIST = 40


def pick_rows(
    batches: Iterable[Batch], count: int, dim: int, wanted: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The vectors (and ids) at the given row positions of a stream, in the order asked."""
    out = []
    for rows in wanted:
        out.append((np.empty((len(rows), dim), np.float32), np.empty(len(rows), np.int64)))
    orders = [np.argsort(rows) for rows in wanted]
    sorted_rows = [rows[order] for rows, order in zip(wanted, orders, strict=True)]
    offset = 0
    for ids, vectors in batches:
        end = offset + len(ids)
        for (vecs, picked_ids), rows, order in zip(out, sorted_rows, orders, strict=True):
            lo, hi = np.searchsorted(rows, [offset, end])
            take = order[lo:hi]
            vecs[take] = vectors[rows[lo:hi] - offset]
            picked_ids[take] = ids[rows[lo:hi] - offset]
        offset = end
    if offset != count:
        raise RuntimeError(f"internal error: the vectors changed while read ({offset} != {count})")
    return out


class TopK:
    """Exact top-k (inner product) of a few queries over a stream of batches."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.empty((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for start in range(0, len(ids), 4096):  # its temporaries scale with the slice
            self._update(ids[start : start + 4096], vectors[start : start + 4096])

    def _update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        all_ids = np.concatenate(
            [self.ids, np.broadcast_to(ids, (len(self.queries), len(ids)))], axis=1
        )
        keep = min(self.k, scores.shape[1])
        best = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        self.scores = np.take_along_axis(scores, best, axis=1)
        self.ids = np.take_along_axis(all_ids, best, axis=1)

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of each query's top k, best first."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.ids, order, axis=1), np.take_along_axis(
            self.scores, order, axis=1
        )


def training_rows(chosen: IndexPlan, count: int) -> np.ndarray:
    """Which rows of a stream of ``count`` vectors train an index of plan ``chosen``."""
    nlist = chosen.nlist or nlist_for(count)
    wanted = _TRAIN_PER_LIST * nlist
    if chosen.reranked:  # the 256 codewords of each sub-vector want 39 points each too
        wanted = max(wanted, 39 * 256)
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(count, min(count, wanted), replace=False))


def calibration_rows(count: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.sort(rng.choice(count, min(count, _CALIBRATION_QUERIES), replace=False))


def trained(chosen: IndexPlan, dim: int, sample: np.ndarray) -> FaissIndex:
    """An empty IVF faiss index of the planned kind, trained on ``sample``."""
    import faiss

    nlist = chosen.nlist or nlist_for(len(sample))
    if chosen.kind == "ivf-pq":
        m = chosen.code_bytes
        index = faiss.index_factory(dim, f"OPQ{m},IVF{nlist},PQ{m}", faiss.METRIC_INNER_PRODUCT)
        # faiss's defaults train for minutes on two cores (OPQ: 50 rotation updates;
        # polysemous codes, which search here never uses). 4 rotation updates instead of
        # 10 cut recall@10 at 1M from 0.98 to a 0.96 ceiling.
        opq = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
        opq.niter = 10
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    else:
        qtype = (
            faiss.ScalarQuantizer.QT_8bit
            if chosen.kind == "ivf-sq8"
            else faiss.ScalarQuantizer.QT_fp16
        )
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(dim), dim, nlist, qtype, faiss.METRIC_INNER_PRODUCT
        )
    faiss.extract_index_ivf(index).cp.niter = _KMEANS_ITERATIONS
    index.train(as_f32(sample))
    return index


def reserve(index: FaissIndex, sample: np.ndarray, count: int) -> None:
    """Size each inverted list for the share of ``count`` vectors that the training sample
    says it will get (with a margin). Lists that grow by doubling end up with a third of their
    memory unused on average: at 1M the build then held 1.65x the index it wrote."""
    reserve_shares(index, list_shares(index, sample), count)


def list_shares(index: FaissIndex, sample: np.ndarray) -> np.ndarray:
    """The fraction of vectors each inverted list gets, as the training sample says."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if len(sample) == 0:
        return np.zeros(ivf.nlist)
    _, assigned = ivf.quantizer.search(in_list_space(index, sample), 1)
    return np.bincount(assigned.ravel(), minlength=ivf.nlist) / len(sample)


def in_list_space(index: FaissIndex, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (float32) as the IVF lists of ``index`` see them: through its transforms
    (an ivf-pq index's rotation) when it has any."""
    import faiss

    x = as_f32(vectors)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            x = faiss.downcast_VectorTransform(index.chain.at(i)).apply(x)
    return x


def reserve_shares(index: FaissIndex, shares: np.ndarray, count: int) -> None:
    """Size each inverted list for its share of ``count`` vectors, plus three standard
    deviations of a Poisson count (a fixed margin over-reserved tiny lists: a billion
    images in 1,000 shards put about 16 vectors in each of 63k lists)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.ArrayInvertedLists) or not np.any(shares):
        return
    expected = np.asarray(shares, dtype=np.float64) * count
    sizes = np.ceil(expected + 3 * np.sqrt(expected)).astype(np.int64)
    for list_no, size in enumerate(sizes.tolist()):
        lists.resize(list_no, size)  # a std::vector keeps its capacity when shrunk back
        lists.resize(list_no, 0)


ADD_ROWS = 16_384  # faiss assigns a batch to lists in parallel: 4,096 took 1.7x as long


def regrouped(batches: Iterable[Batch], rows: int = ADD_ROWS) -> Iterator[Batch]:
    """The stream in batches of about ``rows`` (a database reads smaller ones: less memory
    for its rows, same speed), so that each faiss add gets a large batch."""
    ids_parts: list[np.ndarray] = []
    vector_parts: list[np.ndarray] = []
    held = 0
    for ids, vectors in batches:
        ids_parts.append(ids)
        vector_parts.append(vectors)
        held += len(ids)
        if held >= rows:
            yield np.concatenate(ids_parts), np.concatenate(vector_parts)
            ids_parts, vector_parts, held = [], [], 0
    if held:
        yield np.concatenate(ids_parts), np.concatenate(vector_parts)


@dataclass(frozen=True)
class Filled:
    """An IVF index with every vector of a stream added, its re-rank store (a re-ranked
    kind), and the exact top ``DEPTH`` of each calibration query (ids and scores, best
    first) to calibrate it on and to keep for later updates."""

    index: FaissIndex
    rerank: RerankStore | None
    truth: tuple[np.ndarray, np.ndarray]


def fill(
    empty: FaissIndex,
    batches: Callable[[], Iterable[Batch]],
    dim: int,
    queries: np.ndarray,
    rerank_dir: Path | None = None,
) -> Filled:
    """Add a stream to an empty trained IVF index, finding the exact answers to ``queries``
    on the way; with ``rerank_dir``, the full vectors go to a re-rank store there too."""
    writer = RerankWriter(rerank_dir, dim) if rerank_dir is not None else None
    try:
        exact = TopK(queries, DEPTH)
        for ids, vectors in regrouped(batches()):
            vectors, ids = as_f32(vectors), as_i64(ids)
            empty.add_with_ids(vectors, ids)
            exact.update(ids, vectors)
            if writer is not None:
                writer.add(ids, vectors)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    rerank = writer.finish() if writer is not None else None
    return Filled(empty, rerank, exact.ranked())


def emptied(index: FaissIndex) -> FaissIndex:
    """An empty copy of a trained index, its lists left out of the copy (faiss cannot copy
    memory-mapped lists, nor should gigabytes be copied only to be dropped)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists, owned, counts = ivf.invlists, ivf.own_invlists, (index.ntotal, ivf.ntotal)
    ivf.own_invlists = False  # swapped out for the copy, not freed
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, True)
    empty.this.disown()  # the index frees it
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.replace_invlists(lists, owned)
        index.ntotal, ivf.ntotal = counts
