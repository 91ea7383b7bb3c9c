"""Search benchmark: `similar` latency, index build time, memory and recall at 10k/100k/1M.

    python bench/search.py [--sizes 10000 100000 1000000]

Random 512-d unit vectors with cluster structure (2,000 centres) are written into a real
library (SQLite rows as ingest writes them; 100 of the images are real files so `similar`
can be asked about them by path). Per size: index build time (automatic kind), index file
size, recall@10 against exact search, `similar` on an indexed image as a library call
(p50/p95 over 100 queries) and as a whole CLI process (p50 over 7 runs, process start
included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, ORGANIZER, run_measured, table, write_library

DIM = 512
QUERY_FILES = 100


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        v = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, DIM)).astype(
            np.float32
        )
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def make_library(n: int) -> tuple[Path, Path]:
    """A library of n vectors, built once and cached; returns (library dir, photo folder)."""
    lib_dir, photos = DATA / f"search-{n}" / "library", DATA / f"search-{n}" / "photos"
    if (lib_dir / ".complete").exists():
        return lib_dir, photos
    vectors = clustered(n)
    batches = (
        (np.arange(start, min(n, start + 50_000)), vectors[start : start + 50_000])
        for start in range(0, n, 50_000)
    )
    write_library(lib_dir, photos, batches, width=7, files=QUERY_FILES)
    (lib_dir / ".complete").touch()
    return lib_dir, photos


def bench_size(n: int) -> list[str]:
    import resource

    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q

    lib_dir, photos = make_library(n)
    (lib_dir / "vectors.faiss").unlink(missing_ok=True)
    with Library.open(Settings(library=lib_dir)) as lib:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        started = time.perf_counter()
        index = lib.vectors()  # rebuilt from the database and saved
        build_s = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
        with lib.engine.connect() as conn:
            ids, vectors = q.ok_vectors(conn, 1, DIM)
        rng = np.random.default_rng(1)
        rows = rng.choice(n, 200, replace=False)
        exact = np.argsort(-(vectors[rows] @ vectors.T), axis=1)[:, :10]
        hits = index.search(vectors[rows], 10)
        recall = np.mean(
            [len(set(h.ids) & set(ids[e])) / 10 for h, e in zip(hits, exact, strict=True)]
        )
        del vectors
        lib.similar(photos / "0000000.jpg", limit=12)  # warm: index loaded from its file
        latencies = []
        for i in range(100):
            t = time.perf_counter()
            lib.similar(photos / f"{i % QUERY_FILES:07d}.jpg", limit=12)
            latencies.append((time.perf_counter() - t) * 1e3)
        kind = lib.status().index.description
    cli = []
    for i in range(7):
        wall, _, _ = run_measured(
            [
                *ORGANIZER,
                "similar",
                str(photos / f"{i:07d}.jpg"),
                "--library",
                str(lib_dir),
                "--json",
            ]
        )
        cli.append(wall)
    size_mb = (lib_dir / "vectors.faiss").stat().st_size / 1e6
    p50, p95 = np.percentile(latencies, 50), np.percentile(latencies, 95)
    return [
        f"{n:,}",
        kind,
        f"{build_s:.1f} s",
        f"{size_mb:.0f} MB (+{max(0, rss_after - rss_before):.0f} MB RSS)",
        f"{recall:.3f}",
        f"{p50:.1f} / {p95:.1f} ms",
        f"{statistics.median(cli):.2f} s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(bench_size(n))
        print(
            table(
                rows,
                [
                    "vectors",
                    "index",
                    "build",
                    "index file (memory)",
                    "recall@10",
                    "similar p50 / p95 (library)",
                    "similar p50 (CLI process)",
                ],
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
