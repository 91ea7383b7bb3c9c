"""Near-duplicate pairs on every index kind: the exact answer's pairs, exact scores, from
lists joined with lists (organizer.vectors.pairs)."""

from __future__ import annotations

import numpy as np
import pytest

from organizer import search
from organizer.vectors import VectorIndex
from organizer.vectors import pairs as vp
from organizer.vectors import shards as sh

DIM = 32
N = 12_000  # enough to train ivf-pq's 256 codewords
THRESHOLD = 0.96
IDS = np.arange(N, dtype=np.int64) * 3 + 2  # ids are not row numbers


def _vectors() -> np.ndarray:
    """Clustered unit vectors with 300 planted copies at cosine 0.96-0.995 of another row,
    each moved toward a third row of its cluster (across the lists' borders)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    cluster = rng.integers(0, 40, N)
    v = centres[cluster] + 0.8 * rng.standard_normal((N, DIM))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = rng.choice(N, (300, 2), replace=False)
    toward = np.array([rng.choice(np.flatnonzero(cluster == cluster[a])) for a, _ in rows])
    cos = rng.uniform(0.9601, 0.995, len(rows))
    v[rows[:, 1]] = vp.at_cosine(v[rows[:, 0]], v[toward], cos)
    return v.astype(np.float32)


VECTORS = _vectors()


def _batches(lo: int = 0, hi: int = N):
    return [
        (IDS[s : min(s + 1000, hi)], VECTORS[s : min(s + 1000, hi)]) for s in range(lo, hi, 1000)
    ]


def _exact() -> dict[tuple[int, int], float]:
    scores = VECTORS @ VECTORS.T
    a, b = np.nonzero(np.triu(scores >= THRESHOLD, k=1))
    return {(int(IDS[i]), int(IDS[j])): float(scores[i, j]) for i, j in zip(a, b, strict=True)}


EXACT = _exact()


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, VectorIndex]:
    work = tmp_path_factory.mktemp("pairs")
    built = {k: VectorIndex.build(IDS, VECTORS, DIM, k, work) for k in ("ivf-fp16", "ivf-pq")}
    empty = _emptied(built["ivf-pq"])
    parts = [
        sh.fill(empty, lambda lo=lo, hi=hi: iter(_batches(lo, hi)), work)
        for lo, hi in ((0, N // 2), (N // 2, N))
    ]
    built["ivf-pq shards together"] = sh.together(parts)
    # An index behind the database: its last 500 images are not in it yet.
    built["ivf-fp16 behind"] = VectorIndex.build(IDS[:-500], VECTORS[:-500], DIM, "ivf-fp16")
    return built


def _emptied(index: VectorIndex) -> VectorIndex:
    import faiss

    copy = faiss.clone_index(index.faiss)
    copy.reset()
    return VectorIndex(copy)


@pytest.mark.parametrize(
    "kind", ["ivf-fp16", "ivf-pq", "ivf-pq shards together", "ivf-fp16 behind"]
)
def test_an_ivf_index_finds_the_exact_pairs_with_exact_scores(indexes, kind):
    assert len(EXACT) == 300  # the planted copies: nothing else comes that close
    pairs = search.duplicate_pairs(indexes[kind], _batches(), THRESHOLD)
    found = {(a, b): s for a, b, s in pairs}
    assert [(a, b) for a, b, _ in pairs] == sorted(found) and all(a < b for a, b in found)
    assert set(found) <= set(EXACT)  # nothing below the threshold
    assert len(found) >= 0.99 * len(EXACT)
    # Scores are the stored half-precision vectors' (the re-rank store's for ivf-pq).
    assert max(abs(s - EXACT[p]) for p, s in found.items()) < 2e-3


def test_pairs_among_a_filter_on_an_ivf_index(indexes):
    among = IDS[::2]  # every other image
    pairs = search.duplicate_pairs(indexes["ivf-fp16"], _batches(), THRESHOLD, among)
    allowed = set(among.tolist())
    expected = {p for p in EXACT if p[0] in allowed and p[1] in allowed}
    found = {(a, b) for a, b, _ in pairs}
    assert found <= expected and len(found) >= 0.99 * len(expected)


def test_a_flat_index_gives_exactly_the_exact_pairs():
    index = VectorIndex.build(IDS, VECTORS, DIM, "flat")
    found = {(a, b) for a, b, _ in search.duplicate_pairs(index, _batches(), THRESHOLD)}
    assert found == set(EXACT)


def test_a_looser_threshold_probes_more_lists(indexes):
    lists = indexes["ivf-fp16"].lists()
    assert lists is not None
    sample = VECTORS[: vp.SAMPLE]
    loose, tight = vp.probes(lists, sample, 0.9), vp.probes(lists, sample, 0.99)
    assert 1 <= tight < loose <= lists.nlist
