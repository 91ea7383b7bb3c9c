"""The FAISS index: a derived cache of the vectors stored in the database.

Vectors are L2-normalised, so inner product is cosine similarity; FAISS ids are image ids.
The file is written atomically (temp file, fsync, rename) and is only ever read after its
SHA-256 matches the checksum the database recorded for it, so a truncated, bit-flipped or
foreign file is never handed to FAISS: the caller rebuilds it from the database instead.

faiss is imported only by the functions that need it, so that checking the file (status)
stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE = "vectors.faiss"


@dataclass(frozen=True)
class Hits:
    """Search results for one query: image ids and cosine scores, best first."""

    ids: np.ndarray
    scores: np.ndarray


class VectorIndex:
    """Exact inner-product search over (image id, unit vector) pairs."""

    kind = "flat"

    def __init__(self, index):
        self._index = index

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int) -> VectorIndex:
        """A new index holding ``vectors`` (N x dim float32, unit length) under ``ids``."""
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64)
            )
        return cls(index)

    @property
    def dim(self) -> int:
        return self._index.d

    def __len__(self) -> int:
        return self._index.ntotal

    def ids(self) -> np.ndarray:
        """All image ids in the index, in insertion order."""
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """The ``k`` nearest ids for each query vector (fewer when the index is smaller)."""
        k = min(k, len(self))
        if k <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        scores, ids = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        out = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            keep = row_ids >= 0
            out.append(Hits(row_ids[keep], row_scores[keep]))
        return out

    def to_bytes(self) -> bytes:
        import faiss

        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VectorIndex:
        import faiss

        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))


def file_sha256(path: Path) -> str | None:
    """SHA-256 of the index file, or None when it does not exist or cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def read_index(path: Path, expected_sha256: str) -> VectorIndex | None:
    """Load the index file only if its content has the recorded checksum; else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        return None
    try:
        return VectorIndex.from_bytes(data)
    except RuntimeError:
        return None


def write_index(path: Path, index: VectorIndex) -> str:
    """Write the index atomically (temp file, fsync, rename, fsync folder); return its SHA-256.

    Raises:
        OSError: the folder is not writable or the disk is full; the old file is untouched.
    """
    data = index.to_bytes()
    fd, tmp = tempfile.mkstemp(prefix=".vectors-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return hashlib.sha256(data).hexdigest()
