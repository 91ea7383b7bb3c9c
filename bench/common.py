"""Shared helpers for the benchmarks: datasets built from the real photos, timing, RSS."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "openimages-100"
DATA = Path(os.environ.get("ORGANIZER_BENCH_DATA", Path(tempfile.gettempdir()) / "organizer-bench"))
TINY_CONFIG = ROOT / "tests" / "data" / "tiny-clip.json"
ORGANIZER = [sys.executable, "-m", "organizer"]


def source_photos() -> list[Path]:
    if not PHOTOS.is_dir():
        sys.exit(f"benchmark photos not found at {PHOTOS}")
    return sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def variants(
    name: str,
    count: int,
    long_side: int,
    aspect: tuple[int, int] | None = None,
    exif: Callable[[random.Random], bytes] | None = None,
) -> Path:
    """``count`` distinct JPEGs made from the real photos (crops, flips, re-encodes), cached;
    each with the EXIF block ``exif(rng)`` makes, when given."""
    from PIL import Image, ImageOps

    folder = DATA / name
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    sources = source_photos()
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as im:
            im = variant_of(im, i // len(sources), rng)
            if aspect:
                im = ImageOps.fit(im, aspect, Image.Resampling.BICUBIC)
            else:
                scale = long_side / max(im.size)
                im = im.resize(
                    (round(im.width * scale), round(im.height * scale)), Image.Resampling.BICUBIC
                )
            extra = {"exif": exif(rng)} if exif is not None else {}
            im.save(folder / f"{i:05d}.jpg", quality=rng.randint(85, 95), **extra)
    done.touch()
    return folder


def variant_of(im, variant: int, rng):
    """Variant ``variant`` of a real photo: upright RGB, mirrored when odd, cropped to a random
    80-95 % from the third on (``rng``: a random.Random)."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im).convert("RGB")
    if variant % 2 == 1:
        im = ImageOps.mirror(im)
    if variant >= 2:
        w, h = im.size
        f = rng.uniform(0.8, 0.95)
        x, y = rng.randint(0, int(w * (1 - f))), rng.randint(0, int(h * (1 - f)))
        im = im.crop((x, y, x + int(w * f), y + int(h * f)))
    return im


def tiny_files(name: str, count: int) -> Path:
    """``count`` distinct small JPEGs (for stat-only and memory benchmarks), cached."""
    import numpy as np
    from PIL import Image

    folder = DATA / name
    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((64, 64)).save(
            sub / f"{i:06d}.jpg", quality=80
        )
    done.touch()
    return folder


def tree_rss_mb(pid: int, anon: bool = False) -> float:
    """Resident memory of a process and all its descendants, in MB; with ``anon``, only what
    they allocated (resident minus file-backed pages: memory-mapped files' page cache aside)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            pages = int(fields[21])
            if anon:
                with open(f"/proc/{entry}/statm") as fh:
                    pages -= int(fh.read().split()[2])  # resident file-backed and shared pages
            rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total / 1e6


def run_measured(
    cmd: list[str], env: dict | None = None, cwd: Path | None = None, anon: bool = False
) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; return (wall seconds, peak tree RSS in MB, result); with ``anon``, the
    peak of anonymous memory instead (see :func:`tree_rss_mb`)."""
    peak = [0.0]
    # Users' Pythons cache bytecode; this sandbox sets PYTHONDONTWRITEBYTECODE, which would make
    # every process recompile organizer's modules and bias start-up times.
    full_env = {
        k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONDONTWRITEBYTECODE"
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_mb(proc.pid, anon))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{err}")
    return wall, peak[0], result


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


def write_library(lib_dir: Path, photos: Path, batches, width: int, files: int = 100) -> None:
    """A folder library holding (ids, float32 vectors) batches as ingest stores them: image
    id = row + 1, names of ``width`` digits, the first ``files`` rows backed by small real
    files so that `similar` can name them. One transaction per batch, memory flat in n."""
    from PIL import Image
    from sqlalchemy import insert

    from organizer.config import Settings
    from organizer.embed import ModelSpec
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    photos.mkdir(parents=True, exist_ok=True)
    with Library.open(Settings(library=lib_dir), create=True) as lib:
        dim = None
        stamp = q.now()
        for ids, vectors in batches:
            if dim is None:
                dim = vectors.shape[1]
                with write_transaction(lib.engine) as conn:
                    model_id = q.insert_model(conn, ModelSpec(f"bench-{dim}", "none"), dim)
                    root_id = q.add_root(conn, str(photos.resolve()))
            rows, vecs = [], []
            for i, vector in zip(ids.tolist(), vectors, strict=True):
                rel = f"{i:0{width}d}.jpg"
                size = mtime = 1
                if i < files:
                    Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(photos / rel)
                    st = os.stat(photos / rel)
                    size, mtime = st.st_size, st.st_mtime_ns
                rows.append(
                    {
                        "id": i + 1,
                        "root_id": root_id,
                        "relpath": rel.encode(),
                        "size": size,
                        "mtime_ns": mtime,
                        "content_hash": f"{i:064d}",
                        "status": "ok",
                        "width": 8,
                        "height": 8,
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                )
                vecs.append(
                    {
                        "image_id": i + 1,
                        "model_id": model_id,
                        "vector": vector.tobytes(),
                        "created_at": stamp,
                    }
                )
            with write_transaction(lib.engine) as conn:
                conn.execute(insert(q.images), rows)
                conn.execute(insert(q.embeddings), vecs)
            print(f"\r  library {ids[-1] + 1:,} rows", end="", file=sys.stderr)
    print(file=sys.stderr)
