"""Index kinds at scale: build time, memory, recall@10 and latency, 1M to 10M+ vectors.

    python bench/scale.py --n 1000000 [--json] [--kinds ivf-fp16,ivf-sq8,ivf-pq]
    python bench/scale.py --n 1000000 --library    # the CLI on a real library of them
    python bench/scale.py --n 1000000 --library --shards 2   # ... built in 2 shards
    python bench/scale.py --n 1000000 --updates 10 --json   # an index grown in place
    python bench/scale.py --n 1000000 --library --updates 3   # ... by a library (database too)

Seeded synthetic CLIP-like vectors (512-d, unit length: a shared mean, 2,000 clusters of
Zipf-distributed sizes whose centres lie in a 64-d subspace, each spreading along 8
directions of its own, plus isotropic noise; mean cosine of two vectors about 0.4, of a
vector and its nearest neighbour about 0.92, as for CLIP ViT-B image embeddings) are
written once as an fp16 file, with 1,000 near-duplicate pairs planted (cosine about 0.98).
Exact top-10 of 1,000 held-out queries is computed by streaming. Then each index kind is
built by organizer's own code (organizer.vectors) in a process of its own, from the file
streamed in chunks as a database would be (never memory-mapped, so that peak RSS counts the
build, not the page cache), and measured: build time, peak anonymous RSS added by the
build (page cache of the memory-mapped re-rank vectors left out), memory
the loaded index holds (its faiss file, which is read whole; the re-rank vectors stay
memory-mapped), every file, recall@10 and
per-query latency (one query per library call, 1,000 queries), and the planted duplicate
pairs found at cosine >= 0.95. ``chosen`` marks what ``--kind auto`` builds at this N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from catalogue import cpu  # noqa: E402 (bench/ is not a package)
from common import DATA, table  # noqa: E402

DIM = 512
QUERIES = 1_000
PAIRS = 1_000
CHUNK = 20_000
DUP_THRESHOLD = 0.95
KINDS = ("ivf-fp16", "ivf-sq8", "ivf-pq")  # ivf-pq is measured with and without re-rank


# -- data -----------------------------------------------------------------------------------


def _chunks(n: int, seed: int):
    """Seeded CLIP-like unit vectors, CHUNK at a time (the same for any n)."""
    rng = np.random.default_rng(1234)
    mean = rng.standard_normal(DIM).astype(np.float32)
    mean /= np.linalg.norm(mean)
    basis = np.linalg.qr(rng.standard_normal((DIM, 64)))[0].astype(np.float32).T
    clusters = 2000
    centres = (rng.standard_normal((clusters, 64)).astype(np.float32) * 0.07) @ basis
    spread = rng.standard_normal((clusters, 8, DIM)).astype(np.float32) * (0.4 / np.sqrt(DIM))
    weights = rng.zipf(1.6, clusters).astype(np.float64)
    weights /= weights.sum()
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        r = np.random.default_rng([seed, start])
        c = r.choice(clusters, m, p=weights)
        z = r.standard_normal((m, 8), dtype=np.float32)
        x = mean + centres[c] + np.einsum("mk,mkd->md", z, spread[c])
        x += r.standard_normal((m, DIM), dtype=np.float32) * (0.25 / np.sqrt(DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def dataset(n: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """(fp16 vectors file, queries, planted pairs), made once and cached."""
    folder = DATA / f"scale-{n}"
    done = folder / ".complete"
    path = folder / "vectors.f16"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        rng = np.random.default_rng(99)
        firsts = np.sort(rng.choice(np.arange(0, n - 1, 2), min(PAIRS, n // 4), replace=False))
        with open(path, "wb") as fh:
            for start, x in _chunks(n, 0):
                local = firsts[(firsts >= start) & (firsts < start + len(x) - 1)] - start
                noise = np.random.default_rng(start + 7).standard_normal((len(local), DIM))
                dup = x[local] + 0.2 / np.sqrt(DIM) * noise.astype(np.float32)
                x[local + 1] = dup / np.linalg.norm(dup, axis=1, keepdims=True)
                fh.write(x.astype(np.float16).tobytes())
                print(f"\r  generating {start + len(x):,}/{n:,}", end="", file=sys.stderr)
        np.save(folder / "pairs.npy", np.stack([firsts, firsts + 1], axis=1))
        queries = np.concatenate([x for _, x in _chunks(QUERIES, 1)])
        np.save(folder / "queries.npy", queries)
        print(f"\n  generated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        done.touch()
    return path, np.load(folder / "queries.npy"), np.load(folder / "pairs.npy")


def stream(path: Path, n: int, batch: int = 16_384):
    """(ids, float32 vectors) batches read from the file (not mapped), ids = row numbers."""
    buf = np.empty((batch, DIM), np.float16)
    with open(path, "rb", buffering=0) as fh:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            view = buf[:m]
            fh.readinto(memoryview(view).cast("B"))
            yield np.arange(start, start + m, dtype=np.int64), view.astype(np.float32)


def truth(path: Path, n: int, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 ids of each query, streamed, cached."""
    cache = path.parent / "truth.npy"
    if cache.exists():
        return np.load(cache)
    started = time.perf_counter()
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for ids, x in stream(path, n, 65_536):
        s = np.concatenate([best_s, queries @ x.T], axis=1)
        i = np.concatenate([best_i, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        top = np.argpartition(-s, 9, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    order = np.argsort(-best_s, axis=1)
    result = np.take_along_axis(best_i, order, 1)
    np.save(cache, result)
    print(f"  exact top-10 in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return result


# -- one variant, in a process of its own ---------------------------------------------------


def _rss_mb() -> float:
    """Anonymous resident memory: what the build allocates. File-backed pages are left
    out: the re-rank vectors, memory-mapped, show up whole in RSS once calibration has
    read rows all over them (large page-cache folios map 2 MB at a time), yet they are
    clean page cache that the kernel drops under pressure."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1e3
    return 0.0


def measure(n: int, kind: str) -> list[dict]:
    from organizer.store.records import IndexFileRecord
    from organizer.vectors import VectorIndex, plan
    from organizer.vectors.files import files_size, read_index, write_index

    path, queries, pairs = dataset(n)
    exact = truth(path, n, queries)
    chosen = plan(n, DIM, kind, None)
    auto = plan(n, DIM, "auto", None).kind
    with tempfile.TemporaryDirectory(dir=DATA, prefix="scale-index-") as tmp:
        work = Path(tmp)
        before = _rss_mb()
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                peak[0] = max(peak[0], _rss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        built = VectorIndex.build_from(lambda: stream(path, n), n, DIM, chosen, work)
        build_s = time.perf_counter() - started
        stop.set()
        sampler.join()
        peak_mb = max(peak[0], _rss_mb()) - before
        sha, quick = write_index(work / "vectors.faiss", built)
        record = IndexFileRecord(1, sha, len(built), built.kind, "", built.recall, quick)
        file_mb = files_size(work / "vectors.faiss", built.rerank is not None) / 1e6
        del built
        # What a search process holds: read_index loads the faiss file whole (the re-rank
        # vectors stay memory-mapped), so its size is the index's memory.
        ram_mb = (work / "vectors.faiss").stat().st_size / 1e6
        index = read_index(work / "vectors.faiss", record)
        built = {
            "build_s": round(build_s, 1),
            "build_peak_mb": round(peak_mb),
            "ram_mb": round(ram_mb),
            "file_mb": round(file_mb),
        }
        rows = []
        for reranked in (True, False) if index.rerank is not None else (False,):
            name = (
                kind + (", re-ranked" if reranked else ", codes only") if chosen.reranked else kind
            )
            store, index.rerank = index.rerank, index.rerank if reranked else None
            rows.append(
                {
                    "kind": name,
                    "description": index.describe(),
                    **built,
                    **_searched(index, queries, exact),
                    "duplicates_found": round(_planted_found(index, path, pairs), 4),
                    "chosen": auto == kind and (reranked or not chosen.reranked),
                }
            )
            index.rerank = store
        return rows


def _searched(index, queries: np.ndarray, exact: np.ndarray) -> dict:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = index.search(q[None, :], 10)[0]
        times.append(time.perf_counter() - t)
        found.append(set(hits.ids.tolist()))
    recall = float(np.mean([len(f & set(t)) / 10 for f, t in zip(found, exact, strict=True)]))
    return {
        "recall_at_10": round(recall, 4),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
        "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2),
    }


def _planted_found(index, path: Path, pairs: np.ndarray) -> float:
    """Share of planted pairs whose partner a duplicate search (>= 0.95) finds."""
    firsts = pairs[:, 0]
    vectors = np.empty((len(firsts), DIM), np.float32)
    with open(path, "rb") as fh:
        for row, i in enumerate(firsts.tolist()):
            fh.seek(i * DIM * 2)
            vectors[row] = np.frombuffer(fh.read(DIM * 2), np.float16)
    found = index.within(vectors, DUP_THRESHOLD)
    return float(np.mean([b in ids for (ids, _), b in zip(found, pairs[:, 1], strict=True)]))


# -- an index grown in place ---------------------------------------------------------------

DEEP = 32  # exact neighbours kept per query, so that removals leave 10 known


def deep_truth(path: Path, n: int, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-DEEP (ids, scores) of each query, streamed, cached."""
    from organizer.vectors.build import TopK

    cache = path.parent / f"truth{DEEP}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return data["ids"], data["scores"]
    started = time.perf_counter()
    exact = TopK(queries, DEEP)
    for ids, x in stream(path, n, 65_536):
        exact.update(ids, x)
    ids, scores = exact.ranked()
    np.savez(cache, ids=ids, scores=scores)
    print(f"  exact top-{DEEP} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return ids, scores


def grow_rounds(n: int, rounds: int, kind: str) -> dict:
    """Build once (in this process), then ``rounds`` updates each adding 1 % new vectors
    (same distribution, new seeds) and removing 0.1 % of the live ones, applied in place as a
    library applies them (organizer.vectors.grown: read the files mapped, write the update
    files, fingerprint them); the database's part (reading ids and the new vectors) is not
    included. Recall@10 and latency on the 1,000 held-out queries against their exact
    answers, kept exact through the changes. Memory: peak anonymous RSS during an update
    above what the process held just before it (the new vectors, as the update reads them
    from the database, counted)."""
    from organizer.store.records import IndexFileRecord, IndexGrowthRecord
    from organizer.vectors import VectorIndex, plan
    from organizer.vectors.calibration import Calibration
    from organizer.vectors.files import read_index, write_index
    from organizer.vectors.grown import Change, Rebuild, grow, imbalance, sweep

    path, queries, _ = dataset(n)
    calibration = Calibration.of(queries, np.full(len(queries), -1), *deep_truth(path, n, queries))
    with tempfile.TemporaryDirectory(dir=DATA, prefix="scale-grow-") as tmp:
        work = Path(tmp)
        index_path = work / "vectors.faiss"
        added_file = work / "added.f16"
        added_ids: list[np.ndarray] = []
        removed = np.empty(0, np.int64)

        def current():  # what a rebuild reads: every live vector, ids ascending
            yield from (
                (i[~np.isin(i, removed)], x[~np.isin(i, removed)]) for i, x in stream(path, n)
            )
            if added_ids:
                every = np.concatenate(added_ids)
                with open(added_file, "rb") as fh:
                    x = np.frombuffer(fh.read(), np.float16).reshape(-1, DIM).astype(np.float32)
                keep = ~np.isin(every, removed)
                yield every[keep], x[keep]

        def build(count: int, reason: str | None) -> tuple[IndexFileRecord, float]:
            started = time.perf_counter()
            built = VectorIndex.build_from(current, count, DIM, plan(count, DIM, kind, None), work)
            seconds = time.perf_counter() - started
            sha, quick = write_index(index_path, built)
            growth = IndexGrowthRecord(
                built_imbalance=imbalance(built), built_recall=built.recall, rebuilt_because=reason
            )
            sweep(index_path, keep=())
            record = IndexFileRecord(
                1, sha, len(built), built.kind, built.describe(), built.recall, quick, growth
            )
            return record, seconds

        record, full_build_s = build(n, None)
        result = {"n": n, "kind": record.kind, "cpu": cpu(), "full_build_s": round(full_build_s, 1)}
        result["description"] = record.description
        result["before"] = _grown_searched(read_index(index_path, record, mmap=True), calibration)
        print(f"  built in {full_build_s:.0f} s: {result['before']}", file=sys.stderr)
        result["updates"] = []
        live_count, next_id = n, n
        for r in range(rounds):
            rng = np.random.default_rng(1000 + r)
            new = np.concatenate([x for _, x in _chunks(n // 100, 100 + r)])
            new_ids = np.arange(next_id, next_id + len(new), dtype=np.int64)
            next_id += len(new)
            live = np.setdiff1d(
                np.concatenate([np.arange(n), *added_ids]), removed, assume_unique=True
            )
            gone = np.sort(rng.choice(live, n // 1000, replace=False))
            del live
            with open(added_file, "ab") as fh:
                fh.write(new.astype(np.float16).tobytes())
            added_ids.append(new_ids)
            removed = np.union1d(removed, gone)
            live_count += len(new) - len(gone)
            stored = new.astype(np.float16)  # the database's copy of the new vectors
            floor = _rss_mb()  # the update's own memory from here (the vectors it reads too)
            peak = [floor]
            stop = threading.Event()

            def sample(peak=peak, stop=stop) -> None:
                while not stop.wait(0.02):
                    peak[0] = max(peak[0], _rss_mb())

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            reason = None
            try:
                index = read_index(index_path, record, mmap=True)
                assert index is not None
                vectors = stored.astype(np.float32)  # as read from the database
                made = grow(index_path, index, record.growth, r + 2, Change(gone, new_ids, vectors))
                record = made.record(record, r + 2)
                sweep(index_path, keep=made.growth.files)
                del index, made, vectors
            except Rebuild as why:
                reason = str(why)
                record, _ = build(live_count, reason)
            seconds = time.perf_counter() - started
            stop.set()
            sampler.join()
            calibration = calibration.updated(
                gone, new_ids, new.astype(np.float16).astype(np.float32)
            )
            grown = read_index(index_path, record, mmap=True)
            row = {
                "added": len(new),
                "removed": len(gone),
                "seconds": round(seconds, 2),
                "extra_mb": round(max(peak[0], _rss_mb()) - floor),
                **_grown_searched(grown, calibration),
                "retrained": reason is not None,
                "reason": reason,
                "measured_recall_at_10": record.growth.recall_at_10 if record.growth else None,
                "imbalance": record.growth.imbalance if record.growth else None,
            }
            print(f"  round {r + 1}: {row}", file=sys.stderr)
            result["updates"].append(row)
        return result


def _grown_searched(index, calibration) -> dict:
    """recall@10 and latency (one query a call) of the held-out queries still measurable."""
    from organizer.vectors.index import recall_at_10

    use = calibration.measured()
    times, found = [], np.full((int(use.sum()), 10), -1, np.int64)
    for row, q in enumerate(calibration.queries[use]):
        t = time.perf_counter()
        hits = index.search(q[None, :], 10)[0]
        times.append(time.perf_counter() - t)
        found[row, : len(hits.ids)] = hits.ids
    recall = recall_at_10(found, calibration.truth()[use], calibration.query_ids[use])
    return {
        "recall_at_10": round(recall, 4),
        "queries": int(use.sum()),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
        "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2),
    }


# -- the whole thing: a real library, the CLI ----------------------------------------------


def library(n: int) -> Path:
    """A folder library holding the dataset's vectors as ingest stores them (fp32 rows),
    made once, streamed (memory flat in n)."""
    from common import write_library

    path, _, _ = dataset(n)
    lib_dir, photos = path.parent / "library", path.parent / "photos"
    if not (lib_dir / ".complete").exists():
        started = time.perf_counter()
        write_library(lib_dir, photos, stream(path, n, 50_000), width=8)
        print(f"  library written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        (lib_dir / ".complete").touch()
    return lib_dir


def whole_process(n: int, parts: int = 0) -> dict:
    """`organizer index build --json` from the library's database (or, with ``parts``, the
    `index shards` train, fill of each part, merge), then `organizer similar` on an indexed
    image as whole processes (median of 7, process start included)."""
    from common import ORGANIZER, run_measured

    lib_dir = library(n)
    lib = ["-L", str(lib_dir)]
    result: dict = {"n": n}
    if parts:
        with tempfile.TemporaryDirectory(prefix="shards-", dir=lib_dir.parent) as shared:
            steps = [["train", shared, "--parts", str(parts)]]
            steps += [["fill", shared, "--part", str(i)] for i in range(1, parts + 1)]
            steps += [["merge", shared]]
            for step in steps:
                cmd = [*ORGANIZER, "index", "shards", *step, "--json", *lib]
                wall, peak, done = run_measured(cmd, anon=True)
                name = " ".join([step[0], *step[2:]])
                result[f"shards {name}"] = {
                    "wall_s": round(wall, 1),
                    "peak_anon_mb": round(peak),
                    "out": json.loads(done.stdout),
                }
                print(f"  shards {name}: {wall:.1f} s, {peak:,.0f} MB", file=sys.stderr)
    else:
        build = [*ORGANIZER, "index", "build", "--json", *lib]
        wall, peak, done = run_measured(build, anon=True)
        result["index_build"] = json.loads(done.stdout)
        result["index_build_wall_s"] = round(wall, 1)
        result["index_build_peak_anon_mb"] = round(peak)
    photos = lib_dir.parent / "photos"
    runs = []
    for i in range(7):
        similar = [*ORGANIZER, "similar", str(photos / f"{i:08d}.jpg"), *lib]
        runs.append(run_measured([*similar, "--json"])[0])
    result["similar_process_s"] = sorted(runs)
    result["similar_process_p50_s"] = round(float(np.median(runs)), 2)
    return result


def library_updates(n: int, rounds: int) -> dict:
    """On a copy of the library: `index build`, then ``rounds`` times 1 % new images (rows
    and vectors, as an ingest writes them) and 0.1 % marked missing, each followed by the
    index update an ingest runs at its end (reading the ids and the new vectors from the
    database included), timed."""
    import shutil

    from sqlalchemy import insert, select

    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q
    from organizer.store.db import write_transaction
    from organizer.vectors import IndexDelta

    source = library(n)
    with tempfile.TemporaryDirectory(dir=DATA, prefix="scale-grow-lib-") as tmp:
        lib_dir = Path(tmp) / "library"
        shutil.copytree(source, lib_dir)
        result: dict = {"n": n, "cpu": cpu(), "updates": []}
        with Library.open(Settings(library=lib_dir)) as lib:
            started = time.perf_counter()
            built = lib.build_index()
            result["full_build_s"] = round(time.perf_counter() - started, 1)
            result["description"] = built.description
            print(f"  built in {result['full_build_s']} s", file=sys.stderr)
            next_id = n + 1
            for r in range(rounds):
                new = np.concatenate([x for _, x in _chunks(n // 100, 200 + r)]).astype(np.float32)
                ids = list(range(next_id, next_id + len(new)))
                next_id += len(new)
                with lib.engine.connect() as conn:
                    model = q.library_model(conn)
                    ok = q.ok_ids(conn, model.id)
                gone = np.random.default_rng(r).choice(ok, n // 1000, replace=False)
                base = lib._index.cache().base_generation()
                stamp = q.now()
                with write_transaction(lib.engine) as conn:
                    root_id = conn.execute(select(q.images.c.root_id).limit(1)).scalar_one()
                    conn.execute(
                        insert(q.images),
                        [
                            {
                                "id": i,
                                "root_id": root_id,
                                "relpath": f"new-{i}.jpg".encode(),
                                "size": 1,
                                "mtime_ns": 1,
                                "content_hash": f"{i:064d}",
                                "status": "ok",
                                "created_at": stamp,
                                "updated_at": stamp,
                            }
                            for i in ids
                        ],
                    )
                    conn.execute(
                        insert(q.embeddings),
                        [
                            {
                                "image_id": i,
                                "model_id": model.id,
                                "vector": v.tobytes(),
                                "created_at": stamp,
                            }
                            for i, v in zip(ids, new, strict=True)
                        ],
                    )
                    q.mark_missing(conn, gone.tolist())
                started = time.perf_counter()
                problem = lib.refresh_index(IndexDelta(base, frozenset(ids)))
                seconds = time.perf_counter() - started
                st = lib.status().index
                row = {
                    "added": len(ids),
                    "removed": len(gone),
                    "seconds": round(seconds, 2),
                    "in_sync": st.in_sync,
                    "updates_in_place": st.growth.updates if st.growth else 0,
                    "rebuilt_because": st.growth.rebuilt_because if st.growth else None,
                    "recall_at_10": st.recall_at_10,
                    "problem": problem,
                }
                print(f"  round {r + 1}: {row}", file=sys.stderr)
                result["updates"].append(row)
        return result


# -- the table ------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--library",
        action="store_true",
        help="instead: write the vectors into a folder library, then time `organizer index "
        "build` and the whole `organizer similar` process",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help="with --library: build the index with `organizer index shards` in this many parts",
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=0,
        help="instead: build the --kinds index (default auto) once, then grow it in place "
        "this many times (1 %% added, 0.1 %% removed each)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # worker mode: one variant
    args = parser.parse_args()
    if args.updates and args.library:
        print(cpu(), file=sys.stderr)
        print(json.dumps(library_updates(args.n, args.updates), indent=2))
        return
    if args.updates:
        print(cpu(), file=sys.stderr)
        kind = args.kinds if args.kinds != ",".join(KINDS) else "auto"
        grown = grow_rounds(args.n, args.updates, kind)
        if args.json:
            print(json.dumps(grown, indent=2))
        else:
            print(
                f"{args.n:,} vectors, {grown['description']}, full build {grown['full_build_s']} s"
            )
            print(
                table(
                    [
                        [str(i + 1), *(str(v) for v in u.values())]
                        for i, u in enumerate(grown["updates"])
                    ],
                    ["round", *grown["updates"][0].keys()],
                )
            )
        return
    if args.library:
        print(cpu(), file=sys.stderr)
        print(json.dumps(whole_process(args.n, args.shards), indent=2))
        return
    if args.one:
        print(json.dumps(measure(args.n, args.one)))
        return
    print(cpu(), file=sys.stderr)
    path, queries, _ = dataset(args.n)
    truth(path, args.n, queries)
    rows = []
    for name in args.kinds.split(","):
        print(f"  {name} ...", file=sys.stderr)
        done = subprocess.run(
            [sys.executable, __file__, "--n", str(args.n), "--one", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr}")
        rows.extend(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"    {rows[-1]}", file=sys.stderr)
    if args.json:
        print(json.dumps({"n": args.n, "cpu": cpu(), "variants": rows}, indent=2))
        return
    header = [
        "kind",
        "build",
        "build peak",
        "index RAM",
        "files",
        "recall@10",
        "p50",
        "p95",
        "dups found",
        "auto",
    ]
    print(f"{args.n:,} vectors, 512-d; {cpu()}")
    print(
        table(
            [
                [
                    r["kind"],
                    f"{r['build_s']:.0f} s",
                    f"{r['build_peak_mb']:,} MB",
                    f"{r['ram_mb']:,} MB",
                    f"{r['file_mb']:,} MB",
                    f"{r['recall_at_10']:.3f}",
                    f"{r['p50_ms']:.2f} ms",
                    f"{r['p95_ms']:.2f} ms",
                    f"{r['duplicates_found']:.1%}",
                    "chosen" if r["chosen"] else "",
                ]
                for r in rows
            ],
            header,
        )
    )


if __name__ == "__main__":
    main()
