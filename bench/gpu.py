"""GPU check: CUDA fp16 ingest of 1,000 distinct 1024-px photos (variants of the real ones),
img/s and GPU utilisation, where the time goes, and the vectors against CPU fp32 (cosine).

    PHOTOS=DIR N=1000 OUT=DIR python bench/gpu.py

Made to run on a lent GPU machine over a copy of the repository, with that machine's own
Python (torch, onnxruntime, numpy, Pillow are there). What it lacks goes as wheels for its
Python, installed with `pip install --no-deps --target /tmp/site`: open_clip_torch, ftfy,
wcwidth, faiss-cpu, SQLAlchemy, greenlet, alembic, Mako, platformdirs, openvino (its CPU
plugin and ONNX frontend are enough), openvino-telemetry, onnx, onnxscript, onnx-ir,
ml_dtypes, tokenizers; for the rclip part
also rclip 4.0.8, rawpy, textual, textual-image, linkify-it-py, mdit-py-plugins and
uc-micro-py. Then `PYTHONPATH=/tmp/site:$PWD python3 bench/gpu.py`. PHOTOS defaults to the
shared real photos (../shared/datasets/openimages-100). It prints, and writes to
OUT/gpu_check.json:

- the machine: CPU model and flags, cores, GPU;
- two whole `organizer ingest --device cuda` runs on fresh libraries (wall, img/s after the
  model load, GPU utilisation from nvidia-smi), and with PARTS=batch one at `--batch-size 128`;
- one ingest with its stages timed (the decode pool's start, the model load, embedding,
  database writes), to say what bounds it;
- the ceilings: the model alone (fp16, batch 32 and 256) and the decode pool alone;
- cosine of the CUDA vectors to CPU fp32 on 64 photos;
- on a CPU with AMX, which the sessions' own 2-vCPU machines never had: organizer at its
  defaults (OpenVINO bf16) and in torch bf16 against rclip 4 (fp32 in ONNX Runtime), each
  pinned to 2 cores (taskset), whole processes on the same photos and seeded weights, after
  a first run that exports the towers; and the model alone in each runtime on those cores.

- with PARTS=decode, JPEG decoding on the GPU (ORGANIZER_JPEG_DECODE) against the decode
  processes, on the same photos in one run: the decode pool alone (Pillow) and the pool
  that only reads and checks, with nvJPEG's decode, turn and resize of its batches; the
  model alone at batch 32 and 256; whole ingests with JPEGs decoded on the GPU and in the
  decode processes; and the cosine of the vectors of the two decodes (min and mean).

PARTS (comma-separated: gpu, gpu1, batch, stages, ceilings, cosine, cpu, cpu-old, decode)
picks what runs; cpu-old runs organizer from OLD_CODE too, for an A/B on the same machine.
With DEVICE=cpu, PARTS=decode is a dry run of the same code (torchvision decodes on the CPU).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N = int(os.environ.get("N", "1000"))
DEVICE = os.environ.get("DEVICE", "cuda")  # cpu: a dry run of this script without a GPU
OUT = Path(os.environ.get("OUT", "/tmp/out"))
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu-check"))
MODEL = ["--model", "ViT-B-32-256", "--pretrained", "none"]
ENV = {
    **os.environ,
    "ORGANIZER_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p),
}


def machine() -> dict:
    cpu = Path("/proc/cpuinfo").read_text()
    flags = next(line for line in cpu.splitlines() if line.startswith("flags")).split()
    name = next(line for line in cpu.splitlines() if line.startswith("model name"))
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        gpu = None
    return {
        "cpu": name.split(":", 1)[1].strip(),
        "cores": os.cpu_count(),
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
        "gpu": gpu,
    }


def _variant(args: tuple[Path, int, int, Path]) -> None:
    from PIL import Image

    sys.path.insert(0, str(REPO / "bench"))
    from common import variant_of

    source, i, v, target = args
    rng = random.Random(i)
    with Image.open(source) as im:
        im = variant_of(im, v, rng)
        s = 1024 / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
        im.save(target, quality=rng.randint(85, 95))


def make_photos(folder: Path, n: int) -> None:
    default = REPO.parent / "shared" / "datasets" / "openimages-100"
    sources = sorted(Path(os.environ.get("PHOTOS", default)).glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        (sources[i % len(sources)], i, i // len(sources), folder / f"{i:05d}.jpg") for i in range(n)
    ]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_variant, jobs, chunksize=8))


class GpuSampler:
    """nvidia-smi's utilisation and memory every 0.2 s while running."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.is_set():
            try:
                line = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
                util, mem = (float(x) for x in line.strip().splitlines()[0].split(","))
                self.samples.append((time.time(), int(util), mem))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        if DEVICE == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def busy(self, start: float, end: float) -> float | None:
        values = [u for t, u, _ in self.samples if start < t < end]
        return round(sum(values) / len(values), 1) if values else None


def ingest(
    photos: Path,
    lib: Path,
    args: list[str],
    prefix: list[str] = (),
    code: Path = REPO,
    env_extra: dict[str, str] | None = None,
) -> dict:
    """One whole `organizer ingest` process (of the organizer in ``code``); its summary,
    wall time and GPU use."""
    cmd = [*prefix, sys.executable, "-m", "organizer", "ingest", str(photos), "--json", "--quiet"]
    env = {**ENV, "ORGANIZER_LIBRARY": str(lib), **(env_extra or {})}
    env["PYTHONPATH"] = env["PYTHONPATH"].replace(str(REPO), str(code))
    with GpuSampler() as gpu:
        t0 = time.time()
        run = subprocess.run(  # in ``code``: `python -m` puts the working folder first
            [*cmd, *MODEL, *args], env=env, cwd=code, capture_output=True, text=True
        )
        wall = time.time() - t0
    if run.returncode != 0:
        print(run.stderr[-3000:], flush=True)
        return {"rc": run.returncode}
    s = json.loads(run.stdout)
    waited = s.get("model_wait_s", s["model_load_s"])  # files are read during a load now
    busy_s = s["elapsed_s"] - waited
    return {
        "wall_s": round(wall, 2),
        "embedded": s["embedded"],
        "device": s["device"],
        "precision": s["precision"],
        "runtime": s.get("runtime"),
        "model_load_s": round(s["model_load_s"], 2),
        "model_wait_s": round(waited, 2),
        "after_load_s": round(busy_s, 2),
        "images_per_s_after_load": round(s["embedded"] / max(busy_s, 1e-9), 1),
        "gpu_util_pct_after_load": gpu.busy(t0 + waited + 0.5, t0 + wall - 0.5),
        "gpu_mem_max_mib": max((m for _, _, m in gpu.samples), default=None),
    }


# -- run inside a child process: one ingest with its stages timed ---------------------------

PROBE = r"""
import json, sys, time
import numpy as np
from organizer import cli, pipeline
from organizer.embed import openclip
from organizer.ingest import run, writer

spent, first = {}, {}
t0 = time.perf_counter()

def timed(owner, name, label):
    inner = getattr(owner, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        first.setdefault(label, round(t - t0, 3))
        try:
            return inner(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(owner, name, wrapper)

timed(pipeline.DecodePool, "__init__", "decode_pool_start")
timed(run.Ingestor, "_load_model", "model_load")
timed(openclip.OpenClipEmbedder, "embed_pixels", "embed")
timed(writer.BatchWriter, "write", "db_write")
timed(run.Ingestor, "_classify", "classify")
sys.argv = ["organizer", "ingest", sys.argv[1], "--quiet", *sys.argv[2:]]
try:
    cli.main()
except SystemExit:
    pass
total = time.perf_counter() - t0
print(json.dumps({"total_s": round(total, 2), "first_call_s": first,
                  "spent_s": {k: round(v, 3) for k, v in spent.items()}}))
"""


def probe(photos: Path, lib: Path) -> dict:
    env = {**ENV, "ORGANIZER_LIBRARY": str(lib)}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(photos), "--device", DEVICE, *MODEL],
        env=env,
        capture_output=True,
        text=True,
    )
    if run.returncode != 0 or not run.stdout.strip():
        print(run.stderr[-3000:], flush=True)
        return {"rc": run.returncode}
    return json.loads(run.stdout.strip().splitlines()[-1])


CEILINGS = r"""
import json, os, sys, time
from pathlib import Path
import numpy as np
import torch
from organizer.embed import request_spec, openclip
from organizer.pipeline import DecodePool, Job

out = {}
t = time.perf_counter()
device = sys.argv[2]
model = openclip.load(request_spec("ViT-B-32-256", "none"), device, "fp16" if device == "cuda" else "fp32", True)
out["model_load_s"] = round(time.perf_counter() - t, 2)
for batch in (32, 256) if device == "cuda" else (32,):
    x = np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    for _ in range(3):
        model.embed_pixels(x)
    reps = max(3, 2048 // batch) if device == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        model.embed_pixels(x)
    out[f"model_alone_{model.precision}_batch{batch}_img_s"] = round(reps * batch / (time.perf_counter() - t))
files = sorted(Path(sys.argv[1]).glob("*.jpg"))
jobs = [Job(i, os.fsencode(p), -1, -1) for i, p in enumerate(files)]
workers = max(1, len(os.sched_getaffinity(0)) - 1)
t = time.perf_counter()
with DecodePool(workers, model.preprocess) as pool:
    started = time.perf_counter()
    n = sum(1 for _ in pool.results(jobs))
    done = time.perf_counter()
out["decode_workers"] = workers
out["decode_pool_start_s"] = round(started - t, 2)
out["decode_alone_img_s"] = round(n / (done - started))
print(json.dumps(out))
"""

COSINE = r"""
import json, os, sys
import numpy as np
from organizer.config import Settings
from organizer.library import Library
from organizer.pipeline import Job, prepare
from organizer.embed import request_spec, openclip
from organizer.store import queries as q
cpu = openclip.load(request_spec("ViT-B-32-256", "none"), "cpu", "fp32", True)
with Library.open(Settings(library=sys.argv[1])) as lib, lib.engine.connect() as conn:
    model = q.library_model(conn)
    ids, vecs = q.ok_vectors(conn, model.id, model.dim)
    rel = {i: r.relpath for i, r in q.describe_images(conn, ids.tolist()).items()}
root = sys.argv[2].encode()
pairs = list(zip(ids.tolist(), vecs))[:64]
pixels = np.stack([prepare(Job(0, os.path.join(root, rel[i]), -1, -1), cpu.preprocess).pixels
                   for i, _ in pairs])
ref = cpu.embed_pixels(pixels)
cos = [float(np.dot(r, v)) for r, (_, v) in zip(ref, pairs)]
print(json.dumps({"min": min(cos), "mean": sum(cos) / len(cos), "n": len(cos)}))
"""


DECODE = r"""
import json, os, sys, time, warnings
from pathlib import Path
import numpy as np
import torch
from organizer.embed import request_spec, openclip
from organizer.embed.device_decode import decoder_for, EncodedJpeg
from organizer.pipeline import DecodePool, Job, prepare, prepare_encoded, decode_for_model

warnings.simplefilter("ignore")
device = sys.argv[2]
out = {}
model = openclip.load(request_spec("ViT-B-32-256", "none"), device,
                      "fp16" if device == "cuda" else "fp32", True)
spec = model.preprocess
decoder = decoder_for(model, "device", spec)
assert decoder is not None, "torchvision cannot decode JPEGs on " + device

def sync():
    if device == "cuda":
        torch.cuda.synchronize()

for batch in (32, 256):
    x = np.random.default_rng(0).integers(0, 256, (batch, *spec.size, 3), dtype=np.uint8)
    model.embed_pixels(x)
    reps = max(3, 2048 // batch) if device == "cuda" else 1
    sync(); t = time.perf_counter()
    for _ in range(reps):
        model.embed_pixels(x)
    sync()
    out[f"model_alone_{model.precision}_batch{batch}_img_s"] = round(reps * batch / (time.perf_counter() - t), 1)
files = sorted(Path(sys.argv[1]).glob("*.jpg"))
jobs = [Job(i, os.fsencode(p), -1, -1) for i, p in enumerate(files)]
workers = max(1, len(os.sched_getaffinity(0)) - 1)
out["decode_workers"] = workers

def pool_rate(fn):
    with DecodePool(workers, spec, prepare_fn=fn) as pool:
        t = time.perf_counter()
        got = sorted(pool.results(jobs), key=lambda p: p.key)
        return got, round(len(got) / (time.perf_counter() - t), 1)

cpu, out["cpu_decode_pool_img_s"] = pool_rate(prepare)
enc, out["read_check_pool_img_s"] = pool_rate(prepare_encoded)
out["left_encoded"] = sum(p.encoded is not None for p in enc)
items = [EncodedJpeg(p.encoded, p.info.meta.orientation or 1, p.info.width, p.info.height)
         if p.encoded is not None else p.pixels for p in enc]
here = lambda data: decode_for_model(data, spec)[1]
decoder.pixels(items[:32], here)  # warm up nvJPEG
sync(); t = time.perf_counter()
stacks = []
for start in range(0, len(items), 256):
    stacks.append(decoder.pixels(items[start:start + 256], here)[0])
sync()
out["device_decode_batch256_img_s"] = round(len(items) / (time.perf_counter() - t), 1)
device_pixels = torch.cat(stacks).cpu().numpy()
cpu_pixels = np.stack([p.pixels for p in cpu])
out["pixels_mean_abs_diff"] = round(float(np.abs(device_pixels.astype(np.int16) - cpu_pixels).mean()), 3)
a = np.concatenate([model.embed_pixels(cpu_pixels[i:i + 64]) for i in range(0, len(cpu), 64)])
b = np.concatenate([model.embed_pixels(device_pixels[i:i + 64]) for i in range(0, len(cpu), 64)])
cos = (a * b).sum(axis=1)
out["cosine_device_vs_cpu_decode"] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5), "n": len(cos)}
print(json.dumps(out))
"""


CPU_CEILINGS = r"""
import json, sys, time
import numpy as np
from organizer.embed import request_spec
from organizer.embed.loader import load

out = {}
x = np.random.default_rng(0).integers(0, 256, (32, 256, 256, 3), dtype=np.uint8)
for runtime in sys.argv[1:]:
    t = time.perf_counter()
    model = load(request_spec("ViT-B-32-256", "none"), "cpu", "auto", runtime, offline=True)
    model.embed_pixels(x[:2])
    out[f"{runtime}_load_s"] = round(time.perf_counter() - t, 2)
    model.embed_pixels(x)
    t = time.perf_counter()
    for _ in range(3):
        model.embed_pixels(x)
    out[f"{runtime}_{model.precision}_batch32_img_s"] = round(96 / (time.perf_counter() - t), 1)
print(json.dumps(out))
"""


def child(script: str, *args: str, prefix: list[str] = ()) -> dict:
    run = subprocess.run(
        [*prefix, sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True
    )
    if run.returncode != 0 or not run.stdout.strip():
        print(run.stderr[-3000:], flush=True)
        return {"rc": run.returncode}
    return json.loads(run.stdout.strip().splitlines()[-1])


RCLIP = "import sys; from rclip.main import main; sys.argv[0] = 'rclip'; main()"


def rclip_index(photos: Path, model_dir: Path, prefix: list[str]) -> dict:
    """rclip 4 indexing ``photos`` as a whole process (it also answers one query), with the
    same seeded weights exported to its layout; as bench/ingest.py runs it."""
    sys.path.insert(0, str(REPO / "bench"))
    from rclip_model import link_datadir

    datadir = link_datadir(model_dir)
    query = str(sorted(photos.glob("*.jpg"))[0])
    env = {**ENV, "RCLIP_DATADIR": str(datadir)}
    t0 = time.time()
    try:
        run = subprocess.run(
            [
                *prefix,
                os.environ.get("RCLIP_PYTHON", sys.executable),
                "-c",
                RCLIP,
                "--top",
                "1",
                query,
            ],
            env=env,
            cwd=photos,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return {"timed_out_s": 300}
    wall = time.time() - t0
    if run.returncode != 0:
        print(run.stderr[-3000:], flush=True)
        return {"rc": run.returncode}
    import sqlite3

    with sqlite3.connect(datadir / "db.sqlite3") as db:
        (count,) = db.execute("SELECT count(*) FROM images WHERE deleted IS NULL").fetchone()
    return {"wall_s": round(wall, 2), "indexed": count, "images_per_s": round(count / wall, 1)}


def cpu_part(result: dict, photos: Path) -> None:
    """The CPU path on 2 cores of this machine (the sessions' machines have 2 vCPUs): organizer
    at its defaults (OpenVINO bf16 on a CPU with bf16 units), organizer in torch bf16 (the
    default before), and rclip 4 on the same seeded weights, whole processes, in turn."""
    sys.path.insert(0, str(REPO / "bench"))
    from rclip_model import ensure

    pin = ["taskset", "-c", "0,1"]
    few = WORK / "photos-few"  # a first run exports the towers (once per model and machine)
    few.mkdir(parents=True, exist_ok=True)
    for path in sorted(photos.glob("*.jpg"))[:32]:
        if not (few / path.name).exists():
            os.link(path, few / path.name)  # ingest skips symbolic links by default
    result["cpu_prepare"] = ingest(few, WORK / "lib-prepare", ["--device", "cpu"])
    report(result, "cpu_prepare")
    t = time.time()
    model_dir = ensure(Path(os.environ.get("RCLIP_MODEL_DIR", WORK / "rclip-model")))
    result["rclip_model_export_s"] = round(time.time() - t, 1)
    if "RCLIP_PYTHON" not in os.environ:
        result["rclip_version"] = importlib.metadata.version("rclip")
    for run in (1, 2):
        organizer_on_cpu(result, photos, f"cpu2_organizer_auto_run{run}", REPO)
        if run == 1:
            organizer_on_cpu(result, photos, "cpu2_organizer_torch", REPO, ["--runtime", "torch"])
        result[f"cpu2_rclip_run{run}"] = rclip_index(photos, model_dir, pin)
        report(result, f"cpu2_rclip_run{run}")
        if run == 1:
            result["cpu2_model_alone"] = child(CPU_CEILINGS, "openvino", "torch", prefix=pin)
            report(result, "cpu2_model_alone")


def organizer_on_cpu(
    result: dict, photos: Path, key: str, code: Path, args: list[str] = ()
) -> None:
    pin = ["taskset", "-c", "0,1"]
    org = ingest(photos, WORK / f"lib-{key}", ["--device", "cpu", *args], pin, code)
    org["images_per_s_whole"] = round(org.get("embedded", 0) / org.get("wall_s", 1), 1)
    result[key] = org
    report(result, key)


def report(result: dict, key: str | None = None) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({key: result[key]} if key else result, indent=1), flush=True)


def main() -> None:
    parts = os.environ.get("PARTS", "gpu,stages,ceilings,cosine,cpu").split(",")
    result: dict = {"machine": machine(), "n": N}
    report(result)
    photos = WORK / "photos"
    t = time.time()
    make_photos(photos, N)
    result["photos_made_s"] = round(time.time() - t, 1)
    if ("cpu" in parts and "amx_tile" in result["machine"]["flags"]) or "cpu!" in parts:
        cpu_part(result, photos)  # the sessions' machines never had AMX
    if "gpu1" in parts:
        result[f"ingest_{DEVICE}"] = ingest(photos, WORK / "lib-1", ["--device", DEVICE])
        report(result, f"ingest_{DEVICE}")
    if "gpu" in parts:
        for run in (1, 2):
            key = f"ingest_{DEVICE}_run{run}"
            result[key] = ingest(photos, WORK / f"lib-{run}", ["--device", DEVICE])
            report(result, key)
    if "batch" in parts:
        key = f"ingest_{DEVICE}_batch128"
        result[key] = ingest(photos, WORK / "lib-b128", ["--device", DEVICE, "--batch-size", "128"])
        report(result, key)
    if "stages" in parts:
        result["stages"] = probe(photos, WORK / "lib-probe")
        report(result, "stages")
    if "ceilings" in parts:
        result["ceilings"] = child(CEILINGS, str(photos), DEVICE)
        report(result, "ceilings")
    if "cpu-old" in parts:  # the same at another organizer (OLD_CODE), for an A/B
        organizer_on_cpu(result, photos, "cpu2_organizer_old", Path(os.environ["OLD_CODE"]))
    if "cosine" in parts:
        result["cosine_vs_cpu_fp32"] = child(COSINE, str(WORK / "lib-1"), str(photos))
        report(result, "cosine_vs_cpu_fp32")
    if "decode" in parts:
        decode_part(result, photos)


def decode_part(result: dict, photos: Path) -> None:
    """JPEGs decoded on the GPU against the decode processes, on the same photos: each
    stage alone, the model alone, whole ingests, and how close the two decodes' vectors are.
    On a CPU (a dry run) the device path is forced on (it is off there by default) and the
    model runs in torch, the only runtime that decodes on its device."""
    result["decode"] = child(DECODE, str(photos), DEVICE)
    report(result, "decode")
    args = ["--device", DEVICE]
    if DEVICE == "cpu":  # as the model alone ran above: torch, fp32
        args += ["--runtime", "torch", "--precision", "fp32"]
    on = "auto" if DEVICE == "cuda" else "device"
    for where in (on, "workers"):
        key = f"ingest_{DEVICE}_jpeg_decode_{where}"
        env = {"ORGANIZER_JPEG_DECODE": where}
        result[key] = ingest(photos, WORK / f"lib-jpeg-{where}", args, env_extra=env)
        report(result, key)
    # The goal's batch: a GPU is fed 256 images a forward pass (the model alone: ~3x batch 32).
    key = f"ingest_{DEVICE}_jpeg_decode_{on}_batch256"
    env = {"ORGANIZER_JPEG_DECODE": on}
    result[key] = ingest(
        photos, WORK / "lib-jpeg-256", [*args, "--batch-size", "256"], env_extra=env
    )
    report(result, key)
    precision = "fp16" if DEVICE == "cuda" else "fp32"
    for batch, run_key in ((32, f"ingest_{DEVICE}_jpeg_decode_{on}"), (256, key)):
        model_rate = result["decode"].get(f"model_alone_{precision}_batch{batch}_img_s")
        whole = result[run_key].get("images_per_s_after_load")
        if model_rate and whole:
            share = f"gpu_decode_ingest_share_of_model_batch{batch}"
            result[share] = round(whole / model_rate, 3)
            report(result, share)


if __name__ == "__main__":
    main()
