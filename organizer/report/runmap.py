"""The 2-D map of one cluster run, as the web app draws it: a seeded sample of the run's
members, laid out by :mod:`organizer.report.projection`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from organizer.report import projection
from organizer.store import queries as q
from organizer.store.records import ClusterRunSummary

MAP_POINTS = 5_000


@dataclass(frozen=True)
class MapPoint:
    image_id: int
    x: float
    y: float
    number: int  # the image's cluster


@dataclass(frozen=True)
class RunMap:
    """A run's map: at most ``MAP_POINTS`` of its members, each placed in [0, 1]^2."""

    run: ClusterRunSummary
    points: list[MapPoint]

    def to_dict(self) -> dict:
        """``{"run", "points": [[image_id, x, y, cluster], ...], "clusters"}``."""
        return {
            "run": self.run.run.id,
            "points": [[p.image_id, round(p.x, 5), round(p.y, 5), p.number] for p in self.points],
            "clusters": [
                {"number": c.number, "label": c.label, "size": c.size} for c in self.run.clusters
            ],
        }


def run_map(engine: Engine, summary: ClusterRunSummary, max_points: int = MAP_POINTS) -> RunMap:
    """The map of ``summary``'s run (the same sample and layout for the same run)."""
    members = [(number, m.image_id) for number, m in summary.members]
    rows = projection.sample_rows(len(members), max_points, seed=0)
    chosen = [members[i] for i in rows]
    ids = [image_id for _, image_id in chosen]
    with engine.connect() as conn:
        model = q.library_model(conn)
        if model is None or not ids:  # an empty run: nothing to place
            return RunMap(summary, [])
        vectors = q.vectors_of(conn, model.id, model.dim, ids)
    xy = projection.project(vectors, seed=0).xy
    points = [
        MapPoint(image_id, float(x), float(y), number)
        for (number, image_id), (x, y) in zip(chosen, xy, strict=True)
    ]
    return RunMap(summary, points)
