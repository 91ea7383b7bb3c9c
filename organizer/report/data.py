"""What a report shows, read from the library database in one consistent snapshot
(through the named queries of :mod:`organizer.store`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from organizer.errors import ReportError
from organizer.filters import PhotoFilter
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.filter_queries import kept_ids
from organizer.store.records import ClusterRunSummary, LibraryModel


@dataclass(frozen=True)
class ReportData:
    """Everything the report needs from the database (paths of the shown images are read later)."""

    model: LibraryModel
    counts: dict[str, int]
    ids: np.ndarray  # ok images with a vector, ordered by id
    vectors: np.ndarray
    numbers: np.ndarray  # cluster number of each image in ``ids``; 0 = not in the run
    run: ClusterRunSummary | None


def load(
    engine: Engine,
    run_id: int | None,
    roots: Sequence[int] | None = None,
    where: PhotoFilter | None = None,
) -> ReportData:
    """Read the model, counts, vectors and (if any) a cluster run with its members.

    Args:
        engine: the library's SQLAlchemy engine.
        run_id: the cluster run to show; None for the latest (or none when there is none).
        roots: show only the images under these roots (None: all).
        where: show only the images this filter keeps.

    Raises:
        ReportError: an empty library, no cluster run ``run_id``, or a filter that keeps
            no image.
    """
    with engine.connect() as conn, conn.begin():
        model = q.library_model(conn)
        empty = ReportError("the library has no images yet: run `organizer ingest FOLDER` first")
        if model is None:
            raise empty
        ids, vectors = q.ok_vectors(conn, model.id, model.dim, roots)
        if len(ids) == 0:
            raise empty
        if where is not None and not where.empty:
            keep = np.isin(ids, kept_ids(conn, where))
            ids, vectors = ids[keep], vectors[keep]
            if len(ids) == 0:
                raise ReportError(f"the filter ({where.describe()}) keeps no image")
        found = cq.run(conn, run_id)
        if found is None and run_id is not None:
            raise ReportError(f"no cluster run {run_id}: `organizer runs` lists them")
        run = cq.summary(conn, found) if found is not None else None
        counts = q.status_counts(conn)
    if run is not None and (roots is not None or where is not None):
        run = run.only(set(ids.tolist()))
    return ReportData(model, counts, ids, vectors, _numbers(ids, run), run)


def _numbers(ids: np.ndarray, run: ClusterRunSummary | None) -> np.ndarray:
    numbers = np.zeros(len(ids), dtype=np.int64)
    if run is None:
        return numbers
    position = {int(i): row for row, i in enumerate(ids.tolist())}
    for number, member in run.members:
        row = position.get(member.image_id)
        if row is not None:
            numbers[row] = number
    return numbers
