"""Roots: which root a folder given to ingest belongs to (an existing root, part of one, a
new root, or a new root that absorbs roots inside it), whether a folder holds the files of a
root that moved, and (:class:`Roots`) a library's roots in its database: listed, removed,
moved, and which are absent now."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from organizer.errors import LibraryError, OptionsError, OrganizerError
from organizer.ingest import Target
from organizer.ingest.plan import ingest_folders
from organizer.paths import is_within
from organizer.sources import Storage, fetch, is_remote, is_shard, normalise, read_stored, stat
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import KnownImage, OfflineImages, RootRecord, iso_utc


def targets_for(paths: list[str | Path], roots: dict[int, str]) -> list[Target]:
    """The walks an ingest of ``paths`` needs, given the library's roots (id -> path).

    No paths means every known root that is present (an unplugged drive is skipped).

    Raises:
        LibraryError: a path that does not exist, is not a folder, or is not valid UTF-8.
        OptionsError: an empty path.
    """
    if not paths:
        return [
            Target(path, root_id, optional=True)
            for root_id, path in roots.items()
            if is_present(path)
        ]
    reals = ingest_folders(paths)
    shards = {root: root_id for root_id, root in roots.items() if is_shard(root)}
    # A shard is a root of its own, never part of a folder's or a bucket's (nor does it
    # hold one): it is matched whole.
    found = [Target(real, shards.get(real)) for real in dict.fromkeys(reals) if is_shard(real)]
    others = {i: r for i, r in roots.items() if not is_shard(r)}
    rest = [_target_for(real, others) for real in _outermost([r for r in reals if not is_shard(r)])]
    return found + _merge_targets(rest)


def is_present(root: str) -> bool:
    """Whether a root is there now: a folder or shard on this machine (an unplugged drive
    is not); a bucket is taken as present (asking would cost a request per command)."""
    if is_remote(root):
        return True
    return Path(root).is_file() if is_shard(root) else Path(root).is_dir()


def _outermost(paths: list[str]) -> list[str]:
    """The given folders minus those inside another given folder."""
    ordered = sorted(set(paths), key=len)
    kept: list[str] = []
    for path in ordered:
        if not any(is_within(path, k, strictly=True) for k in kept):
            kept.append(path)
    return kept


def _target_for(real: str, roots: dict[int, str]) -> Target:

    for root_id, root in roots.items():
        if real == root:
            return Target(root, root_id)
        if is_within(real, root, strictly=True):
            return Target(root, root_id, prefix=os.fsencode(os.path.relpath(real, root)))
    children = [
        (root_id, os.fsencode(os.path.relpath(root, real)))
        for root_id, root in roots.items()
        if is_within(root, real, strictly=True)
    ]
    return Target(real, None, absorb=children)


def _merge_targets(targets: list[Target]) -> list[Target]:
    """Drop targets covered by another one in the same run (e.g. a folder and its subfolder)."""
    merged: list[Target] = []
    for t in sorted(targets, key=lambda t: (t.root_path, t.prefix)):
        covered = any(
            m.root_path == t.root_path and (not m.prefix or is_within(t.prefix, m.prefix))
            for m in merged
        )
        if not covered:
            merged.append(t)
    return merged


# -- roots that move or go away ----------------------------------------------------------------

# How many of an absent root's images are compared with a folder to call it the same folder.
MOVE_SAMPLE = 20
MOVE_HASHED = 3


@dataclass(frozen=True)
class MoveCheck:
    """How well a folder matches the images recorded under a root (a sample of them)."""

    checked: int
    same_size: int
    hashed: int
    same_hash: int

    @property
    def matches(self) -> bool:
        return (
            self.checked > 0
            and self.same_size >= 0.9 * self.checked
            and self.same_hash == self.hashed
        )


def check_move(sample: list[KnownImage], folder: str, storage: Storage | None = None) -> MoveCheck:
    """Compare recorded images with the files at the same relative paths under ``folder``
    (or objects under a bucket prefix): sizes for the whole sample, SHA-256 for a few."""
    if is_shard(folder):
        return _check_shard(sample, folder, storage)
    base = os.fsencode(folder)
    same_size = hashed = same_hash = 0
    for k in sample:
        path = os.path.join(base, k.relpath)
        if _size(path, storage) != k.size:
            continue
        same_size += 1
        if hashed < MOVE_HASHED and k.content_hash:
            hashed += 1
            same_hash += _sha256(path, storage) == k.content_hash
    return MoveCheck(len(sample), same_size, hashed, same_hash)


def _check_shard(sample: list[KnownImage], shard: str, storage: Storage | None) -> MoveCheck:
    """:func:`check_move` for a tar shard: its members read by name (they are small)."""
    same_size = hashed = same_hash = 0
    for k in sample:
        try:
            data = read_stored(shard, k.relpath, storage)
        except OrganizerError:
            continue
        if len(data) != k.size:
            continue
        same_size += 1
        if hashed < MOVE_HASHED and k.content_hash:
            hashed += 1
            same_hash += hashlib.sha256(data).hexdigest() == k.content_hash
    return MoveCheck(len(sample), same_size, hashed, same_hash)


def _size(path: bytes, storage: Storage | None) -> int | None:
    try:
        if is_remote(path):
            return stat(os.fsdecode(path), storage or Storage()).size
        return os.stat(path).st_size
    except (OSError, OrganizerError):
        return None


def _sha256(path: bytes, storage: Storage | None = None) -> str | None:
    try:
        if is_remote(path):
            return hashlib.sha256(fetch(path, storage or Storage())).hexdigest()
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except (OSError, OrganizerError):
        return None


def _new_place(new: str, old: str) -> str:
    """Where ``roots move`` points a root: a folder's real path, or a bucket URL; of the
    same kind as the root (a folder for a folder, a bucket prefix for a bucket)."""
    if is_remote(new) != is_remote(old) or is_shard(new) != is_shard(old):
        raise OptionsError(
            f"{new} is not the same kind of root as {old}: a folder moves to a folder, a "
            "bucket prefix to a bucket prefix, a shard to a shard"
        )
    if is_remote(new):
        return normalise(new)
    target = Path(new).expanduser()
    if not (target.is_file() if is_shard(new) else target.is_dir()):
        raise LibraryError(f"not a {'shard' if is_shard(new) else 'folder'}: {new}")
    return os.path.realpath(target)


def find_root(path: str | Path, roots: dict[int, str]) -> int | None:
    """The id of the root at ``path`` (which may be gone: an unplugged drive), or None."""
    if is_remote(str(path)):
        url = normalise(str(path))
        return next((i for i, root in roots.items() if root == url), None)
    wanted = {os.path.abspath(Path(path).expanduser())}
    with contextlib.suppress(OSError):
        wanted.add(os.path.realpath(Path(path).expanduser()))
    for root_id, root in roots.items():
        if root in wanted or root.rstrip("/") in wanted:
            return root_id
    return None


@dataclass(frozen=True)
class RootStatus:
    """A root as ``organizer roots`` shows it: is its folder there now, what it holds."""

    record: RootRecord
    present: bool

    def to_dict(self) -> dict:
        r = self.record
        return {
            "path": r.path,
            "present": self.present,
            "images": r.images,
            "last_scan_at": iso_utc(r.last_scan_at),
        }


@dataclass(frozen=True)
class RootChange:
    """What ``roots remove`` or ``roots move`` did (or, with ``dry_run``, would do)."""

    action: str  # "remove" or "move"
    path: str
    new_path: str | None
    images: int
    dry_run: bool
    check: MoveCheck | None = None

    def to_dict(self) -> dict:
        data: dict[str, object] = {
            "action": self.action,
            "path": self.path,
            "new_path": self.new_path,
            "images": self.images,
            "dry_run": self.dry_run,
        }
        if self.check is not None:
            data["checked"] = {
                "files": self.check.checked,
                "same_size": self.check.same_size,
                "hashed": self.check.hashed,
                "same_hash": self.check.same_hash,
            }
        return data


@dataclass(frozen=True)
class Shown:
    """What the commands that show images show: the present roots, and what is left out."""

    roots: list[int] | None  # ids of the roots whose images are shown; None: every root
    hidden: frozenset[str]  # paths of the absent roots
    offline: OfflineImages  # their images, left out


class Roots:
    """A library's roots as its database records them, and as the disk has them now."""

    def __init__(
        self,
        engine: Engine,
        writer: Callable[[str], AbstractContextManager[object]],
        refresh_index: Callable[[], object],
    ):
        """``writer(purpose)`` holds the library's writer lock (never waiting) while a root
        changes; ``refresh_index()`` brings the index in step after a root is removed."""
        self.engine = engine
        self.writer = writer
        self.refresh_index = refresh_index

    def all(self) -> list[RootStatus]:
        """Every root: is its folder there now, and its images by status."""
        with self.engine.connect() as conn:
            records = q.root_records(conn)
        return [RootStatus(r, is_present(r.path)) for r in records]

    def find(self, path: str | Path) -> RootStatus:
        """The root at ``path``; a LibraryError when there is none."""
        roots = {r.record.id: r for r in self.all()}
        found = find_root(path, {i: r.record.path for i, r in roots.items()})
        if found is None:
            raise LibraryError(
                f"{path} is not a root of this library: `organizer roots` lists them"
            )
        return roots[found]

    def remove(self, path: str | Path, dry_run: bool = False) -> RootChange:
        """Forget a root and everything recorded under it (never touches its files)."""
        root = self.find(path)
        change = RootChange(
            "remove", root.record.path, None, sum(root.record.images.values()), dry_run
        )
        if dry_run:
            return change
        with self.writer("roots remove"):
            with write_transaction(self.engine) as conn:
                q.delete_root(conn, root.record.id)
            self.refresh_index()
        return change

    def move(self, old: str | Path, new: str | Path, dry_run: bool = False) -> RootChange:
        """Point a root at the folder its files moved to (a rename, a new mount point);
        image ids, vectors and clusters are kept. A sample of the files is checked first
        (sizes, and SHA-256 of a few).

        Raises:
            LibraryError: ``old`` is not a root, ``new`` is not a folder, is (or overlaps)
                another root, or does not hold the root's files.
            OptionsError: ``new`` names the root itself (a trailing slash, ./, a link).
        """
        root = self.find(old)
        if find_root(new, {root.record.id: root.record.path}) is not None:
            raise OptionsError(
                f"{new} is the root {root.record.path} itself: nothing to move; give the "
                "folder its files are in now"
            )
        real = _new_place(str(new), root.record.path)
        for other in self.all():
            p = other.record.path
            if other.record.id != root.record.id and (is_within(p, real) or is_within(real, p)):
                raise LibraryError(
                    f"{real} overlaps the root {p} of this library: `organizer roots remove {p}` "
                    "first if its images are the same as these"
                )
        with self.engine.connect() as conn:
            sample = q.sample_images(conn, root.record.id, MOVE_SAMPLE)
        check = check_move(sample, real, self.storage())
        if sample and not check.matches:
            raise LibraryError(
                f"{real} does not hold the files of {root.record.path}: of {check.checked} "
                f"sampled files, {check.same_size} were found with the same size and "
                f"{check.same_hash} of {check.hashed} with the same content; nothing changed"
            )
        change = RootChange(
            "move", root.record.path, real, sum(root.record.images.values()), dry_run, check
        )
        if dry_run:
            return change
        with self.writer("roots move"), write_transaction(self.engine) as conn:
            q.move_root(conn, root.record.id, real)
        return change

    def storage(self, endpoint_url: str | None = None) -> Storage:
        """How this library's buckets are reached: ``endpoint_url`` if given (this command's),
        else the endpoint each bucket root was ingested through."""
        with self.engine.connect() as conn:
            recorded = q.root_endpoints(conn)
        return Storage(endpoint_url, tuple(sorted(recorded.items())))

    def targets(self, paths: list[str | Path]) -> list[Target]:
        """The walks an ingest of ``paths`` needs (see :func:`targets_for`); a LibraryError
        when a new root holds the files of an absent one (``roots move`` is the way)."""
        with self.engine.connect() as conn:
            roots = q.all_roots(conn)
            targets = targets_for(paths, roots)
            new = any(t.root_id is None for t in targets)  # only a new root can be a moved one
            absent = {i: p for i, p in roots.items() if new and not is_present(p)}
            samples = {i: q.sample_images(conn, i, MOVE_SAMPLE) for i in absent}
        for target in targets:
            if target.root_id is not None:
                continue
            for root_id, old in absent.items():
                if check_move(samples[root_id], target.root_path).matches:
                    raise LibraryError(
                        f"{target.root_path} holds the files of {old}, which is absent: "
                        f"run `organizer roots move {old} {target.root_path}` to point the "
                        "library there (ids, vectors and clusters kept), or `organizer roots "
                        f"remove {old}` first to start afresh"
                    )
        return targets

    def _absent(self, include_offline: bool) -> tuple[dict[int, str], dict[int, str]]:
        """(every root, the absent ones) by id; none counts as absent with
        ``include_offline``, and then the database is not even asked."""
        if include_offline:
            return {}, {}
        with self.engine.connect() as conn:
            roots = q.all_roots(conn)
        return roots, {i: p for i, p in roots.items() if not is_present(p)}

    def shown(self, include_offline: bool) -> Shown:
        """What similar, search, duplicates, cluster and report show, and leave out."""
        roots, absent = self._absent(include_offline)
        if not absent:
            return Shown(None, frozenset(), OfflineImages())
        with self.engine.connect() as conn:
            held = q.ok_counts(conn, list(absent))
        return Shown(
            [i for i in roots if i not in absent],
            frozenset(absent.values()),
            OfflineImages(tuple(absent[i] for i in sorted(held)), sum(held.values())),
        )

    def hidden(self, include_offline: bool = False) -> frozenset[str]:
        """Paths of the roots whose images searches leave out."""
        return frozenset(self._absent(include_offline)[1].values())

    def containing(self, folder: str) -> list[str]:
        """The roots ``folder`` (a real path) is at or inside."""
        return [r.record.path for r in self.all() if is_within(folder, r.record.path)]

    def photos_under(self, folder: str) -> int:
        """How many images the library holds at or below ``folder`` (a real path)."""
        held = 0
        with self.engine.connect() as conn:
            for root_id, root in q.all_roots(conn).items():
                if is_within(folder, root):
                    prefix = os.fsencode(os.path.relpath(folder, root)) if folder != root else b""
                    held += len(q.known_images(conn, root_id, prefix if prefix != b"." else b""))
                elif is_within(root, folder):
                    held += len(q.known_images(conn, root_id))
        return held
