"""Photo metadata benchmark: what reading it costs an ingest, and filling in a large library.

    python bench/metadata.py [--ingest 1000] [--backfill 100000] [--repeat 3]

1. Ingest of N real photos (variants of ../shared/datasets/openimages-100, each given a camera
   EXIF block with a date, GPS position and camera) into a fresh library, whole `organizer
   ingest` processes, with and without reading metadata, alternating, in this one run. Without:
   a sitecustomize module (in every process, decode workers included) replaces the header
   reader and the metadata writes with no-ops; nothing else differs. Model: ViT-B-32-256 with
   random weights (--pretrained none), the default architecture, so the share is the one a
   user's ingest sees.
2. The per-header cost of the reader (a JPEG's first 256 KB from the page cache, parsed).
3. Backfill of a library of M images whose headers were never read (rows written straight
   into the catalogue, each file a small JPEG with EXIF): the whole fill in one call, and the
   time only to read the same headers from disk, so the difference is what organizer adds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, ORGANIZER, variants  # noqa: E402 (bench/ is not a package)
from ingest import cpu_description  # noqa: E402

NO_METADATA = """
import multiprocessing
import organizer.imaging as imaging
from organizer.photo_meta import PhotoMeta
imaging.read_meta = lambda image, now=None: PhotoMeta()
if multiprocessing.parent_process() is None:  # the ingest process, not a decode worker
    import organizer.ingest.run as run
    import organizer.ingest.writer as writer
    run.backfill = lambda *a, **k: 0
    writer.record_meta = lambda *a, **k: None
    writer.name_places_of = lambda metas: {}
"""

CITIES = [(43.4633, 11.8796), (38.7223, -9.1393), (-33.8688, 151.2093), (35.6595, 139.7005)]


def exif_block(rng: random.Random) -> bytes:
    sys.path.insert(0, str(ROOT))
    from tests.fakes import photo_exif

    lat, lon = rng.choice(CITIES)
    when = f"{rng.randint(2005, 2025)}:{rng.randint(1, 12):02d}:{rng.randint(1, 28):02d} 12:00:00"
    camera = rng.choice([("Canon", "Canon EOS 5D"), ("Apple", "iPhone 12"), ("SONY", "ILCE-7M3")])
    exif = photo_exif(taken=when, offset="+01:00", gps=(lat, lon), camera=camera)
    return exif.tobytes()


def photos_with_exif(count: int) -> Path:
    """``count`` variants of the real photos (long side 1600, as a phone's export), each
    with a camera's EXIF block; cached between runs."""
    return variants(f"metadata-exif-{count}", count, 1600, exif=exif_block)


def ingest_once(photos: Path, with_meta: bool) -> float:
    env = {**os.environ, "ORGANIZER_MODEL": "ViT-B-32-256", "ORGANIZER_PRETRAINED": "none"}
    env["ORGANIZER_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        if not with_meta:
            Path(tmp, "sitecustomize.py").write_text(NO_METADATA)
            env["PYTHONPATH"] = os.pathsep.join([tmp, str(ROOT), env.get("PYTHONPATH", "")])
        started = time.perf_counter()
        done = subprocess.run(
            [*ORGANIZER, "ingest", str(photos), "--library", str(Path(tmp) / "lib"), "-q"],
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"ingest failed: {done.stderr}")
        if with_meta:
            check = subprocess.run(
                [*ORGANIZER, "status", "--json", "--library", str(Path(tmp) / "lib")],
                env=env,
                capture_output=True,
                text=True,
            )
            assert '"ok"' in check.stdout, check.stderr
    return wall


def bench_ingest(count: int, repeat: int) -> None:
    photos = photos_with_exif(count)
    ingest_once(photos, True)  # warm: page cache, exported model
    walls: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for with_meta in (False, True):
            walls[with_meta].append(ingest_once(photos, with_meta))
    off, on = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"ingest of {count} photos (1600 px JPEGs with EXIF), whole process, median of {repeat}:")
    print(f"  without metadata  {off:7.2f} s   {walls[False]}")
    print(f"  with metadata     {on:7.2f} s   {walls[True]}")
    print(f"  added: {100 * (on - off) / off:+.1f} %")


def bench_headers(count: int) -> None:
    from organizer.pipeline import header_meta

    paths = [str(p).encode() for p in sorted(photos_with_exif(count).glob("*.jpg"))]
    for p in paths:
        header_meta(p)  # page cache
    started = time.perf_counter()
    metas = [header_meta(p) for p in paths]
    per = (time.perf_counter() - started) / len(paths)
    assert all(m is not None and m.latitude is not None for m in metas)
    print(f"header read and parsed: {per * 1e3:.3f} ms per JPEG (one core, page cache)")


def bench_backfill(count: int) -> None:
    from PIL import Image

    from organizer.config import Settings
    from organizer.embed import ModelSpec
    from organizer.ingest.metadata import backfill
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    folder = DATA / f"backfill-{count}"
    rng = random.Random(1)
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        tiny = Image.new("RGB", (32, 24), (120, 90, 60))
        for i in range(count):
            sub = folder / f"{i // 1000:03d}"
            sub.mkdir(exist_ok=True)
            tiny.save(sub / f"{i:06d}.jpg", quality=80, exif=exif_block(rng))
        (folder / ".complete").touch()
    files = sorted(p for p in folder.rglob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library.open(Settings(library=Path(tmp) / "lib"), create=True)
        with write_transaction(lib.engine) as conn:
            model_id = q.insert_model(conn, ModelSpec("bench", "none"), 16, None)
            root_id = q.add_root(conn, str(folder))
            rows = [
                {
                    "root_id": root_id,
                    "relpath": os.fsencode(p.relative_to(folder)),
                    "size": 1,
                    "mtime_ns": 1,
                    "content_hash": f"{i:064d}",
                }
                for i, p in enumerate(files)
            ]
            vectors = np.random.default_rng(0).standard_normal((len(rows), 16)).astype(np.float32)
            q.insert_embedded(conn, model_id, rows, vectors)
        for p in files:
            p.read_bytes()  # page cache, for both measurements
        started = time.perf_counter()
        for p in files:
            with open(p, "rb") as fh:
                fh.read(256 * 1024)
        reading = time.perf_counter() - started
        started = time.perf_counter()
        filled = backfill(lib.engine, None, workers=os.cpu_count() or 1)
        wall = time.perf_counter() - started
        lib.close()
    assert filled == count, filled
    print(f"backfill of {count:,} images (headers from the page cache, {os.cpu_count()} cores):")
    print(
        f"  whole fill {wall:.1f} s ({count / wall:,.0f} images/s); reading the headers alone "
        f"{reading:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=1000, help="photos to ingest (0: skip)")
    parser.add_argument("--backfill", type=int, default=100_000, help="images (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}; {os.cpu_count()} cores")
    if args.ingest:
        bench_headers(min(args.ingest, 1000))
        bench_ingest(args.ingest, args.repeat)
    if args.backfill:
        bench_backfill(args.backfill)


if __name__ == "__main__":
    main()
