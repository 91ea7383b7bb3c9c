"""What ``organizer status`` tells: roots, model, counts, index health, the last ingest, and
what ingest left out (failed files, files that are not images, export folders).

Also whether an ingest is writing now, as a reader can tell it without the writer lock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import Engine

from organizer.location import FolderHome, Home
from organizer.lock import pid_alive
from organizer.roots import RootStatus, is_present
from organizer.scan import display_text, exact_path, extension, scan_root, shown_path
from organizer.sources import is_local_folder
from organizer.store import dialect
from organizer.store import meta_queries as mq
from organizer.store import queries as q
from organizer.store.records import (
    Failure,
    IndexGrowthRecord,
    IngestRunRecord,
    LibraryModel,
    RunStatus,
    iso_utc,
)
from organizer.vectors import IndexCache


@dataclass(frozen=True)
class IndexStatus:
    type: str | None
    description: str | None
    recall_at_10: float | None
    count: int | None
    in_sync: bool
    path: str
    damaged: bool = False  # found by a full check (status --verify); the files were removed
    growth: IndexGrowthRecord | None = None  # changed in place since built; why rebuilt

    def to_dict(self) -> dict:
        growth = self.growth
        return {
            "type": self.type,
            "description": self.description,
            "recall_at_10": self.recall_at_10,
            "count": self.count,
            "in_sync": self.in_sync,
            "path": self.path,
            "damaged": self.damaged,
            "updates_in_place": growth.updates if growth else 0,
            "added_in_place": growth.added if growth else 0,
            "removed_in_place": growth.removed if growth else 0,
            "rebuilt_because": growth.rebuilt_because if growth else None,
        }


@dataclass(frozen=True)
class LibraryStatus:
    """What ``organizer status`` shows."""

    library: str
    roots: list[str]
    absent_roots: list[str]  # roots whose folder is not there now (an unplugged drive)
    model: LibraryModel | None
    images: dict[str, int]
    index: IndexStatus
    last_ingest: IngestRunRecord | None
    # Of the ok images: read, with_time, with_coordinates, with_camera, with_place, unread
    # (see organizer.store.meta_queries.meta_counts).
    metadata: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "library": self.library,
            "roots": [display_text(r) for r in self.roots],
            "absent_roots": [display_text(r) for r in self.absent_roots],
            "model": self.model.to_dict() if self.model else None,
            "images": self.images,
            "metadata": self.metadata,
            "index": self.index.to_dict(),
            "last_ingest": self.last_ingest.to_dict() if self.last_ingest else None,
        }

    def metadata_summary(self) -> str | None:
        """What the photos' headers said, in one line (for ``status`` and the status page);
        None without images.

        Example: "3 with a time taken, 2 with coordinates (2 with a named place), 3 with a
        camera; 1 not read yet: the next `organizer ingest` reads it"
        """
        m = self.metadata
        if not self.images.get("ok"):
            return None
        line = (
            f"{m.get('with_time', 0):,} with a time taken, "
            f"{m.get('with_coordinates', 0):,} with coordinates "
            f"({m.get('with_place', 0):,} with a named place), "
            f"{m.get('with_camera', 0):,} with a camera"
        )
        pending = m.get("unread", 0)
        if pending:
            them = "it" if pending == 1 else "them"
            line += f"; {pending:,} not read yet: the next `organizer ingest` reads {them}"
        return line


@dataclass(frozen=True)
class SkippedFiles:
    """What ingest leaves out: files that are not images, and organizer export folders."""

    files: list[tuple[str, bytes]]  # (root, relative path)
    export_folders: list[str]

    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, relpath in self.files:
            counts[extension(relpath)] = counts.get(extension(relpath), 0) + 1
        return dict(sorted(counts.items(), key=lambda x: (-x[1], x[0])))

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "by_type": self.by_type(),
            "files": [
                {
                    "root": root,
                    "path": shown_path(root, relpath, absolute),
                    **exact_path(root, relpath),
                    "type": extension(relpath),
                }
                for root, relpath in self.files
            ],
            "export_folders": [display_text(f) for f in self.export_folders],
        }


def library_status(engine: Engine, home: Home, cache: IndexCache, verify: bool) -> LibraryStatus:
    """Roots, model, counts by status, index health, last ingest; with ``verify`` the index
    files are checked in full (checksum, and every re-rank vector against the database)
    rather than by their quick fingerprint."""
    with engine.connect() as conn, conn.begin():
        roots = list(q.all_roots(conn).values())
        model = q.library_model(conn)
        counts = q.status_counts(conn)
        metadata = mq.meta_counts(conn)
        last = q.last_run(conn)
    damaged = verify and not cache.verify()
    file = cache.file()
    index = IndexStatus(
        file.kind if file else None,
        file.description if file else None,
        file.recall_at_10 if file else None,
        file.count if file else None,
        cache.in_sync(),
        str(home.index_path),
        damaged,
        file.growth if file else None,
    )
    if last is not None and last.status == RunStatus.RUNNING and not _writer_alive(home, last.pid):
        # Left running by a process that was killed, or that lost its server before it
        # could record why: the next ingest records it interrupted too.
        last = replace(last, status=RunStatus.INTERRUPTED, error=_lost_server(engine, last))
    absent = [p for p in roots if not is_present(p)]
    return LibraryStatus(home.name, roots, absent, model, counts, index, last, metadata)


def ingest_running(engine: Engine, home: Home) -> bool:
    """Whether an ingest is writing now, as far as a reader can tell without touching the
    writer lock (taking it, even for an instant, could turn an ingest away as busy): the
    latest run is recorded running and, on a folder library, its process is alive."""
    with engine.connect() as conn:
        last = q.last_run(conn)
    if last is None or last.status != RunStatus.RUNNING:
        return False
    return _writer_alive(home, last.pid)


def skipped_files(roots: list[RootStatus], exclude: tuple[Path, ...]) -> SkippedFiles:
    """What ingest leaves out under the present ``roots``, found by walking them now: files
    that are not images (by type), and organizer export folders."""
    files: list[tuple[str, bytes]] = []
    exports: list[str] = []
    for root in roots:
        if not root.present or not is_local_folder(root.record.path):
            continue  # a bucket or a shard is not listed again here (ingest counts them)
        scan = scan_root(Path(root.record.path), exclude=exclude)
        files += [(root.record.path, relpath) for relpath in scan.skipped]
        exports += [os.path.join(root.record.path, os.fsdecode(d)) for d in scan.export_dirs]
    return SkippedFiles(files, exports)


def failures(engine: Engine) -> list[Failure]:
    """Files recorded as failed, with the reason, sorted by root and path."""
    with engine.connect() as conn:
        return q.failures(conn)


def _lost_server(engine: Engine, run: IngestRunRecord) -> str | None:
    """Why a run left running ended, when the database can tell: its server restarted since
    the run started, which broke the run's connection (a folder library: never)."""
    with engine.connect() as conn:
        restarted = dialect.server_started_at(conn)
    if restarted is None or restarted <= run.started_at:
        return None
    return (
        f"the database connection was lost: the server restarted at {iso_utc(restarted, 'seconds')}"
    )


def _writer_alive(home: Home, pid: int) -> bool:
    """Whether the ingest run by ``pid`` is still alive. A folder library's writers run on
    this machine: ask the kernel. On a server, whether anyone holds the writer lock."""
    if isinstance(home, FolderHome):
        return pid_alive(pid)
    return home.writer_lock("status").taken()
