"""Named queries for cluster runs (see queries.py for the conventions)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, insert, select

from organizer.store import queries as q
from organizer.store.models import Cluster, ClusterMember, ClusterRun

runs_t = ClusterRun.__table__
clusters_t = Cluster.__table__
members_t = ClusterMember.__table__


@dataclass(frozen=True)
class ClusterInfo:
    number: int
    size: int
    silhouette: float | None
    label: str | None
    labels: list[tuple[str, float]]
    centroid: np.ndarray


def insert_run(conn: Connection, **values) -> int:
    return conn.execute(insert(runs_t).values(created_at=q.now(), **values)).inserted_primary_key[0]


def insert_clusters(conn: Connection, run_id: int, rows: list[dict]) -> None:
    conn.execute(insert(clusters_t), [{"run_id": run_id, **row} for row in rows])


def insert_members(conn: Connection, run_id: int, rows: list[dict]) -> None:
    for start in range(0, len(rows), 5000):
        conn.execute(
            insert(members_t), [{"run_id": run_id, **r} for r in rows[start : start + 5000]]
        )


def run(conn: Connection, run_id: int | None) -> ClusterRun | None:
    """A run by id, or the latest one when ``run_id`` is None."""
    stmt = select(runs_t)
    stmt = (
        stmt.where(runs_t.c.id == run_id)
        if run_id is not None
        else stmt.order_by(runs_t.c.id.desc())
    )
    row = conn.execute(stmt.limit(1)).first()
    return None if row is None else ClusterRun(**row._asdict())


def all_runs(conn: Connection) -> list[ClusterRun]:
    return [ClusterRun(**r._asdict()) for r in conn.execute(select(runs_t).order_by(runs_t.c.id))]


def clusters(conn: Connection, run_id: int) -> list[ClusterInfo]:
    rows = conn.execute(
        select(clusters_t).where(clusters_t.c.run_id == run_id).order_by(clusters_t.c.number)
    )
    return [
        ClusterInfo(
            r.number,
            r.size,
            r.silhouette,
            r.label,
            [tuple(x) for x in json.loads(r.labels_json or "[]")],
            np.frombuffer(r.centroid, dtype=np.float32),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class MemberRow:
    image_id: int
    number: int
    distance: float
    silhouette: float | None
    assigned_later: bool
    root: str
    relpath: bytes


def members(conn: Connection, run_id: int, number: int | None = None) -> list[MemberRow]:
    """Members of a run (or of one cluster) whose images are still ok, closest first."""
    images, roots = q.images, q.roots_t
    stmt = (
        select(
            members_t.c.image_id,
            members_t.c.number,
            members_t.c.distance,
            members_t.c.silhouette,
            members_t.c.assigned_later,
            roots.c.path,
            images.c.relpath,
        )
        .join(images, images.c.id == members_t.c.image_id)
        .join(roots, roots.c.id == images.c.root_id)
        .where(members_t.c.run_id == run_id, images.c.status == q.OK)
        .order_by(members_t.c.number, members_t.c.distance, members_t.c.image_id)
    )
    if number is not None:
        stmt = stmt.where(members_t.c.number == number)
    return [MemberRow(*r) for r in conn.execute(stmt)]


def member_ids(conn: Connection, run_id: int) -> set[int]:
    return set(
        conn.execute(select(members_t.c.image_id).where(members_t.c.run_id == run_id)).scalars()
    )
