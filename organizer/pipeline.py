"""The decode stage of ingest: read a file once, hash it, decode and resize it for the model.

:func:`prepare` is a pure function of its arguments so that it can run in worker processes;
it never raises for a bad file, it returns the reason instead.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from organizer.errors import ImageError
from organizer.imaging import ImageInfo, PreprocessSpec, decode, to_model_input

CHANGED_WHILE_READING = -1  # stored as mtime_ns so that the next run always retries the file


@dataclass(frozen=True)
class Job:
    """One file to read: where it is and what the scan saw."""

    key: int
    path: bytes
    size: int
    mtime_ns: int


@dataclass
class Prepared:
    """What the decode stage made of one file."""

    key: int
    size: int
    mtime_ns: int
    content_hash: str | None = None
    info: ImageInfo | None = None
    pixels: np.ndarray | None = None
    error: str | None = None


def read_file(path: bytes) -> tuple[bytes, int, int]:
    """Read a whole file; return its bytes and the size and mtime it had while being read.

    Raises:
        ImageError: the file cannot be opened or read, or changed while it was read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ImageError(f"cannot open file: {exc.strerror}") from None
    except OSError as exc:
        raise ImageError(f"cannot open file: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
        after = os.fstat(fd)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        data
    ) != after.st_size:
        raise ImageError("file changed while it was being read; it will be retried")
    return data, after.st_size, after.st_mtime_ns


def prepare(
    job: Job,
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
    draft: bool = True,
) -> Prepared:
    """Read, hash and (unless the hash is in ``skip_decode``) decode one file for the model.

    With ``spec`` None only the hash and image info are produced (no pixels).
    """
    try:
        data, size, mtime_ns = read_file(job.path)
    except ImageError as exc:
        return Prepared(job.key, job.size, CHANGED_WHILE_READING, error=str(exc))
    result = Prepared(job.key, size, mtime_ns, content_hash=hashlib.sha256(data).hexdigest())
    if result.content_hash in skip_decode:
        return result
    try:
        min_size = spec.size[::-1] if (spec is not None and draft) else None
        image, result.info = decode(data, min_size=min_size)
        if spec is not None:
            result.pixels = to_model_input(image, spec)
    except ImageError as exc:
        result.error = str(exc)
    except MemoryError:
        result.error = "not enough memory to decode this image"
    return result


def prepare_all(
    jobs: Iterable[Job],
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
) -> Iterator[Prepared]:
    """Prepare files one after another in this process (the reference path)."""
    for job in jobs:
        yield prepare(job, spec, skip_decode)
