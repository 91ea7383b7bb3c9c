"""Filtered search: the best k among an allowed set of image ids, at 1M vectors.

    python bench/filtered_search.py [--n 1000000] [--kind auto] [--queries 50] [--k 20]

The vectors are bench/scale.py's seeded CLIP-like ones (512-d, clustered; made once and
cached there), ids = row numbers. The index is the kind organizer picks at ``--n`` (or
``--kind``), built by organizer's own code once and cached beside the vectors. Allowed
sets, as a metadata filter would give them (a sorted id array): 1 % of the ids at random,
1 % as one contiguous id range (a date range on ids given in import order), 10 % and 50 %
at random, and 0.1 % at random. Per set: p50/p95 latency of one
``VectorIndex.search_among`` call per query (the id set's selector built inside the
call, as the library does), the fewest hits a query got (it must be k), and recall@k
against the exact top k over the allowed vectors. The unfiltered ``search`` is the
baseline. No assertions: it prints figures.

The first run at 1M makes the vectors (30 s) and builds the index (on two cores: 40 s for
ivf-fp16, 6 min for ``--kind ivf-pq``); ``--n 100000`` is a quick run.

``--library``: the whole library call instead, as `organizer similar --after ... --before`
makes it: a folder library of the same vectors (bench/scale.py's, written once) whose
photos were taken over 25 years in import order with a random jitter of a few days, so a
three-month period keeps about 1 % of them, at random places and cameras.
``Library.similar_to(id, k, where=...)`` per query image: the filter's SQL (kept ids),
the search among them, and the records of the results, p50/p95 over the queries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from catalogue import cpu  # noqa: E402 (bench/ is not a package)
from common import table  # noqa: E402
from scale import DIM, dataset, stream  # noqa: E402


def built_index(n: int, kind: str):
    """The index of ``kind`` over the dataset's first ``n`` vectors, built once and cached."""
    from organizer.store.records import IndexFileRecord
    from organizer.vectors import VectorIndex, plan
    from organizer.vectors.files import read_index, write_index

    path, _, _ = dataset(n)
    chosen = plan(n, DIM, kind)
    folder = path.parent / f"filtered-{chosen.kind}"
    record_file = folder / "record.json"
    if record_file.exists():
        record = IndexFileRecord(**json.loads(record_file.read_text()))
        index = read_index(folder / "vectors.faiss", record)
        if index is not None:
            return index, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    index = VectorIndex.build_from(lambda: stream(path, n), n, DIM, chosen, folder)
    build_s = time.perf_counter() - started
    sha, quick = write_index(folder / "vectors.faiss", index)
    record = IndexFileRecord(1, sha, len(index), index.kind, "", index.recall, quick)
    record_file.write_text(json.dumps(record.__dict__))
    return index, build_s


def allowed_sets(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)

    def share(f: float) -> np.ndarray:
        return np.sort(rng.choice(n, max(1, int(n * f)), replace=False)).astype(np.int64)

    start = n // 3
    return {
        "0.1 % random": share(0.001),
        "1 % random": share(0.01),
        "1 % id range": np.arange(start, start + n // 100, dtype=np.int64),
        "10 % random": share(0.1),
        "50 % random": share(0.5),
    }


def exact_top(path: Path, among: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact top k of each query over the allowed vectors (fp16 file, streamed)."""
    mapped = np.memmap(path, np.float16, "r").reshape(-1, DIM)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(among), 65_536):
        ids = among[start : start + 65_536]
        s = np.concatenate([best_s, queries @ mapped[ids].astype(np.float32).T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def timed(search, queries: np.ndarray) -> tuple[list[float], list]:
    times, hits = [], []
    for q in queries:
        t = time.perf_counter()
        hits.append(search(q[None, :])[0])
        times.append((time.perf_counter() - t) * 1e3)
    return times, hits


def row(name: str, times: list[float], hits: list, truth: np.ndarray | None, k: int) -> list:
    fewest = min(len(h.ids) for h in hits)
    recall = "-"
    if truth is not None:
        found = [
            len(set(h.ids.tolist()) & set(t.tolist())) / k for h, t in zip(hits, truth, strict=True)
        ]
        recall = f"{np.mean(found):.3f}"
    p50, p95 = np.percentile(times, 50), np.percentile(times, 95)
    return [name, f"{p50:.2f}", f"{p95:.2f}", str(fewest), recall]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    print(cpu(), file=sys.stderr)
    path, queries, _ = dataset(args.n)
    queries = queries[: args.queries]
    index, build_s = built_index(args.n, args.kind)
    built = f"built in {build_s:.0f} s" if build_s else "cached"
    print(f"{args.n:,} vectors: {index.describe()} ({built})", file=sys.stderr)
    timed(lambda q: index.search(q, args.k), queries[:5])  # warm: lists and maps paged in
    rows = [row("unfiltered", *timed(lambda q: index.search(q, args.k), queries), None, args.k)]
    for name, among in allowed_sets(args.n).items():
        truth = exact_top(path, among, queries, args.k)
        times, hits = timed(lambda q, a=among: index.search_among(q, args.k, a), queries)
        rows.append(row(f"{name} ({len(among):,} ids)", times, hits, truth, args.k))
        print(f"  {' | '.join(rows[-1])}", file=sys.stderr)
    header = ["allowed", f"p50 ms (k={args.k})", "p95 ms", "fewest hits", f"recall@{args.k}"]
    print(f"{args.n:,} vectors, {index.describe()}, {len(queries)} queries, {cpu()}")
    print(table(rows, header))


def with_metadata(lib_dir: Path, n: int) -> None:
    """Photo metadata for every image of the bench library, written once: taken in import
    order over 25 years (jittered by up to 5 days), 500 places, 20 cameras."""
    from datetime import datetime, timedelta

    from sqlalchemy import insert

    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import meta_queries as mq
    from organizer.store.db import write_transaction

    done = lib_dir / ".metadata"
    if done.exists():
        return
    rng = np.random.default_rng(5)
    start, span = datetime(2000, 1, 1), 25 * 365 * 86400
    with Library.open(Settings(library=lib_dir)) as lib:
        with write_transaction(lib.engine) as conn:
            conn.execute(
                insert(mq.cameras_t),
                [
                    {"make": f"M{i}", "model": f"Model {i}", "label": f"M{i} Model {i}"}
                    for i in range(20)
                ],
            )
            conn.execute(
                insert(mq.places_t),
                [
                    {
                        "city": f"City{i}",
                        "region": f"Region{i % 50}",
                        "country": f"Country{i % 30}",
                        "country_code": "XX",
                        "label": f"City{i}, Region{i % 50}",
                    }
                    for i in range(500)
                ],
            )
        for lo in range(0, n, 50_000):
            ids = np.arange(lo, min(n, lo + 50_000))
            secs = ids * (span / n) + rng.uniform(-5 * 86400, 5 * 86400, len(ids))
            rows = [
                {
                    "image_id": int(i) + 1,
                    "reader": 1,
                    "taken_at": start + timedelta(seconds=float(max(0.0, t))),
                    "latitude": float(rng.uniform(-60, 70)),
                    "longitude": float(rng.uniform(-180, 180)),
                    "place_id": int(rng.integers(1, 501)),
                    "camera_id": int(rng.integers(1, 21)),
                }
                for i, t in zip(ids.tolist(), secs.tolist(), strict=True)
            ]
            with write_transaction(lib.engine) as conn:
                conn.execute(insert(mq.meta_t), rows)
    done.touch()


def library_call(n: int, k: int, queries: int) -> None:
    """``Library.similar_to`` with a filter keeping about 1 % (a period), 5 % (a camera) and
    0.2 % (a place), beside the unfiltered call, in this one process."""
    from scale import library

    from organizer.config import Settings
    from organizer.filters import parse_filter
    from organizer.library import Library

    lib_dir = library(n)
    with_metadata(lib_dir, n)
    rng = np.random.default_rng(9)
    picks = (rng.choice(n, queries, replace=False) + 1).tolist()
    cases = {
        "unfiltered": None,
        "a quarter: 2012-04..06 (~1 %)": parse_filter(after="2012-04", before="2012-06"),
        "a camera (~5 %)": parse_filter(cameras=["model 7"]),
        "a place (~0.2 %)": parse_filter(places=["city123"]),
        "a period and a camera (~0.05 %)": parse_filter(
            after="2012", before="2012", cameras=["model 7"]
        ),
    }
    with Library.open(Settings(library=lib_dir)) as lib:
        started = time.perf_counter()
        lib.vectors()  # built from the database when missing (the kind organizer picks)
        print(
            f"index ready in {time.perf_counter() - started:.0f} s: {lib.vectors().describe()}",
            file=sys.stderr,
        )
        for i in picks[:5]:
            lib.similar_to(i, k)  # warm
        rows = []
        for name, where in cases.items():
            times, counts = [], []
            for i in picks:
                t = time.perf_counter()
                found = lib.similar_to(i, k, where=where)
                times.append(time.perf_counter() - t)
                counts.append(len(found.results))
            with lib.engine.connect() as conn:
                from organizer.store.filter_queries import kept_ids

                kept = len(kept_ids(conn, where)) if where else n
            rows.append(
                [
                    name,
                    f"{kept:,}",
                    f"{np.percentile(times, 50) * 1e3:.1f}",
                    f"{np.percentile(times, 95) * 1e3:.1f}",
                    str(min(counts)),
                ]
            )
            print(f"  {' | '.join(rows[-1])}", file=sys.stderr)
    print(f"Library.similar_to at {n:,} images, k={k}, {queries} query images, {cpu()}")
    print(table(rows, ["filter", "kept", "p50 ms", "p95 ms", "fewest results"]))


if __name__ == "__main__":
    if "--library" in sys.argv:
        sys.argv.remove("--library")
        parser = argparse.ArgumentParser()
        parser.add_argument("--n", type=int, default=1_000_000)
        parser.add_argument("--queries", type=int, default=50)
        parser.add_argument("--k", type=int, default=20)
        options = parser.parse_args()
        library_call(options.n, options.k, options.queries)
    else:
        main()
