"""Decode benchmark: what preparing one photo for the model costs, Pillow's resize vs torch's,
and how close the vectors stay to open_clip's own transform.

    python bench/decode.py [--model ViT-B-32-256] [--draft 1 1.5 2] [--repeats 5]

On ../shared/datasets/openimages-100 (skipped with a message when absent) and 100 of the
ingest benchmark's 1024-px variants: per-image milliseconds on one core (median over the
photos of each photo's fastest of ``--repeats``) of the old path (JPEG draft to the model's
decode size, twice its input; Pillow's bicubic) and the new one (the same draft, torch's
antialiased uint8 resize), decode and resize alone and the whole of prepare() (read, hash, decode, resize).
Then, with the model's weights random (seeded; the same compute and preprocessing as real
ones), fp32: the cosine of each path's vectors against open_clip's own eval transform on the
full, upright picture (min and mean over the photos), and the pixels' difference between the
paths. ``--draft`` adds rows for the new resize after a draft at other multiples of the input.
What importing torch costs a decode worker is measured in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import PHOTOS, ROOT, table, variants
from ingest import cpu_description

sys.path.insert(0, str(ROOT))
from organizer import imaging
from organizer.imaging import PreprocessSpec, decode, to_model_input
from organizer.pipeline import Job, prepare
from organizer.resize import use_one_thread


def pillow_only() -> AbstractContextManager[object]:
    """The Pillow resize, as where torch cannot be imported."""
    return mock.patch.object(imaging, "resize_rgb", lambda *args: None)


def draft_size(spec: PreprocessSpec, multiple: float) -> tuple[int, int]:
    return round(multiple * spec.size[1]), round(multiple * spec.size[0])


def pixels_of(data: bytes, spec: PreprocessSpec, draft: float, old: bool) -> np.ndarray:
    size = draft_size(spec, draft)
    with pillow_only() if old else nullcontext():
        image, _ = decode(data, min_size=size)
        return to_model_input(image, spec)


def fastest(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def rows_to_measure(spec: PreprocessSpec, drafts: list[float]) -> list[tuple[str, bool, float]]:
    """(label, with Pillow's resize, draft multiple) for each path measured."""
    ours = spec.decode_size[0] / spec.size[1]
    return [
        (f"old: Pillow resize, draft {ours:g}x", True, ours),
        (f"new: torch resize, draft {ours:g}x", False, ours),
        *((f"     torch resize, draft {d:g}x", False, d) for d in drafts),
    ]


def timings(paths: list[Path], spec: PreprocessSpec, drafts: list[float], repeats: int) -> list:
    """Rows of per-image milliseconds (median over the photos), on this process's one core;
    prepare() only for the model's own draft size."""
    blobs = [p.read_bytes() for p in paths]
    jobs = [Job(i, os.fsencode(p), -1, 0) for i, p in enumerate(paths)]
    rows = []
    for label, old, draft in rows_to_measure(spec, drafts):

        def decoding(data: bytes, old: bool = old, draft: float = draft) -> Callable[[], object]:
            return lambda: pixels_of(data, spec, draft, old)

        decoded = [fastest(decoding(b), repeats) for b in blobs]
        row = [label, f"{1000 * statistics.median(decoded):.2f}", "-"]
        if draft == spec.decode_size[0] / spec.size[1]:
            with pillow_only() if old else nullcontext():
                whole = [fastest(partial(prepare, j, spec), repeats) for j in jobs]
            row[2] = f"{1000 * statistics.median(whole):.2f}"
        rows.append(row)
    return rows


def once_through(paths: list[Path], spec: PreprocessSpec) -> list:
    """prepare() of each file once, in order, as a decode worker meets them: wall, user and
    system milliseconds per file, and page faults (what a best-of-N timing cannot show: a
    buffer the C library maps and unmaps for every file costs system time)."""
    import resource

    jobs = [Job(i, os.fsencode(p), -1, 0) for i, p in enumerate(paths)]
    rows = []
    for label, old in (("old: Pillow resize", True), ("new: torch resize", False)):
        with pillow_only() if old else nullcontext():
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for job in jobs:
                prepare(job, spec)
            wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        n = len(jobs)
        rows.append(
            [
                label,
                f"{1000 * wall / n:.2f}",
                f"{1000 * (after.ru_utime - before.ru_utime) / n:.2f}",
                f"{1000 * (after.ru_stime - before.ru_stime) / n:.2f}",
                f"{(after.ru_minflt - before.ru_minflt) / n:.0f}",
            ]
        )
    return rows


def vectors(model, spec: PreprocessSpec, batches: list[np.ndarray]) -> np.ndarray:
    import torch

    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack(batches)).permute(0, 3, 1, 2).float() / 255.0
    return encode(model, (x - mean) / std)


def encode(model, x) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(x), 25):
            v = model.encode_image(x[start : start + 25]).float()
            out.append(torch.nn.functional.normalize(v, dim=-1).numpy())
    return np.concatenate(out)


def closeness(model_name: str, paths: list[Path], drafts: list[float]) -> list:
    """Cosine of each path's vectors to open_clip's own transform of the full, upright picture,
    and the pixel difference from the old path."""
    import open_clip
    import torch
    from PIL import Image, ImageOps

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None)
    model.eval()
    spec = PreprocessSpec.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    reference = []
    for p in paths:
        with Image.open(p) as im:
            reference.append(preprocess(ImageOps.exif_transpose(im).convert("RGB")))
    ref = encode(model, torch.stack(reference))
    blobs = [p.read_bytes() for p in paths]
    ours = spec.decode_size[0] / spec.size[1]
    old = [pixels_of(b, spec, ours, True) for b in blobs]
    rows = []
    for label, is_old, draft in rows_to_measure(spec, drafts):
        pixels = old if is_old else [pixels_of(b, spec, draft, False) for b in blobs]
        cos = np.sum(vectors(model, spec, pixels) * ref, axis=1)
        diff = np.abs(np.stack(pixels).astype(np.int16) - np.stack(old).astype(np.int16))
        rows.append(
            [label, f"{cos.min():.6f}", f"{cos.mean():.6f}", f"{diff.mean():.4f}", str(diff.max())]
        )
    return rows


def torch_import_cost() -> str:
    """What `import torch` and one thread cost a fresh interpreter, as in a decode worker."""
    code = (
        "import re, time\n"
        "def rss():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmRSS:\\s+(\\d+)', status).group(1)) / 1024\n"
        "import numpy, PIL.Image\n"
        "before, t = rss(), time.perf_counter()\n"
        "import torch; torch.set_num_threads(1)\n"
        "print(f'{time.perf_counter() - t:.2f} s, +{rss() - before:.0f} MB resident')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32-256", choices=["ViT-B-32-256", "ViT-B-32"])
    parser.add_argument("--draft", type=float, nargs="*", default=[])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        print(f"skipped: the benchmark photos are not at {PHOTOS}")
        return
    import open_clip
    import torch

    print(f"cpu: {cpu_description()}", flush=True)
    print(f"importing torch in a decode worker: {torch_import_cost()}", flush=True)
    cfg = open_clip.get_model_preprocess_cfg(open_clip.create_model(args.model, pretrained=None))
    spec = PreprocessSpec.from_open_clip(cfg)
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    sets = {
        "openimages-100": photos,
        "1024-px variants": sorted(variants("a-1000", 1000, 1024).glob("*.jpg"))[:100],
    }
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # one core, as one decode worker has
    use_one_thread()  # as a decode worker: torch on one thread, freed memory kept
    header = ["path", "decode+resize ms", "prepare() ms"]
    for name, paths in sets.items():
        print(f"\n{name}: {len(paths)} photos, one core, median ms per image", flush=True)
        print(table(timings(paths, spec, args.draft, args.repeats), header), flush=True)
    paths = sorted(variants("a-1000", 1000, 1024).glob("*.jpg"))[:400]
    print(f"\n1024-px variants: prepare() of {len(paths)} files once each, in order", flush=True)
    header = ["path", "wall ms", "user ms", "system ms", "page faults"]
    print(table(once_through(paths, spec), header), flush=True)
    os.sched_setaffinity(0, allowed)
    torch.set_num_threads(len(allowed))
    print(
        f"\nopenimages-100, {args.model} with random weights (seeded), fp32: cosine to "
        "open_clip's own transform of the full picture; pixels against the old path",
        flush=True,
    )
    header = ["path", "cosine min", "cosine mean", "pixel diff mean", "pixel diff max"]
    print(table(closeness(args.model, photos, args.draft), header))


if __name__ == "__main__":
    main()
