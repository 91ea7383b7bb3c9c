"""Duplicates at scale: `organizer duplicates` on a library of a million images.

    python bench/duplicates.py [--images 1000000] [--work DIR] [--kind auto] [--repeat 1]
                               [--json]

A folder library of N images whose 512-d vectors (as ViT-B-32 makes) are written straight
into its database (no ingest; bench/common.py's writer), made once and cached under
``--work`` (default: $ORGANIZER_BENCH_DATA/duplicates-N):

- the images: a shared mean direction and 4,000 cluster centres on the sphere (log-normal
  sizes, so that the index's lists are uneven, as a library's are), each cluster spreading
  along 8 directions of its own, plus isotropic noise: two images of one cluster have
  cosine about 0.6, an image's nearest neighbour about 0.8 (measured on a sample and
  printed): nothing unplanted comes near 0.96;
- planted near-duplicates: 0.9 % of N pairs and 0.1 % triples (9,000 and 1,000 at 1M: an
  original and one or two copies at an exact cosine to it, each moved toward another image
  of its cluster, as a crop moves along the directions in which similar photos differ; a
  quarter in [0.9602, 0.965], just above the default threshold 0.96, the rest in
  [0.965, 0.995]), 11,000 original-copy pairs at 1M, at random rows (imported at
  different times);
- decoys: 0.2 % of N pairs at cosine 0.90-0.95, which must not be grouped.

Then, as whole processes: `organizer index build --kind KIND --json` (the index a user
gets: ``auto`` picks it from the count and the memory budget) and `organizer duplicates
--json`, each under /usr/bin/time (wall time, peak RSS of the process). A sitecustomize
module in the child only times organizer's own phases (index load; pair search, of which
the database read of the vectors; grouping; the rest is start-up, the images' records and
the JSON). Figures: recall of the planted pairs (found when both images are in one group,
of any kind), of those under 0.965 apart, decoy pairs grouped, and unplanted images in
groups. Both JSON shapes are read: today's
``{"groups": [...]}`` and the kinds' ``{"exact": [...], "near": [...], "burst": [...]}``.

The first run at 1M writes the library (about 2.3 GB; several minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from catalogue import cpu  # noqa: E402 (bench/ is not a package)
from common import DATA, ORGANIZER, table, write_library  # noqa: E402

from organizer.vectors.pairs import at_cosine  # noqa: E402

DIM = 512
CENTRES = 4_000
CHUNK = 50_000
THRESHOLD = 0.96  # the command's default
NEAR_EDGE = 0.965  # planted pairs below this are "near the threshold"
SAMPLE = 500  # images whose nearest unrelated neighbour is measured

# Only timing: organizer's functions wrapped, nothing else changed (see the module).
PHASES = """
import atexit, json, os, time

_spent = {}


def _timed(name, fn):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[name] = _spent.get(name, 0.0) + time.perf_counter() - started

    return timed


import organizer.search as _search
from organizer.vectors.cache import IndexCache as _IndexCache

for _name, _phase in (("duplicate_pairs", "pair search"), ("groups_from_pairs", "grouping")):
    if hasattr(_search, _name):
        setattr(_search, _name, _timed(_phase, getattr(_search, _name)))
_IndexCache.load = _timed("index load", _IndexCache.load)

import organizer.store.queries as _queries

_iter_ok_vectors = _queries.iter_ok_vectors


def _read(*args, **kwargs):
    batches = _iter_ok_vectors(*args, **kwargs)
    while True:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            _spent["database read"] = _spent.get("database read", 0.0) + (
                time.perf_counter() - started
            )
        yield batch


_queries.iter_ok_vectors = _read


def _write():
    with open(os.environ["ORGANIZER_BENCH_PHASES"], "w") as fh:
        json.dump(_spent, fh)


atexit.register(_write)
"""


# -- data -----------------------------------------------------------------------------------


class Model:
    """The seeded shape of the library's vectors: a shared mean; cluster centres (log-normal
    sizes), each spreading along 8 directions of its own; isotropic noise."""

    def __init__(self, seed: int = 2024):
        rng = np.random.default_rng(seed)
        self.mean = _unit(rng.standard_normal(DIM))
        self.centres = _unit(rng.standard_normal((CENTRES, DIM)))
        self.directions = _unit(rng.standard_normal((CENTRES, 8, DIM))).astype(np.float32)
        sizes = rng.lognormal(0.0, 1.0, CENTRES)
        self.weights = sizes / sizes.sum()

    def clusters(self, rng: np.random.Generator, m: int) -> np.ndarray:
        return rng.choice(CENTRES, m, p=self.weights)

    def draw(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        """An image of each of ``clusters``: unit float32 rows."""
        out = np.empty((len(clusters), DIM), np.float32)
        for at in range(0, len(clusters), 5_000):  # the directions of 5,000 images: 80 MB
            c = clusters[at : at + 5_000]
            z = rng.standard_normal((len(c), 8), dtype=np.float32) * (0.8 / np.sqrt(8))
            x = 0.5 * self.mean + 0.55 * self.centres[c]
            x += np.einsum("mk,mkd->md", z, self.directions[c])
            x += 0.35 / np.sqrt(DIM) * rng.standard_normal((len(c), DIM))
            out[at : at + len(c)] = _unit(x)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Planted:
    """The planted rows and their vectors; the pairs that must be grouped and must not."""

    def __init__(self, n: int, model: Model, pairs: int, triples: int, decoys: int):
        rng = np.random.default_rng(7)
        sizes = [2] * pairs + [3] * triples + [2] * decoys
        if sum(sizes) > n // 2:
            raise SystemExit(f"{sum(sizes):,} planted images do not fit in {n:,}")
        rows = rng.choice(n, sum(sizes), replace=False)
        clusters = model.clusters(rng, len(sizes))
        originals = model.draw(rng, clusters)
        copies = 2 * triples + pairs
        near = rng.uniform(0.9602, NEAR_EDGE, copies)
        cos = np.where(rng.random(copies) < 0.25, near, rng.uniform(NEAR_EDGE, 0.995, copies))
        cos = np.concatenate([cos, rng.uniform(0.90, 0.95, decoys)])
        vectors, found, missed = [], [], []
        at = made = 0
        for g, size in enumerate(sizes):
            group = rows[at : at + size]
            vectors.append(originals[g])
            x = np.repeat(originals[g : g + 1], size - 1, 0)
            toward = model.draw(rng, np.repeat(clusters[g], size - 1))  # another of its cluster
            vectors.extend(at_cosine(x, toward, cos[made : made + size - 1]))
            (found if g < pairs + triples else missed).extend((group[0], r) for r in group[1:])
            at, made = at + size, made + size - 1
        order = np.argsort(rows)
        self.rows = rows[order]
        self.vectors = np.stack(vectors)[order]
        self.pairs = np.array(found, np.int64)
        self.decoys = np.array(missed, np.int64)

    def vector(self, row: int) -> np.ndarray:
        return self.vectors[np.searchsorted(self.rows, row)]

    def cosines(self, pairs: np.ndarray) -> np.ndarray:
        """The cosine of each pair, as stored (float32)."""
        return np.array([float(self.vector(a) @ self.vector(b)) for a, b in pairs.tolist()])

    def chunks(self, n: int, model: Model):
        """(ids, vectors) CHUNK at a time, ids = row numbers, planted rows put in."""
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            rng = np.random.default_rng([11, start])
            x = model.draw(rng, model.clusters(rng, m))
            lo, hi = np.searchsorted(self.rows, [start, start + m])
            x[self.rows[lo:hi] - start] = self.vectors[lo:hi]
            yield np.arange(start, start + m, dtype=np.int64), x


class Neighbours:
    """The nearest-neighbour cosine of SAMPLE unplanted images of the first chunk, over
    every vector, as the chunks stream past: how close unrelated images come."""

    def __init__(self, planted: Planted):
        rows = np.setdiff1d(np.arange(min(CHUNK, 4 * SAMPLE)), planted.rows)
        self.rows = rows[:SAMPLE]
        self.queries: np.ndarray | None = None
        self.best = np.full(len(self.rows), -1.0, np.float32)

    def watch(self, chunks):
        for ids, x in chunks:
            if self.queries is None:
                self.queries = x[self.rows - ids[0]].copy()
            s = self.queries @ x.T
            s[self.rows[:, None] == ids[None, :]] = -1.0  # not itself
            self.best = np.maximum(self.best, s.max(axis=1))
            yield ids, x

    def summary(self) -> dict:
        return {
            "nearest_unrelated_median": round(float(np.median(self.best)), 3),
            "nearest_unrelated_max": round(float(self.best.max()), 3),
        }


def library(work: Path, n: int, planted_sizes: tuple[int, int, int]) -> Path:
    """The library (made once): its folder; pairs.npy, decoys.npy and data.json in ``work``."""
    lib_dir = work / "library"
    if (work / ".complete").exists():
        return lib_dir
    started = time.perf_counter()
    model = Model()
    planted = Planted(n, model, *planted_sizes)
    nearest = Neighbours(planted)
    write_library(lib_dir, work / "photos", nearest.watch(planted.chunks(n, model)), width=7)
    cosines, decoy_cosines = planted.cosines(planted.pairs), planted.cosines(planted.decoys)
    np.save(work / "pairs.npy", planted.pairs)
    np.save(work / "pair_cosines.npy", cosines)
    np.save(work / "decoys.npy", planted.decoys)
    data = {
        "images": n,
        "planted_pairs": len(cosines),
        "planted_cosines": [round(float(cosines.min()), 5), round(float(cosines.max()), 4)],
        f"planted_below_{NEAR_EDGE}": int((cosines < NEAR_EDGE).sum()),
        "decoy_pairs": len(decoy_cosines),
        "decoy_cosines": [
            round(float(decoy_cosines.min()), 4),
            round(float(decoy_cosines.max()), 4),
        ],
        **nearest.summary(),
        "written_s": round(time.perf_counter() - started),
    }
    (work / "data.json").write_text(json.dumps(data, indent=2))
    (work / ".complete").touch()
    return lib_dir


# -- the command ----------------------------------------------------------------------------


def timed_run(cmd: list[str], work: Path) -> tuple[float, float, dict, str]:
    """Run ``cmd`` under /usr/bin/time with the phase timer: (wall s, peak RSS MB of the
    process, organizer's phases in s, stdout)."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        Path(tmp, "sitecustomize.py").write_text(PHASES)
        phases, usage = Path(tmp, "phases.json"), Path(tmp, "time.txt")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = os.pathsep.join([tmp, str(ROOT), env.get("PYTHONPATH", "")])
        env["ORGANIZER_BENCH_PHASES"] = str(phases)
        timer = ["/usr/bin/time", "-f", "%e %M", "-o", str(usage)]
        started = time.perf_counter()
        done = subprocess.run([*timer, *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr}")
        peak_kb = int(usage.read_text().split()[-1])
        spent = json.loads(phases.read_text()) if phases.exists() else {}
    return wall, peak_kb / 1e3, spent, done.stdout


def groups_of(document) -> dict[str, list[list[int]]]:
    """The groups of `organizer duplicates --json`, by kind, as lists of rows (the number a
    file is named after): today's ``{"groups": [...]}`` or ``{"exact": [...], "near": [...],
    "burst": [...]}``, each group with ``"images": [{"path": ...}, ...]``."""
    if isinstance(document, list):
        document = {"groups": document}
    found = {}
    for kind, value in document.items():
        if isinstance(value, list) and all(isinstance(g, dict) and "images" in g for g in value):
            found[kind] = [[int(Path(i["path"]).stem) for i in g["images"]] for g in value]
    if not found:
        sys.exit(f"no groups in the output: keys {sorted(document)}")
    return found


def scored(groups: dict[str, list[list[int]]], work: Path) -> dict:
    """Recall of the planted pairs, decoys grouped, unplanted images grouped."""
    pairs, cosines = np.load(work / "pairs.npy"), np.load(work / "pair_cosines.npy")
    decoys = np.load(work / "decoys.npy")
    group_of: dict[int, set[int]] = {}
    for g, rows in enumerate(g for kind in groups.values() for g in kind):
        for row in rows:
            group_of.setdefault(row, set()).add(g)

    def together(pair) -> bool:
        return bool(group_of.get(pair[0], set()) & group_of.get(pair[1], set()))

    hit = np.array([together(p) for p in pairs.tolist()])
    near = cosines < NEAR_EDGE
    planted = set(pairs.ravel().tolist())
    return {
        "groups": {kind: len(found) for kind, found in groups.items()},
        "recall": float(hit.mean()),
        "missed": int((~hit).sum()),
        f"recall_below_{NEAR_EDGE}": float(hit[near].mean()) if near.any() else None,
        "decoys_grouped": sum(together(p) for p in decoys.tolist()),
        "unplanted_grouped": sum(r not in planted for r in group_of),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, help="where the library is cached")
    parser.add_argument("--kind", default="auto", help="the index kind (default: as a user gets)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of `duplicates`")
    parser.add_argument("--pairs", type=int, help="planted pairs (default: 0.9 %% of N)")
    parser.add_argument("--triples", type=int, help="planted triples (default: 0.1 %% of N)")
    parser.add_argument("--decoys", type=int, help="decoy pairs (default: 0.2 %% of N)")
    parser.add_argument("--keep-index", action="store_true", help="use the index already built")
    parser.add_argument("--json", action="store_true", help="every figure, as JSON")
    args = parser.parse_args()
    work = args.work or DATA / f"duplicates-{args.images}"
    work.mkdir(parents=True, exist_ok=True)
    print(cpu(), file=sys.stderr)
    n = args.images
    planted = (
        args.pairs if args.pairs is not None else n * 9 // 1000,
        args.triples if args.triples is not None else n // 1000,
        args.decoys if args.decoys is not None else n // 500,
    )
    lib_dir = library(work, n, planted)
    data = json.loads((work / "data.json").read_text())
    result: dict = {"cpu": cpu(), "data": data}
    lib = ["--library", str(lib_dir)]
    if not args.keep_index:
        build = [*ORGANIZER, "index", "build", "--kind", args.kind, "--json", *lib]
        wall, peak, _, out = timed_run(build, work)
        built = json.loads(out)
        result["index"] = {"wall_s": round(wall, 1), "peak_rss_mb": round(peak), **built}
        print(f"index build: {wall:.1f} s, {peak:,.0f} MB: {built['description']}", file=sys.stderr)
    runs = []
    for _ in range(args.repeat):
        wall, peak, spent, out = timed_run([*ORGANIZER, "duplicates", "--json", *lib], work)
        run = {
            "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak),
            "phases_s": {k: round(v, 1) for k, v in spent.items()},
            **scored(groups_of(json.loads(out)), work),
        }
        runs.append(run)
        print(f"duplicates: {json.dumps(run)}", file=sys.stderr)
    result["duplicates"] = runs
    result["duplicates_median_wall_s"] = statistics.median(r["wall_s"] for r in runs)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(summary(result))


def summary(result: dict) -> str:
    """The figures as a table: one row per `duplicates` run."""
    data, index = result["data"], result.get("index")
    lines = [
        f"{data['images']:,} images, {data['planted_pairs']:,} planted pairs "
        f"({data[f'planted_below_{NEAR_EDGE}']:,} under {NEAR_EDGE}), "
        f"{data['decoy_pairs']:,} decoy pairs; {result['cpu']}",
    ]
    if index is not None:
        lines.append(
            f"index build: {index['wall_s']} s, peak RSS {index['peak_rss_mb']:,} MB: "
            f"{index['description']}"
        )
    rows = [
        [
            f"{r['wall_s']} s",
            f"{r['peak_rss_mb']:,} MB",
            ", ".join(f"{k} {v} s" for k, v in r["phases_s"].items()),
            f"{r['recall']:.2%} ({r['missed']} missed)",
            f"{r[f'recall_below_{NEAR_EDGE}']:.2%}",
            str(r["decoys_grouped"]),
            str(r["unplanted_grouped"]),
        ]
        for r in result["duplicates"]
    ]
    header = ["wall", "peak RSS", "phases", "recall", f"under {NEAR_EDGE}", "decoys", "others"]
    return "\n".join([*lines, table(rows, header)])


if __name__ == "__main__":
    main()
