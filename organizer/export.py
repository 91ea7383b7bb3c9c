"""A cluster run as folders of links (or copies), marked so that ingest never takes them in.

The target folder gets a ``.organizer-export`` file listing what the export made. Ingest
skips any folder holding one (an export inside a root would otherwise add every photo a
second time), and exporting again over a marked folder first removes what the previous
export made: links are replaced, never linked to. Source photos are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from organizer import naming
from organizer.atomic import write_text_atomic
from organizer.choices import ExportMode
from organizer.errors import ClusterError
from organizer.scan import EXPORT_MARKER
from organizer.store.queries import now
from organizer.store.records import ClusterRecord, ClusterRunSummary, MemberRecord, iso_utc


@dataclass(frozen=True)
class ExportSummary:
    folders: int
    linked: int
    copied: int
    skipped: int
    target: str
    replaced: int = 0  # entries of a previous export removed first
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_target(real: str, inside: list[str], held: int) -> list[str]:
    """The rules for where an export may go, as warnings to add to its summary.

    Args:
        real: the target folder, links resolved.
        inside: the library's roots the folder is at or inside.
        held: how many of the library's photos lie at or below the folder.

    Raises:
        ClusterError: the folder holds photos of the library (marked, ingest would skip them
            and they would drop out of the library).
    """
    if held:
        raise ClusterError(
            f"{real} holds {held:,} photos of this library: export into a folder of its own "
            "(ingest skips export folders, so these photos would drop out of the library)"
        )
    if not inside:
        return []
    return [
        f"{real} is inside the root {inside[0]}: ingest skips it (it is marked as an "
        "export), but a folder outside your photos is tidier"
    ]


def export_run(
    run: ClusterRunSummary, target: Path, mode: str = ExportMode.SYMLINK, force: bool = False
) -> ExportSummary:
    """One folder per cluster ('03-beach') of links to (or copies of) its images.

    Refuses a non-empty target unless ``force``: then a previous export there is replaced,
    and anything else in the folder is left as it is.
    """
    if mode not in tuple(ExportMode):
        raise ClusterError(f"unknown export mode {mode!r}: choose symlink or copy")
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise ClusterError(f"{target} is a file: choose a folder to export into")
    previous = _read_marker(target)
    if target.exists() and any(target.iterdir()) and not force:
        hint = "pass --force to replace the previous export" if previous else "or pass --force"
        raise ClusterError(f"{target} is not empty: choose an empty folder, {hint}")
    made: list[str] = []
    marked = False
    existed = target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        replaced = _remove_previous(target, previous) if previous else 0
        _write_marker(target, run, made)  # before any link: a half-done export is skipped too
        marked = True
        counts = _export_members(run, target, mode, made)
        _write_marker(target, run, made)
    except OSError as exc:
        if made or (previous and marked):
            with contextlib.suppress(OSError):  # listed, so that the next --force removes them
                _write_marker(target, run, made)
        elif not previous:
            _unmark(target, run, existed)
        raise ClusterError(
            f"export to {target} stopped: {exc.strerror or exc} (your photos are untouched)"
        ) from None
    folders = len({entry.split("/", 1)[0] for entry in made})
    return ExportSummary(folders, **counts, target=str(target), replaced=replaced)


def _export_members(run: ClusterRunSummary, target: Path, mode: str, made: list[str]) -> dict:
    counts = {"linked": 0, "copied": 0, "skipped": 0}
    for c in run.clusters:
        folder_name = _folder_name(run, c)
        folder = os.fsencode(target / folder_name)
        used: set[bytes] = set()
        for m in c.members:
            os.makedirs(folder, exist_ok=True)
            name = _unique_name(m, used)
            outcome = _export_one(m, os.path.join(folder, name), mode)
            counts[outcome] += 1
            if outcome != "skipped":
                made.append(folder_name + "/" + os.fsdecode(name))
    return counts


def _folder_name(run: ClusterRunSummary, cluster: ClusterRecord) -> str:
    """A cluster's folder: its number, zero-padded to sort, and its label ('03-beach')."""
    width = max(2, len(str(run.run.k)))
    return f"{cluster.number:0{width}d}-{naming.slug(cluster.label or 'cluster')}"


def _export_one(member: MemberRecord, dest: bytes, mode: str) -> str:
    """Link or copy one image; which of the export's counts it adds to."""
    source = os.path.join(os.fsencode(member.root), member.relpath)
    if os.path.lexists(dest) or not os.path.exists(source):
        return "skipped"
    if mode == ExportMode.SYMLINK:
        os.symlink(source, dest)
        return "linked"
    shutil.copy2(source, dest)
    return "copied"


def _unique_name(member: MemberRecord, used: set[bytes]) -> bytes:
    """The file's own name, or name-2.jpg, name-3.jpg... when the folder already has it."""
    name = os.path.basename(member.relpath)
    stem, ext = os.path.splitext(name)
    n = 1
    while name in used:
        n += 1
        name = stem + f"-{n}".encode() + ext
    used.add(name)
    return name


def _read_marker(target: Path) -> dict | None:
    try:
        return json.loads((target / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(target: Path, run: ClusterRunSummary, made: list[str]) -> None:
    marker = {
        "what": "organizer export: links to (or copies of) images already in a library; "
        "organizer ingest skips this folder",
        "run_id": run.run.id,
        "written_at": iso_utc(now(), "seconds"),
        "entries": made,
    }
    write_text_atomic(target / EXPORT_MARKER, json.dumps(marker, indent=1), fsync=False, mode=0o666)


def _unmark(target: Path, run: ClusterRunSummary, existed: bool) -> None:
    """Undo an export that failed before it wrote an entry into a folder that was not an
    export: a marker left there would make ingest skip the user's own files in it. Its
    empty cluster folders go too, and the target if this export made it."""
    with contextlib.suppress(OSError):
        (target / EXPORT_MARKER).unlink()
    for c in run.clusters:
        with contextlib.suppress(OSError):
            (target / _folder_name(run, c)).rmdir()  # only when empty
    if not existed:
        with contextlib.suppress(OSError):
            target.rmdir()


def _remove_previous(target: Path, previous: dict) -> int:
    """Remove what the previous export made (its links and copies), then its emptied
    folders; anything else stays."""
    removed = 0
    for entry in previous.get("entries", []):
        path = target / entry
        if Path(os.path.normpath(path)).parent.parent != target:
            continue  # only CLUSTER/FILE entries, never anything outside the export
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed += 1
    for folder in target.iterdir():
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    return removed
