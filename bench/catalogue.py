"""Catalogue benchmark: writing a million images into each backend, and building the index.

    python bench/catalogue.py [--n 1000000] [--pg-url postgresql://...]

For a folder library (SQLite) and a PostgreSQL catalogue (a throwaway server started for
the run with Debian's binaries and PostgreSQL's durable defaults, unless --pg-url names
one): N synthetic images with 512-d unit vectors, N - 20,000 written in transactions of
5,000 through the store's bulk insert (rows/s of the writes alone, one row = an image and
its vector), the last 20,000 row by row in transactions of 32 as ingest writes them, the
database size, then the
vector-index cache built from the database in a fresh process (wall time, peak RSS added by
the build, and the index file it wrote).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from common import table  # noqa: E402 (bench/ is not a package)

DIM = 512
BULK = 5_000
ROW_BY_ROW = 20_000
INGEST_BATCH = 32

BUILD = """
import os, resource, sys, time
from organizer.config import Settings
from organizer.library import Library
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
with Library.open(Settings(library=sys.argv[1])) as lib:
    lib.index_path.unlink(missing_ok=True)
    before = rss()
    started = time.perf_counter()
    index = lib.vectors()
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(wall, peak - before, lib.index_path.stat().st_size / 1e6, len(index), index.describe())
"""


def cpu() -> str:
    flags = set()
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags: {' '.join(wanted)}"


def vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(
        np.float32
    )
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(root_id: int, start: int, count: int) -> list[dict]:
    """Image rows ``start``..``start+count`` of a synthetic library (their files do not exist)."""
    return [
        {
            "root_id": root_id,
            "relpath": f"{i // 1000:04d}/{i:08d}.jpg".encode(),
            "size": 2_000_000 + i,
            "mtime_ns": 1_700_000_000_000_000_000 + i,
            "content_hash": f"{i:064x}",
            "width": 4000,
            "height": 3000,
            "format": "JPEG",
        }
        for i in range(start, start + count)
    ]


def fill(library: str, n: int) -> dict:
    from organizer.config import Settings
    from organizer.embed import ModelSpec
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    with Library.open(Settings(library=library), create=True) as lib:
        with write_transaction(lib.engine) as conn:
            model_id = q.insert_model(conn, ModelSpec("bench-512", "none"), DIM)
            root_id = q.add_root(conn, "/photos")
        extra = min(ROW_BY_ROW, n // 2)
        bulk, bulk_s = n - extra, 0.0
        for start in range(0, bulk, BULK):
            m = min(BULK, bulk - start)
            batch_rows, batch_vectors = rows(root_id, start, m), vectors(rng, centres, m)
            started = time.perf_counter()  # the writes only, not making the synthetic rows
            with write_transaction(lib.engine) as conn:
                q.insert_embedded(conn, model_id, batch_rows, batch_vectors)
            bulk_s += time.perf_counter() - started
        started = time.perf_counter()
        batch = vectors(rng, centres, extra)
        for start in range(0, extra, INGEST_BATCH):
            with write_transaction(lib.engine) as conn:
                for i in range(start, min(extra, start + INGEST_BATCH)):
                    image_id = q.insert_image(
                        conn,
                        root_id=root_id,
                        relpath=f"row/{i:08d}.jpg".encode(),
                        size=1,
                        mtime_ns=1,
                        content_hash=f"r{i:063x}",
                        status="ok",
                        width=4000,
                        height=3000,
                    )
                    q.put_vector(conn, image_id, model_id, batch[i])
        row_s = time.perf_counter() - started
        with lib.engine.connect() as conn:
            if lib.engine.dialect.name == "postgresql":
                size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
            else:
                size = sum(p.stat().st_size for p in Path(library).glob("library.db*"))
    return {"bulk": bulk / bulk_s, "row": extra / row_s, "size_gb": size / 1e9}


def build(library: str, cache: Path) -> tuple[float, float, float, int, str]:
    out = subprocess.run(
        [sys.executable, "-c", BUILD, library],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    ).stdout.split(maxsplit=4)
    return float(out[0]), float(out[1]), float(out[2]), int(out[3]), out[4].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--pg-url", help="an empty PostgreSQL database (default: a new server)")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    work = Path(tempfile.mkdtemp(prefix="organizer-catalogue-"))
    server = None
    pg_url = args.pg_url
    if pg_url is None:
        from tests.pg import PgServer

        server = PgServer().start(durable=True)
        pg_url = server.new_database()
    rows = []
    try:
        for name, library in (("SQLite folder", str(work / "lib")), ("PostgreSQL", pg_url)):
            print(f"{name}: writing {args.n:,} images ...", flush=True)
            wrote = fill(library, args.n)
            print(f"{name}: building the index cache ...", flush=True)
            wall, peak_mb, file_mb, count, kind = build(library, work / "cache")
            rows.append(
                [
                    name,
                    f"{wrote['bulk']:,.0f}",
                    f"{wrote['row']:,.0f}",
                    f"{wrote['size_gb']:.2f}",
                    f"{count:,}",
                    kind,
                    f"{wall:.1f}",
                    f"{peak_mb:,.0f}",
                    f"{file_mb:,.0f}",
                    f"{peak_mb / file_mb:.2f}",
                ]
            )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)  # 5 GB a million: libraries and index caches
    header = [
        "backend",
        "bulk rows/s",
        "row-by-row rows/s",
        "DB GB",
        "indexed",
        "index",
        "build s",
        "build peak MB",
        "index MB",
        "peak/index",
    ]
    print(table(rows, header))


if __name__ == "__main__":
    main()
