"""Where a clean-up puts a file, what goes with it, what it must still contain, and the one
way a file is moved.

A file goes to the trash of the library root it is under, ``<root>/.organizer-trash/<path
below the root>``: a hidden folder, which ingest never walks, on the same filesystem, so a
move is a rename. With ``--to DIR`` it goes to ``DIR/<root without its leading />/<path>``
(roots never collide there). Nothing is ever overwritten and nothing is deleted: a name
taken in the trash gives ``name (2).ext``, and a move across filesystems removes the
original only once its copy is in place with the same content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from organizer.atomic import fsync_file, fsync_folder
from organizer.duplicates.journal import Intent
from organizer.errors import OptionsError
from organizer.paths import is_within
from organizer.scan import display_text, is_image_name

TRASH_FOLDER = ".organizer-trash"
# What travels with a photo: its sidecars and the video of a Live Photo. Only files that are
# not images: a RAW + JPEG pair are two photos, and each goes only where the plan says.
COMPANION_EXTENSIONS = frozenset(
    ext.encode() for ext in (".xmp", ".aae", ".mov", ".mp4", ".json", ".thm", ".pp3", ".dop")
)
# Sidecars named after the whole file name (Google Takeout's IMG_1.jpg.json, darktable's
# IMG_1.jpg.xmp).
WHOLE_NAME_SIDECARS = (b".json", b".xmp")
PART_SUFFIX = b".organizer-part"  # a copy across filesystems before it is complete
MISSING = "missing"  # the reason a file that is not there is left out


class Skip(Exception):
    """A file left where it is, and why: a sentence for the user. It never leaves
    :mod:`organizer.duplicates` (a clean-up records it and goes on)."""


@dataclass(frozen=True)
class Seen:
    """A regular file as it was when its content was read."""

    size: int
    mtime_ns: int
    dev: int
    ino: int
    sha256: str


def look(path: bytes) -> Seen:
    """Read a file through to its SHA-256, refusing anything but a regular file.

    Raises:
        Skip: missing, a symbolic link, not a regular file, or unreadable.
    """
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise Skip("a symbolic link: only regular files are moved")
        if not stat.S_ISREG(st.st_mode):
            raise Skip("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        raise Skip(MISSING) from None
    except OSError as exc:
        raise Skip(f"cannot be read: {exc.strerror}") from None
    return Seen(st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, digest)


def sha256_of(path: bytes) -> str | None:
    """The SHA-256 of a regular file, or None when there is none to read."""
    try:
        return look(path).sha256
    except Skip:
        return None


# -- where a file goes -----------------------------------------------------------------------


def root_of(path: bytes, roots: Iterable[str]) -> str | None:
    """The library root ``path`` is below (the innermost, should roots nest), or None."""
    below = [r for r in roots if is_within(path, os.fsencode(r), strictly=True)]
    return max(below, key=len) if below else None


def trash_path(path: bytes, root: str, to: bytes | None) -> bytes:
    """Where a file of ``root`` goes in the trash (before any ``(2)`` for a taken name)."""
    base = os.fsencode(root)
    rel = os.path.relpath(path, base)
    if to is None:
        return os.path.join(base, TRASH_FOLDER.encode(), rel)
    return os.path.join(to, base.lstrip(b"/"), rel)


def check_trash_folder(to: str, roots: Iterable[str]) -> None:
    """Refuse a ``--to`` folder that ingest would walk (inside a root, and not hidden), or
    one that holds a root.

    Raises:
        OptionsError: ``to`` is inside a root with no hidden folder (``.name``) on the way,
            or a root is inside it.
    """
    for root in roots:
        if is_within(root, to, strictly=True):
            # Every file of the root would be inside the trash already, and skipped so.
            raise OptionsError(
                f"--to {display_text(to)} holds the root {display_text(root)}: choose a "
                "folder outside the roots, or a hidden one inside a root"
            )
        if not is_within(to, root):
            continue
        below = os.path.relpath(to, root).split(os.sep)
        if not any(part.startswith(".") and part not in (".", "..") for part in below):
            raise OptionsError(
                f"--to {display_text(to)} is inside the root {display_text(root)}, where "
                "ingest would find the trashed photos again: choose a folder outside the "
                f"roots, or a hidden one (such as {display_text(os.path.join(to, '.trash'))})"
            )


# A folder's names by their stem in lower case ("img_1" for IMG_1.JPG, "img_1.jpg" for
# IMG_1.JPG.xmp): a photo's companions are looked up, never searched for, so a clean-up of
# thousands of photos in one folder is not a scan of the folder for each.
Listing = dict[bytes, list[bytes]]


def _listing(folder: bytes) -> Listing:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    by_stem: Listing = {}
    for n in names:
        by_stem.setdefault(os.path.splitext(n)[0].lower(), []).append(n)
    return by_stem


def companions(path: bytes, moving: set[bytes], listings: dict[bytes, Listing]) -> list[bytes]:
    """The files that travel with the photo ``path``: in its folder, named as it is (the same
    name before the extension, in any case, or the whole name plus ``.json``/``.xmp``), with
    a companion extension. Sidecars named by the stem stay while an image of that stem stays
    (one that is not among ``moving``, the paths this clean-up moves): a RAW file keeps its
    .xmp when only its JPEG goes. ``listings`` keeps each folder's names between calls.
    """
    folder, name = os.path.split(path)
    if folder not in listings:
        listings[folder] = _listing(folder)
    index = listings[folder]
    stem = os.path.splitext(name)[0].lower()
    same_stem = index.get(stem, [])
    stem_stays = any(is_image_name(n) and os.path.join(folder, n) not in moving for n in same_stem)
    # IMG.jpg beside IMG.JPG (a case-sensitive filesystem): each whole-name sidecar is the
    # one of the photo its name begins with, letter for letter.
    twin = any(n != name and n.lower() == name.lower() for n in same_stem)
    found = []
    for other in sorted({*same_stem, *index.get(name.lower(), [])}):
        if other == name or is_image_name(other):
            continue
        low = other.lower()
        whole = any(low == name.lower() + ext for ext in WHOLE_NAME_SIDECARS) and (
            not twin or other.startswith(name)
        )
        by_stem = (
            not stem_stays
            and os.path.splitext(low)[0] == stem
            and os.path.splitext(low)[1] in COMPANION_EXTENSIONS
        )
        if whole or by_stem:
            found.append(os.path.join(folder, other))
    return found


def free_names(dst: bytes, companions: Sequence[bytes], claimed: set[bytes]) -> list[bytes]:
    """Paths for a photo going to ``dst`` and for its companions (their names, which begin
    with the photo's stem in some case) beside it, where nothing is and nothing else of
    this clean-up goes: ``IMG_1.jpg`` and ``IMG_1.xmp``, else ``IMG_1 (2).jpg`` and
    ``IMG_1 (2).xmp``..."""
    folder, name = os.path.split(dst)
    stem = os.path.splitext(name)[0]
    names = [(stem, name[len(stem) :])] + [(c[: len(stem)], c[len(stem) :]) for c in companions]
    n = 1
    while True:
        mark = b"" if n == 1 else f" ({n})".encode()
        paths = [os.path.join(folder, head + mark + tail) for head, tail in names]
        if not any(p in claimed or os.path.lexists(p) for p in paths):
            claimed.update(paths)
            return paths
        n += 1


# -- moving ----------------------------------------------------------------------------------


def move(src: bytes, dst: bytes, sha256: str) -> None:
    """Move a file to ``dst``, where nothing may be; make the folders on the way.

    On one filesystem, a hard link then the removal of the old name (a crash between them
    leaves two names of one file, which a resumed clean-up or an undo settles); where hard
    links cannot be made, a rename after checking that nothing is at ``dst``. Across
    filesystems, a copy beside ``dst`` that is flushed, checked against ``sha256`` and named
    ``dst`` before the original is removed.

    Raises:
        FileExistsError: something is at ``dst`` (it is never overwritten).
        OSError: the file could not be moved; it is where it was.
    """
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        place(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src, dst, sha256)


def place(src: bytes, dst: bytes) -> None:
    """Give a file the new name ``dst`` on the same filesystem, never overwriting.

    Raises:
        FileExistsError: something is at ``dst``; OSError (EXDEV): another filesystem.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        # No hard links here (FAT, some network shares, another user's file): a rename.
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def part_path(dst: bytes) -> bytes:
    """Where a copy to ``dst`` across filesystems is written until it is complete."""
    folder, name = os.path.split(dst)
    return os.path.join(folder, b"." + name + PART_SUFFIX)


def _copy_across(src: bytes, dst: bytes, sha256: str) -> None:
    part = part_path(dst)
    try:
        shutil.copy2(src, part, follow_symlinks=False)  # a part left by a crash is ours
        fsync_file(Path(os.fsdecode(part)))
        if sha256_of(part) != sha256:
            raise OSError(errno.EIO, "its copy in the trash came out different", dst)
        place(part, dst)
    except BaseException:
        # A full disk, a name taken meanwhile: the move is recorded as skipped and never
        # tried again, so nothing else would remove the half copy.
        remove_part(dst)
        raise
    fsync_folder(Path(os.fsdecode(os.path.dirname(dst))))
    os.unlink(src)


def remove_part(dst: bytes) -> None:
    """Remove an incomplete copy a crash left beside ``dst`` (its original is intact)."""
    with contextlib.suppress(OSError):
        os.unlink(part_path(dst))


# -- a journalled move, settled whatever state a crash left it in -----------------------------


def settle(intent: Intent) -> str | None:
    """Make (or finish) a journalled move to the trash; None when the file is there, else
    why it was left where it is.

    Both paths are looked at, so this completes a move a killed process began: the file
    only at its old path is moved (if unchanged since it was checked); only in the trash,
    it was moved; at both (one file with two names, or a finished copy across
    filesystems), the old name is removed.
    """
    src, dst = _lstat(intent.src), _lstat(intent.dst)
    if src is not None and dst is None:
        if (src.st_size, src.st_mtime_ns) != (intent.size, intent.mtime_ns):
            return "changed since it was checked"
        remove_part(intent.dst)
        try:
            move(intent.src, intent.dst, intent.sha256)
        except FileExistsError:
            return "a file appeared at its place in the trash"
        except OSError as exc:
            return f"cannot be moved: {exc.strerror}"
        return None
    if src is None and dst is not None:
        if sha256_of(intent.dst) == intent.sha256:
            return None
        return "gone from its folder, and the file at its place in the trash differs"
    if src is not None and dst is not None:
        same = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        copied = not same and sha256_of(intent.dst) == intent.sha256
        unchanged = (src.st_size, src.st_mtime_ns) == (intent.size, intent.mtime_ns)
        if same or (copied and unchanged):
            return _unlink(intent.src)
        return "another file is at its place in the trash"
    return "missing"


def put_back(intent: Intent) -> tuple[bool, str | None]:
    """Undo one journalled move: (whether a file moved back now, why it was refused).

    A file moves back only when its old path is free and its trashed copy unchanged. One
    file under both names (a move cut short between its link and its unlink) loses its trash
    name; a second file is never removed, even one identical to the file back at the old
    path (a copy across filesystems cut short, or a copy the user put back by hand): it is
    left in the trash and reported. A move never made needs nothing.
    """
    src, dst = _lstat(intent.src), _lstat(intent.dst)
    if dst is not None and src is None:
        if not stat.S_ISREG(dst.st_mode) or sha256_of(intent.dst) != intent.sha256:
            return False, "changed in the trash since the clean-up"
        remove_part(intent.src)
        try:
            move(intent.dst, intent.src, intent.sha256)
        except FileExistsError:
            return False, "a file has appeared at its old path"
        except OSError as exc:
            return False, f"cannot be put back: {exc.strerror}"
        return True, None
    original = src is not None and sha256_of(intent.src) == intent.sha256
    if src is not None and dst is None:
        return False, None if original else "a file has appeared at its old path"
    if src is not None and dst is not None:
        if (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino):
            return False, _unlink(intent.dst)
        if original:
            return False, "an identical file is back at its old path: its trash copy is left"
        return False, "a file has appeared at its old path"
    return False, "missing from the trash"


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:  # gone, or its folder cannot be searched: nothing to use there
        return None


def _unlink(path: bytes) -> str | None:
    try:
        os.unlink(path)
    except OSError as exc:
        return f"cannot remove its second name: {exc.strerror}"
    return None
