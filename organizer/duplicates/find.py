"""Find a library's duplicates: candidates from the store and the vector index, grouped by
:mod:`organizer.duplicates.kinds`, with decisions; and record new decisions.

Near copies come from the index's range search (never every vector in memory at once);
identical files from their SHA-256; bursts from the shots of each camera in time order, so
their lower threshold never widens the index search.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, Engine

from organizer.choices import Decision, DuplicateKind
from organizer.duplicates.groups import DecidedFiles, Duplicates
from organizer.duplicates.keeper import parse_prefer
from organizer.duplicates.kinds import (
    BURST_SIMILARITY,
    NEAR_SIMILARITY,
    Candidates,
    Pair,
    burst_pairs,
    group,
)
from organizer.errors import OptionsError, QueryError
from organizer.finder import Finder
from organizer.store import duplicate_queries as dq
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import ImageRecord, ImageStatus

ALL_KINDS = tuple(DuplicateKind)


@dataclass(frozen=True)
class DuplicateOptions:
    """What ``organizer duplicates`` looks for and how it picks keepers."""

    kinds: tuple[DuplicateKind, ...] = ALL_KINDS
    threshold: float = NEAR_SIMILARITY  # near copies: cosine similarity from this
    prefer: tuple[str, ...] = ()  # keeper rules (organizer.duplicates.keeper)
    show_decided: bool = False


def parse_kinds(text: str | None) -> tuple[DuplicateKind, ...]:
    """``exact,near,burst`` (any of them, in any order) as kinds; None gives all three.

    Raises:
        OptionsError: an unknown kind.
    """
    if text is None:
        return ALL_KINDS
    chosen = set()
    for part in text.split(","):
        try:
            chosen.add(DuplicateKind(part.strip().lower()))
        except ValueError:
            names = ", ".join(k.value for k in DuplicateKind)
            raise OptionsError(f"--kind {text!r}: each kind is one of {names}") from None
    return tuple(k for k in DuplicateKind if k in chosen)


def find(engine: Engine, finder: Finder, options: DuplicateOptions) -> Duplicates:
    """The duplicate groups of the images ``finder`` shows (and its filter keeps).

    Raises:
        QueryError: a threshold outside (0, 1].
        OptionsError: a bad ``--prefer`` rule.
    """
    if not 0 < options.threshold <= 1:
        raise QueryError(f"--threshold must be in (0, 1], not {options.threshold}")
    rules = parse_prefer(options.prefer)
    kept = finder.kept()
    allowed = None if kept is None else set(kept.tolist())
    similar = (
        [] if options.kinds == (DuplicateKind.EXACT,) else finder.similar_pairs(options.threshold)
    )
    with engine.connect() as conn, conn.begin():
        model = q.library_model(conn)
        copies = [_kept(c, allowed) for c in dq.copies(conn)]
        bursts: list[Pair] = []
        if DuplicateKind.BURST in options.kinds and model is not None:
            shots = [s for s in dq.timed_shots(conn) if allowed is None or s.image_id in allowed]
            bursts = _similar_enough(conn, model.id, model.dim, burst_pairs(shots))
        decisions = dq.decisions(conn)
        ids = {i for c in copies for i in c} | {i for p in [*similar, *bursts] for i in p[:2]}
        records = {
            i: r for i, r in q.describe_images(conn, sorted(ids)).items() if finder.visible(r)
        }
        decided = _decided(conn, finder, decisions) if options.show_decided else None
    shown = Candidates(
        records,
        [p for p in similar if p[0] in records and p[1] in records],
        [c for c in ([i for i in c if i in records] for c in copies) if len(c) > 1],
        [p for p in bursts if p[0] in records and p[1] in records],
    )
    groups = group(shown, options.kinds, rules, decisions)
    return Duplicates(groups, options.kinds, decided)


def _kept(ids: list[int], allowed: set[int] | None) -> list[int]:
    return ids if allowed is None else [i for i in ids if i in allowed]


def _similar_enough(
    conn: Connection, model_id: int, dim: int, pairs: list[tuple[int, int]]
) -> list[Pair]:
    """The pairs whose vectors are at least :data:`BURST_SIMILARITY` alike, with it."""
    out: list[Pair] = []
    for start in range(0, len(pairs), 8192):
        part = pairs[start : start + 8192]
        a = q.vectors_of(conn, model_id, dim, [p[0] for p in part])
        b = q.vectors_of(conn, model_id, dim, [p[1] for p in part])
        cosine = np.einsum("ij,ij->i", a, b)
        out.extend(
            (x, y, float(s))
            for (x, y), s in zip(part, cosine, strict=True)
            if s >= BURST_SIMILARITY
        )
    return out


def _decided(
    conn: Connection, finder: Finder, decisions: Sequence[dq.DecisionRecord]
) -> list[DecidedFiles]:
    holders = dq.ok_images_with(conn, sorted({h for d in decisions for h in d.hashes}))
    records = q.describe_images(conn, sorted({i for ids in holders.values() for i in ids}))
    out = []
    for d in decisions:
        shown = [
            records[i]
            for h in sorted(d.hashes)
            for i in holders.get(h, [])
            if finder.visible(records[i])
        ]
        out.append(DecidedFiles(d.id, d.decision, d.created_at, tuple(shown), len(d.hashes)))
    return out


# -- decisions ------------------------------------------------------------------------------


def mark(
    engine: Engine,
    finder: Finder,
    decision: Decision,
    targets: Sequence[str],
    threshold: float = NEAR_SIMILARITY,
) -> DecidedFiles:
    """Record a decision about a group (by its id) or some files (by path).

    ``keeper`` takes one file; ``not-duplicates`` at least two different contents;
    ``keep-all`` a group or files. Decisions are by content: they hold wherever the files go.

    Raises:
        OptionsError: no target, a path not in the library, an unknown group id, or targets
            the decision cannot apply to.
    """
    if not targets:
        raise OptionsError("name a group id (from organizer duplicates) or the files' paths")
    records = _resolve(engine, finder, targets, threshold)
    hashes = {r.content_hash for r in records if r.content_hash}
    if decision == Decision.KEEPER and (len(targets) != 1 or len(records) != 1):
        raise OptionsError("keeper takes one file: the path of the copy to keep")
    if decision == Decision.NOT_DUPLICATES and len(hashes) < 2:
        raise OptionsError(
            "not-duplicates needs at least two different files (identical copies are duplicates)"
        )
    with write_transaction(engine) as conn:
        decision_id = dq.add_decision(conn, decision, hashes)
        made = next(d for d in dq.decisions(conn) if d.id == decision_id)
    return DecidedFiles(made.id, made.decision, made.created_at, tuple(records), len(hashes))


def take_back(engine: Engine, decision_id: int) -> None:
    """Take a decision back: its groups come back.

    Raises:
        OptionsError: there is no such decision.
    """
    # A number no 64-bit id column holds is no decision (the database would overflow).
    if not 1 <= decision_id < 2**63:
        raise OptionsError(_no_decision(decision_id))
    with write_transaction(engine) as conn:
        if not dq.take_back(conn, decision_id):
            raise OptionsError(_no_decision(decision_id))


def _no_decision(decision_id: int) -> str:
    return f"there is no decision {decision_id}: organizer duplicates --show-decided lists them"


def _resolve(
    engine: Engine, finder: Finder, targets: Sequence[str], threshold: float
) -> list[ImageRecord]:
    paths = [t for t in targets if os.sep in t or os.path.exists(t) or not _looks_like_id(t)]
    ids = [t.lower() for t in targets if t not in paths]
    records = [_image_at(engine, finder, p) for p in paths]
    if ids:
        found = find(engine, finder, DuplicateOptions(threshold=threshold))
        by_id = {g.id: g for g in found.groups}
        for gid in ids:
            if gid not in by_id:
                raise OptionsError(
                    f"no duplicate group {gid}: organizer duplicates lists the groups and "
                    "their ids (a decided group is no longer listed)"
                )
            records.extend(f.record for f in by_id[gid].files)
    unique = {r.id: r for r in records}
    return list(unique.values())


def _looks_like_id(text: str) -> bool:
    return len(text) == 12 and all(c in "0123456789abcdef" for c in text.lower())


def _image_at(engine: Engine, finder: Finder, path: str) -> ImageRecord:
    found = finder.known_at(path)
    if found is None or found.status != ImageStatus.OK:
        raise OptionsError(f"{path} is not an image of this library (ingest it first)")
    with engine.connect() as conn:
        return q.describe_image(conn, found.id)
