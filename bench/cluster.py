"""Clustering benchmark: faiss vs scikit-learn K-means, and `-k auto` on a known k.

    python bench/cluster.py [--n 100000] [--k 100]

Synthetic unit vectors (512-d) around k random centres. Both algorithms run through
organizer's own code paths with their defaults (5 restarts, seed 0); NMI is against the true
centres. Then `-k auto` (sweep k-min..k-max) on well-separated data with a known k.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import table


def synthetic(n: int, k: int, dim: int = 512, noise: float = 0.035, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, k, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def main() -> None:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from organizer.cluster import best_k, kmeans, silhouettes, sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    x, truth = synthetic(args.n, args.k)
    rows, times = [], {}
    for algorithm in ("faiss", "sklearn"):
        started = time.perf_counter()
        part = kmeans(x, args.k, algorithm, seed=0)
        times[algorithm] = time.perf_counter() - started
        score = nmi(truth, part.labels)
        rows.append(
            [
                f"{algorithm} K-means, {args.n:,} x 512, k={args.k}",
                f"{times[algorithm]:.1f} s",
                f"NMI {score:.4f}",
            ]
        )
        print(table(rows, ["run", "time", "quality"]), flush=True)
    started = time.perf_counter()
    sil = silhouettes(x, part.labels)
    rows.append(
        [
            "silhouette (cosine, 10k sample)",
            f"{time.perf_counter() - started:.1f} s",
            f"{sil.mean:.3f}",
        ]
    )
    rows.append(
        ["faiss speed-up over scikit-learn", f"{times['sklearn'] / times['faiss']:.0f}x", ""]
    )
    for true_k, n in ((12, 20_000), (25, 20_000)):
        xk, _ = synthetic(n, true_k, noise=0.03, seed=1)
        started = time.perf_counter()
        points = sweep(xk, 2, 40)
        chosen = best_k(points)
        rows.append(
            [
                f"-k auto (2..40) on {n:,} points, true k={true_k}",
                f"{time.perf_counter() - started:.1f} s",
                f"chose k={chosen} ({'found' if chosen == true_k else 'MISSED'})",
            ]
        )
    print()
    print(table(rows, ["run", "time", "quality"]))


if __name__ == "__main__":
    main()
