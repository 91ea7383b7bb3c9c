"""Report benchmark: `organizer report` time and file size at 1k/10k/50k images, and t-SNE
alone with openTSNE vs scikit-learn.

    python bench/report.py [--sizes 1000 10000 50000] [--full-tsne-max 10000]

Per size, a library (cached under $ORGANIZER_BENCH_DATA, default /tmp/organizer-bench) of
random 512-d unit vectors around 30 centres, each image a small generated JPEG (128x96) on
disk, clustered with k=30. Then (1) the whole report as a library call, with the default
--max-points: t-SNE time (on its own thread, beside the thumbnail decoding), thumbnail time,
total time, file size; (2) t-SNE alone (PCA to 50 dimensions, one thread, as the report runs
it) with each backend, on the map's points and, up to --full-tsne-max, on all the vectors.
Target: a 10k-image report in under 60 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, table

DIM, CENTRES = 512, 30


def clustered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    labels = rng.integers(0, CENTRES, n)
    v = centres[labels] + 0.8 * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True), labels


def picture(rng: np.random.Generator, label: int):
    """A 128x96 JPEG-able picture: smooth noise tinted by its cluster."""
    from PIL import Image

    tint = np.array([(label * 53) % 256, (label * 97) % 256, (label * 151) % 256])
    base = rng.integers(0, 256, (6, 8, 3)) // 2 + tint // 2
    return Image.fromarray(base.astype(np.uint8)).resize((128, 96), Image.Resampling.BILINEAR)


def make_library(n: int) -> Path:
    """A clustered library of n images with small files, built once and cached."""
    from sqlalchemy import insert

    from organizer.config import Settings
    from organizer.embed import ModelSpec
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    lib_dir, photos = DATA / f"report-{n}" / "library", DATA / f"report-{n}" / "photos"
    if (lib_dir / ".complete").exists():
        return lib_dir
    vectors, labels = clustered(n)
    rng = np.random.default_rng(1)
    with Library.open(Settings(library=lib_dir), create=True) as lib:
        with write_transaction(lib.engine) as conn:
            model_id = q.insert_model(conn, ModelSpec("bench-512", "none"), DIM)
            root_id = q.add_root(conn, str(photos.resolve()))
        stamp = q.now()
        for start in range(0, n, 10_000):
            images, vecs = [], []
            for i in range(start, min(n, start + 10_000)):
                rel = f"{i // 1000:03d}/{i:06d}.jpg"
                (photos / rel).parent.mkdir(parents=True, exist_ok=True)
                picture(rng, int(labels[i])).save(photos / rel, quality=85)
                images.append(
                    dict(
                        id=i + 1,
                        root_id=root_id,
                        relpath=rel.encode(),
                        size=1,
                        mtime_ns=1,
                        content_hash=f"{i:064d}",
                        status="ok",
                        width=128,
                        height=96,
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
                vecs.append(
                    dict(
                        image_id=i + 1,
                        model_id=model_id,
                        vector=vectors[i].tobytes(),
                        created_at=stamp,
                    )
                )
            with write_transaction(lib.engine) as conn:
                conn.execute(insert(q.images), images)
                conn.execute(insert(q.embeddings), vecs)
        lib.cluster(CENTRES, names=False)
    (lib_dir / ".complete").touch()
    return lib_dir


def bench_report(n: int) -> list[str]:
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.report import write_report

    lib_dir = make_library(n)
    out = Path(tempfile.mkdtemp(prefix="bench-report-")) / "report.html"
    with Library.open(Settings(library=lib_dir)) as lib:
        s = write_report(lib.engine, out)
    out.unlink()
    return [
        f"{n:,}",
        f"{s.n_points:,}",
        s.backend,
        f"{s.tsne_s:.1f} s",
        f"{s.thumbnails_s:.1f} s",
        f"{s.total_s:.1f} s",
        f"{s.size_bytes / 1e6:.1f} MB",
    ]


def bench_tsne(n: int, points: int) -> list[str]:
    from organizer.errors import ReportError
    from organizer.report import projection

    vectors, _ = clustered(n)
    rows = projection.sample_rows(n, points, seed=0)
    cells = [f"{n:,}", f"{len(rows):,}"]
    for backend in ("opentsne", "sklearn"):
        started = time.perf_counter()
        try:
            projection.project(vectors[rows], seed=0, backend=backend)
        except ReportError:
            cells.append("not installed")
            continue
        cells.append(f"{time.perf_counter() - started:.1f} s")
    return cells


def main() -> None:
    from organizer.report import DEFAULT_MAX_POINTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument(
        "--full-tsne-max",
        type=int,
        default=10_000,
        help="t-SNE of all the vectors only up to this many (sklearn is slow)",
    )
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(bench_report(n))
        print(
            table(
                rows,
                [
                    "images",
                    "map points",
                    "t-SNE",
                    "t-SNE time",
                    "thumbnails",
                    "report total",
                    "file size",
                ],
            ),
            "\n",
            flush=True,
        )
    tsne_rows = []
    for n in args.sizes:
        sizes = {min(n, DEFAULT_MAX_POINTS)} | ({n} if n <= args.full_tsne_max else set())
        for points in sorted(sizes):
            tsne_rows.append(bench_tsne(n, points))
            print(
                table(tsne_rows, ["images", "t-SNE points", "openTSNE", "scikit-learn"]),
                "\n",
                flush=True,
            )


if __name__ == "__main__":
    main()
