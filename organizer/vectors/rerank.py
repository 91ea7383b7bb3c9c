"""Half-precision copies of the vectors on disk, memory-mapped: exact scores for the
candidates a compressed (PQ) index shortlists.

Two flat files beside the index: the image ids in ascending order (int64) and the vectors
in the same order (float16, ``dim`` a row). A lookup is a binary search in the ids and one
row read; nothing is loaded up front, so opening costs nothing at any size. Rows are
appended or overwritten in place (a vector re-embedded), never moved within a file; ids that
belong in the middle make new files that replace the old ones whole. So a reader that mapped
the files earlier keeps reading valid rows while a writer brings them up to date.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organizer.atomic import move_over


def rerank_paths(index_path: Path) -> tuple[Path, Path]:
    """(ids file, vectors file) kept beside the index file ``index_path``."""
    stem = index_path.with_suffix("")
    return stem.with_name(stem.name + ".rerank-ids"), stem.with_name(stem.name + ".rerank-f16")


class RerankStore:
    """Exact (fp16-stored, fp32-computed) inner products for given image ids."""

    def __init__(self, ids_path: Path, vectors_path: Path, dim: int, temporary: bool = False):
        self.ids_path = ids_path
        self.vectors_path = vectors_path
        self.dim = dim
        self._map()
        # A store built for a process that never saves it (a server rebuilding in memory)
        # must not leave gigabytes behind: temporary files go when the store does.
        self._cleanup = (
            weakref.finalize(self, _unlink, ids_path, vectors_path) if temporary else None
        )

    def _map(self) -> None:
        ids_stat, vectors_stat = os.stat(self.ids_path), os.stat(self.vectors_path)
        rows = ids_stat.st_size // 8
        if vectors_stat.st_size != rows * self.dim * 2:
            raise ValueError("the re-rank files disagree in length")
        self._inodes = (ids_stat.st_ino, vectors_stat.st_ino)
        self.ids = _memmap(self.ids_path, np.int64, (rows,))
        self.vectors = _memmap(self.vectors_path, np.float16, (rows, self.dim))

    @classmethod
    def open(cls, index_path: Path, dim: int) -> RerankStore | None:
        """The store beside ``index_path``; None when its files are missing or inconsistent."""
        try:
            return cls(*rerank_paths(index_path), dim)
        except (OSError, ValueError):
            return None

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 where the store does not hold it)."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        rows = np.searchsorted(self.ids, ids)
        rows = np.minimum(rows, len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Whether the store holds each id."""
        return self.rows_of(ids) >= 0

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored (float16) vectors of ``ids``, ascending and all held: the rows are
        read front to back."""
        return np.asarray(self.vectors[self.rows_of(ids)])

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(whether held, float16 vector or zeros) of each of ``ids``, in any order; the
        rows are read front to back."""
        rows = self.rows_of(ids)
        found = rows >= 0
        out = np.zeros((len(ids), self.dim), np.float16)
        order = np.argsort(rows[found])
        picked = np.flatnonzero(found)[order]
        out[picked] = self.vectors[rows[found][order]]
        return found, out

    def scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Inner product of ``query`` with the stored vector of each id (-inf if absent)."""
        rows = self.rows_of(ids)
        found = rows >= 0
        out = np.full(len(ids), -np.inf, np.float32)
        if found.any():
            # Sorted row order reads the file front to back (fewer seeks when it is cold).
            picked = np.sort(rows[found])
            order = np.argsort(np.argsort(rows[found]))
            vectors = self.vectors[picked].astype(np.float32)
            out[found] = (vectors @ query.astype(np.float32))[order]
        return out

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Write ``vectors`` (ids ascending): overwrite the rows of known ids in place, append
        ids beyond the last; ids that belong in the middle (an image that failed before, or
        came back) rewrite the files with them merged in (a copy, not a rebuild: a minute
        at 10M images). False (nothing changed) when another process replaced the files
        since they were mapped: the caller then rebuilds."""
        if len(ids) == 0:
            return True
        if (os.stat(self.ids_path).st_ino, os.stat(self.vectors_path).st_ino) != self._inodes:
            return False
        rows = self.rows_of(ids)
        last = int(self.ids[-1]) if len(self.ids) else -1
        new = rows < 0
        half = np.asarray(vectors, dtype=np.float16)
        if (~new).any():
            with open(self.vectors_path, "r+b") as fh:
                for row, vector in zip(rows[~new].tolist(), half[~new], strict=True):
                    fh.seek(row * self.dim * 2)
                    fh.write(vector.tobytes())
        if np.any(ids[new] <= last):
            self._merge_in(np.ascontiguousarray(ids[new], dtype=np.int64), half[new])
            return True
        if new.any():
            with open(self.vectors_path, "ab") as fv, open(self.ids_path, "ab") as fi:
                fv.write(np.ascontiguousarray(half[new]).tobytes())
                fi.write(np.ascontiguousarray(ids[new], dtype=np.int64).tobytes())
        for path in (self.vectors_path, self.ids_path):
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        self._map()
        return True

    def _merge_in(self, ids: np.ndarray, vectors: np.ndarray, chunk: int = 1 << 20) -> None:
        """Rewrite the files with rows for new ``ids`` (ascending) merged in by id."""
        at = np.searchsorted(self.ids, ids)
        writer = RerankWriter(self.ids_path.parent, self.dim)
        try:
            for start in range(0, max(len(self.ids), 1), chunk):
                end = min(start + chunk, len(self.ids))
                last_chunk = end >= len(self.ids)
                mine = (at >= start) & ((at < end) | last_chunk)
                writer.add(
                    np.insert(np.asarray(self.ids[start:end]), at[mine] - start, ids[mine]),
                    np.insert(
                        np.asarray(self.vectors[start:end]), at[mine] - start, vectors[mine], 0
                    ),
                )
        except BaseException:
            writer.abandon()
            raise
        writer.finish().adopt(self.ids_path, self.vectors_path)
        self._map()

    def adopt(self, ids_path: Path, vectors_path: Path) -> None:
        """Move the (temporary) files to their final names; the maps stay valid."""
        move_over(self.ids_path, ids_path)
        move_over(self.vectors_path, vectors_path)
        self.ids_path, self.vectors_path = ids_path, vectors_path
        if self._cleanup is not None:
            self._cleanup.detach()
            self._cleanup = None


class StackedRerank:
    """Several re-rank stores asked as one: shards (disjoint ids), or an index's build and
    the segments later updates added (oldest first: where two hold an id, the later wins)."""

    def __init__(self, stores: Sequence[RerankStore | StackedRerank], dim: int):
        self.stores = list(stores)
        self.dim = dim

    def __len__(self) -> int:
        return sum(len(s) for s in self.stores)

    def holds(self, ids: np.ndarray) -> np.ndarray:
        held = np.zeros(len(ids), bool)
        for store in self.stores:
            held |= store.holds(ids)
        return held

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = np.zeros(len(ids), bool)
        out = np.zeros((len(ids), self.dim), np.float16)
        for store in self.stores:
            mine, vectors = store.lookup(ids)
            out[mine] = vectors[mine]
            found |= mine
        return found, out

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self.lookup(ids)[1]

    def scores(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.full(len(ids), -np.inf, np.float32)
        for store in self.stores:
            found = store.holds(ids)
            if found.any():
                out[found] = store.scores(query, ids[found])
        return out


class RerankWriter:
    """Streams (ids ascending, vectors) into temporary re-rank files in ``folder``."""

    def __init__(self, folder: Path, dim: int):
        self.dim = dim
        self.paths = []
        for suffix in (".ids.tmp", ".f16.tmp"):
            fd, name = tempfile.mkstemp(prefix=".rerank-", suffix=suffix, dir=folder)
            os.close(fd)
            self.paths.append(Path(name))
        self._ids = open(self.paths[0], "wb")  # noqa: SIM115 (closed in finish/abandon)
        self._vectors = open(self.paths[1], "wb")  # noqa: SIM115
        self._last = -1

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if ids[0] <= self._last or np.any(np.diff(ids) <= 0):
            raise RuntimeError("internal error: re-rank vectors must arrive by ascending id")
        self._last = int(ids[-1])
        self._ids.write(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        self._vectors.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())

    def finish(self) -> RerankStore:
        for fh in (self._ids, self._vectors):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        return RerankStore(self.paths[0], self.paths[1], self.dim, temporary=True)

    def abandon(self) -> None:
        for fh in (self._ids, self._vectors):
            fh.close()
        _unlink(*self.paths)


def _memmap(path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
