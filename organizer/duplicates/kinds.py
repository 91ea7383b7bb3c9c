"""Which files are the same photo, and how: exact copies, near copies, bursts.

Pure functions over image records and candidate pairs; :mod:`organizer.duplicates.find`
gathers those from the store and the vector index.

- **exact**: the same bytes (same SHA-256).
- **near**: the same picture re-encoded, resized, lightly cropped or stripped of metadata: a
  very high cosine similarity, a similar aspect ratio, and nothing that says they are two
  shots (two cameras, or one camera at two times).
- **burst**: different shots of one moment: the same camera, taken 1 to ``BURST_SECONDS``
  seconds apart (neighbour to neighbour), a high but lower similarity. A burst is never
  merged with near copies: shots at two times are never near copies of each other.

A camera RAW file and the non-RAW files of the same folder and name (its JPEG, a Live
Photo's still) are one shot, never duplicates of each other; they go and stay together.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from organizer import search
from organizer.choices import Decision, DuplicateKind
from organizer.duplicates.groups import DuplicateFile, DuplicateGroup, Role, group_id
from organizer.duplicates.keeper import KeeperRule, choose
from organizer.scan import is_raw_name
from organizer.store.duplicate_queries import DecisionRecord, Shot
from organizer.store.records import ImageRecord

NEAR_SIMILARITY = 0.96
BURST_SIMILARITY = 0.90
BURST_SECONDS = 10
ASPECT_TOLERANCE = 0.15  # |ln(aspect a / aspect b)|: a crop of about 15 % of one side

Pair = tuple[int, int, float]


@dataclass(frozen=True)
class Candidates:
    """What the store and the index found, for :func:`group`."""

    records: dict[int, ImageRecord]  # every image named below, shown and kept by the filter
    similar: list[Pair]  # pairs at or above the near threshold (the index's range search)
    copies: list[list[int]]  # images with identical bytes, a list per content
    bursts: list[Pair]  # neighbouring shots of one camera seconds apart, with their cosine


def shots_of(records: dict[int, ImageRecord]) -> dict[int, int]:
    """Each image's shot: the smallest id of its RAW + non-RAW set (same folder and name),
    else its own id."""
    by_name: dict[tuple[str, bytes], list[ImageRecord]] = {}
    for r in records.values():
        folder, name = os.path.split(r.relpath)
        stem = os.path.splitext(name)[0].lower()
        by_name.setdefault((r.root, os.path.join(folder, stem)), []).append(r)
    shot = {i: i for i in records}
    for same in by_name.values():
        raw = [is_raw_name(os.path.basename(r.relpath)) for r in same]
        if len(same) > 1 and any(raw) and not all(raw):
            first = min(r.id for r in same)
            shot.update({r.id: first for r in same})
    return shot


def two_moments(a: ImageRecord, b: ImageRecord) -> bool:
    """Whether the headers say these are two shots: two cameras, or one camera at two times."""
    if a.meta is None or b.meta is None:
        return False
    ca, cb = a.meta.camera, b.meta.camera
    if ca is not None and cb is not None and ca != cb:
        return True
    return (
        ca is not None
        and ca == cb
        and None not in (a.taken_at, b.taken_at)
        and (a.taken_at != b.taken_at)
    )


def similar_shape(a: ImageRecord, b: ImageRecord) -> bool:
    """Aspect ratios within :data:`ASPECT_TOLERANCE` (either way round: a copy may have been
    rotated); unknown sizes pass."""
    if not (a.width and a.height and b.width and b.height):
        return True
    ra, rb = a.width / a.height, b.width / b.height
    return min(abs(math.log(ra / rb)), abs(math.log(ra * rb))) <= ASPECT_TOLERANCE


def burst_pairs(shots: Sequence[Shot], seconds: float = BURST_SECONDS) -> list[tuple[int, int]]:
    """Neighbouring shots (in camera, time order) of one camera, 0 < gap <= ``seconds``."""
    out = []
    for a, b in itertools.pairwise(shots):
        gap = (b.taken_at - a.taken_at).total_seconds()
        if a.camera_id == b.camera_id and 0 < gap <= seconds:
            out.append((min(a.image_id, b.image_id), max(a.image_id, b.image_id)))
    return out


def group(
    found: Candidates,
    kinds: Iterable[DuplicateKind],
    rules: Sequence[KeeperRule] = (),
    decisions: Sequence[DecisionRecord] = (),
) -> list[DuplicateGroup]:
    """The groups of each kind asked for (exact, then near, then burst; largest first),
    leaving out what the user decided."""
    kinds = set(kinds)
    records = found.records
    shot = shots_of(records)
    apart = _naming(decisions, Decision.NOT_DUPLICATES)
    chosen = frozenset(h for d in decisions if d.decision == Decision.KEEPER for h in d.hashes)
    keep_all = _naming(decisions, Decision.KEEP_ALL)

    def allowed(a: int, b: int) -> bool:
        ha, hb = records[a].content_hash, records[b].content_hash
        return shot[a] != shot[b] and not (apart.get(ha, set()) & apart.get(hb, set()))

    same: list[Pair] = [(c[0], other, 1.0) for c in found.copies for other in c[1:]]
    near = [
        (a, b, s)
        for a, b, s in found.similar
        if records[a].content_hash == records[b].content_hash
        or (similar_shape(records[a], records[b]) and not two_moments(records[a], records[b]))
    ]
    copies = _components([p for p in [*same, *near] if allowed(p[0], p[1])], shot)
    members = {i: n for n, c in enumerate(copies) for i in c.ids}
    groups = []
    for c in copies:
        if DuplicateKind.NEAR in kinds and not _identical(c, records, shot):
            groups.append(_made(DuplicateKind.NEAR, c, records, shot, rules, chosen))
    if DuplicateKind.EXACT in kinds:
        # Only files that have a copy: a RAW file beside a copied JPEG is in the records
        # when near copies were searched too, and would otherwise join (and leave with) its
        # JPEG's exact group, which --kind exact alone never shows, under another id.
        copied = {i: shot[i] for c in found.copies for i in c}
        for c in _components([p for p in same if allowed(p[0], p[1])], copied):
            groups.append(_made(DuplicateKind.EXACT, c, records, shot, rules, chosen))
    if DuplicateKind.BURST in kinds:
        unit = {i: f"c{members[i]}" if i in members else f"s{shot[i]}" for i in records}
        moments = [(a, b, s) for a, b, s in found.bursts if allowed(a, b) and unit[a] != unit[b]]
        for c in _components(moments, shot, members):
            groups.append(_made(DuplicateKind.BURST, c, records, shot, rules, chosen))
    shown = [g for g in groups if not _decided(g, keep_all)]
    order = list(DuplicateKind)
    return sorted(shown, key=lambda g: (order.index(g.kind), -len(g.files), g.files[0].record.path))


@dataclass(frozen=True)
class _Component:
    ids: list[int]  # every file
    units: dict[int, int]  # each file's unit: its shot, or (bursts) its group of copies
    similarity: float  # the lowest similarity of the pairs that joined it


def _components(
    pairs: list[Pair], shot: dict[int, int], member_of: dict[int, int] | None = None
) -> list[_Component]:
    """Connected components of ``pairs`` over shots (a component has every file of its
    shots); with ``member_of`` (file -> group of copies), over those groups instead: a burst
    takes whole groups of copies."""
    member_of = member_of or {}

    def unit(i: int) -> int:
        return -1 - member_of[i] if i in member_of else shot[i]

    joined = [(unit(a), unit(b), s) for a, b, s in pairs]
    files: dict[int, list[int]] = {}
    for i in shot:
        files.setdefault(unit(i), []).append(i)
    parts = [u for u in search.groups_from_pairs(joined) if len(u) > 1]
    part_of = {u: n for n, units in enumerate(parts) for u in units}
    lowest = [1.0] * len(parts)
    for a, _, s in joined:
        n = part_of[a]
        lowest[n] = min(lowest[n], s)
    out = []
    for n, units in enumerate(parts):
        ids = sorted(i for u in units for i in files[u])
        out.append(_Component(ids, {i: unit(i) for i in ids}, lowest[n]))
    return out


def _made(
    kind: DuplicateKind,
    c: _Component,
    records: dict[int, ImageRecord],
    shot: dict[int, int],
    rules: Sequence[KeeperRule],
    chosen: frozenset[str],
) -> DuplicateGroup:
    files = [records[i] for i in c.ids]
    keeper = choose(files, rules, chosen, lambda a, b: shot[a.id] == shot[b.id])
    kept = records[keeper.image_id]
    first: dict[
        int, float
    ] = {}  # each unit's earliest time: bursts number their shots in time order
    for i in c.ids:
        first[c.units[i]] = min(first.get(c.units[i], records[i].taken), records[i].taken)
    order = {u: n for n, u in enumerate(sorted(first, key=lambda u: (first[u], u)), start=1)}

    def role(r: ImageRecord) -> Role:
        if r.id == kept.id:
            return Role.KEEP
        return Role.WITH_KEEPER if shot[r.id] == shot[kept.id] else Role.MOVE

    made = [
        DuplicateFile(
            r,
            role(r),
            r.content_hash is not None and r.content_hash == kept.content_hash,
            order[c.units[r.id]] if kind == DuplicateKind.BURST else 0,
        )
        for r in files
    ]
    made.sort(key=lambda f: (f.role != Role.KEEP, f.shot, f.record.root, f.record.relpath))
    return DuplicateGroup(
        group_id(r.content_hash for r in files), kind, tuple(made), keeper, c.similarity
    )


def _identical(c: _Component, records: dict[int, ImageRecord], shot: dict[int, int]) -> bool:
    """Whether every shot of a component has the same contents (copies of one file, or of
    one RAW + JPEG pair)."""
    by_shot: dict[int, list[str]] = {}
    for i in c.ids:
        by_shot.setdefault(shot[i], []).append(records[i].content_hash or "")
    contents = [sorted(h) for h in by_shot.values()]
    return all(h == contents[0] for h in contents)


def _naming(decisions: Sequence[DecisionRecord], kind: Decision) -> dict[str | None, set[int]]:
    """For each content, the decisions of this kind that name it."""
    out: dict[str | None, set[int]] = {}
    for d in decisions:
        if d.decision == kind:
            for h in d.hashes:
                out.setdefault(h, set()).add(d.id)
    return out


def _decided(g: DuplicateGroup, keep_all: dict[str | None, set[int]]) -> bool:
    """Whether one "keep all" decision names every content of the group."""
    common: set[int] | None = None
    for f in g.files:
        named = keep_all.get(f.record.content_hash, set())
        common = set(named) if common is None else common & named
        if not common:
            return False
    return bool(common)
