"""Walk roots and stat candidate image files. Standard library only; reads no file contents.

Paths are handled as bytes end to end, so names that are not valid UTF-8 (or that differ
only in Unicode normalisation) are kept exactly as the filesystem has them.
"""

from __future__ import annotations

import base64
import os
import re
import stat as stat_module
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from organizer.paths import is_within

IMAGE_EXTENSIONS = frozenset(
    ext.encode()
    for ext in (
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".jp2",  # JPEG 2000
        ".j2k",
        ".j2c",
        ".jpf",
        ".jpx",
        ".pnm",  # Netpbm
        ".pbm",
        ".pgm",
        ".ppm",
    )
)
# Camera RAW: decoded through rawpy (the organizer[raw] extra), its embedded preview first.
RAW_EXTENSIONS = frozenset(
    ext.encode()
    for ext in (
        ".dng",
        ".arw",
        ".srf",
        ".sr2",
        ".cr2",
        ".cr3",
        ".crw",
        ".nef",
        ".nrw",
        ".orf",
        ".rw2",
        ".raf",
        ".pef",
        ".srw",
        ".rwl",
        ".3fr",
        ".erf",
        ".kdc",
        ".mrw",
        ".x3f",
        ".iiq",
        ".mos",
    )
)
IMAGE_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS


# A folder holding this file is an organizer export (links to images already in a library):
# the walk skips it, so exporting into a root never adds every photo a second time.
EXPORT_MARKER = ".organizer-export"
_EXPORT_MARKER_B = EXPORT_MARKER.encode()


@dataclass(frozen=True)
class FileEntry:
    """A candidate image: path relative to its root, size and modification time; an object
    in a bucket also has its ETag, a member of a tar shard where its bytes start."""

    relpath: bytes
    size: int
    mtime_ns: int
    etag: str | None = None
    offset: int = -1


@dataclass(frozen=True)
class ScanProblem:
    """Something under the root that could not be taken: a broken link, an unreadable folder."""

    relpath: bytes
    reason: str


@dataclass
class ScanResult:
    """What a walk of one root (or part of it) found."""

    root: Path | str  # a folder, or a bucket's or a tar shard's URL
    files: list[FileEntry] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    unlisted_dirs: list[bytes] = field(default_factory=list)
    export_dirs: list[bytes] = field(default_factory=list)  # organizer exports, not walked
    skipped: list[bytes] = field(default_factory=list)  # files that are not images, by path
    # A tar shard: its fingerprint now, and whether it is the one last read whole (then
    # ``files`` is empty: every image recorded under it is unchanged).
    version: str | None = None
    unchanged: bool = False

    def covers(self, relpath: bytes, prefix: bytes = b"") -> bool:
        """Whether this walk looked where ``relpath`` would be (so its absence means it is gone)."""
        if prefix and not relpath.startswith(prefix):
            return False
        # An unlisted start folder (b"" for the root itself) covers nothing at all.
        return not any(
            d in (b"", prefix.rstrip(b"/")) or is_within(relpath, d, strictly=True)
            for d in self.unlisted_dirs
        )


def is_image_name(name: bytes) -> bool:
    """Whether a file name has one of the image extensions organizer looks at."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_raw_name(name: bytes) -> bool:
    """Whether a file name is a camera RAW file's."""
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def _inside(path: bytes, root_real: bytes) -> bool:
    real = os.path.realpath(path)
    return is_within(real, root_real)


def scan_root(
    root: Path,
    *,
    start: bytes = b"",
    exclude: Iterable[Path] = (),
    follow_symlinks: bool = False,
) -> ScanResult:
    """Walk ``root`` (or its subfolder ``start``) for image files.

    Hidden files and folders (name starting with '.') and the ``exclude`` folders are skipped,
    and so are folders holding an organizer export (listed in ``export_dirs``); files that
    are not images are listed in ``skipped``.
    Folder symlinks are never followed (so the walk always ends); a file symlink is taken when
    it points inside the root, or anywhere with ``follow_symlinks``. Broken links and folders
    that cannot be listed are reported as problems, never raised.
    """
    result = ScanResult(root=root)
    root_b = os.fsencode(root)
    root_real = os.path.realpath(root_b)
    if _inside_an_export(os.path.join(root_b, start) if start else root_b):
        result.export_dirs.append(start.rstrip(b"/"))
        return result
    excluded = set()
    for path in exclude:
        try:
            st = os.stat(path)
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    stack = [start.rstrip(b"/")]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root_b, rel_dir) if rel_dir else root_b
        try:
            with os.scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.unlisted_dirs.append(rel_dir)
            result.problems.append(ScanProblem(rel_dir, f"folder cannot be read: {exc.strerror}"))
            continue
        if any(e.name == _EXPORT_MARKER_B for e in entries):
            result.export_dirs.append(rel_dir)
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith(b"."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if _walk_entry(entry, rel, root_real, excluded, follow_symlinks, result):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))
    return result


def _inside_an_export(folder: bytes) -> bool:
    """Whether ``folder`` or a folder above it is an organizer export (marked)."""
    path = os.path.realpath(folder)
    while True:
        if os.path.exists(os.path.join(path, _EXPORT_MARKER_B)):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def _walk_entry(
    entry: os.DirEntry[bytes],
    rel: bytes,
    root_real: bytes,
    excluded: set[tuple[int, int]],
    follow_symlinks: bool,
    result: ScanResult,
) -> bool:
    """Handle one directory entry; True when it is a folder to descend into."""
    try:
        if entry.is_dir(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            return (st.st_dev, st.st_ino) not in excluded
        if not is_image_name(entry.name):
            result.skipped.append(rel)
            return False
        if entry.is_symlink():
            try:
                st = os.stat(entry.path)
            except OSError:
                result.problems.append(ScanProblem(rel, "broken symbolic link"))
                return False
            if not stat_module.S_ISREG(st.st_mode):
                return False
            if not follow_symlinks and not _inside(entry.path, root_real):
                result.problems.append(
                    ScanProblem(rel, "symbolic link to a file outside the root (not followed)")
                )
                return False
        elif entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
        else:
            return False
    except OSError as exc:
        result.problems.append(ScanProblem(rel, f"cannot stat: {exc.strerror}"))
        return False
    result.files.append(FileEntry(rel, st.st_size, st.st_mtime_ns))
    return False


def extension(relpath: bytes) -> str:
    """'.txt' of 'notes/a.TXT' (lower case), or '(none)'."""
    ext = os.path.splitext(os.path.basename(relpath))[1].lower()
    return os.fsdecode(ext) if ext else "(none)"


# Characters a name shows escaped: C0 and C1 controls, line and paragraph separators, and
# the bidirectional controls, which would reorder what follows them ("photo\u202egpj.exe"
# shows as "photoexe.jpg"). Joiners stay: emoji and many scripts need them.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def display_path(relpath: bytes) -> str:
    """A path for people: undecodable bytes as \\xNN, control and bidirectional-control
    characters escaped (\\n, \\x85, \\u202e); lossless."""
    text = relpath.decode("utf-8", "backslashreplace")
    return _UNSHOWABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def display_text(text: str) -> str:
    """A path or name kept as text (a root as the database holds it, ``os.fsdecode``'s
    output, an argument) for people, as :func:`display_path` shows a file's bytes."""
    return display_path(os.fsencode(text))


def exact_path(root: str, relpath: bytes) -> dict[str, str]:
    """For JSON: ``{"path_b64": ...}``, the exact bytes of the absolute path, when the shown
    path is not the name itself (bytes that are not UTF-8, or escaped characters), so a
    script could not open the file by it."""
    try:
        if display_path(relpath) == relpath.decode("utf-8"):
            return {}
    except UnicodeDecodeError:
        pass
    return {"path_b64": base64.b64encode(os.path.join(os.fsencode(root), relpath)).decode()}


def shown_path(root: str, relpath: bytes, absolute: bool = False) -> str:
    """How results show a file: relative to its root, or with ``absolute`` the whole path."""
    text = display_path(relpath)
    return os.path.join(display_text(root), text) if absolute else text
