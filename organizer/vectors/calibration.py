"""The calibration queries of an index and their exact answers, kept exact as it changes.

A build samples about 200 of the library's vectors as queries and finds each one's exact
top ``DEPTH`` while it adds every vector; nprobe is calibrated on them, and they are saved
beside the index. Each later update keeps the answers exact without a pass over the
library: a removed (or re-embedded) vector leaves the lists, which are then exact to a
smaller depth; new vectors are scored against the queries and merged in. A query whose
exact depth falls below 11 (its own vector and ten neighbours) is no longer measured.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organizer.atomic import write_bytes_atomic

DEPTH = 32  # exact neighbours kept per query: 0.1 % removed a night takes years to use up
MEASURED = 11  # a query is measured while this many of its neighbours are known exactly
_CHUNK = 16_384


@dataclass(frozen=True)
class Calibration:
    """Queries (vectors and their image ids) with their exact neighbours, best first.

    ``top_ids`` / ``top_scores`` are padded with -1 / -inf past each row's ``depth``, the
    number of leading entries known to be the exact neighbours among the vectors now held.
    """

    queries: np.ndarray  # (q, dim) float32
    query_ids: np.ndarray  # (q,) int64
    top_ids: np.ndarray  # (q, DEPTH) int64
    top_scores: np.ndarray  # (q, DEPTH) float32
    depth: np.ndarray  # (q,) int64

    @classmethod
    def of(
        cls,
        queries: np.ndarray,
        query_ids: np.ndarray,
        top_ids: np.ndarray,
        scores: np.ndarray,
        depth: int = DEPTH,
    ) -> Calibration:
        """From each query's exact top ``depth`` over every vector (fewer columns when the
        library is small: then they list every vector)."""
        n, k = top_ids.shape
        ids = np.full((n, DEPTH), -1, np.int64)
        top = np.full((n, DEPTH), -np.inf, np.float32)
        ids[:, : min(k, DEPTH)] = top_ids[:, :DEPTH]
        top[:, : min(k, DEPTH)] = scores[:, :DEPTH]
        ids[~np.isfinite(top)] = -1
        known = np.full(n, min(depth, DEPTH), np.int64)
        return cls(
            np.asarray(queries, np.float32), np.asarray(query_ids, np.int64), ids, top, known
        )

    def measured(self) -> np.ndarray:
        """Which queries still have an exact answer deep enough to measure recall@10."""
        return self.depth >= MEASURED

    def truth(self) -> np.ndarray:
        """The exact neighbours of each query (ids, -1 where unknown)."""
        return self.top_ids

    def updated(
        self, removed: np.ndarray, added_ids: np.ndarray, added_vectors: np.ndarray
    ) -> Calibration:
        """The answers once ``removed`` (sorted ids, re-embedded ones included) are gone and
        ``added_ids`` (with their float32 vectors) have come."""
        ids, scores, depth = self.top_ids.copy(), self.top_scores.copy(), self.depth.copy()
        gone = np.isin(ids, removed) & (ids >= 0)
        if gone.any():
            within = gone & (np.arange(DEPTH)[None, :] < depth[:, None])
            depth -= within.sum(axis=1)
            order = np.argsort(gone, axis=1, kind="stable")  # kept first, in their order
            ids = np.take_along_axis(ids, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
            dropped = np.take_along_axis(gone, order, axis=1)
            ids[dropped], scores[dropped] = -1, -np.inf
        for start in range(0, len(added_ids), _CHUNK):
            chunk_ids = np.asarray(added_ids[start : start + _CHUNK], np.int64)
            chunk = np.asarray(added_vectors[start : start + _CHUNK], np.float32)
            new = self.queries @ chunk.T
            scores = np.concatenate([scores, new], axis=1)
            ids = np.concatenate([ids, np.broadcast_to(chunk_ids, new.shape)], axis=1)
            best = np.argpartition(-scores, DEPTH - 1, axis=1)[:, :DEPTH]  # then in order:
            best = np.take_along_axis(
                best, np.argsort(-np.take_along_axis(scores, best, 1), 1, kind="stable"), 1
            )
            scores = np.take_along_axis(scores, best, axis=1)
            ids = np.take_along_axis(ids, best, axis=1)
        beyond = np.arange(DEPTH)[None, :] >= depth[:, None]
        ids[beyond], scores[beyond] = -1, -np.inf
        return Calibration(self.queries, self.query_ids, ids, scores, depth)

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(
            out,
            queries=self.queries,
            query_ids=self.query_ids,
            top_ids=self.top_ids,
            top_scores=self.top_scores,
            depth=self.depth,
        )
        return out.getvalue()

    def save(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename)."""
        write_bytes_atomic(path, self.to_bytes(), prefix=".calibration-")

    @classmethod
    def load(cls, path: Path) -> Calibration | None:
        """The calibration saved at ``path``; None when missing or unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    *(data[k] for k in ("queries", "query_ids", "top_ids", "top_scores", "depth"))
                )
        except (OSError, ValueError, KeyError):
            return None
