"""K-means over embedding vectors, choosing k, silhouettes, and evaluation against labels.

Pure functions of numpy arrays; persistence and naming live elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from organizer.choices import Algorithm
from organizer.errors import ClusterError

ALGORITHMS = tuple(a.value for a in Algorithm)
SILHOUETTE_SAMPLE = 10_000
SWEEP_SAMPLE = 5_000
DEFAULT_K_MAX = 40  # the largest k -k auto tries unless asked (fewer on a smaller library)


@dataclass
class Partition:
    """Clusters numbered 0..k-1 by decreasing size; centroids are unit vectors."""

    labels: np.ndarray
    centroids: np.ndarray
    distances: np.ndarray  # 1 - cosine(image, its centroid)

    @property
    def k(self) -> int:
        return len(self.centroids)


def check_k(k: int, n: int) -> None:
    """Raise ClusterError unless 2 <= k < n (and there are images at all)."""
    if n == 0:
        raise ClusterError("the library has no images yet: run `organizer ingest FOLDER` first")
    if k < 2:
        raise ClusterError(f"k must be at least 2, not {k}")
    if k >= n:
        raise ClusterError(
            f"k={k} must be smaller than the number of images ({n}): choose a smaller k"
        )


def kmeans(
    x: np.ndarray,
    k: int,
    algorithm: str = "faiss",
    seed: int = 0,
    restarts: int = 5,
    niter: int = 20,
) -> Partition:
    """Spherical K-means (faiss, default) or scikit-learn's KMeans on unit vectors.

    The same data, k, seed and algorithm give the same partition.
    """
    check_k(k, len(x))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if algorithm == "faiss":
        centroids = _faiss_kmeans(x, k, seed, restarts, niter)
    elif algorithm == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=restarts, random_state=seed, max_iter=100).fit(x)
        centroids = km.cluster_centers_.astype(np.float32)
    else:
        raise ClusterError(f"unknown algorithm {algorithm!r}: choose {' or '.join(ALGORITHMS)}")
    return _partition(x, centroids)


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, restarts: int, niter: int) -> np.ndarray:
    """faiss spherical K-means from k-means++ seeds, best of ``restarts`` by objective.

    faiss seeds with random points, which on well-separated data often puts two centroids in
    one group and never recovers; k-means++ seeds (computed on a sample) do not.
    """
    import faiss

    rng = np.random.default_rng(seed)
    size = min(len(x), max(2_000, 40 * k))  # seeding needs a few dozen points per cluster
    sample = x if len(x) <= size else x[np.sort(rng.choice(len(x), size, replace=False))]
    # faiss's OpenMP threads cost more than they give on small problems (each iteration
    # assigns at most 256 points per centroid): at 100 images the -k auto sweep took 2.6 s
    # on 2 threads, 0.7 s on one, and more beside the model embedding the vocabulary; two
    # threads won at 50k x k=100 (2.6M point-centroid pairs). This thread's setting only.
    threads = faiss.omp_get_max_threads()
    if min(len(x), 256 * k) * k <= _ONE_THREAD_PAIRS:
        faiss.omp_set_num_threads(1)
    try:
        best = _best_of(x, k, seed, restarts, niter, sample)
    finally:
        faiss.omp_set_num_threads(threads)
    return best


_ONE_THREAD_PAIRS = 1_000_000


def _best_of(
    x: np.ndarray, k: int, seed: int, restarts: int, niter: int, sample: np.ndarray
) -> np.ndarray:
    import faiss
    from sklearn.cluster import kmeans_plusplus

    # Spherical faiss K-means assigns by inner product: its objective (total similarity to
    # the centroids) is to be maximised.
    best, best_obj = None, -np.inf
    for restart in range(restarts):
        init, _ = kmeans_plusplus(sample, k, random_state=seed + restart)
        # Each iteration trains on at most 256 points per centroid (faiss's default): at 100k
        # x 512 and k=100 that is 40x faster than all points, at the same NMI (bench/cluster.py).
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=niter,
            spherical=True,
            seed=seed + restart,
            verbose=False,
            max_points_per_centroid=256,
            min_points_per_centroid=1,
        )
        km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        if km.obj[-1] > best_obj:
            best, best_obj = km.centroids.copy(), km.obj[-1]
    assert best is not None  # restarts >= 1
    return best


def _partition(x: np.ndarray, centroids: np.ndarray) -> Partition:
    centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    labels, similarity = assign(x, centroids)
    sizes = np.bincount(labels, minlength=len(centroids))
    order = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]  # empty clusters dropped
    renumber = np.full(len(centroids), -1)
    renumber[order] = np.arange(len(order))
    return Partition(renumber[labels], centroids[order].astype(np.float32), 1.0 - similarity)


def assign(
    x: np.ndarray, centroids: np.ndarray, batch: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (by cosine) of every vector, and that cosine."""
    labels = np.empty(len(x), dtype=np.int64)
    best = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), batch):
        sims = x[start : start + batch] @ centroids.T
        labels[start : start + batch] = sims.argmax(axis=1)
        best[start : start + batch] = sims.max(axis=1)
    return labels, best


@dataclass
class Silhouettes:
    mean: float | None
    per_image: np.ndarray  # NaN for images outside the sample
    per_cluster: dict[int, float]


def silhouettes(
    x: np.ndarray, labels: np.ndarray, sample: int = SILHOUETTE_SAMPLE, seed: int = 0
) -> Silhouettes:
    """Cosine silhouettes, exact up to ``sample`` images, else on a seeded sample of that size."""
    from sklearn.metrics import silhouette_samples

    per_image = np.full(len(x), np.nan, dtype=np.float32)
    if len(np.unique(labels)) < 2 or len(x) < 3:
        return Silhouettes(None, per_image, {})
    rows = np.arange(len(x))
    if len(x) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))
    values = silhouette_samples(x[rows], labels[rows], metric="cosine")
    per_image[rows] = values
    per_cluster = {int(c): float(values[labels[rows] == c].mean()) for c in np.unique(labels[rows])}
    return Silhouettes(float(values.mean()), per_image, per_cluster)


@dataclass(frozen=True)
class SweepPoint:
    k: int
    silhouette: float


def sweep(
    x: np.ndarray,
    k_min: int,
    k_max: int,
    algorithm: str = "faiss",
    seed: int = 0,
    sample: int = SWEEP_SAMPLE,
    progress: Callable[[int, int], None] | None = None,
) -> list[SweepPoint]:
    """Silhouette (cosine, embedding space) of K-means for each k in [k_min, k_max].

    K-means runs on the same seeded sample of at most ``sample`` images that the silhouette
    is measured on (one precomputed distance matrix), with as many restarts as a final run:
    cheap enough to try every k, and a poor local optimum cannot hide the right k.
    """
    from sklearn.metrics import silhouette_score

    k_max = min(k_max, largest_sweep_k(len(x), sample))
    if k_min < 2 or k_max < k_min:
        raise ClusterError(
            f"cannot sweep k from {k_min} to {k_max} on {len(x)} images: need 2 <= k-min <= k-max < images"
        )
    rows = np.arange(len(x))
    if len(x) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))
    sub = x[rows]
    distance = np.clip(1.0 - sub @ sub.T, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    points = []
    for k in range(k_min, k_max + 1):
        if progress:
            progress(k - k_min, k_max - k_min + 1)
        labels = kmeans(sub, k, algorithm, seed).labels
        score = (
            silhouette_score(distance, labels, metric="precomputed")
            if len(np.unique(labels)) > 1
            else -1.0
        )
        points.append(SweepPoint(k, float(score)))
    return points


def largest_sweep_k(n: int, sample: int = SWEEP_SAMPLE) -> int:
    """The largest k a sweep can try on ``n`` images: one fewer than the images it clusters
    (all of them, or its sample of ``sample``)."""
    return min(n, sample) - 1


def sweep_note(k_max: int, n: int, sample: int = SWEEP_SAMPLE) -> str | None:
    """Why a sweep up to ``k_max`` on ``n`` images stops earlier, or None if it does not."""
    top = largest_sweep_k(n, sample)
    if k_max <= top:
        return None
    why = (
        f"{n:,} images make at most {top:,} clusters"
        if n <= sample
        else f"the sweep clusters a sample of {sample:,} images"
    )
    return f"-k auto tried k up to {top:,}, not --k-max {k_max:,}: {why}"


def best_k(points: list[SweepPoint]) -> int:
    """The criterion of ``-k auto``: the k with the highest silhouette (the smaller k on ties)."""
    return max(points, key=lambda p: (round(p.silhouette, 4), -p.k)).k


@dataclass(frozen=True)
class LabelSpread:
    """How one true label is spread over the clusters."""

    label: str
    size: int
    clusters: int
    main_cluster: int
    main_share: float
    entropy_bits: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    nmi: float
    ari: float
    purity: float
    spread: list[LabelSpread]


def evaluate(true: list[str], predicted: np.ndarray) -> Evaluation:
    """NMI, ARI and purity of a clustering against true labels, and each label's spread."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    true_arr = np.asarray(true)
    predicted = np.asarray(predicted)
    purity = sum(
        np.unique(true_arr[predicted == c], return_counts=True)[1].max()
        for c in np.unique(predicted)
    ) / len(true_arr)
    spread = []
    for label in sorted(set(true)):
        clusters, counts = np.unique(predicted[true_arr == label], return_counts=True)
        share = counts / counts.sum()
        spread.append(
            LabelSpread(
                label,
                int(counts.sum()),
                len(clusters),
                int(clusters[counts.argmax()]),
                float(share.max()),
                # p*log2(1/p), not -(p*log2 p): one cluster gives 0.0, never -0.0 ("-0.00 bits")
                float((share * np.log2(1 / share)).sum()),
            )
        )
    return Evaluation(
        float(normalized_mutual_info_score(true_arr, predicted)),
        float(adjusted_rand_score(true_arr, predicted)),
        float(purity),
        spread,
    )
