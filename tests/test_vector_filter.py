"""Search among a set of image ids (a metadata filter's answer): k hits whenever k of the
allowed ids are indexed, the exact best ones where the path is exact, for every kind."""

from __future__ import annotations

import numpy as np
import pytest

from organizer import search
from organizer.vectors import VectorIndex, filtered
from organizer.vectors import shards as sh

DIM = 32
N = 12_000  # enough to train ivf-pq's 256 codewords
K = 10
IDS = np.arange(N, dtype=np.int64) * 2 + 1  # ids are not row numbers; even ids are foreign


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    v = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


VECTORS, QUERIES = np.split(_clustered(N + 6), [N])  # queries like the images, not indexed


def _stream(lo: int = 0, hi: int = N):
    return lambda: iter([(IDS[lo:hi], VECTORS[lo:hi])])


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, VectorIndex]:
    work = tmp_path_factory.mktemp("filter")
    built = {
        kind: VectorIndex.build(IDS, VECTORS, DIM, kind, work)
        for kind in ("flat", "ivf-fp16", "ivf-sq8", "ivf-pq")
    }
    assert [i.kind for i in built.values()] == list(built)
    built["ivf-pq, codes only"] = VectorIndex(built["ivf-pq"].faiss)
    built["template"] = _emptied(built["ivf-pq"])
    parts = [
        sh.fill(built["template"], _stream(lo, hi), work) for lo, hi in ((0, N // 2), (N // 2, N))
    ]
    built["shards merged"] = sh.merge(parts, work)
    built["shards together"] = sh.together(parts)
    return built


def _emptied(index: VectorIndex) -> VectorIndex:
    """A trained, empty copy (what shards start from), without training again."""
    import faiss

    copy = faiss.clone_index(index.faiss)
    copy.reset()
    return VectorIndex(copy)


def _allowed(size: int, seed: int) -> np.ndarray:
    """``size`` indexed ids at random, plus ids the index does not hold, shuffled and
    repeated (a caller's array need not be sorted or distinct)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(IDS, size, replace=False)
    foreign = np.array([0, 2, 4 * N, 10**9], np.int64)
    among = np.concatenate([chosen, foreign, chosen[:3]])
    rng.shuffle(among)
    return among


def _truth_all(query: np.ndarray, among: np.ndarray, vectors: np.ndarray = VECTORS):
    """Brute force: the allowed, indexed ids and their scores, best first."""
    ids = np.intersect1d(among, IDS)
    scores = vectors[(ids - 1) // 2] @ query
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def _truth(query: np.ndarray, among: np.ndarray, vectors: np.ndarray = VECTORS):
    """The best K of :func:`_truth_all`."""
    ids, scores = _truth_all(query, among, vectors)
    return ids[:K], scores[:K]


SIZES = [0, 1, K - 1, K, 3 * K, N // 100, N // 2, N]
RERANKED = ("ivf-pq", "shards merged", "shards together")
HALF = VECTORS.astype(np.float16).astype(np.float32)  # what a re-rank store holds
RECALL = {"ivf-fp16": 0.95, "ivf-sq8": 0.85, "ivf-pq, codes only": 0.6}  # approximate
SCAN = {"scanned": 0, "probed": 10**9}  # filtered.SCAN_SHARE that forces each path


def _check(index: VectorIndex, among: np.ndarray, size: int, exact: bool, recall: float):
    """k hits (or all there are), allowed and indexed, best first, distinct; the true best
    ones when ``exact``; else at least ``recall`` of them on average."""
    found = []
    for query, hit in zip(QUERIES, index.search_among(QUERIES, K, among), strict=True):
        assert len(hit.ids) == min(K, size)  # never fewer because the nearest were left out
        assert set(hit.ids.tolist()) <= set(among.tolist()) & set(IDS.tolist())
        assert len(set(hit.ids.tolist())) == len(hit.ids)
        assert np.all(np.diff(hit.scores) <= 1e-6)
        stored = HALF if index.rerank is not None else VECTORS
        truth_ids, truth_scores = _truth(query, among, stored)
        if exact:
            assert hit.ids.tolist() == truth_ids.tolist()
            np.testing.assert_allclose(hit.scores, truth_scores, atol=1e-5)
        both = len(set(hit.ids.tolist()) & set(truth_ids.tolist()))
        found.append(both / len(truth_ids) if len(truth_ids) else 1.0)
    assert np.mean(found) >= recall


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["flat", *RERANKED, *RECALL])
def test_k_best_among_the_allowed(indexes, kind, size):
    index = indexes[kind]
    among = _allowed(size, seed=size)
    scanned = index.rerank is not None and filtered.scanned(size + 4, len(index))
    exact = kind == "flat" or scanned
    _check(index, among, size, exact, 1.0 if exact else RECALL.get(kind, 0.9))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("path", SCAN)
def test_a_reranked_index_scanned_or_probed(indexes, monkeypatch, path, size):
    """Scanned, a re-ranked index finds the true best among the set, at any size; probed,
    its codes shortlist among the set and the re-rank orders them exactly."""
    monkeypatch.setattr(filtered, "SCAN_SHARE", SCAN[path])
    among = _allowed(size, seed=size + 2)
    for kind in RERANKED:
        _check(indexes[kind], among, size, path == "scanned", 0.9)


@pytest.mark.parametrize("size", [1, K, 3 * K, N // 100])
def test_a_small_set_is_probed_in_every_list(indexes, size):
    """A set small enough to probe every list is scanned whole: ivf-fp16 then finds the
    true best, up to half precision."""
    index = indexes["ivf-fp16"]
    ivf = index._ivf()
    among = _allowed(size, seed=size + 1)
    assert filtered.probes(ivf.nprobe, ivf.nlist, len(among) / len(index)) == ivf.nlist
    for query, hit in zip(QUERIES, index.search_among(QUERIES, K, among), strict=True):
        _, truth_scores = _truth(query, among)
        np.testing.assert_allclose(hit.scores, truth_scores, atol=2e-3)


@pytest.mark.parametrize("kind", ["ivf-fp16", "ivf-sq8", "ivf-pq, codes only", *RERANKED])
def test_a_set_far_from_the_query_is_still_found_whole(indexes, monkeypatch, kind):
    """Allowed images far from the query, among many ids the index does not hold (the set
    looks large, so few lists are probed, and they hold none of it): every list is then
    searched, and all of them are found."""
    monkeypatch.setattr(filtered, "SCAN_SHARE", SCAN["probed"])
    query = QUERIES[0]
    ranked, _ = _truth_all(query, IDS, VECTORS)
    far = ranked[-(K + 5) :]
    among = np.concatenate([far, np.arange(0, 2 * N, 2)])  # the even ids are not indexed
    hits = indexes[kind].search_among(query[None], K, among)[0]
    assert len(hits.ids) == K and set(hits.ids.tolist()) <= set(far.tolist())


@pytest.mark.parametrize("path", SCAN)
def test_ids_the_index_no_longer_holds_are_ignored(indexes, tmp_path, monkeypatch, path):
    """A re-ranked index keeps a removed image's row in its store: never a hit."""
    monkeypatch.setattr(filtered, "SCAN_SHARE", SCAN[path])
    index = sh.fill(indexes["template"], _stream(), tmp_path)
    query = QUERIES[0]
    best, _ = _truth(query, IDS, HALF)
    index.remove(best[:5].tolist())
    assert len(index.rerank) == N and len(index) == N - 5
    among = np.concatenate([best, IDS[:20]])
    hits = index.search_among(query[None], K, among)[0]
    assert len(hits.ids) == K and not set(hits.ids.tolist()) & set(best[:5].tolist())
    assert index.add(best[:2], VECTORS[(best[:2] - 1) // 2])  # back again: found again
    assert index.search_among(query[None], 1, among)[0].ids.tolist() == [best[0]]


@pytest.mark.parametrize("ids", [[5, 9, 40_000], [3], list(range(1, 200, 7)), [7, 10**10]])
def test_selector_admits_exactly_the_set(ids):
    import faiss

    among = np.asarray(ids, np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(4))
    probe = np.array([1, 2, 3, 5, 6, 7, 9, 10, 39_999, 40_000, 40_001, 10**10, 10**10 + 1])
    index.add_with_ids(np.ones((len(probe), 4), np.float32), probe)
    chosen = filtered.selector(among)
    _, found = index.search(np.ones((1, 4), np.float32), len(probe), params=_params(chosen))
    assert sorted(found[found >= 0].tolist()) == sorted(set(ids) & set(probe.tolist()))


def _params(chosen):
    import faiss

    return faiss.SearchParameters(sel=chosen)


@pytest.mark.parametrize(
    ("nprobe", "nlist", "share", "expected"),
    [
        (16, 2000, 1.0, 16),
        (16, 2000, 0.5, 32),
        (16, 2000, 0.01, 1600),
        (16, 2000, 0.001, 2000),
        (16, 2000, 0.0, 2000),
    ],
)
def test_probes_grow_as_the_set_shrinks(nprobe, nlist, share, expected):
    assert filtered.probes(nprobe, nlist, share) == expected


# -- ranking: exclude, threshold, visibility --------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf-pq"])
def test_rank_among_keeps_exclude_threshold_and_visibility(indexes, kind):
    index = indexes[kind]
    query = QUERIES[1]
    among = _allowed(N // 10, seed=5)
    ranked_ids, ranked_scores = _truth_all(query, among, VECTORS if kind == "flat" else HALF)
    exclude = ranked_ids[[0, 3]].tolist()
    hidden = set(ranked_ids[1:12:2].tolist())  # every other hit is not shown (e.g. missing)

    def shown(ids: list[int]) -> set[int]:
        return {i for i in ids if i not in hidden}

    hits = search.rank(index, query, K, exclude, allowed=shown, among=among)
    expected = [i for i in ranked_ids.tolist() if i not in hidden and i not in exclude][:K]
    assert [h.image_id for h in hits] == expected
    threshold = float(ranked_scores[6] + ranked_scores[7]) / 2
    hits = search.rank(index, query, K, exclude, threshold, allowed=shown, among=among)
    above = [
        i
        for i, s in zip(ranked_ids.tolist(), ranked_scores.tolist(), strict=True)
        if s >= threshold
    ]
    assert [h.image_id for h in hits] == [i for i in above if i not in hidden and i not in exclude]
    assert search.rank(index, query, K, ranked_ids.tolist(), among=among) == []


def test_rank_without_among_is_unchanged(indexes):
    index = indexes["flat"]
    hits = search.rank(index, QUERIES[2], K)
    truth_ids, _ = _truth(QUERIES[2], IDS)
    assert [h.image_id for h in hits] == truth_ids.tolist()


# -- duplicates ------------------------------------------------------------------------------


def test_duplicate_pairs_among_keep_only_pairs_of_allowed_images(indexes):
    vectors = VECTORS.copy()
    for a, b in ((0, 1), (2, 3), (4, 5)):  # near-duplicate pairs, rows a and b
        v = vectors[a] + 0.01 * np.random.default_rng(a).standard_normal(DIM)
        vectors[b] = v / np.linalg.norm(v)
    index = VectorIndex.build(IDS, vectors, DIM, "flat")
    batches = [(IDS[s : s + 1000], vectors[s : s + 1000]) for s in range(0, N, 1000)]
    every = search.duplicate_pairs(index, batches, 0.97)
    assert {(a, b) for a, b, _ in every} >= {(1, 3), (5, 7), (9, 11)}
    among = np.array([1, 3, 5, 11, 101], np.int64)  # both of one pair, one of two others
    pairs = search.duplicate_pairs(index, batches, 0.97, among)
    assert (
        [(a, b) for a, b, _ in pairs]
        == [(a, b) for a, b, _ in every if a in among and b in among]
        == [(1, 3)]
    )
    assert search.duplicate_pairs(index, batches, 0.97, np.empty(0, np.int64)) == []


# -- through the library ---------------------------------------------------------------------
