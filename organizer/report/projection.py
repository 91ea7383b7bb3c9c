"""The 2-D map of a report: a seeded sample of the vectors, PCA, then t-SNE.

openTSNE is used when installed (it was faster than scikit-learn at every size measured, see
bench/report.py); scikit-learn's TSNE otherwise. Both are seeded and run on one thread: the
same vectors, seed and backend give the same map on any machine (openTSNE's result depends
on its thread count), and OpenMP threads that spin-wait for a busy core made t-SNE up to ten
times slower on a loaded 2-core machine. The report runs it beside the thumbnail decoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from organizer.errors import ReportError

BACKENDS = ("auto", "opentsne", "sklearn")
PCA_DIMS = 50
PERPLEXITY = 30.0
# Below this many points t-SNE has nothing to arrange (and refuses a perplexity < 1).
MIN_TSNE_POINTS = 5


@dataclass(frozen=True)
class Projection:
    """Points in [0, 1]^2 (y up), the backend that made them and the seconds it took."""

    xy: np.ndarray
    backend: str
    seconds: float


def sample_rows(n: int, max_points: int, seed: int) -> np.ndarray:
    """Row numbers of the points the map shows: all of them, or a seeded sample, sorted."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def project(vectors: np.ndarray, seed: int = 0, backend: str = "auto") -> Projection:
    """A seeded 2-D t-SNE of the vectors (after PCA to 50 dimensions), scaled to [0, 1].

    Args:
        vectors: one row per point.
        seed: the random state of PCA and t-SNE.
        backend: "auto" (openTSNE when installed, else scikit-learn), "opentsne" or "sklearn".

    Raises:
        ReportError: an unknown backend, or "opentsne" when openTSNE is not installed.
    """
    if backend not in BACKENDS:
        raise ReportError(f"unknown t-SNE backend {backend!r}: choose {', '.join(BACKENDS)}")
    started = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(x) < MIN_TSNE_POINTS:
        return Projection(_scale(_tiny_layout(len(x))), "none", time.perf_counter() - started)
    if backend == "auto":
        backend = "opentsne" if _has_opentsne() else "sklearn"
    from threadpoolctl import threadpool_limits

    perplexity = min(PERPLEXITY, (len(x) - 1) / 3.0)
    # No warnings.catch_warnings here: it is not thread-safe, and this runs on a thread.
    with threadpool_limits(1):
        x = _pca(x, seed)
        run = _opentsne if backend == "opentsne" else _sklearn
        xy = run(x, perplexity, seed)
    return Projection(_scale(xy), backend, time.perf_counter() - started)


def _has_opentsne() -> bool:
    try:
        import openTSNE  # noqa: F401
    except ImportError:
        return False
    return True


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    """PCA to 50 dimensions: t-SNE's neighbour search is faster and less noisy there."""
    if x.shape[1] <= PCA_DIMS or len(x) <= PCA_DIMS:
        return x
    from sklearn.decomposition import PCA

    return PCA(PCA_DIMS, random_state=seed).fit_transform(x).astype(np.float32)


def _opentsne(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    try:
        from openTSNE import TSNE
    except ImportError:
        raise ReportError(
            "openTSNE is not installed: `pip install openTSNE`, or use the sklearn backend"
        ) from None
    embedding = TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1).fit(x)
    return np.asarray(embedding, dtype=np.float64)


def _sklearn(x: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        n_jobs=1,
    )
    return tsne.fit_transform(x).astype(np.float64)


def _tiny_layout(n: int) -> np.ndarray:
    """Evenly spaced points on a circle (one point: the centre)."""
    if n <= 1:
        return np.zeros((n, 2))
    angles = np.arange(n) * 2 * np.pi / n
    return np.column_stack([np.cos(angles), np.sin(angles)])


def _scale(xy: np.ndarray) -> np.ndarray:
    """Into [0, 1] on both axes with the aspect ratio kept, centred."""
    if len(xy) == 0:
        return xy.reshape(0, 2)
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = float((high - low).max()) or 1.0
    return (xy - low) / span + (1.0 - (high - low) / span) / 2.0
