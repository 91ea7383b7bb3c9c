"""Which root a folder given to ingest belongs to: an existing root, part of one, a new root,
or a new root that absorbs roots inside it. Paths only; the database is the caller's."""

from __future__ import annotations

import os
from pathlib import Path

from organizer.errors import LibraryError
from organizer.ingest import Target


def targets_for(paths: list[str | Path], roots: dict[int, str]) -> list[Target]:
    """The walks an ingest of ``paths`` needs, given the library's roots (id -> path).

    No paths means every known root that is present (an unplugged drive is skipped).

    Raises:
        LibraryError: a path that does not exist, is not a folder, or is not valid UTF-8.
    """
    if not paths:
        return [Target(path, root_id) for root_id, path in roots.items() if Path(path).is_dir()]
    reals: list[str] = []
    for raw in paths:
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
    return _merge_targets([_target_for(real, roots) for real in _outermost(reals)])


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
