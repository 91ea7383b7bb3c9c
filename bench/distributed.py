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
from common import ORGANIZER, table, variants


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
        time.sleep(0.2)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{engine} ingest failed: {err}")
    subprocess.run(["rm", "-rf", str(library)], check=False)
    summary = json.loads(out)
    return {"wall": wall, "summary": summary, "driver_cpu": cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="ViT-B-32-256")
    args = ap.parse_args()
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
