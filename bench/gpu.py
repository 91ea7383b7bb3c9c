"""GPU check: CUDA fp16 ingest of 1,000 distinct 1024-px photos (variants of the real ones),
img/s and GPU utilisation, and the vectors against CPU fp32 (cosine), in one process tree.

    PHOTOS=DIR N=1000 DEVICE=cuda OUT=DIR python bench/gpu.py

Made to run on a lent GPU machine over a copy of the repository: organizer is imported
from the working directory (PYTHONPATH), its dependencies from wheels installed beside it.
PHOTOS defaults to the shared real photos (../shared/datasets/openimages-100).
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image, ImageOps

N = int(os.environ.get("N", "1000"))
DEVICE = os.environ.get("DEVICE", "cuda")
OUT = Path(os.environ.get("OUT", "/tmp/out"))
OUT.mkdir(parents=True, exist_ok=True)
photos = Path("/tmp/photos-gpu")
lib = Path("/tmp/lib-gpu")
env = {
    **os.environ,
    "ORGANIZER_LIBRARY": str(lib),
    "ORGANIZER_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p),
}


def make_photos() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "openimages-100"
    sources = sorted(Path(os.environ.get("PHOTOS", default)).glob("*.jpg"))
    photos.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(N):
        with Image.open(sources[i % len(sources)]) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            v = i // len(sources)
            if v % 2:
                im = ImageOps.mirror(im)
            if v >= 2:
                w, h = im.size
                f = rng.uniform(0.8, 0.95)
                x, y = rng.randint(0, int(w * (1 - f))), rng.randint(0, int(h * (1 - f)))
                im = im.crop((x, y, x + int(w * f), y + int(h * f)))
            s = 1024 / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
            im.save(photos / f"{i:05d}.jpg", quality=rng.randint(85, 95))


started = time.time()
make_photos()
print(f"made {N} photos in {time.time() - started:.1f} s", flush=True)

samples: list[tuple[float, int, float]] = []
stop = threading.Event()


def sample_gpu() -> None:
    while not stop.is_set():
        try:
            line = (
                subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                .stdout.strip()
                .splitlines()[0]
            )
            util, mem = (float(x) for x in line.split(","))
            samples.append((time.time(), int(util), mem))
        except Exception:
            pass
        stop.wait(0.2)


sampler = threading.Thread(target=sample_gpu, daemon=True)
if DEVICE == "cuda":
    sampler.start()
t0 = time.time()
cmd = [
    sys.executable,
    "-m",
    "organizer",
    "ingest",
    str(photos),
    "--json",
    "--quiet",
    "--model",
    "ViT-B-32-256",
    "--pretrained",
    "none",
    "--device",
    DEVICE,
]
run = subprocess.run(cmd, env=env, capture_output=True, text=True)
wall = time.time() - t0
stop.set()
print("ingest rc", run.returncode, "wall", round(wall, 1), flush=True)
print(run.stderr[-2000:])
summary = json.loads(run.stdout)
print(json.dumps(summary, indent=1))
busy = [u for t, u, m in samples if t0 + summary["model_load_s"] + 1 < t < t0 + wall - 1]

# Vectors against CPU fp32: the same seeded random weights, 64 of the photos.
check = r"""
import json, os, sys
import numpy as np
from organizer.config import Settings
from organizer.library import Library
from organizer.pipeline import Job, prepare
from organizer.embed import request_spec
from organizer.embed import openclip
from organizer.store import queries as q
spec = request_spec("ViT-B-32-256", "none")
cpu = openclip.load(spec, "cpu", "fp32", True)
with Library.open(Settings(library=sys.argv[1])) as lib, lib.engine.connect() as conn:
    model = q.library_model(conn)
    ids, vecs = q.ok_vectors(conn, model.id, model.dim)
    rel = {i: r.relpath for i, r in q.describe_images(conn, ids.tolist()).items()}
cos = []
root = sys.argv[2].encode()
for i, v in list(zip(ids.tolist(), vecs))[:64]:
    p = prepare(Job(0, os.path.join(root, rel[i]), -1, -1), cpu.preprocess)
    ref = cpu.embed_pixels(p.pixels[None])[0]
    cos.append(float(np.dot(ref, v)))
print(json.dumps({"min": min(cos), "mean": sum(cos) / len(cos), "n": len(cos)}))
"""
ref = subprocess.run(
    [sys.executable, "-c", check, str(lib), str(photos)], env=env, capture_output=True, text=True
)
print(ref.stderr[-1500:])
cosine = json.loads(ref.stdout.strip().splitlines()[-1])
busy_s = summary["elapsed_s"] - summary["model_load_s"]  # as ingest reports it
result = {
    "device": DEVICE,
    "n": N,
    "embedded": summary["embedded"],
    "precision": summary["precision"],
    "wall_s": round(wall, 2),
    "model_load_s": summary["model_load_s"],
    "images_per_s_after_load": round(summary["embedded"] / max(busy_s, 1e-9), 1),
    "gpu_util_mean_pct": round(sum(busy) / len(busy), 1) if busy else None,
    "gpu_util_samples": len(busy),
    "gpu_mem_max_mib": max((m for _, _, m in samples), default=None),
    "cosine_vs_cpu_fp32": cosine,
}
print(json.dumps(result, indent=1))
(OUT / "gpu_check.json").write_text(json.dumps(result, indent=1))
