"""Planning an ingest: compare each folder's scan with what the store knows (reads only).

The plan says which files need reading, which are unchanged, which came back, which
vanished, and which could not be listed; :mod:`.run` carries it out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine

from organizer.errors import LibraryError, OptionsError
from organizer.scan import ScanResult
from organizer.store import queries as q
from organizer.store.records import ImageStatus, KnownImage


@dataclass
class Target:
    """A folder to walk: an existing root (``root_id``) or a new one, maybe only a subfolder.

    ``scan`` is filled in by the walk; a new root gets its ``root_id`` when it is first
    written, and the roots it ``absorb``\\ s are merged into it then.
    """

    root_path: str
    root_id: int | None = None
    prefix: bytes = b""
    absorb: list[tuple[int, bytes]] = field(default_factory=list)
    scan: ScanResult | None = None


@dataclass(frozen=True)
class FileWork:
    """A file that must be read: new, changed, or failed before and retried."""

    target: Target
    relpath: bytes
    size: int
    mtime_ns: int
    known: KnownImage | None


@dataclass(frozen=True)
class Unlistable:
    """A file or folder the walk found but could not look at, and why."""

    target: Target
    relpath: bytes
    reason: str
    known: KnownImage | None


@dataclass
class Plan:
    work: list[FileWork] = field(default_factory=list)
    unchanged: int = 0
    restore: list[int] = field(default_factory=list)  # missing images back, unchanged
    vanished: dict[int, KnownImage] = field(default_factory=dict)
    unlistable: list[Unlistable] = field(default_factory=list)


def plan(engine: Engine, targets: list[Target], retry_failed: bool, rehash: bool = False) -> Plan:
    """Compare each target's scan with the images recorded under it (reads only).

    A file whose size and modification time are as recorded is taken as unchanged, unless
    ``rehash``: then it is read and hashed again (an edit that kept both is caught).
    """
    result = Plan()
    with engine.connect() as conn:
        for target in targets:
            _plan_target(result, target, _known_for(conn, target), retry_failed, rehash)
    return result


def _plan_target(
    result: Plan,
    target: Target,
    known: dict[bytes, KnownImage],
    retry_failed: bool,
    rehash: bool,
) -> None:
    scan = target.scan
    assert scan is not None, "a target is planned after its folder was scanned"
    seen = set()
    for entry in scan.files:
        seen.add(entry.relpath)
        k = known.get(entry.relpath)
        if k is None or (k.size, k.mtime_ns) != (entry.size, entry.mtime_ns):
            result.work.append(FileWork(target, entry.relpath, entry.size, entry.mtime_ns, k))
        elif k.status == ImageStatus.OK and not rehash:
            result.unchanged += 1
        elif k.status == ImageStatus.MISSING and k.content_hash:
            result.restore.append(k.id)
        elif k.status == ImageStatus.FAILED and not retry_failed:
            result.unchanged += 1
        else:
            result.work.append(FileWork(target, entry.relpath, entry.size, entry.mtime_ns, k))
    listed = set(scan.unlisted_dirs)
    broken = {p.relpath: p.reason for p in scan.problems if p.relpath not in listed}
    for relpath, k in known.items():
        if relpath in seen or relpath in broken:
            continue
        if scan.covers(relpath, target.prefix) and k.status != ImageStatus.MISSING:
            result.vanished[k.id] = k
    for relpath, reason in broken.items():
        k = known.get(relpath)
        if k is not None and k.status == ImageStatus.FAILED:
            result.unchanged += 1
        else:
            result.unlistable.append(Unlistable(target, relpath, reason, k))


def _known_for(conn: Connection, target: Target) -> dict[bytes, KnownImage]:
    known = q.known_images(conn, target.root_id, target.prefix) if target.root_id else {}
    for child_id, child_prefix in target.absorb:
        for relpath, k in q.known_images(conn, child_id).items():
            joined = child_prefix + b"/" + relpath
            known[joined] = KnownImage(k.id, joined, k.size, k.mtime_ns, k.status, k.content_hash)
    return known


def ingest_folders(paths: list[str | Path]) -> list[str]:
    """The real paths of folders given to ingest; needs no library, so that an ingest can be
    refused before one is made.

    Raises:
        LibraryError: a path that does not exist, is not a folder, or is not valid UTF-8.
    """
    reals: list[str] = []
    for raw in paths:
        if raw == "":  # Path("") is the working folder: an unset variable, not a choice
            raise OptionsError("an empty path is not a folder: give the folder to ingest")
        path = Path(raw).expanduser()
        if not path.exists():
            raise LibraryError(f"folder not found: {path}")
        if not path.is_dir():
            raise LibraryError(f"not a folder: {path} (ingest takes folders)")
        real = os.path.realpath(path)
        try:
            real.encode("utf-8")
        except UnicodeEncodeError:
            raise LibraryError(
                f"cannot add {os.fsencode(real)!r} as a folder: its path is not valid UTF-8 "
                "(files with such names inside a folder are fine): ingest a parent folder"
            ) from None
        reals.append(real)
    return reals
