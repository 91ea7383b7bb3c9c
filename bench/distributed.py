"""The Ray engine against the local one, on this machine, and what that says about N machines.

    python bench/distributed.py [--n 1000] [--model ViT-B-32-256]

1,000 distinct 1024-px photos made from the real ones (cached, shared with bench/ingest.py),
the model with seeded random weights (same compute as real ones), a fresh library each run,
whole `organizer ingest` processes: `--engine local`, `--engine ray` with the local Ray cluster
it starts for itself (5-7 s of start-up), and `--engine ray --ray-address auto` on a cluster
started beforehand with `ray start --head` (as on a real cluster). Printed: the CPU, wall time,
images/s (embedded / wall), the driver process's own CPU seconds per image (on Ray the
driver only scans, plans and writes), and ray / local (target >= 0.80).

The scaling model: with M machines each embedding at the rate one machine reaches on Ray,
ingest runs at min(M x that rate, 1 / the driver's CPU per extra image): the driver's
single writer is the serial part (measured from a run of N and one of N/4 images, so that
start-up and imports cancel out). (bench/catalogue.py measures the writer alone: ~17,000 rows/s on
PostgreSQL, more on SQLite.)

    python bench/distributed.py --fake-model --json [--n 2000]

measures the driver alone: a tiny random model (tests/data/tiny-clip.json, 32-px input) so
that neither the model nor decoding is the limit, both engines on the same files, each run on
N files and on N/4 (start-up and imports cancel out), and prints one JSON document:
{"cpu": ..., "runs": [{"engine": "local"|"ray", "images": N, "driver_cpu_ms_per_image": x,
"images_per_s": y, ...}]}. driver_cpu_ms_per_image is the ingesting process's own user +
system time per extra image (workers, decode processes and Ray's daemons excluded: other
processes); images_per_s is N / the whole process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from catalogue import cpu
from common import ORGANIZER, TINY_CONFIG, table, variants


def run(folder: Path, engine: str, model: str, extra: tuple[str, ...] = ()) -> dict:
    """One whole ingest process: wall, its summary, and the driver's own CPU seconds."""
    library = Path(tempfile.mkdtemp(prefix=f"organizer-dist-{engine}-"))
    cmd = [*ORGANIZER, "-L", str(library / "lib"), "ingest", str(folder), "--json", "-q"]
    cmd += ["--model", model, "--pretrained", "none", "--engine", engine, *extra]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tick = os.sysconf("SC_CLK_TCK")
    cpu_s = 0.0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / tick  # utime + stime, this process
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{engine} ingest failed: {err}")
    subprocess.run(["rm", "-rf", str(library)], check=False)
    summary = json.loads(out)
    return {"wall": wall, "summary": summary, "driver_cpu": cpu_s}


def driver(n: int, engines: list[str], repeat: int) -> dict:
    """The driver's CPU per image with a model too small to matter, each engine on N files
    and on N/4 of them (each the median of ``repeat`` runs: start-up's CPU varies by tenths
    of a second): one JSON-ready document."""
    full = variants(f"a-{n}", n, 1024)
    quarter = variants(f"a-{n // 4}", n // 4, 1024)
    runs = []
    for engine in engines:
        big = median_run(full, engine, repeat)
        small = median_run(quarter, engine, repeat)
        embedded, fewer = big["summary"]["embedded"], small["summary"]["embedded"]
        extra = max(embedded - fewer, 1)
        runs.append(
            {
                "engine": engine,
                "images": embedded,
                "driver_cpu_ms_per_image": round(
                    (big["driver_cpu"] - small["driver_cpu"]) / extra * 1000, 3
                ),
                "images_per_s": round(embedded / big["wall"], 1),
                "wall_s": round(big["wall"], 2),
                "driver_cpu_s": round(big["driver_cpu"], 2),
                "repeats": repeat,
                "quarter": {
                    "images": fewer,
                    "wall_s": round(small["wall"], 2),
                    "driver_cpu_s": round(small["driver_cpu"], 2),
                },
            }
        )
    return {"cpu": cpu(), "runs": runs}


def median_run(folder: Path, engine: str, repeat: int) -> dict:
    """The run whose driver CPU is the median of ``repeat`` runs (alternating is left to the
    caller: runs of one engine follow each other)."""
    runs = sorted((run(folder, engine, str(TINY_CONFIG)) for _ in range(repeat)), key=cpu_of)
    return runs[len(runs) // 2]


def cpu_of(result: dict) -> float:
    return result["driver_cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--n", type=int, default=None, help="files (default 1000; 2000 with --fake-model)"
    )
    ap.add_argument("--model", default="ViT-B-32-256")
    ap.add_argument(
        "--fake-model", action="store_true", help="a tiny model: measure the driver, not the model"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON document (--fake-model)")
    ap.add_argument("--engines", default="local,ray", help="with --fake-model: which engines")
    ap.add_argument("--repeat", type=int, default=3, help="with --fake-model: runs per size")
    args = ap.parse_args()
    if args.fake_model:
        doc = driver(args.n or 2000, args.engines.split(","), args.repeat)
        if args.json:
            print(json.dumps(doc, indent=2))
            return
        print(doc["cpu"])
        rows = [
            [
                r["engine"],
                str(r["images"]),
                f"{r['driver_cpu_ms_per_image']:.3f} ms",
                f"{r['images_per_s']:.1f}",
                f"{r['wall_s']:.1f} s",
            ]
            for r in doc["runs"]
        ]
        header = ["engine", "images", "driver CPU per extra image", "img/s (whole process)", "wall"]
        print(table(rows, header))
        return
    if args.json:
        ap.error("--json goes with --fake-model")
    args.n = args.n or 1000
    print(cpu(), flush=True)
    folder = variants(f"a-{args.n}", args.n, 1024)
    results = {
        "local": run(folder, "local", args.model),
        "ray (started by the run)": run(folder, "ray", args.model),
    }
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run(
        [*ray, "start", "--head", "--include-dashboard=false", "--disable-usage-stats"],
        check=True,
        capture_output=True,
    )
    try:
        results["ray (running cluster)"] = run(folder, "ray", args.model, ("--ray-address", "auto"))
        small = variants(f"a-{args.n // 4}", args.n // 4, 1024)
        quarter = run(small, "ray", args.model, ("--ray-address", "auto"))
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True)
    rows = []
    for engine, r in results.items():
        s = r["summary"]
        rate = s["embedded"] / r["wall"]
        rows.append(
            [
                engine,
                f"{r['wall']:.1f} s",
                str(s["embedded"]),
                f"{rate:.1f}",
                f"{r['driver_cpu'] / max(s['embedded'], 1) * 1000:.1f} ms",
                f"{s['precision']} on {s['device']}",
            ]
        )
        r["rate"] = rate
    print(
        table(
            rows, ["engine", "wall", "embedded", "img/s (whole process)", "driver CPU/img", "model"]
        )
    )
    for name in ("ray (started by the run)", "ray (running cluster)"):
        ratio = results[name]["rate"] / results["local"]["rate"]
        print(f"{name} / local: {ratio:.2f} (target >= 0.80)")
    steady = results["ray (running cluster)"]
    per_machine = steady["rate"]
    # The driver's CPU per image at the margin (start-up and imports cancel out): the
    # serial part of a cluster ingest.
    extra = steady["summary"]["embedded"] - quarter["summary"]["embedded"]
    per_image = (steady["driver_cpu"] - quarter["driver_cpu"]) / max(extra, 1)
    print(
        f"driver CPU per extra image (runs of {steady['summary']['embedded']} and "
        f"{quarter['summary']['embedded']} images): {per_image * 1000:.2f} ms"
    )
    cap = 1 / per_image if per_image > 0 else float("inf")
    print(
        f"scaling model: M machines like this one ~ min(M x {per_machine:.1f}, {cap:.0f}) img/s "
        f"(the driver's writer saturates near M = {cap / per_machine:.0f})"
    )


if __name__ == "__main__":
    main()
