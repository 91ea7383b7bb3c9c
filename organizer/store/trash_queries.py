"""Named queries for a clean-up (see queries.py for the conventions): images moved to the
trash leave every result, and come back when an undo puts their files back.

A trashed image becomes ``missing``, as a file gone from a scanned folder does: its row and
vector are kept, so that an undo needs no re-embedding, and the status change bumps the
index generation (the triggers of revision 0001), so every search leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, exists, select, update

from organizer.store import queries as q
from organizer.store.records import ImageStatus

images = q.images
embeddings = q.embeddings


@dataclass(frozen=True)
class TrashedFile:
    """A file of a clean-up, named as the library names images: its root and the path
    below it."""

    root: str
    relpath: bytes


@dataclass(frozen=True)
class RestoredFile:
    """A file an undo put back, as it is on disk now (a move keeps size and mtime)."""

    root: str
    relpath: bytes
    size: int
    mtime_ns: int
    sha256: str


def mark_trashed(conn: Connection, files: Iterable[TrashedFile]) -> int:
    """The ok images at these paths become missing (vectors kept); returns how many did.

    Idempotent: a clean-up resumed after a crash marks again what is still ok."""
    root_ids = _root_ids(conn)
    by_root: dict[int, list[bytes]] = {}
    for f in files:
        if f.root in root_ids:
            by_root.setdefault(root_ids[f.root], []).append(f.relpath)
    changed = 0
    stamp = q.now()
    for root_id, relpaths in by_root.items():
        for chunk in q.chunked(relpaths):
            result = conn.execute(
                update(images)
                .where(
                    images.c.root_id == root_id,
                    images.c.relpath.in_(chunk),
                    images.c.status == ImageStatus.OK,
                )
                .values(status=ImageStatus.MISSING, updated_at=stamp)
            )
            changed += result.rowcount
    return changed


def mark_restored(conn: Connection, files: Iterable[RestoredFile]) -> int:
    """Missing images whose file is back become ok, when the file has the size, modification
    time and content the library recorded and the image still has its vector (as the next
    ingest would decide); returns how many did."""
    root_ids = _root_ids(conn)
    has_vector = exists(select(embeddings.c.image_id).where(embeddings.c.image_id == images.c.id))
    changed = 0
    stamp = q.now()
    for f in files:
        if f.root not in root_ids:
            continue
        result = conn.execute(
            update(images)
            .where(
                images.c.root_id == root_ids[f.root],
                images.c.relpath == f.relpath,
                images.c.status == ImageStatus.MISSING,
                images.c.size == f.size,
                images.c.mtime_ns == f.mtime_ns,
                images.c.content_hash == f.sha256,
                has_vector,
            )
            .values(status=ImageStatus.OK, updated_at=stamp)
        )
        changed += result.rowcount
    return changed


def _root_ids(conn: Connection) -> dict[str, int]:
    return {path: root_id for root_id, path in q.all_roots(conn).items()}
