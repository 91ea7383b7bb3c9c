"""The read model of duplicates: groups of one kind, their files and keeper, and decisions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from organizer.choices import Decision, DuplicateKind
from organizer.duplicates.keeper import Keeper
from organizer.duplicates.plan import Plan, PlannedFile, PlannedGroup
from organizer.scan import exact_path, shown_path
from organizer.store.records import ImageRecord, OfflineImages, iso_utc


class Role(StrEnum):
    """What a clean-up does with a file of a group."""

    KEEP = "keep"  # the keeper
    WITH_KEEPER = "with-keeper"  # the same shot as the keeper (its RAW or JPEG): stays
    MOVE = "move"  # a duplicate: a clean-up moves it to the trash


def group_id(hashes: Iterable[str | None]) -> str:
    """A group's name from its contents: the same files give the same name in every run."""
    joined = ",".join(sorted({h for h in hashes if h}))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DuplicateFile:
    """A file of a duplicate group."""

    record: ImageRecord
    role: Role
    identical: bool  # the same bytes as the keeper
    shot: int = 0  # in a burst, which shot (1, 2, … in time order); 0 elsewhere

    @property
    def image_id(self) -> int:
        return self.record.id

    @property
    def root(self) -> str:
        return self.record.root

    @property
    def relpath(self) -> bytes:
        return self.record.relpath

    def to_dict(self, absolute: bool = False) -> dict:
        r = self.record
        return {
            "path": shown_path(r.root, r.relpath, absolute),
            **exact_path(r.root, r.relpath),
            "root": r.root,
            "image_id": r.id,
            "size": r.size,
            "width": r.width,
            "height": r.height,
            "sha256": r.content_hash,
            "role": str(self.role),
            "identical": self.identical,
            **({"shot": self.shot} if self.shot else {}),
            **r.facts(coordinates=False),
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are one photo (or, for a burst, one moment), with the file it keeps."""

    id: str
    kind: DuplicateKind
    files: tuple[DuplicateFile, ...]
    keeper: Keeper
    similarity: float  # the lowest cosine similarity of the pairs that joined it

    @property
    def keep(self) -> DuplicateFile:
        return next(f for f in self.files if f.role == Role.KEEP)

    @property
    def moved(self) -> list[DuplicateFile]:
        return [f for f in self.files if f.role == Role.MOVE]

    def to_dict(self, absolute: bool = False) -> dict:
        keep = self.keep.record
        return {
            "id": self.id,
            "kind": str(self.kind),
            "similarity": round(self.similarity, 6),
            "keep": {
                "path": shown_path(keep.root, keep.relpath, absolute),
                "image_id": keep.id,
                "rule": self.keeper.rule,
                "reason": self.keeper.reason,
            },
            "images": [f.to_dict(absolute) for f in self.files],
        }

    def planned(self) -> PlannedGroup:
        def entry(f: DuplicateFile) -> PlannedFile:
            assert f.record.content_hash is not None  # every embedded image was hashed
            return PlannedFile(f.record.path, f.record.content_hash, f.record.size)

        return PlannedGroup(
            self.id,
            self.kind,
            entry(self.keep),
            self.keeper.reason,
            tuple(entry(f) for f in self.moved),
        )


@dataclass(frozen=True)
class DecidedFiles:
    """A standing decision, with the files that hold its contents now."""

    id: int
    decision: Decision
    created_at: datetime
    records: tuple[ImageRecord, ...]
    hashes: int  # how many contents it names (some may be gone from the library)

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "decision": self.id,
            "kind": str(self.decision),
            "created": iso_utc(self.created_at, "seconds"),
            "contents": self.hashes,
            "images": [shown_path(r.root, r.relpath, absolute) for r in self.records],
        }


@dataclass(frozen=True)
class Duplicates:
    """The duplicate groups of a library by kind, and what absent roots kept out of them."""

    groups: list[DuplicateGroup]
    kinds: tuple[DuplicateKind, ...] = tuple(DuplicateKind)
    decided: list[DecidedFiles] | None = None  # with --show-decided
    offline: OfflineImages = field(default_factory=OfflineImages)

    def of(self, kind: DuplicateKind) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.kind == kind]

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            **{str(k): [g.to_dict(absolute) for g in self.of(k)] for k in self.kinds},
            **(
                {}
                if self.decided is None
                else {"decided": [d.to_dict(absolute) for d in self.decided]}
            ),
            "offline": self.offline.to_dict(),
        }

    def plan(self, library: str, kinds: Iterable[DuplicateKind]) -> Plan:
        """The clean-up plan of the groups of these kinds. A group inside a wider one of the
        plan (exact copies inside a near group, near copies inside a burst) gives way to it,
        so that no file is in two groups."""
        kinds = set(kinds)
        chosen: list[DuplicateGroup] = []
        taken: set[int] = set()
        for kind in (DuplicateKind.BURST, DuplicateKind.NEAR, DuplicateKind.EXACT):
            for g in self.of(kind) if kind in kinds else []:
                if not any(f.record.id in taken for f in g.files):
                    chosen.append(g)
                    taken.update(f.record.id for f in g.files)
        # By position, never list.index: that compares whole groups, once per group.
        position = {id(g): n for n, g in enumerate(self.groups)}
        chosen.sort(key=lambda g: position[id(g)])
        created = datetime.now(UTC).isoformat(timespec="seconds")
        return Plan(library, created, tuple(g.planned() for g in chosen if g.moved))
