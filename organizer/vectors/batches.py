"""The stream a vector index is built from: batches of (image ids, unit vectors), and the
array layouts faiss takes (contiguous float32 vectors, int64 ids).

Its own module because the index, its two-step build and its shards all read the stream:
here, none of them imports another to reach it.
"""

from __future__ import annotations

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]
"""(ids, vectors) of some images: ids ascending within a stream."""


def as_f32(x: np.ndarray) -> np.ndarray:
    """``x`` as contiguous float32 (faiss's vectors), copied only if it is not already."""
    return np.ascontiguousarray(x, dtype=np.float32)


def as_i64(x: np.ndarray) -> np.ndarray:
    """``x`` as contiguous int64 (faiss's ids), copied only if it is not already."""
    return np.ascontiguousarray(x, dtype=np.int64)
