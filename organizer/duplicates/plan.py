"""A clean-up plan: duplicate groups, each with the file it keeps and the files to move away.

Written by ``organizer duplicates --plan PLAN.json``, edited by the user if they like, carried
out by ``organizer clean PLAN.json``. Every file is named by its absolute path *and* its content
(SHA-256 and size), so a file that changed after the plan was made is never moved.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from organizer.atomic import write_text_atomic
from organizer.choices import DuplicateKind
from organizer.errors import PlanError
from organizer.sources import is_remote

PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlannedFile:
    """A file a plan names: where it is and what it must still contain."""

    path: bytes  # absolute, the filesystem's bytes (an object's URL in a bucket)
    sha256: str
    size: int

    def to_dict(self) -> dict:
        # os.fsdecode keeps undecodable bytes as lone surrogates, which json escapes (\udcxx)
        # and reads back unchanged.
        return {"path": os.fsdecode(self.path), "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: object, where: str) -> PlannedFile:
        if not isinstance(d, dict):
            raise PlanError(f"{where} is not a file entry ({{'path', 'sha256', 'size'}})")
        path, digest, size = d.get("path"), d.get("sha256"), d.get("size")
        if not isinstance(path, str) or not (os.path.isabs(path) or is_remote(path)):
            raise PlanError(f"{where}: 'path' must be an absolute path (or a bucket URL)")
        try:
            raw = os.fsencode(path)
        except UnicodeEncodeError:  # a lone surrogate no file name's bytes decode to
            raw = b"\0"
        if b"\0" in raw:
            raise PlanError(f"{where}: 'path' is not a file name (a NUL or a stray surrogate)")
        if not isinstance(digest, str) or len(digest) != 64 or not _hex(digest):
            raise PlanError(f"{where}: 'sha256' must be 64 hexadecimal digits")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PlanError(f"{where}: 'size' must be a whole number of bytes")
        return cls(raw, digest.lower(), size)


@dataclass(frozen=True)
class PlannedGroup:
    """One group: ``keep`` stays where it is, every file of ``move`` goes to the trash."""

    id: str
    kind: DuplicateKind
    keep: PlannedFile
    reason: str
    move: tuple[PlannedFile, ...]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "keep": {**self.keep.to_dict(), "reason": self.reason},
            "move": [f.to_dict() for f in self.move],
        }


@dataclass(frozen=True)
class Plan:
    """What ``organizer clean`` will do, group by group."""

    library: str
    created: str  # ISO 8601
    groups: tuple[PlannedGroup, ...]

    def to_dict(self) -> dict:
        return {
            "organizer_plan": PLAN_FORMAT,
            "library": self.library,
            "created": self.created,
            "groups": [g.to_dict() for g in self.groups],
        }

    @property
    def checksum(self) -> str:
        """A digest of what the plan does (not of its layout): ties a journal to its plan."""
        canonical = json.dumps(self.to_dict()["groups"], sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()

    def write(self, path: Path) -> None:
        """Write the plan as indented JSON (atomically: a crash never leaves half a plan)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Plan:
        """Read and check a plan file.

        Raises:
            PlanError: the file is missing, is not a plan, or names one file twice (kept in
                one group and moved in another, or moved twice): nothing would be safe to do.
        """
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise PlanError(
                f"no plan at {path}: write one with organizer duplicates --plan"
            ) from None
        except (OSError, ValueError) as exc:
            raise PlanError(f"cannot read the plan {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("organizer_plan") != PLAN_FORMAT:
            raise PlanError(f"{path} is not an organizer clean-up plan (format {PLAN_FORMAT})")
        groups = doc.get("groups")
        if not isinstance(groups, list):
            raise PlanError(f"{path}: 'groups' must be a list")
        plan = cls(
            str(doc.get("library", "")),
            str(doc.get("created", "")),
            tuple(_group(g, n) for n, g in enumerate(groups, start=1)),
        )
        _check_each_file_once(plan.groups)
        return plan


def _group(d: object, n: int) -> PlannedGroup:
    where = f"group {n}"
    if not isinstance(d, dict):
        raise PlanError(f"{where} is not a group")
    try:
        kind = DuplicateKind(str(d.get("kind")))
    except ValueError:
        choices = ", ".join(k.value for k in DuplicateKind)
        raise PlanError(f"{where}: 'kind' must be one of {choices}") from None
    keep = d.get("keep")
    move = d.get("move", [])
    if not isinstance(move, list):
        raise PlanError(f"{where}: 'move' must be a list")
    return PlannedGroup(
        str(d.get("id", n)),
        kind,
        PlannedFile.from_dict(keep, f"{where}, its keeper"),
        str(keep.get("reason", "")) if isinstance(keep, dict) else "",
        tuple(PlannedFile.from_dict(f, f"{where}, file {i}") for i, f in enumerate(move, 1)),
    )


def _check_each_file_once(groups: Iterable[PlannedGroup]) -> None:
    kept: set[bytes] = set()
    moved: set[bytes] = set()
    for g in groups:
        kept.add(normal_path(g.keep.path))
    for g in groups:
        for f in g.move:
            path = normal_path(f.path)
            if path in kept:
                raise PlanError(f"{os.fsdecode(f.path)} is both kept and moved: edit the plan")
            if path in moved:
                raise PlanError(f"{os.fsdecode(f.path)} is moved twice: edit the plan")
            moved.add(path)


def normal_path(path: bytes) -> bytes:
    """A plan's path with ``..`` and doubled slashes resolved; a URL as it is (its ``//``
    is no doubled slash)."""
    return path if is_remote(path) else os.path.normpath(path)


def _hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
