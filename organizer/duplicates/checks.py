"""What a clean-up plan may move, checked against the disk before anything moves.

Each group's keeper must be there, a regular file with the size and SHA-256 the plan
names, or none of the group's files moves. Each file to move must be under a root of the
library, a regular file (never a link), with its planned size and content, and not the
keeper itself under another name. Each accepted file gets its place in the trash, and its
companions theirs beside it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from organizer.duplicates import trash
from organizer.duplicates.journal import Intent
from organizer.duplicates.plan import Plan, PlannedFile, PlannedGroup, normal_path
from organizer.errors import ImageError, PlanError, StorageError
from organizer.paths import is_within
from organizer.scan import display_path, shown_path
from organizer.scan import display_text as shown_text
from organizer.sources import Storage, is_local_folder, read_stored

NOT_HERE = "in a bucket or a tar shard: organizer only moves files on this machine"


@dataclass(frozen=True)
class LeftFile:
    """A file a clean-up left where it is (or an undo left in the trash), and why."""

    path: bytes
    root: str | None
    group: str
    reason: str

    def shown(self, absolute: bool = False) -> str:
        if self.root is None:
            return display_path(self.path)
        return shown_path(self.root, os.path.relpath(self.path, os.fsencode(self.root)), absolute)

    def to_dict(self, absolute: bool = False) -> dict:
        return {"path": self.shown(absolute), "group": self.group, "reason": self.reason}

    def record(self) -> dict:
        """Its line in the journal (a "left" record)."""
        return {
            "record": "left",
            "path": os.fsdecode(self.path),
            "root": self.root,
            "group": self.group,
            "reason": self.reason,
        }

    @classmethod
    def from_record(cls, d: dict) -> LeftFile:
        root = d.get("root")
        return cls(os.fsencode(d["path"]), root, str(d["group"]), str(d["reason"]))


@dataclass(frozen=True)
class _Accepted:
    """A planned file that passed the checks."""

    group: str
    root: str
    src: bytes
    seen: trash.Seen


def check_plan(
    plan: Plan,
    plan_path: Path,
    roots: list[str],
    to: bytes | None,
    earlier: set[bytes],
    storage: Storage | None = None,
) -> tuple[list[Intent], list[LeftFile]]:
    """The moves a plan may make now (numbered, companions after their photo), and the
    files it leaves where they are, with the reason (``earlier``: the files an earlier
    clean-up of the plan moved). Reads every file the plan names. Files in buckets and tar
    shards never move; a keeper there is read through ``storage`` to check it.

    Raises:
        PlanError: none of the plan's files is under a root of this library.
    """
    accepted: list[_Accepted] = []
    left: list[LeftFile] = []
    located = 0
    keepers = [_keeper(group, roots, storage) for group in plan.groups]
    # Every keeper, by its inode: a file kept by one group and named otherwise (through a
    # folder link, or a hard link) in another group's move list stays too.
    kept = {(k.dev, k.ino) for _, k in keepers if k is not None}
    for group, (problem, _) in zip(plan.groups, keepers, strict=True):
        files = [(normal_path(f.path), f) for f in group.move]
        found = [(path, f, trash.root_of(path, roots)) for path, f in files]
        located += sum(root is not None for _, _, root in found)
        if problem is not None:
            left.extend(LeftFile(path, root, group.id, problem) for path, _, root in found)
            continue
        for path, f, root in found:
            if root is not None and not is_local_folder(root):
                left.append(LeftFile(path, root, group.id, NOT_HERE))
                continue
            try:
                accepted.append(_Accepted(group.id, _root(root), path, _check(path, f, kept, to)))
            except trash.Skip as skip:
                moved = str(skip) == trash.MISSING and path in earlier
                reason = "moved to the trash by an earlier clean-up of this plan"
                left.append(LeftFile(path, root, group.id, reason if moved else str(skip)))
    if plan.groups and not located:
        raise PlanError(
            f"none of the files {plan_path} moves is under a root of this library (the plan "
            f"names the library {plan.library or 'unknown'}): pass --library"
        )
    return _destinations(accepted, to, left), left


def _root(root: str | None) -> str:
    if root is None:
        raise trash.Skip("under no root of this library")
    return root


def _keeper(
    group: PlannedGroup, roots: list[str], storage: Storage | None
) -> tuple[str | None, trash.Seen | None]:
    """(why the group is left alone, or None; the keeper as it is now)."""
    path = normal_path(group.keep.path)
    root = trash.root_of(path, roots)
    shown = shown_text(os.fsdecode(path)) if root is None else LeftFile(path, root, "", "").shown()
    try:
        if root is None or is_local_folder(root):
            seen = trash.look(path)
        else:
            seen = _look_stored(path, root, storage)
    except trash.Skip as skip:
        return f"its keeper {shown} is {skip}: the group is left as it is", None
    if (seen.size, seen.sha256) != (group.keep.size, group.keep.sha256):
        return f"its keeper {shown} changed since the plan: the group is left as it is", None
    return None, seen


def _look_stored(path: bytes, root: str, storage: Storage | None) -> trash.Seen:
    """A keeper in a bucket or a tar shard, read through to its SHA-256 (it stays there, and
    its copies on this machine may go).

    Raises:
        Skip: it cannot be read now.
    """
    try:
        data = read_stored(root, path[len(os.fsencode(root)) + 1 :], storage)
    except (ImageError, StorageError) as exc:
        raise trash.Skip(f"not readable now ({exc})") from None
    # No inode: (-1, -1) is no file's on this machine.
    return trash.Seen(len(data), 0, -1, -1, hashlib.sha256(data).hexdigest())


def _check(
    path: bytes, planned: PlannedFile, kept: set[tuple[int, int]], to: bytes | None
) -> trash.Seen:
    """The file at ``path`` as it is now, if the plan may move it.

    Raises:
        Skip: why it stays.
    """
    folder = os.path.dirname(path)
    if trash.TRASH_FOLDER.encode() in folder.split(b"/") or (to and is_within(path, to)):
        raise trash.Skip("already in a trash folder")
    if os.path.realpath(folder) != folder:
        raise trash.Skip("its folder is reached through a symbolic link")
    seen = trash.look(path)
    if (seen.size, seen.sha256) != (planned.size, planned.sha256):
        raise trash.Skip("changed since the plan")
    if (seen.dev, seen.ino) in kept:
        raise trash.Skip("the same file as a keeper (another name of it)")
    return seen


def _destinations(
    accepted: list[_Accepted], to: bytes | None, left: list[LeftFile]
) -> list[Intent]:
    """Each accepted file's place in the trash, and its companions' beside it."""
    moving = {a.src for a in accepted}
    claimed: set[bytes] = set()  # trash paths given out
    listings: dict[bytes, trash.Listing] = {}
    intents: list[Intent] = []
    for a in accepted:
        found = [c for c in trash.companions(a.src, moving, listings) if c not in moving]
        comps: list[tuple[bytes, trash.Seen]] = []
        for c in found:
            try:
                comps.append((c, trash.look(c)))
            except trash.Skip as skip:
                reason = f"a companion of {display_path(os.path.basename(a.src))}: {skip}"
                left.append(LeftFile(c, a.root, a.group, reason))
        moving.update(c for c, _ in comps)  # a companion goes with one photo only
        names = [os.path.basename(c) for c, _ in comps]
        dsts = trash.free_names(trash.trash_path(a.src, a.root, to), names, claimed)
        for (path, seen), dst, of in zip(
            [(a.src, a.seen), *comps], dsts, [None, *(a.src for _ in comps)], strict=True
        ):
            n = len(intents) + 1
            intents.append(
                Intent(n, a.group, a.root, path, dst, seen.sha256, seen.size, seen.mtime_ns, of)
            )
    return intents
