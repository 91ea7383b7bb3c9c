"""An index past one machine: trained once, filled in shards, merged or searched together.

    template = shards.train(sample, plan)                      # once, on a sample
    part = shards.fill(template, batches_of_this_machine, dir)   # on each machine
    index = shards.merge([part_a, part_b], dir)                # one index, or
    index = shards.merge([part_a, part_b], dir, on_disk=True)  # its lists in a file, or
    index = shards.together([part_a, part_b])                  # search them side by side

Every shard starts from the same trained template (the same list centroids, rotation and
codebooks), so a vector gets the same list and the same code whichever machine adds it:
merging the lists gives exactly the index one machine would have built, and searching the
shards together and merging their results gives the same top-k.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from organizer.vectors.batches import Batch, as_f32, as_i64
from organizer.vectors.build import emptied, in_list_space, reserve_shares, trained
from organizer.vectors.files import quiet_stdout
from organizer.vectors.index import VectorIndex
from organizer.vectors.kinds import FaissIndex, IndexPlan
from organizer.vectors.lists import Lists
from organizer.vectors.rerank import RerankStore, RerankWriter, StackedRerank


def train(sample: np.ndarray, chosen: IndexPlan) -> VectorIndex:
    """An empty index of plan ``chosen`` (an IVF kind), trained on ``sample`` (float32).

    Its nprobe (lists searched), which every shard copies, starts at 1/64 of the lists (at
    least 8); calibrate the merged index, or set it, for the recall wanted."""
    import faiss

    if chosen.kind == "flat":
        raise ValueError("a flat index needs no training: shard it by adding to each part")
    index = trained(chosen, sample.shape[1], as_f32(sample))
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = min(ivf.nlist, max(8, ivf.nlist // 64))
    return VectorIndex(index)


def fill(
    template: VectorIndex,
    batches: Callable[[], Iterable[Batch]],
    workdir: Path,
    expected: tuple[np.ndarray, int] | None = None,
) -> VectorIndex:
    """A shard: a copy of ``template`` holding the (ids ascending, vectors) of ``batches``,
    with its own re-rank files in ``workdir`` for a re-ranked kind. ``expected``, when
    known: (each list's share of vectors, e.g. from ``build.list_shares``, and how many
    vectors come), to size the lists up front instead of by doubling."""
    import faiss

    index = faiss.clone_index(template.faiss)
    if expected is not None:
        reserve_shares(index, *expected)
    reranked = template.kind == "ivf-pq"
    writer = RerankWriter(workdir, index.d) if reranked else None
    try:
        for ids, vectors in batches():
            index.add_with_ids(as_f32(vectors), as_i64(ids))
            if writer is not None:
                writer.add(as_i64(ids), vectors)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    return VectorIndex(index, rerank=writer.finish() if writer is not None else None)


def merge(parts: Sequence[VectorIndex], workdir: Path, on_disk: bool = False) -> VectorIndex:
    """One index holding every shard's vectors (shards hold disjoint ids), as if one
    machine had added them all to the template. The shards are left unchanged.

    With ``on_disk`` the merged inverted lists go to a file in ``workdir`` (faiss's
    OnDiskInvertedLists), memory-mapped, so that no machine has to hold them: the shards
    may then be memory-mapped too. Without it they are copied into memory, and the shards
    must have been read into memory (faiss cannot copy mapped lists).

    Raises:
        ValueError: a shard is memory-mapped (without ``on_disk``), or two shards hold the
            same id.
    """
    import faiss

    merged = emptied(parts[0].faiss)
    ivf = faiss.extract_index_ivf(merged)
    if on_disk:
        extra = merged.d * 2 + 8 if parts[0].rerank else 0  # the re-rank rows, written too
        _merge_onto_disk(ivf, parts, workdir, extra)
    else:
        try:
            for part in parts:
                ivf.merge_from(faiss.clone_index(faiss.extract_index_ivf(part.faiss)), 0)
        except RuntimeError as exc:
            raise ValueError(
                f"cannot merge these shards ({str(exc).splitlines()[0][:120]}): read them "
                "with mmap=False, or merge on disk"
            ) from None
    merged.ntotal = ivf.ntotal  # a wrapping rotation does not follow its lists' count
    rerank = None
    if parts[0].rerank is not None:
        try:
            rerank = _merged_rerank(_reranks(parts), workdir, merged.d)
        except BaseException:
            if on_disk:
                with contextlib.suppress(OSError):
                    os.unlink(faiss.downcast_InvertedLists(ivf.invlists).filename)
            raise
    index = VectorIndex(merged, parts[0].recall, rerank)
    _same_nprobe(index, parts[0])
    return index


def _merge_onto_disk(
    ivf: FaissIndex, parts: Sequence[VectorIndex], workdir: Path, extra: int
) -> None:
    """Give ``ivf`` (empty) every part's lists, in a new file in ``workdir`` (faiss's
    OnDiskInvertedLists), after checking the disk holds them and ``extra`` bytes a vector.

    Raises:
        ValueError: the parts hold nothing;
        OSError: the disk has not the room (a full disk under a memory map is a SIGBUS).
    """
    import faiss

    total = sum(len(p) for p in parts)
    if total == 0:
        raise ValueError("the shards are empty: nothing to merge")
    need = total * (ivf.code_size + 8 + extra) * 1.1 + (64 << 20)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise OSError(
            errno.ENOSPC, f"{need / 1e9:.1f} GB needed in {workdir}, {free / 1e9:.1f} GB free"
        )
    fd, name = tempfile.mkstemp(prefix=".lists-", suffix=".tmp", dir=workdir)
    os.close(fd)
    try:
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, name)
        each = faiss.InvertedListsPtrVector()
        for part in parts:
            each.push_back(faiss.extract_index_ivf(part.faiss).invlists)
        with quiet_stdout():  # faiss prints each resize
            count = lists.merge_from_multiple(each.data(), each.size(), False, False)
        ivf.replace_invlists(lists, True)
        lists.this.disown()  # the index owns it now
    except BaseException:
        os.unlink(name)
        raise
    ivf.ntotal = count


def _merged_rerank(stores: Sequence[RerankStore], workdir: Path, dim: int) -> RerankStore:
    """The stores' rows in one store, by ascending id, streamed."""
    stores = sorted(stores, key=lambda s: int(s.ids[0]) if len(s) else -1)
    tails = [int(s.ids[-1]) for s in stores if len(s)]
    heads = [int(s.ids[0]) for s in stores if len(s)]
    writer = RerankWriter(workdir, dim)
    try:
        if all(tail < head for tail, head in zip(tails, heads[1:], strict=False)):
            # Shards of id ranges (what a library's shards hold): one after the other.
            for store in stores:
                for start in range(0, len(store), 65_536):
                    writer.add(
                        np.asarray(store.ids[start : start + 65_536]),
                        store.vectors[start : start + 65_536],
                    )
        else:
            _interleaved(stores, writer, dim)
    except BaseException:
        writer.abandon()
        raise
    return writer.finish()


def _interleaved(stores: Sequence[RerankStore], writer: RerankWriter, dim: int) -> None:
    """Shards whose ids interleave, merged by id (memory holds every id: 28 bytes each)."""
    ids = np.concatenate([np.asarray(s.ids) for s in stores])
    owner = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(stores)])
    row = np.concatenate([np.arange(len(s)) for s in stores])
    order = np.argsort(ids, kind="stable")
    if np.any(np.diff(ids[order]) == 0):
        raise ValueError("shards hold the same image id twice: fill each with its own ids")
    for start in range(0, len(order), 65_536):
        chunk = order[start : start + 65_536]
        vectors = np.empty((len(chunk), dim), np.float16)
        for i, store in enumerate(stores):
            mine = owner[chunk] == i
            vectors[mine] = store.vectors[row[chunk][mine]]
        writer.add(ids[chunk], vectors)


def _reranks(parts: Sequence[VectorIndex]) -> list[RerankStore]:
    """The re-rank stores of shards of one template (all of them have one)."""
    stores = [p.rerank for p in parts]
    assert all(isinstance(s, RerankStore) for s in stores)
    return [s for s in stores if isinstance(s, RerankStore)]


class _Together(VectorIndex):
    """Shards searched side by side; read-only (merge them to change the index)."""

    def __init__(self, parts: Sequence[VectorIndex]):
        import faiss

        shards = faiss.IndexShards(parts[0].dim, False, False)
        for part in parts:
            shards.add_shard(part.faiss)
        rerank = StackedRerank(_reranks(parts), parts[0].dim) if parts[0].rerank else None
        super().__init__(shards, parts[0].recall, rerank)
        self.parts = list(parts)  # keeps the shards (and their maps) alive with the whole

    def _ivf(self) -> FaissIndex:
        return self.parts[0]._ivf()

    def ids(self) -> np.ndarray:
        return np.concatenate([p.ids() for p in self.parts])

    def lists(self) -> Lists | None:
        parts = [(p._ivf(), p.rerank, p.removed) for p in self.parts]
        return Lists(parts, lambda x: in_list_space(self.parts[0].faiss, x))

    def within(self, queries: np.ndarray, threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        each = [p.within(queries, threshold) for p in self.parts]
        return [
            (np.concatenate([r[i][0] for r in each]), np.concatenate([r[i][1] for r in each]))
            for i in range(len(queries))
        ]

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        raise ValueError("shards searched together are read-only: merge them to change them")

    def remove(self, ids: Iterable[int]) -> None:
        raise ValueError("shards searched together are read-only: merge them to change them")

    def calibrate(self, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray) -> float:
        raise ValueError("calibrate each shard (or the template) before searching them together")


def together(parts: Sequence[VectorIndex]) -> VectorIndex:
    """The shards searched side by side (faiss IndexShards): each answers from its own
    lists, and the results are merged, so no machine has to hold the whole index."""
    return _Together(parts)


def _same_nprobe(index: VectorIndex, like: VectorIndex) -> None:
    import faiss

    faiss.extract_index_ivf(index.faiss).nprobe = faiss.extract_index_ivf(like.faiss).nprobe
