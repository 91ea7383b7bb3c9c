"""Roots on disk: which root a folder given to ingest belongs to (an existing root, part of
one, a new root, or a new root that absorbs roots inside it), and whether a folder holds the
files of a root that moved. Paths and files only; the database is the caller's."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from organizer.errors import LibraryError, OptionsError
from organizer.ingest import Target
from organizer.store.records import KnownImage, RootRecord, iso_utc


def targets_for(paths: list[str | Path], roots: dict[int, str]) -> list[Target]:
    """The walks an ingest of ``paths`` needs, given the library's roots (id -> path).

    No paths means every known root that is present (an unplugged drive is skipped).

    Raises:
        LibraryError: a path that does not exist, is not a folder, or is not valid UTF-8.
        OptionsError: an empty path.
    """
    if not paths:
        return [Target(path, root_id) for root_id, path in roots.items() if Path(path).is_dir()]
    reals = ingest_folders(paths)
    return _merge_targets([_target_for(real, roots) for real in _outermost(reals)])


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


def _outermost(paths: list[str]) -> list[str]:
    """The given folders minus those inside another given folder."""
    ordered = sorted(set(paths), key=len)
    kept: list[str] = []
    for path in ordered:
        if not any(path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _target_for(real: str, roots: dict[int, str]) -> Target:

    for root_id, root in roots.items():
        if real == root:
            return Target(root, root_id)
        if real.startswith(root.rstrip("/") + "/"):
            return Target(root, root_id, prefix=os.fsencode(os.path.relpath(real, root)))
    children = [
        (root_id, os.fsencode(os.path.relpath(root, real)))
        for root_id, root in roots.items()
        if root.startswith(real.rstrip("/") + "/")
    ]
    return Target(real, None, absorb=children)


def _merge_targets(targets: list[Target]) -> list[Target]:
    """Drop targets covered by another one in the same run (e.g. a folder and its subfolder)."""
    merged: list[Target] = []
    for t in sorted(targets, key=lambda t: (t.root_path, t.prefix)):
        covered = any(
            m.root_path == t.root_path
            and (not m.prefix or t.prefix == m.prefix or t.prefix.startswith(m.prefix + b"/"))
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


def check_move(sample: list[KnownImage], folder: str) -> MoveCheck:
    """Compare recorded images with the files at the same relative paths under ``folder``:
    sizes for the whole sample, SHA-256 for a few of them."""
    base = os.fsencode(folder)
    same_size = hashed = same_hash = 0
    for k in sample:
        path = os.path.join(base, k.relpath)
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        if size != k.size:
            continue
        same_size += 1
        if hashed < MOVE_HASHED and k.content_hash:
            hashed += 1
            same_hash += _sha256(path) == k.content_hash
    return MoveCheck(len(sample), same_size, hashed, same_hash)


def _sha256(path: bytes) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def find_root(path: str | Path, roots: dict[int, str]) -> int | None:
    """The id of the root at ``path`` (which may be gone: an unplugged drive), or None."""
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
        data = {
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
