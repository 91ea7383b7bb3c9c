"""Ingest benchmark: model ceiling vs the original study's pipeline vs `organizer ingest`.

    python bench/ingest.py [--quick] [--model ViT-B-32-256] [--rclip /work/rclip-venv/bin/rclip]

Datasets are built from ../shared/datasets/openimages-100 into $ORGANIZER_BENCH_DATA
(default /tmp/organizer-bench): (a) 1,000 distinct 1024-px JPEGs, (b) 200 12-MP JPEGs.
Per dataset, in one run: (1) the model alone on ready tensors (batch 32, auto precision),
(2) a straightforward pipeline like the original study's (full decode, per-image
preprocessing, fp32, one image per forward pass; on a sample), (3) `organizer ingest` end to
end as a whole process into an empty library; cosine of (3)'s stored vectors against (2)'s
fp32 full-decode vectors. Then: re-ingest of 20,000 unchanged files, and peak memory of
ingesting 5,000 vs 500 images. Weights are random (same compute as the real ones).

With --rclip PATH (or $ORGANIZER_BENCH_RCLIP), an rclip 4 executable, e.g. from a Python 3.12
venv with `pip install rclip`: (4) rclip indexing the same folder as a whole process, with
the same seeded weights exported to its ONNX layout by bench/rclip_model.py (cached in
$ORGANIZER_BENCH_DATA/rclip-model), a fresh data directory per run and no network; cosine of
its stored vectors against (2)'s. rclip has no index-only command: each run also answers one
query, the folder's first image (one more forward pass of the loaded model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import DATA, ORGANIZER, TINY_CONFIG, run_measured, table, tiny_files, variants

SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
)


def load_model(name: str, precision: str, runtime: str = "torch"):
    """The embedder `organizer ingest --precision P --runtime R` uses (its towers exported for
    ONNX Runtime first when that runtime runs them)."""
    import warnings

    from organizer.embed import ModelSpec
    from organizer.embed.loader import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder = load(ModelSpec(name, "none"), precision=precision, runtime=runtime)
        embedder.embed_pixels(np.zeros((1, *embedder.preprocess.size, 3), dtype=np.uint8))
    return embedder


def model_alone(embedder, seconds: float = 12.0) -> float:
    h, w = embedder.preprocess.size
    batch = np.random.default_rng(0).integers(0, 256, (32, h, w, 3), dtype=np.uint8)
    embedder.embed_pixels(batch)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed_pixels(batch)
        n += len(batch)
    return n / (time.perf_counter() - started)


def decode_cost(preprocess, paths: list[Path]) -> float:
    """CPU seconds organizer's decode (read, hash, draft decode, resize) takes per image, in
    this process, one file after another."""
    from organizer.pipeline import Job, prepare

    jobs = [Job(i, os.fsencode(p), -1, 0) for i, p in enumerate(paths)]
    prepare(jobs[0], preprocess)  # warm-up: imports, first-file costs
    started = time.process_time()
    for job in jobs:
        prepare(job, preprocess)
    return (time.process_time() - started) / len(jobs)


def ceiling_with_decode(model_rate: float, decode_s: float) -> float:
    """Images/s if every core did only the model's share and decoding's share of each image:
    the model alone takes all cores for 1/model_rate s an image."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores / (cores / model_rate + decode_s)


def straightforward(embedder_fp32, paths: list[Path]) -> tuple[float, dict[str, np.ndarray]]:
    """Full decode, open_clip's own transform per image, fp32, one image per forward."""
    import open_clip
    import torch
    from PIL import Image

    cfg = open_clip.get_model_preprocess_cfg(embedder_fp32.model)
    transform = open_clip.image_transform(
        cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"]
    )
    model = embedder_fp32.model
    vectors = {}
    started = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            image = Image.open(path).convert("RGB")
            x = transform(image).unsqueeze(0)
            v = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
            vectors[path.name] = v[0].numpy()
    return len(paths) / (time.perf_counter() - started), vectors


def organizer_ingest(
    folder: Path, model: str, extra: list[str] | None = None, precision: str = "auto"
) -> tuple[float, float, dict, Path]:
    library = Path(tempfile.mkdtemp(prefix="bench-lib-"))
    cmd = [
        *ORGANIZER,
        "ingest",
        str(folder),
        "--library",
        str(library),
        "--model",
        model,
        "--pretrained",
        "none",
        "--json",
        "--quiet",
        "--precision",
        precision,
        *(extra or []),
    ]
    wall, rss, result = run_measured(cmd)
    return wall, rss, json.loads(result.stdout), library


def stored_vectors(library: Path) -> dict[str, np.ndarray]:
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q

    with Library.open(Settings(library=library)) as lib, lib.engine.connect() as conn:
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
        names = dict(conn.execute(q.select(q.images.c.id, q.images.c.relpath)).all())
    return {os.fsdecode(names[i]): v for i, v in zip(ids.tolist(), vecs, strict=True)}


def cpu_description() -> str:
    """The CPU's model name and which of the flags that decide inference speed it has."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    have = [f for f in SIMD_FLAGS if f in flags]
    missing = [f for f in SIMD_FLAGS if f not in flags]
    return f"{name}; flags: {' '.join(have) or '-'} (not: {' '.join(missing) or '-'})"


def rclip_version(rclip: str) -> str:
    return run_measured([rclip, "--version"])[2].stdout.strip()


def rclip_index(rclip: str, folder: Path, model_dir: Path) -> tuple[float, float, dict]:
    """rclip indexing ``folder`` as a whole process into a fresh data directory (an empty
    database, links to the exported model), answering one query; and the vectors it stored."""
    from rclip_model import link_datadir

    datadir = link_datadir(model_dir)
    query = str(sorted(folder.glob("*.jpg"))[0].resolve())
    env = {"RCLIP_DATADIR": str(datadir), "HF_HUB_OFFLINE": "1"}
    wall, rss, _ = run_measured([rclip, "--top", "1", query], env=env, cwd=folder)
    vectors = rclip_vectors(datadir / "db.sqlite3")
    shutil.rmtree(datadir)
    return wall, rss, vectors


def rclip_vectors(database: Path) -> dict[str, np.ndarray]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(database)) as conn:
        rows = conn.execute("SELECT filepath, vector FROM images WHERE deleted IS NULL").fetchall()
    return {Path(f).name: np.frombuffer(v, np.float32) for f, v in rows}


def cosines(reference: dict, vectors: dict) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each reference vector with the same image's and with the other images'."""
    names = sorted(reference)
    sims = np.stack([reference[n] for n in names]) @ np.stack([vectors[n] for n in names]).T
    return np.diag(sims), sims[~np.eye(len(names), dtype=bool)]


def rclip_row(label, folder, paths, rclip, base_rate, ceiling, reference):
    executable, model_dir, version = rclip
    wall, rss, vectors = rclip_index(executable, folder, model_dir)
    if len(vectors) != len(paths):
        sys.exit(f"rclip indexed {len(vectors)} of the {len(paths)} images in {folder}")
    rate = len(paths) / wall
    same, other = cosines(reference, vectors)
    row = [
        label,
        f"(4) {version}, {len(paths)} imgs, whole process",
        "fp32 (ONNX)",
        f"{rate:.1f}",
        f"{rate / base_rate:.1f}x",
        f"{100 * rate / ceiling:.0f}%",
    ]
    note = (
        f"{label}: {version} vs the fp32 full-decode reference, same image: cosine min "
        f"{same.min():.5f}, mean {same.mean():.5f} (different images: mean {other.mean():.3f}); "
        f"peak RSS {rss:.0f} MB; wall {wall:.1f} s, one image query included"
    )
    return row, note


def bench_dataset(label, folder, model, embedder, embedder_fp32, sample, extra_runs, rclip=None):
    paths = sorted(folder.glob("*.jpg"))
    ceiling = model_alone(embedder)
    sample_paths = paths[:: max(1, len(paths) // sample)][:sample]
    base_rate, reference = straightforward(embedder_fp32, sample_paths)
    wall, rss, summary, library = organizer_ingest(folder, model, precision=embedder.precision)
    ours = len(paths) / wall
    stored = stored_vectors(library)
    cos = np.array([float(reference[n] @ stored[n]) for n in reference])
    rows = [
        [label, "(1) model alone, batch 32", _how(embedder), f"{ceiling:.1f}", "", ""],
        [
            label,
            f"(2) original-style pipeline ({len(sample_paths)} imgs)",
            "fp32",
            f"{base_rate:.1f}",
            "",
            "",
        ],
        [
            label,
            f"(3) organizer ingest, {len(paths)} imgs, whole process",
            _how(summary),
            f"{ours:.1f}",
            f"{ours / base_rate:.1f}x",
            f"{100 * ours / ceiling:.0f}%",
        ],
    ]
    extra_notes = []
    for name, args in extra_runs:
        w, _, s, lib = organizer_ingest(folder, model, args, embedder.precision)
        theirs = stored_vectors(lib)
        c = np.array([float(reference[n] @ theirs[n]) for n in reference])
        extra_notes.append(
            f"{label}: {name} vs the fp32 full-decode reference: cosine min {c.min():.5f}, "
            f"mean {c.mean():.5f}"
        )
        rows.append(
            [
                label,
                f"(3') organizer ingest {name}",
                _how(s),
                f"{len(paths) / w:.1f}",
                f"{len(paths) / w / base_rate:.1f}x",
                f"{100 * len(paths) / w / ceiling:.0f}%",
            ]
        )
    decode_s = decode_cost(embedder.preprocess, sample_paths)
    ceiling_all = ceiling_with_decode(ceiling, decode_s)
    rclip_note = None
    if rclip:
        row, rclip_note = rclip_row(label, folder, paths, rclip, base_rate, ceiling, reference)
        rows.append(row)
    extra = {
        "rclip_note": rclip_note,
        "cos_min": cos.min(),
        "cos_mean": cos.mean(),
        "rss_mb": rss,
        "model_load_s": summary["model_load_s"],
        "extra_notes": extra_notes,
        "decode_note": (
            f"{label}: decoding takes {1000 * decode_s:.0f} ms of CPU an image; with it the "
            f"model's ceiling is {ceiling_all:.1f} img/s, and (3) reaches "
            f"{100 * ours / ceiling_all:.0f}% of that"
        ),
    }
    return rows, extra


def _how(source) -> str:
    """ "bf16", or "fp32 (ONNX)" / "bf16 (OpenVINO)" where those ran the images."""
    if isinstance(source, dict):
        precision, runtime = source["precision"], source.get("runtime")
    else:
        precision, runtime = source.precision, getattr(source, "runtime", "torch")
    names = {"onnxruntime": "ONNX", "openvino": "OpenVINO"}
    return f"{precision} ({names[runtime]})" if runtime in names else str(precision)


def bench_reingest(n: int) -> list[list[str]]:
    folder = tiny_files(f"tiny-{n}", n)
    library = Path(tempfile.mkdtemp(prefix="bench-lib-"))
    base = [
        *ORGANIZER,
        "ingest",
        str(folder),
        "--library",
        str(library),
        "--model",
        str(TINY_CONFIG),
        "--pretrained",
        "none",
        "--json",
        "--quiet",
    ]
    run_measured(base)
    start_wall = min(run_measured([*ORGANIZER, "--version"])[0] for _ in range(3))
    walls, loads = [], []
    for _ in range(3):
        wall, _, result = run_measured(base)
        s = json.loads(result.stdout)
        assert s["unchanged"] == n and s["embedded"] == 0
        walls.append(wall)
        loads.append(s["device"] is None and s["model_load_s"] == 0)
    best = min(walls)
    return [
        [
            f"re-ingest {n} unchanged files",
            f"{best:.2f} s wall",
            f"{best - start_wall:.2f} s beyond process start ({start_wall:.2f} s)",
            "model loaded: " + ("no" if all(loads) else "YES"),
        ]
    ]


def bench_memory(small: int, large: int) -> list[list[str]]:
    folder = variants(f"mem-{large}", large, 512)
    subset = Path(tempfile.mkdtemp(prefix="bench-sub-"))
    for p in sorted(folder.glob("*.jpg"))[:small]:
        os.symlink(p, subset / p.name)
    rows, peaks = [], {}
    for n, src, extra in ((small, subset, ["--follow-symlinks"]), (large, folder, [])):
        _, rss, summary, _ = organizer_ingest(src, str(TINY_CONFIG), extra)
        assert summary["new"] == n, summary
        peaks[n] = rss
    rows.append(
        [
            f"peak RSS (process tree) ingesting {small} / {large} images",
            f"{peaks[small]:.0f} MB / {peaks[large]:.0f} MB",
            f"ratio {peaks[large] / peaks[small]:.2f}",
            "",
        ]
    )
    return rows


def prepare_rclip(executable: str, embedder_fp32) -> tuple[str, Path, str]:
    """The executable, the exported seeded model it will run, and its version."""
    from rclip_model import ensure

    version = rclip_version(executable)
    cpu_model = embedder_fp32 if embedder_fp32.device == "cpu" else None
    model_dir = ensure(DATA / "rclip-model", cpu_model)
    print(f"{version} ({executable}), seeded model in {model_dir}", flush=True)
    return executable, model_dir, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--quick", action="store_true", help="small sets, for a smoke test")
    parser.add_argument(
        "--precision",
        default="auto",
        help="as organizer's: auto runs the images in OpenVINO bf16 on a CPU with bf16 units, "
        "in ONNX Runtime fp32 elsewhere; either adds a --runtime torch row",
    )
    parser.add_argument("--only", choices=["a", "b", "reingest", "memory"], action="append")
    parser.add_argument(
        "--rclip",
        metavar="PATH",
        default=os.environ.get("ORGANIZER_BENCH_RCLIP") or None,
        help="an rclip 4 executable to time on the same photos (or $ORGANIZER_BENCH_RCLIP)",
    )
    args = parser.parse_args()
    if args.rclip and args.model != "ViT-B-32-256":
        parser.error("--rclip runs ViT-B-32-256 only: leave --model out")
    only = set(args.only or ["a", "b", "reingest", "memory"])
    n_a, n_b, sample = (100, 20, 10) if args.quick else (1000, 200, 100)
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus",
        flush=True,
    )
    print(f"cpu: {cpu_description()}", flush=True)
    embedder = load_model(args.model, args.precision, "auto")
    embedder_fp32 = load_model(args.model, "fp32")  # torch: the reference and (2)
    torch_too = getattr(embedder, "runtime", "torch") != "torch"
    rclip = prepare_rclip(args.rclip, embedder_fp32) if args.rclip and only & {"a", "b"} else None
    rows, notes = [], []
    if "a" in only:
        r, e = bench_dataset(
            "1024-px",
            variants(f"a-{n_a}", n_a, 1024),
            args.model,
            embedder,
            embedder_fp32,
            sample,
            [
                *([("--runtime torch", ["--runtime", "torch"])] if torch_too else []),
                ("--precision int8 (opt-in)", ["--precision", "int8"]),
            ],
            rclip,
        )
        rows += r
        notes.append(
            f"1024-px: cosine fast vs fp32 full-decode reference: min {e['cos_min']:.5f}, mean {e['cos_mean']:.5f}; "
            f"peak RSS {e['rss_mb']:.0f} MB; model load {e['model_load_s']:.1f} s (inside (3))"
        )
        notes += [e["rclip_note"]] if rclip else []
        notes += [e["decode_note"], *e["extra_notes"]]
        print(
            table(rows, ["set", "pipeline", "precision", "images/s", "vs (2)", "of (1)"]),
            flush=True,
        )
    if "b" in only:
        extra = [("--workers 2", ["--workers", "2"])] if not args.quick else []
        r, e = bench_dataset(
            "12-MP",
            variants(f"b-{n_b}", n_b, 4000, aspect=(4000, 3000)),
            args.model,
            embedder,
            embedder_fp32,
            max(10, sample // 2),
            extra,
            rclip,
        )
        rows += r
        notes.append(
            f"12-MP: cosine fast vs fp32 full-decode reference: min {e['cos_min']:.5f}, mean {e['cos_mean']:.5f}; "
            f"peak RSS {e['rss_mb']:.0f} MB; model load {e['model_load_s']:.1f} s (inside (3))"
        )
        notes += [e["rclip_note"]] if rclip else []
        notes += [e["decode_note"], *e["extra_notes"]]
    print()
    print(table(rows, ["set", "pipeline", "precision", "images/s", "vs (2)", "of (1)"]))
    for note in notes:
        print("- " + note)
    other = []
    if "reingest" in only:
        other += bench_reingest(2000 if args.quick else 20000)
    if "memory" in only:
        other += bench_memory(50, 500) if args.quick else bench_memory(500, 5000)
    if other:
        print()
        print(table(other, ["measure", "figure", "detail", ""]))


if __name__ == "__main__":
    main()
