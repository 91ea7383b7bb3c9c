"""What a report shows, read from the library database in one consistent snapshot
(through the named queries of :mod:`organizer.store`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection

from organizer.errors import ReportError
from organizer.store import cluster_queries as cq
from organizer.store import queries as q


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster of the run the report shows."""

    number: int
    label: str | None
    labels: list[tuple[str, float]]
    size: int
    silhouette: float | None
    closest: list[int]  # image ids, closest to the centroid first
    farthest: list[int]  # image ids, farthest from the centroid first


@dataclass(frozen=True)
class RunInfo:
    """The cluster run the report shows."""

    id: int
    k: int
    algorithm: str
    seed: int
    silhouette: float | None
    n_images: int
    created_at: str
    sweep: list[dict] | None
    clusters: list[ClusterInfo]


@dataclass
class ReportData:
    """Everything the report needs from the database (paths of the shown images are read later)."""

    model: q.LibraryModel
    counts: dict[str, int]
    ids: np.ndarray  # ok images with a vector, ordered by id
    vectors: np.ndarray
    numbers: np.ndarray  # cluster number of each image in ``ids``; 0 = not in the run
    run: RunInfo | None


def load(engine, run_id: int | None, gallery: tuple[int, int]) -> ReportData:
    """Read the model, counts, vectors and (if any) a cluster run with its galleries.

    Args:
        engine: the library's SQLAlchemy engine.
        run_id: the cluster run to show; None for the latest (or none when there is none).
        gallery: how many (closest, farthest) images each cluster section shows.

    Raises:
        ReportError: an empty library, or no cluster run ``run_id``.
    """
    with engine.connect() as conn, conn.begin():
        model = q.library_model(conn)
        ids, vectors = q.ok_vectors(conn, model.id, model.dim) if model else (None, None)
        if model is None or len(ids) == 0:
            raise ReportError("the library has no images yet: run `organizer ingest FOLDER` first")
        found = cq.run(conn, run_id)
        if found is None and run_id is not None:
            raise ReportError(f"no cluster run {run_id}: `organizer clusters --runs` lists them")
        run, numbers = (None, np.zeros(len(ids), dtype=np.int64))
        if found is not None:
            run, numbers = _run_info(conn, found, ids, gallery)
        return ReportData(model, q.status_counts(conn), ids, vectors, numbers, run)


def _run_info(conn: Connection, found, ids: np.ndarray, gallery: tuple[int, int]):
    members = cq.members(conn, found.id)  # ordered by cluster, then distance to the centroid
    by_number: dict[int, list[int]] = {}
    for m in members:
        by_number.setdefault(m.number, []).append(m.image_id)
    position = {int(i): row for row, i in enumerate(ids.tolist())}
    numbers = np.zeros(len(ids), dtype=np.int64)
    for m in members:
        row = position.get(m.image_id)
        if row is not None:
            numbers[row] = m.number
    n_close, n_far = gallery
    clusters = []
    for c in cq.clusters(conn, found.id):
        ordered = by_number.get(c.number, [])
        closest = ordered[:n_close]
        # Outliers exclude the representatives, so a small cluster does not show an image twice.
        farthest = [i for i in reversed(ordered[len(closest) :])][:n_far]
        clusters.append(
            ClusterInfo(c.number, c.label, c.labels, len(ordered), c.silhouette, closest, farthest)
        )
    sweep = json.loads(found.sweep_json) if found.sweep_json else None
    run = RunInfo(
        found.id,
        found.k,
        found.algorithm,
        found.seed,
        found.silhouette,
        found.n_images,
        found.created_at.isoformat(timespec="seconds") + "Z",
        sweep,
        clusters,
    )
    return run, numbers
