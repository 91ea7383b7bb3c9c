"""Ingest from a bucket against ingest from a folder: the same photos, the same model, one run.

    python bench/buckets.py [--n 1000] [--delay-ms 30] [--rounds 2] [--model ViT-B-32-256]

The bucket is moto's S3 server on 127.0.0.1 (tests/s3.py), a real S3 protocol endpoint that
runs on the same cores as the ingest (a real service would not). Whole `organizer ingest`
processes into empty libraries, folder and bucket in turn for each round, and then the bucket
through a proxy that holds every request ``--delay-ms`` before passing it on (a far-away
service). Last, the fetch stage alone (no decode, no model) at several depths of reads in
flight, with and without the delay: what the depth buys. Weights are random (the same compute
as real ones); the dataset is ``--n`` distinct 1024-px JPEGs made from the real photos.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ORGANIZER, run_measured, table, variants
from ingest import cpu_description

from tests.s3 import FAKE_KEY_ID, FAKE_REGION, FAKE_SECRET, MotoServer, Proxy


def environment(folder: Path) -> dict[str, str]:
    """The fake credentials moto takes, and no AWS set-up of the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORGANIZER_"))}
    empty = folder / "aws-empty"
    empty.write_text("")
    env.update(
        AWS_ACCESS_KEY_ID=FAKE_KEY_ID,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET,
        AWS_DEFAULT_REGION=FAKE_REGION,
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def upload(server: MotoServer, folder: Path, bucket: str) -> int:
    client = server.client()
    client.create_bucket(Bucket=bucket)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")

    def put(path: Path) -> None:
        client.put_object(Bucket=bucket, Key=f"photos/{path.name}", Body=path.read_bytes())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))
    return len(files)


def ingest(root: str, model: str, env: dict[str, str], extra: list[str]) -> tuple[float, dict]:
    library = tempfile.mkdtemp(prefix="bench-bucket-lib-")
    cmd = [*ORGANIZER, "ingest", root, "--library", library, "--model", model]
    cmd += ["--pretrained", "none", "--json", "--quiet", *extra]
    wall, _rss, result = run_measured(cmd, env=env)
    if result.returncode != 0:
        sys.exit(f"ingest of {root} failed: {result.stderr.strip()}")
    summary = json.loads(result.stdout)
    assert summary["new"] > 0 and summary["failed"] == 0, summary
    return wall, summary


def fetch_rate(url: str, endpoint: str, names: list[str], depth: int) -> float:
    """Objects a second through the fetch stage alone, ``depth`` reads in flight."""
    from organizer.pipeline import Job, fetch_ahead
    from organizer.sources import Storage
    from organizer.sources.remote import filesystem

    storage = Storage(endpoint)
    fs, _ = filesystem(url, storage)
    fs.clear_instance_cache()
    jobs = [
        Job(i, f"{url}/{name}".encode(), -1, 0, storage=storage) for i, name in enumerate(names)
    ]
    started = time.perf_counter()
    got = sum(1 for job in fetch_ahead(jobs, depth=depth) if job.data)
    assert got == len(jobs)
    return len(jobs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--delay-ms", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-32-256")
    args = parser.parse_args()
    print(cpu_description(), flush=True)
    folder = variants(f"a-{args.n}", args.n, 1024)
    work = Path(tempfile.mkdtemp(prefix="bench-buckets-"))
    env = environment(work)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    with MotoServer() as server, Proxy(server.address) as proxy:
        count = upload(server, folder, "bench")
        url = "s3://bench/photos"
        print(f"{count} photos in {folder} and in {url} at {server.url}", flush=True)
        runs: dict[str, list[float]] = {"folder": [], "bucket": [], "bucket+delay": []}
        shapes = {}
        for _ in range(args.rounds):
            for label, root, extra in (
                ("folder", str(folder), []),
                ("bucket", url, ["--endpoint-url", server.url]),
            ):
                _, summary = ingest(root, args.model, env, extra)
                runs[label].append(summary["embedded"] / summary["elapsed_s"])
                shapes[label] = f"{summary['precision']} with {summary['runtime']}"
            proxy.delay_s = args.delay_ms / 1000
            _, summary = ingest(url, args.model, env, ["--endpoint-url", proxy.url])
            runs["bucket+delay"].append(summary["embedded"] / summary["elapsed_s"])
            proxy.delay_s = 0.0
        base = statistics.median(runs["folder"])
        rows = [
            [
                label,
                shapes.get(label, shapes["bucket"]),
                " ".join(f"{r:.1f}" for r in rates),
                f"{statistics.median(rates):.1f}",
                f"{statistics.median(rates) / base:.0%}",
            ]
            for label, rates in runs.items()
        ]
        print(f"\n`organizer ingest` of {count} 1024-px JPEGs, {args.model} (random weights):")
        print(table(rows, ["root", "model", "images/s per run", "median", "of folder's"]))

        names = [f"{i:05d}.jpg" for i in range(min(count, 300))]
        fetch_rows = []
        for depth in (1, 8, 32):
            rate = fetch_rate(url, server.url, names, depth)
            fetch_rows.append(["none (no proxy)", str(depth), f"{rate:.0f}"])
        for delay in (0.0, args.delay_ms / 1000):
            proxy.delay_s = delay
            for depth in (1, 8, 32):
                rate = fetch_rate(url, proxy.url, names, depth)
                fetch_rows.append([f"{delay * 1000:.0f} ms", str(depth), f"{rate:.0f}"])
        proxy.delay_s = 0.0
        print(f"\nthe fetch stage alone ({len(names)} objects):")
        print(table(fetch_rows, ["added delay", "reads in flight", "objects/s"]))


if __name__ == "__main__":
    main()
