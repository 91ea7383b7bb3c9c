"""Groups of images (a cluster run's clusters, events) as folders of links (or copies),
marked so that ingest never takes them in.

A link can only point at a file on this machine: images in a bucket or a tar shard are
copied (downloaded) unless links are asked for, which is then refused before anything is
written.

The target folder gets a ``.organizer-export`` file listing what the export made. Ingest
skips any folder holding one (an export inside a root would otherwise add every photo a
second time), and exporting again over a marked folder first removes what the previous
export made: links are replaced, never linked to. Source photos are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from organizer import naming
from organizer.atomic import write_bytes_atomic, write_text_atomic
from organizer.choices import ExportMode
from organizer.errors import ClusterError, ImageError, OptionsError, StorageError
from organizer.scan import EXPORT_MARKER, display_path
from organizer.sources import Storage, is_local_folder, read_stored
from organizer.store.queries import now
from organizer.store.records import ClusterRecord, ClusterRunSummary, iso_utc

# Characters some filesystem refuses in a name (Windows, macOS's Finder, every one's "/").
_UNSAFE = re.compile(r'[/\\:*?"<>|]')
NAME_BYTES = 200  # of a folder's name: under every filesystem's 255, with room for " (99)"


class Linked(Protocol):
    """An image to export: its root and its path below it."""

    @property
    def root(self) -> str: ...

    @property
    def relpath(self) -> bytes: ...


@dataclass(frozen=True)
class ExportFolder:
    """One folder of an export: its name (a single path part) and the images it holds."""

    name: str
    images: Sequence[Linked]


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
    run: ClusterRunSummary,
    target: Path,
    mode: str | None = None,
    force: bool = False,
    storage: Storage | None = None,
) -> ExportSummary:
    """One folder per cluster ('03-beach') of links to (or copies of) its images (see
    :func:`export_folders`)."""
    folders = [ExportFolder(_folder_name(run, c), c.members) for c in run.clusters]
    return export_folders(folders, target, mode, force, {"run_id": run.run.id}, storage)


def export_folders(
    folders: Sequence[ExportFolder],
    target: Path,
    mode: str | None = None,
    force: bool = False,
    source: dict | None = None,
    storage: Storage | None = None,
) -> ExportSummary:
    """Each folder of links to (or copies of) its images, under ``target``; ``source`` says
    in the marker what was exported (``{"run_id": 3}``).

    Refuses a non-empty target unless ``force``: then a previous export there is replaced,
    and anything else in the folder is left as it is.

    Args:
        mode: ``"symlink"``, ``"copy"``, or None: link to files on this machine and copy
            images in buckets and tar shards (nothing can link to those).
        storage: how buckets are reached, for the images copied from them.

    Raises:
        OptionsError: ``"symlink"`` asked for images in a bucket or a shard (before anything
            is written).
        ClusterError: a target that cannot be used, or an export that stopped.
    """
    _check_mode(folders, mode)
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
    about = source or {}
    try:
        target.mkdir(parents=True, exist_ok=True)
        replaced = _remove_previous(target, previous) if previous else 0
        _write_marker(target, about, made)  # before any link: a half-done export is skipped too
        marked = True
        counts = _export_members(folders, target, mode, made, storage)
        _write_marker(target, about, made)
    except (OSError, StorageError) as exc:
        if made or (previous and marked):
            with contextlib.suppress(OSError):  # listed, so that the next --force removes them
                _write_marker(target, about, made)
        elif not previous:
            _unmark(target, folders, existed)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ClusterError(
            f"export to {target} stopped: {why} (your photos are untouched)"
        ) from None
    done = len({entry.split("/", 1)[0] for entry in made})
    return ExportSummary(done, **counts, target=str(target), replaced=replaced)


def safe_folder_name(text: str, fallback: str = "untitled") -> str:
    """``text`` as one folder name every common filesystem takes: no control or invisible
    format characters (a bidi override would reorder it), none of ``/\\:*?"<>|``, no
    leading dot (hidden) or trailing dot or space (Windows), at most NAME_BYTES in UTF-8."""
    shown = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch
        for ch in text
        if unicodedata.category(ch) not in ("Cf", "Cs", "Co", "Cn")
    )
    name = " ".join(_UNSAFE.sub("-", shown).split())
    name = name.lstrip(". ")
    raw = name.encode("utf-8")[:NAME_BYTES]
    name = raw.decode("utf-8", "ignore").rstrip(". ")
    return name or fallback


def _check_mode(folders: Sequence[ExportFolder], mode: str | None) -> None:
    """Refuse a mode that is unknown, or links that cannot point where the images are."""
    if mode is not None and mode not in tuple(ExportMode):
        raise ClusterError(f"unknown export mode {mode!r}: choose symlink or copy")
    if mode != ExportMode.SYMLINK:
        return
    remote = [m for f in folders for m in f.images if not is_local_folder(m.root)]
    if remote:
        first = display_path(os.path.join(os.fsencode(remote[0].root), remote[0].relpath))
        raise OptionsError(
            f"--mode symlink cannot link to the {len(remote):,} images in a bucket or a tar "
            f"shard (such as {first}): pass --mode copy, or leave --mode out to link to the "
            "files on this machine and copy the others"
        )


def _export_members(
    folders: Sequence[ExportFolder],
    target: Path,
    mode: str | None,
    made: list[str],
    storage: Storage | None,
) -> dict:
    counts = {"linked": 0, "copied": 0, "skipped": 0}
    for f in folders:
        folder = os.fsencode(target / f.name)
        used: set[bytes] = set()
        for m in f.images:
            os.makedirs(folder, exist_ok=True)
            name = _unique_name(m, used)
            outcome = _export_one(m, os.path.join(folder, name), mode, storage)
            counts[outcome] += 1
            if outcome != "skipped":
                made.append(f.name + "/" + os.fsdecode(name))
    return counts


def _folder_name(run: ClusterRunSummary, cluster: ClusterRecord) -> str:
    """A cluster's folder: its number, zero-padded to sort, and its label ('03-beach')."""
    width = max(2, len(str(run.run.k)))
    return f"{cluster.number:0{width}d}-{naming.slug(cluster.label or 'cluster')}"


def _export_one(member: Linked, dest: bytes, mode: str | None, storage: Storage | None) -> str:
    """Link or copy one image; which of the export's counts it adds to."""
    if os.path.lexists(dest):
        return "skipped"
    if not is_local_folder(member.root):
        return _download(member, dest, storage)
    source = os.path.join(os.fsencode(member.root), member.relpath)
    if not os.path.exists(source):
        return "skipped"
    if mode == ExportMode.COPY:
        shutil.copy2(source, dest)
        return "copied"
    os.symlink(source, dest)
    return "linked"


def _download(member: Linked, dest: bytes, storage: Storage | None) -> str:
    """Copy an object in a bucket or a shard's member: whole, or not at all (a temporary
    file beside ``dest``, renamed once written)."""
    try:
        data = read_stored(member.root, member.relpath, storage)
    except ImageError:  # gone or changed since the ingest, as a missing file is
        return "skipped"
    write_bytes_atomic(Path(os.fsdecode(dest)), data, fsync=False, mode=0o666)
    return "copied"


# A file name on most disks is at most 255 bytes; a bucket's key may be 1,024 long.
MAX_NAME_BYTES = 200


def _cut(name: bytes, most: int) -> bytes:
    """The start of ``name`` in at most ``most`` bytes, never half a UTF-8 character."""
    text = name.decode("utf-8", "surrogateescape")
    while len(text.encode("utf-8", "surrogateescape")) > most:
        text = text[:-1]
    return text.encode("utf-8", "surrogateescape")


def _unique_name(member: Linked, used: set[bytes]) -> bytes:
    """The file's own name, or name-2.jpg, name-3.jpg... when the folder already has it; a
    name too long for a disk keeps its start and its extension."""
    name = os.path.basename(member.relpath)
    stem, ext = os.path.splitext(name)
    if len(name) > MAX_NAME_BYTES:
        ext = _cut(ext, 16)
        stem = _cut(stem, MAX_NAME_BYTES - len(ext))
        name = stem + ext
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


def _write_marker(target: Path, source: dict, made: list[str]) -> None:
    marker = {
        "what": "organizer export: links to (or copies of) images already in a library; "
        "organizer ingest skips this folder",
        **source,
        "written_at": iso_utc(now(), "seconds"),
        "entries": made,
    }
    write_text_atomic(target / EXPORT_MARKER, json.dumps(marker, indent=1), fsync=False, mode=0o666)


def _unmark(target: Path, folders: Sequence[ExportFolder], existed: bool) -> None:
    """Undo an export that failed before it wrote an entry into a folder that was not an
    export: a marker left there would make ingest skip the user's own files in it. Its
    empty folders go too, and the target if this export made it."""
    with contextlib.suppress(OSError):
        (target / EXPORT_MARKER).unlink()
    for f in folders:
        with contextlib.suppress(OSError):
            (target / f.name).rmdir()  # only when empty
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
            continue  # only FOLDER/FILE entries, never anything outside the export
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed += 1
    for folder in target.iterdir():
        if folder.is_dir() and not folder.is_symlink():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    return removed
