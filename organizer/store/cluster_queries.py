"""Named queries for cluster runs (see queries.py for the conventions)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, insert, select

from organizer.store import queries as q
from organizer.store.models import Cluster, ClusterMember, ClusterRun, table_of
from organizer.store.records import (
    ClusterRecord,
    ClusterRunRecord,
    ClusterRunSummary,
    ImageStatus,
    MemberRecord,
)

cluster_runs_t = table_of(ClusterRun)
clusters_t = table_of(Cluster)
members_t = table_of(ClusterMember)

MEMBER_INSERT_BATCH = 5000


def insert_run(conn: Connection, created_at: datetime, **values: object) -> int:
    stmt = insert(cluster_runs_t).values(created_at=created_at, **values)
    return q.new_id(conn.execute(stmt))


def insert_clusters(conn: Connection, run_id: int, rows: list[dict]) -> None:
    conn.execute(insert(clusters_t), [{"run_id": run_id, **row} for row in rows])


def insert_members(conn: Connection, run_id: int, rows: list[dict]) -> None:
    for chunk in q.chunked(rows, MEMBER_INSERT_BATCH):
        conn.execute(insert(members_t), [{"run_id": run_id, **r} for r in chunk])


def _run_record(row: Any) -> ClusterRunRecord:
    return ClusterRunRecord(
        row.id,
        row.created_at,
        row.algorithm,
        row.k,
        row.seed,
        bool(row.auto),
        row.silhouette,
        row.n_images,
        tuple(json.loads(row.sweep_json)) if row.sweep_json else None,
    )


def run(conn: Connection, run_id: int | None) -> ClusterRunRecord | None:
    """A run by id, or the latest one when ``run_id`` is None."""
    t = cluster_runs_t
    stmt = select(t).where(t.c.id == run_id) if run_id is not None else select(t)
    row = conn.execute(stmt.order_by(t.c.id.desc()).limit(1)).first()
    return None if row is None else _run_record(row)


def run_params(conn: Connection, run_id: int) -> dict:
    """How a run was made (its parameters as recorded: k range, restarts, filter...)."""
    t = cluster_runs_t
    text = conn.execute(select(t.c.params_json).where(t.c.id == run_id)).scalar()
    return json.loads(text) if text else {}


def all_runs(conn: Connection) -> list[ClusterRunRecord]:
    t = cluster_runs_t
    return [_run_record(r) for r in conn.execute(select(t).order_by(t.c.id))]


def members(conn: Connection, run_id: int) -> dict[int, list[MemberRecord]]:
    """Members of a run whose images are still ok, by cluster number, closest first."""
    images, roots = q.images, q.roots_t
    stmt = (
        select(
            members_t.c.number,
            members_t.c.image_id,
            members_t.c.distance,
            members_t.c.silhouette,
            members_t.c.assigned_later,
            roots.c.path,
            images.c.relpath,
        )
        .join(images, images.c.id == members_t.c.image_id)
        .join(roots, roots.c.id == images.c.root_id)
        .where(members_t.c.run_id == run_id, images.c.status == ImageStatus.OK)
        .order_by(members_t.c.number, members_t.c.distance, members_t.c.image_id)
    )
    out: dict[int, list[MemberRecord]] = {}
    for number, *fields in conn.execute(stmt):
        out.setdefault(number, []).append(MemberRecord(*fields))
    return out


def summary(conn: Connection, found: ClusterRunRecord) -> ClusterRunSummary:
    """A run with its clusters and their members, read in the caller's transaction."""
    by_number = members(conn, found.id)
    rows = conn.execute(
        select(clusters_t).where(clusters_t.c.run_id == found.id).order_by(clusters_t.c.number)
    )
    clusters = tuple(
        ClusterRecord(
            r.number,
            r.label,
            tuple(tuple(x) for x in json.loads(r.labels_json or "[]")),
            r.silhouette,
            np.frombuffer(r.centroid, dtype=np.float32),
            tuple(by_number.get(r.number, ())),
        )
        for r in rows
    )
    return ClusterRunSummary(found, clusters)


def centroids(conn: Connection, run_id: int) -> tuple[list[int], np.ndarray]:
    """The numbers and centroids (k x dim) of a run's clusters."""
    rows = conn.execute(
        select(clusters_t.c.number, clusters_t.c.centroid)
        .where(clusters_t.c.run_id == run_id)
        .order_by(clusters_t.c.number)
    ).all()
    return [r.number for r in rows], np.stack([np.frombuffer(r.centroid, np.float32) for r in rows])


def member_ids(conn: Connection, run_id: int) -> set[int]:
    """Every image ever put in the run, whatever its status now."""
    stmt = select(members_t.c.image_id).where(members_t.c.run_id == run_id)
    return set(conn.execute(stmt).scalars())


def cluster_of(conn: Connection, image_id: int) -> tuple[int, int, str | None] | None:
    """(run id, cluster number, label) of an image in the latest run that holds it."""
    stmt = (
        select(members_t.c.run_id, members_t.c.number, clusters_t.c.label)
        .join(
            clusters_t,
            (clusters_t.c.run_id == members_t.c.run_id)
            & (clusters_t.c.number == members_t.c.number),
        )
        .where(members_t.c.image_id == image_id)
        .order_by(members_t.c.run_id.desc())
        .limit(1)
    )
    row = conn.execute(stmt).first()
    return None if row is None else (row.run_id, row.number, row.label)
