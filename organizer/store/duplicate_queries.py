"""Named queries of duplicate finding: identical files, shots in time order, and the
decisions users made about groups (keyed by content, see revision 0009)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select

from organizer.choices import Decision
from organizer.store.meta_queries import meta_t as photo_meta
from organizer.store.models import DuplicateDecision, DuplicateDecisionFile, table_of
from organizer.store.queries import chunked, images, new_id, now
from organizer.store.records import ImageStatus

decisions_t = table_of(DuplicateDecision)
decision_files_t = table_of(DuplicateDecisionFile)


@dataclass(frozen=True)
class DecisionRecord:
    """A decision a user made about some files, named by their content."""

    id: int
    decision: Decision
    created_at: datetime
    hashes: frozenset[str]


@dataclass(frozen=True)
class Shot:
    """An ok image with a known camera and time taken: a candidate for a burst."""

    image_id: int
    camera_id: int
    taken_at: datetime


def copies(conn: Connection) -> list[list[int]]:
    """Ok images whose contents are byte-identical (same SHA-256), a list per content."""
    shared = (
        select(images.c.content_hash)
        .where(images.c.status == ImageStatus.OK, images.c.content_hash.is_not(None))
        .group_by(images.c.content_hash)
        .having(func.count() > 1)
        .subquery()
    )
    stmt = (
        select(images.c.content_hash, images.c.id)
        .where(images.c.status == ImageStatus.OK, images.c.content_hash.in_(select(shared)))
        .order_by(images.c.content_hash, images.c.id)
    )
    groups: dict[str, list[int]] = {}
    for digest, image_id in conn.execute(stmt):
        groups.setdefault(digest, []).append(image_id)
    return list(groups.values())


def timed_shots(conn: Connection) -> list[Shot]:
    """Ok images with a camera and a time taken, by camera then time (bursts are runs of
    neighbours in this order)."""
    stmt = (
        select(photo_meta.c.image_id, photo_meta.c.camera_id, photo_meta.c.taken_at)
        .join(images, images.c.id == photo_meta.c.image_id)
        .where(
            images.c.status == ImageStatus.OK,
            photo_meta.c.camera_id.is_not(None),
            photo_meta.c.taken_at.is_not(None),
        )
        .order_by(photo_meta.c.camera_id, photo_meta.c.taken_at, photo_meta.c.image_id)
    )
    return [Shot(*row) for row in conn.execute(stmt)]


def add_decision(conn: Connection, decision: Decision, hashes: Iterable[str]) -> int:
    """Record a decision about the files with these contents; its id."""
    decision_id = new_id(
        conn.execute(insert(decisions_t).values(decision=str(decision), created_at=now()))
    )
    rows = [{"decision_id": decision_id, "sha256": h} for h in sorted(set(hashes))]
    conn.execute(insert(decision_files_t), rows)
    return decision_id


def decisions(conn: Connection) -> list[DecisionRecord]:
    """Every decision standing, oldest first."""
    hashes: dict[int, set[str]] = {}
    for decision_id, digest in conn.execute(select(decision_files_t)):
        hashes.setdefault(decision_id, set()).add(digest)
    stmt = select(decisions_t).order_by(decisions_t.c.id)
    return [
        DecisionRecord(
            row.id, Decision(row.decision), row.created_at, frozenset(hashes.get(row.id, ()))
        )
        for row in conn.execute(stmt)
    ]


def take_back(conn: Connection, decision_id: int) -> bool:
    """Delete a decision; whether there was one."""
    conn.execute(delete(decision_files_t).where(decision_files_t.c.decision_id == decision_id))
    gone = conn.execute(delete(decisions_t).where(decisions_t.c.id == decision_id))
    return bool(gone.rowcount)


def ok_images_with(conn: Connection, hashes: Sequence[str]) -> dict[str, list[int]]:
    """The ok images of each content, by SHA-256."""
    out: dict[str, list[int]] = {}
    for chunk in chunked(list(hashes)):
        stmt = (
            select(images.c.content_hash, images.c.id)
            .where(images.c.status == ImageStatus.OK, images.c.content_hash.in_(chunk))
            .order_by(images.c.id)
        )
        for digest, image_id in conn.execute(stmt):
            out.setdefault(digest, []).append(image_id)
    return out
