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
from organizer.pipeline import Job
from organizer.scan import FileEntry, ScanResult
from organizer.sources import Storage, is_remote, is_shard, normalise
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
    # Walked because it is a root, not because it was named: one that cannot be listed now
    # (a bucket out of reach) is skipped with a problem, as an unplugged drive is.
    optional: bool = False
    skipped: bool = False  # such a root, left as it was this time

    @property
    def shard(self) -> bool:
        """Whether the root is a tar shard (its files are members)."""
        return is_shard(self.root_path)


@dataclass(frozen=True)
class FileWork:
    """A file that must be read: new, changed, or failed before and retried."""

    target: Target
    relpath: bytes
    size: int
    mtime_ns: int
    known: KnownImage | None
    etag: str | None = None  # an object's, as listed
    offset: int = -1  # a shard member's bytes start here

    def job(self, key: int, storage: Storage | None = None) -> Job:
        """The decode stage's job for this file."""
        root = os.fsencode(self.target.root_path)
        path = os.path.join(root, self.relpath)
        if self.target.shard:
            version = self.target.scan.version if self.target.scan else None
            return Job(key, path, self.size, self.mtime_ns, root, self.offset, version, storage)
        return Job(key, path, self.size, self.mtime_ns, storage=storage)


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
    if scan.unchanged:  # a shard as it was read last time: nothing in it to look at
        # (what went missing from it went missing in this very version: it stays missing)
        result.unchanged += sum(k.status != ImageStatus.MISSING for k in known.values())
        return
    seen = set()
    for entry in scan.files:
        seen.add(entry.relpath)
        k = known.get(entry.relpath)
        work = FileWork(
            target, entry.relpath, entry.size, entry.mtime_ns, k, entry.etag, entry.offset
        )
        if k is None or _changed(k, entry):
            result.work.append(work)
        elif k.status == ImageStatus.OK and not rehash:
            result.unchanged += 1
        elif k.status == ImageStatus.MISSING and k.content_hash:
            result.restore.append(k.id)
        elif k.status == ImageStatus.FAILED and not retry_failed:
            result.unchanged += 1
        else:
            result.work.append(work)
    listed = set(scan.unlisted_dirs)
    broken = {p.relpath: p.reason for p in scan.problems if p.relpath not in listed}
    for relpath, gone in known.items():
        if relpath in seen or relpath in broken:
            continue
        if scan.covers(relpath, target.prefix) and gone.status != ImageStatus.MISSING:
            result.vanished[gone.id] = gone
    for relpath, reason in broken.items():
        was = known.get(relpath)
        if was is not None and was.status == ImageStatus.FAILED:
            result.unchanged += 1
        else:
            result.unlistable.append(Unlistable(target, relpath, reason, was))


def _changed(known: KnownImage, entry: FileEntry) -> bool:
    """Whether a listed file differs from the one recorded: size, time, or an object's ETag
    (a rewrite of the same size within the same second)."""
    if (known.size, known.mtime_ns) != (entry.size, entry.mtime_ns):
        return True
    return entry.etag is not None and known.etag is not None and entry.etag != known.etag


def _known_for(conn: Connection, target: Target) -> dict[bytes, KnownImage]:
    known = q.known_images(conn, target.root_id, target.prefix) if target.root_id else {}
    for child_id, child_prefix in target.absorb:
        for relpath, k in q.known_images(conn, child_id).items():
            joined = child_prefix + b"/" + relpath
            known[joined] = KnownImage(k.id, joined, k.size, k.mtime_ns, k.status, k.content_hash)
    return known


def ingest_folders(paths: list[str | Path]) -> list[str]:
    """The roots given to ingest, as they will be recorded: a folder's real path, a bucket's
    URL (normalised), a tar shard's real path or URL; a brace pattern
    (``shards/{000000..000099}.tar``) stands for every name it spells. Needs no library, so
    that an ingest can be refused before one is made; buckets are not reached here.

    Raises:
        LibraryError: a path that does not exist, is not a folder or shard, or is not UTF-8.
        OptionsError: an empty path, or a URL that names no bucket.
    """
    reals: list[str] = []
    for raw in paths:
        if raw == "":  # Path("") is the working folder: an unset variable, not a choice
            raise OptionsError("an empty path is not a folder: give the folder to ingest")
        text = os.fspath(raw)
        if text[:7].lower() == "file://":
            text = text[7:]
        for one in _spelled(text):
            reals.append(normalise(one) if is_remote(one) else _local_root(one))
    return reals


def _spelled(text: str) -> list[str]:
    """The names a brace pattern spells (``{a,b}``, ``{000..099}``), or the text itself
    (also a path on this machine that is there as it is written: a folder named ``{a,b}``)."""
    if "{" not in text or (not is_remote(text) and os.path.lexists(os.path.expanduser(text))):
        return [text]
    from braceexpand import braceexpand

    try:
        names = list(braceexpand(text))
    except Exception:
        raise OptionsError(f"{text!r} is not a brace pattern organizer can read") from None
    if not names:
        raise OptionsError(f"{text!r} spells no name")
    return names


def _local_root(raw: str) -> str:
    path = Path(raw).expanduser()
    if not path.exists():
        what = "shard" if is_shard(raw) else "folder"
        raise LibraryError(f"{what} not found: {path}")
    if not path.is_dir() and not (is_shard(raw) and path.is_file()):
        raise LibraryError(f"not a folder: {path} (ingest takes folders, buckets and .tar shards)")
    real = os.path.realpath(path)
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        raise LibraryError(
            f"cannot add {os.fsencode(real)!r} as a folder: its path is not valid UTF-8 "
            "(files with such names inside a folder are fine): ingest a parent folder"
        ) from None
    return real
