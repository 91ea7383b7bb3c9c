"""Atomic file replacement: a reader sees the old file or the whole new one, never half.

Every write that replaces a file organizer keeps (records, caches, reports, the vector
index) goes through here: write a temporary file beside the target, optionally fsync it,
then rename it over the target in one step. A failure removes the temporary file and
leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(
    path: Path,
    *,
    fsync: bool = True,
    mode: int = 0o600,
    prefix: str | None = None,
    suffix: str = ".tmp",
) -> Iterator[Path]:
    """A new, empty temporary file beside ``path`` for a writer that needs a path of its own
    (``faiss.write_index``, ``np.save``); when the block ends without an error, the file is
    (with ``fsync``) flushed to disk and renamed over ``path``. On any error it is removed
    and ``path`` is untouched.

    Args:
        path: the file to replace (its folder must exist).
        fsync: flush the new file to disk before the rename (durable across a power cut).
        mode: permissions of the new file before the umask (0o600, as ``mkstemp``).
        prefix: the temporary file's name before its random part (default ``.NAME-``:
            hidden, and named after its target).
        suffix: after the random part.

    Raises:
        OSError: the file cannot be created, written or renamed (permissions, a full disk).

    Example::

        with replacing(index_path, prefix=".vectors-") as tmp:
            faiss.write_index(index, str(tmp))
    """
    tmp = _create(path.parent, prefix if prefix is not None else f".{path.name}-", suffix, mode)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(
    path: Path,
    data: bytes | memoryview,
    *,
    fsync: bool = True,
    mode: int = 0o600,
    prefix: str | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`replacing` for the options).

    Raises:
        OSError: the file cannot be written; ``path`` is untouched.
    """
    with replacing(path, fsync=False, mode=mode, prefix=prefix) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(
    path: Path, text: str, *, fsync: bool = True, mode: int = 0o600, prefix: str | None = None
) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see :func:`replacing`).

    Raises:
        OSError: the file cannot be written; ``path`` is untouched.
    """
    write_bytes_atomic(path, text.encode(), fsync=fsync, mode=mode, prefix=prefix)


def move_over(source: Path, target: Path) -> None:
    """Rename a finished file over ``target`` in one step (both in one file system): for
    files written elsewhere first (a re-rank store, merged lists), kept mapped through it.

    Raises:
        OSError: the rename failed; both files are as they were.
    """
    os.replace(source, target)


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (before a rename makes it the one readers see)."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames, new and removed files) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(folder: Path, prefix: str, suffix: str, mode: int) -> Path:
    """A new empty file in ``folder`` under a name no other writer has (O_EXCL)."""
    while True:
        tmp = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        except FileExistsError:
            continue
        return tmp
