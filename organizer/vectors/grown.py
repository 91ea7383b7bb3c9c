"""An index that grows in place: its build's files, never changed again, and the small files
of the updates since.

An update (the images an ingest embedded or removed, see IndexCache.refresh) writes, named
after the database generation it brings the index to:

- ``vectors.gN.delta``: every vector added since the build, in an index of the same kind
  sharing the build's trained quantizers (list centroids, rotation, codebooks), so a new
  vector is encoded exactly as the build would have encoded it. Rewritten whole each time:
  it holds at most ``GROW_SHARE`` of the build.
- ``vectors.gN.removed``: the build's ids that no longer count (removed, or re-embedded
  and so in the delta now), masked from every search by an id selector.
- ``vectors.gN.rerank-ids`` / ``-f16`` (ivf-pq): the exact vectors this update added, a
  segment of its own; the segments of earlier updates are kept as they are, the later
  winning where two hold an id.
- ``vectors.gN.calib``: the calibration queries' exact answers, brought up to date.

Nothing existing is overwritten: the files are new, and the database row that names them
(with their checksums) is committed last, so that after a crash at any moment the row names
either the old files, all still there, or the new ones, all written and flushed. Files no
row names are swept by the next update or build.

Each update measures recall@10 on the calibration queries; it raises nprobe when that
brings the recall back, and rebuilds (retrains) the index instead when the recall stays
under the target, when the lists have grown uneven, or when the changes since the build
reach ``GROW_SHARE`` of it, and ``GROW_MIN`` (see :func:`grow`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from organizer.atomic import fsync_folder, write_bytes_atomic
from organizer.store.records import IndexFileRecord, IndexGrowthRecord
from organizer.vectors.batches import as_f32, as_i64
from organizer.vectors.build import ADD_ROWS, emptied, in_list_space
from organizer.vectors.calibration import Calibration
from organizer.vectors.filtered import allowed_ids, held_in
from organizer.vectors.fingerprint import quick_fingerprint
from organizer.vectors.index import RERANK, Coarse, Hits, VectorIndex
from organizer.vectors.kinds import FaissIndex
from organizer.vectors.lists import Lists
from organizer.vectors.rerank import RerankStore, RerankWriter, StackedRerank

GROW_SHARE = 0.2  # vectors added and removed since the build, as a share of it: rebuild
GROW_MIN = 1_000  # ... once they are this many too (a small library grows for a while)
TARGET_RECALL = 0.95  # retrain when recall@10 stays below this (or what the build reached)
RECALL_SLACK = 0.02  # ... or falls this far below what a build under the target reached
UNEVEN = 1.5  # retrain when the lists' imbalance grows by this factor since the build


class Rebuild(Exception):
    """An update decided that the index must be retrained and rebuilt; why, in words."""


def layer_path(index_path: Path, generation: int, part: str) -> Path:
    """The file of an update to ``generation``: part is delta, removed, calib or
    rerank-ids / rerank-f16."""
    stem = index_path.with_suffix("").name
    return index_path.with_name(f"{stem}.g{generation}.{part}")


def layer_files(index_path: Path) -> list[Path]:
    """Every update file beside the index at ``index_path``, named by a record or not."""
    stem = index_path.with_suffix("").name
    return sorted(index_path.parent.glob(f"{stem}.g*.*"))


def imbalance(index: VectorIndex) -> float | None:
    """faiss's imbalance factor of the lists (1 when even; the mean list size a search
    scans, over the mean list size); None for a flat index."""
    sizes = list_sizes(index)
    if sizes is None or not sizes.sum():
        return None
    return float(len(sizes) * np.square(sizes, dtype=np.float64).sum() / float(sizes.sum()) ** 2)


def list_sizes(index: VectorIndex) -> np.ndarray | None:
    """How many vectors each list holds (masked ones included); None when flat."""
    parts = [index.base, index.delta] if isinstance(index, GrownIndex) else [index]
    total = None
    for part in parts:
        ivf = part._ivf()
        if ivf is None:
            return None
        lists = ivf.invlists
        sizes = np.fromiter((lists.list_size(i) for i in range(ivf.nlist)), np.int64, ivf.nlist)
        total = sizes if total is None else total + sizes
    return total


def _best(a: Hits, b: Hits, k: int) -> Hits:
    if not len(b.ids):
        return a
    if not len(a.ids):
        return b
    ids, scores = np.concatenate([a.ids, b.ids]), np.concatenate([a.scores, b.scores])
    order = np.argsort(-scores, kind="stable")[:k]
    return Hits(ids[order], scores[order])


class GrownIndex(VectorIndex):
    """The build's index (``base``, its removed ids masked) and the vectors added since
    (``delta``), searched as one. Read-only: an update makes a new one."""

    def __init__(self, base: VectorIndex, delta: VectorIndex):
        super().__init__(base.faiss, base.recall, base.rerank)
        self.base, self.delta = base, delta
        self.calibration = base.calibration
        self._delta_ids: np.ndarray | None = None  # sorted, when first needed

    def __len__(self) -> int:
        return len(self.base) + len(self.delta)

    @property
    def nprobe(self) -> int:
        return self.base.nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.base.nprobe = self.delta.nprobe = value

    def ids(self) -> np.ndarray:
        return np.concatenate([self.base.ids(), self.delta.ids()])

    def describe(self) -> str:
        base = self.base.describe()
        grown = f"{len(self.delta):,} added and {len(self.base.removed):,} removed in place"
        return f"{base[:-1]}; {grown})" if base.endswith(")") else f"{base} ({grown})"

    def search(self, queries: np.ndarray, k: int, coarse: Coarse | None = None) -> list[Hits]:
        queries = as_f32(queries)
        coarse = coarse or self.base.coarse(queries)  # the lists, found once for both
        if self.base.rerank is None:
            a, b = self.base.search(queries, k, coarse), self.delta.search(queries, k, coarse)
            return [_best(x, y, k) for x, y in zip(a, b, strict=True)]
        return self._reranked(queries, min(k, len(self)), coarse)

    def _reranked(self, queries: np.ndarray, k: int, coarse: Coarse | None) -> list[Hits]:
        """As one index would: the best ``k * RERANK`` codes of both parts (their estimates
        compare: the same codebooks), then those candidates re-ranked exactly."""
        fetch = min(len(self), k * RERANK)
        if k <= 0 or fetch <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        old_store, new_store = self.base.rerank, self.delta.rerank
        assert old_store is not None and new_store is not None  # both parts are re-ranked
        base_scores, base_ids = _candidates(self.base, queries, fetch, coarse)
        more = _candidates(self.delta, queries, fetch, coarse)
        out = []
        for q, s, i, ds, di in zip(queries, base_scores, base_ids, *more, strict=True):
            scores = np.concatenate([s[i >= 0], ds[di >= 0]])
            ids = np.concatenate([i[i >= 0], di[di >= 0]])
            new = np.concatenate([np.zeros((i >= 0).sum(), bool), np.ones((di >= 0).sum(), bool)])
            keep = np.argsort(-scores, kind="stable")[:fetch]
            ids, new = ids[keep], new[keep]
            exact = np.empty(len(ids), np.float32)
            exact[~new] = old_store.scores(q, ids[~new])
            exact[new] = new_store.scores(q, ids[new])
            order = np.argsort(-exact, kind="stable")[:k]
            order = order[np.isfinite(exact[order])]
            out.append(Hits(ids[order], exact[order]))
        return out

    def search_among(self, queries: np.ndarray, k: int, among: np.ndarray) -> list[Hits]:
        # Each part gets the ids it holds: how many there are decides how it searches.
        among = allowed_ids(among)
        if self._delta_ids is None:
            self._delta_ids = np.sort(self.delta.ids())
        new = held_in(among, self._delta_ids)
        a = self.base.search_among(queries, k, among[~new])
        b = self.delta.search_among(queries, k, among[new])
        return [_best(x, y, k) for x, y in zip(a, b, strict=True)]

    def within(self, queries: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        a, b = self.base.within(queries, threshold), self.delta.within(queries, threshold)
        return [
            (np.concatenate([x[0], y[0]]), np.concatenate([x[1], y[1]]))
            for x, y in zip(a, b, strict=True)
        ]

    def lists(self) -> Lists | None:
        if self.base._ivf() is None:
            return None
        parts = [(p._ivf(), p.rerank, p.removed) for p in (self.base, self.delta)]
        return Lists(parts, lambda x: in_list_space(self.base.faiss, x))

    def stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether found, float16 vector) of each id from the exact vectors kept on disk
        (a re-ranked kind): the delta's segments, else the build's unmasked rows."""
        found, vectors = self.delta.stored(ids)
        rest = ~found
        if rest.any():
            base_found, base_vectors = self.base.stored(ids[rest])
            vectors[rest] = base_vectors
            found[rest] = base_found
        return found, vectors

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        raise ValueError("a grown index changes through an update (grown.grow), not add")

    def remove(self, ids: Iterable[int]) -> None:
        raise ValueError("a grown index changes through an update (grown.grow), not remove")


def _candidates(
    part: VectorIndex, queries: np.ndarray, fetch: int, coarse: Coarse | None
) -> tuple[np.ndarray, np.ndarray]:
    fetch = min(fetch, len(part))
    if fetch <= 0:  # faiss asks for at least one
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    return part.candidates(queries, fetch, coarse)


def _empty_delta(base: VectorIndex) -> FaissIndex:
    import faiss

    if base._ivf() is None:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(base.dim))
    return emptied(base.faiss)


def open_grown(index_path: Path, base: VectorIndex, growth: IndexGrowthRecord) -> GrownIndex | None:
    """The index the build at ``index_path`` (``base``, read) and the update files
    ``growth`` names make; None when one is missing or unreadable."""
    import faiss

    delta_files = [n for n in growth.files if n.endswith(".delta")]
    removed_files = [n for n in growth.files if n.endswith(".removed")]
    calib_files = [n for n in growth.files if n.endswith(".calib")]
    if len(delta_files) != 1 or len(removed_files) != 1 or len(calib_files) > 1:
        return None
    folder = index_path.parent
    try:
        delta_raw = faiss.read_index(str(folder / delta_files[0]))
        removed = np.fromfile(folder / removed_files[0], np.int64)
    except (RuntimeError, OSError, ValueError):
        return None
    calibration = Calibration.load(folder / calib_files[0]) if calib_files else None
    if calib_files and calibration is None:
        return None
    stores = []
    for stem in growth.segments:
        store = RerankStore.open(folder / f"{stem}.faiss", base.dim)
        if store is None:
            return None
        stores.append(store)
    if base.rerank is not None and delta_raw.ntotal and not stores:
        return None
    rerank = StackedRerank(stores, base.dim) if base.rerank is not None else None
    delta = VectorIndex(delta_raw, base.recall, rerank)
    base.mask(removed)
    grown = GrownIndex(base, delta)
    grown.calibration = calibration
    if growth.nprobe and base._ivf() is not None:
        grown.nprobe = growth.nprobe
    elif base._ivf() is not None:
        delta.nprobe = base.nprobe
    grown.recall = growth.recall_at_10 if growth.recall_at_10 is not None else base.recall
    return grown


@dataclass(frozen=True)
class Change:
    """What an update brings: ids to drop (gone from the library, or re-embedded), and ids
    with their new vectors (new, or re-embedded), both sorted."""

    removed: np.ndarray
    added: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class Grown:
    """An update's result: the index, the files it wrote (to remove if the record naming
    them cannot be written), and the record (their checksums and fingerprint included)."""

    index: GrownIndex
    written: list[Path]
    growth: IndexGrowthRecord

    def record(
        self, built: IndexFileRecord, generation: int, runs: int | None = None
    ) -> IndexFileRecord:
        """The row naming this update's files beside the build ``built`` records, at
        ``generation`` (``runs``: the latest ingest run, when known)."""
        return replace(
            built,
            generation=generation,
            count=len(self.index),
            kind=self.index.kind,
            description=self.index.describe(),
            recall_at_10=self.index.recall,
            growth=replace(self.growth, runs=runs),
        )


def grow(
    index_path: Path,
    index: VectorIndex,
    growth: IndexGrowthRecord,
    generation: int,
    change: Change,
) -> Grown:
    """Write the files of an update to ``generation``: ``index`` (as read from its files,
    with ``growth`` its record) with ``change`` applied.

    Raises:
        Rebuild: the index should be retrained instead (the reason is the message).
        OSError: a file cannot be written (a full disk): nothing is named yet.
    """
    base = index.base if isinstance(index, GrownIndex) else index
    old_delta = index.delta if isinstance(index, GrownIndex) else None
    changed = growth.added + growth.removed + len(change.added) + len(change.removed)
    if changed > max(GROW_SHARE * base.faiss.ntotal, GROW_MIN):
        raise Rebuild(
            f"{changed:,} vectors added or removed since the index was built, more than "
            f"{GROW_SHARE:.0%} of it"
        )
    delta_ids = np.sort(old_delta.ids()) if old_delta is not None else np.empty(0, np.int64)
    in_delta = np.isin(change.removed, delta_ids)
    masked = np.union1d(base.removed, change.removed[~in_delta])
    delta_raw = _delta_with(base, old_delta, change.removed[in_delta], change)
    written: list[Path] = []
    try:
        segments: list[str] = []
        rerank = None
        if base.rerank is not None:
            segments, stores = _segments(index_path, generation, growth, change, delta_raw, written)
            rerank = StackedRerank(stores, base.dim)
        fresh_base = VectorIndex(base.faiss, base.recall, base.rerank)
        fresh_base.mask(masked)
        delta = VectorIndex(delta_raw, base.recall, rerank)
        grown = GrownIndex(fresh_base, delta)
        if index.calibration is not None:  # a flat index has none: it is exact
            grown.calibration = index.calibration.updated(
                change.removed, change.added, change.vectors
            )
        made = _judged(grown, growth, index.nprobe)
        hashed = _write_files(index_path, generation, grown, masked, delta_raw, written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    fsync_folder(index_path.parent)
    named = {p.name for p in written} & {
        *(f"{stem}.{part}" for stem in segments for part in SEGMENT_PARTS),
        *(layer_path(index_path, generation, part).name for part in ("delta", "removed", "calib")),
    }
    unread = [index_path.with_name(n) for n in named if n not in hashed]
    files = {**_kept(growth, segments), **hashed, **_sha256s(unread)}
    made = IndexGrowthRecord(
        files=files,
        quick=quick_fingerprint([index_path.with_name(name) for name in sorted(files)]),
        segments=segments,
        updates=growth.updates + 1,
        added=len(delta),
        removed=len(masked),
        nprobe=made.nprobe,
        recall_at_10=made.recall_at_10,
        imbalance=made.imbalance,
        built_imbalance=growth.built_imbalance,
        built_recall=growth.built_recall,
    )
    return Grown(grown, written, made)


def _delta_with(
    base: VectorIndex, old: VectorIndex | None, dropped: np.ndarray, change: Change
) -> FaissIndex:
    """The delta index: the old one (copied) without ``dropped``, with the added vectors."""
    import faiss

    delta = faiss.clone_index(old.faiss) if old is not None else _empty_delta(base)
    if len(dropped):
        delta.remove_ids(faiss.IDSelectorBatch(as_i64(dropped)))
    for start in range(0, len(change.added), ADD_ROWS):  # faiss's temporaries stay small
        end = start + ADD_ROWS
        delta.add_with_ids(as_f32(change.vectors[start:end]), as_i64(change.added[start:end]))
    return delta


def _judged(grown: GrownIndex, growth: IndexGrowthRecord, nprobe: int) -> IndexGrowthRecord:
    """Measure the grown index; raise nprobe when that restores its recall.

    Raises:
        Rebuild: the recall stays under the target, or the lists grew uneven.
    """
    uneven = imbalance(grown)
    if (
        uneven is not None
        and growth.built_imbalance is not None
        and uneven > UNEVEN * growth.built_imbalance
    ):
        raise Rebuild(
            f"the lists grew uneven (imbalance {uneven:.2f}, {growth.built_imbalance:.2f} "
            "when built)"
        )
    recall = None
    calibration = grown.calibration
    if grown.base._ivf() is not None and calibration is not None:
        use = calibration.measured()
        if use.any():
            queries, query_ids = calibration.queries[use], calibration.query_ids[use]
            truth = calibration.truth()[use]
            grown.nprobe = nprobe
            recall = grown.measure(queries, query_ids, truth)
            built = growth.built_recall if growth.built_recall is not None else 1.0
            wanted = min(TARGET_RECALL, built - RECALL_SLACK)
            if recall < wanted:
                recall = grown.calibrate_from(nprobe, queries, query_ids, truth)
            if recall < wanted:
                raise Rebuild(
                    f"recall@10 fell to {recall:.3f} on the calibration queries, below {wanted:.3f}"
                )
    grown.recall = recall if recall is not None else grown.base.recall
    grown.base.recall = grown.recall  # what its description shows
    return IndexGrowthRecord(nprobe=grown.nprobe or None, recall_at_10=recall, imbalance=uneven)


SEGMENT_PARTS = ("rerank-ids", "rerank-f16")


def _segments(
    index_path: Path,
    generation: int,
    growth: IndexGrowthRecord,
    change: Change,
    delta: FaissIndex,
    written: list[Path],
) -> tuple[list[str], list[RerankStore]]:
    """The re-rank segments after an update (stems, oldest first, and their stores): the
    earlier ones, and one of the added vectors; then, while the newest is at least half
    the size of the one before, those two merged into one (like a binary counter: an
    update's vectors are rewritten about log2(updates) times, and a search looks in that
    many segments). Files written go to ``written``."""
    dim = delta.d
    segments = list(growth.segments)
    stores = []
    for stem in segments:
        store = RerankStore.open(index_path.with_name(f"{stem}.faiss"), dim)
        if store is None:
            raise Rebuild("a re-rank segment of an earlier update is missing")
        stores.append(store)
    if len(change.added):
        writer = RerankWriter(index_path.parent, dim)
        try:
            writer.add(as_i64(change.added), change.vectors)
        except BaseException:
            writer.abandon()
            raise
        stem = layer_path(index_path, generation, "faiss").with_suffix("").name
        stores.append(_install(writer.finish(), index_path, stem, written))
        segments.append(stem)
    live = np.sort(VectorIndex(delta).ids()) if len(stores) > 1 else None
    merges = 0
    while len(stores) >= 2 and 2 * len(stores[-1]) >= len(stores[-2]):
        assert live is not None
        merges += 1
        stem = layer_path(index_path, generation, "faiss").with_suffix("").name + f"-{merges}"
        merged = _install(_merged(stores[-2], stores[-1], live), index_path, stem, written)
        stores[-2:], segments[-2:] = [merged], [stem]
    return segments, stores


def _install(store: RerankStore, index_path: Path, stem: str, written: list[Path]) -> RerankStore:
    targets = [index_path.with_name(f"{stem}.{part}") for part in SEGMENT_PARTS]
    store.adopt(*targets)
    written.extend(targets)
    return store


def _merged(older: RerankStore, newer: RerankStore, live: np.ndarray) -> RerankStore:
    """One segment of two: the newer row where both hold an id, only ids in ``live``."""
    ids = np.concatenate([np.asarray(older.ids), np.asarray(newer.ids)])
    source = np.concatenate([np.zeros(len(older), np.int8), np.ones(len(newer), np.int8)])
    rows = np.concatenate([np.arange(len(older)), np.arange(len(newer))])
    order = np.lexsort((source, ids))
    ordered = ids[order]
    last = np.append(ordered[1:] != ordered[:-1], True)  # the newer of equal ids
    keep = order[last]
    keep = keep[np.isin(ids[keep], live)]
    writer = RerankWriter(older.ids_path.parent, older.dim)
    try:
        for start in range(0, len(keep), 65_536):
            chunk = keep[start : start + 65_536]
            vectors = np.empty((len(chunk), older.dim), np.float16)
            for flag, store in ((0, older), (1, newer)):
                mine = source[chunk] == flag
                vectors[mine] = store.vectors[rows[chunk][mine]]
            writer.add(ids[chunk], vectors)
    except BaseException:
        writer.abandon()
        raise
    return writer.finish()


def _write_files(
    index_path: Path,
    generation: int,
    grown: GrownIndex,
    masked: np.ndarray,
    delta: FaissIndex,
    written: list[Path],
) -> dict[str, str]:
    """The delta index, the masked ids and the calibration, each written whole and renamed
    into place (new names: nothing a record names is overwritten); each goes to
    ``written`` once it is there. Returns their SHA-256s, hashed from the bytes written
    (the delta is up to a fifth of the build: it need not be read back)."""
    import faiss

    parts = {
        "delta": faiss.serialize_index(delta),
        "removed": as_i64(masked).view(np.uint8),
    }
    if grown.calibration is not None:
        parts["calib"] = np.frombuffer(grown.calibration.to_bytes(), np.uint8)
    hashed = {}
    for part, data in parts.items():
        target = layer_path(index_path, generation, part)
        write_bytes_atomic(target, memoryview(data), prefix=".grown-")
        written.append(target)
        hashed[target.name] = hashlib.sha256(memoryview(data)).hexdigest()
    return hashed


def sweep(index_path: Path, keep: Iterable[str]) -> None:
    """Remove the update files beside the index that ``keep`` (file names) does not name:
    those of an older record, or of an update killed before it was recorded. The caller
    holds the files lock exclusively (readers open files under it, shared)."""
    kept = set(keep)
    for path in layer_files(index_path):
        if path.name not in kept:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _kept(old: IndexGrowthRecord, segments: list[str]) -> dict[str, str]:
    """The checksums of the earlier updates' files that are still named: the segments."""
    keep = {f"{stem}.{part}" for stem in segments for part in SEGMENT_PARTS}
    return {name: sha for name, sha in old.files.items() if name in keep}


def _sha256s(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        with open(path, "rb") as fh:
            out[path.name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out
