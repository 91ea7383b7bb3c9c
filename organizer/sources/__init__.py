"""Where images come from: folders on this machine, objects in buckets, members of tar shards.

A root is kept as text: a folder's absolute path, a bucket's URL (``s3://bucket/prefix``), or
a tar shard's path or URL (``.../000001.tar``). An image's path is its root and its path
below it joined with '/', whatever the kind. This package lists a root
(:func:`scan_source`) and reads one image back (:func:`read_stored`); what reads many files
for ingest keeps many requests in flight (:mod:`organizer.pipeline`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from organizer.errors import ImageError, LibraryError, NotFoundError, StorageError
from organizer.scan import ScanResult, scan_root
from organizer.sources.bucket import list_top, scan_bucket
from organizer.sources.remote import (
    ObjectStat,
    Storage,
    fetch,
    is_remote,
    normalise,
    scheme,
    stat,
)
from organizer.sources.shard import fingerprint, is_shard, read_member, read_named, scan_shard

__all__ = [
    "ObjectStat",
    "Storage",
    "StorageError",
    "fetch",
    "fingerprint",
    "is_local_folder",
    "is_remote",
    "is_shard",
    "normalise",
    "probe",
    "read_member",
    "read_stored",
    "scan_source",
    "scheme",
    "stat",
]


def is_local_folder(root: str) -> bool:
    """Whether a root is a folder on this machine (not a bucket, not a shard)."""
    return not is_remote(root) and not is_shard(root)


def probe(root: str, storage: Storage | None = None) -> None:
    """Check that a root can be listed from here, cheaply (one request for a bucket or a
    shard; a folder's first level).

    Raises:
        StorageError, LibraryError: what stands in the way, in one line.
    """
    storage = storage or Storage()
    if is_shard(root):
        fingerprint(root, storage)
    elif is_remote(root):
        list_top(root, storage)
    else:
        try:
            os.listdir(root)
        except OSError as exc:
            raise LibraryError(f"cannot list {root}: {exc.strerror}") from None


def scan_source(
    root: str,
    *,
    start: bytes = b"",
    exclude: Iterable[Path] = (),
    follow_symlinks: bool = False,
    storage: Storage | None = None,
    known_version: str | None = None,
) -> ScanResult:
    """List a root's images: walk a folder, list a bucket's prefix, or read a shard's
    headers (not at all when its fingerprint is ``known_version``).

    Raises:
        StorageError: a bucket or service that cannot be used.
        LibraryError: a shard that is not there.
    """
    storage = storage or Storage()
    if is_shard(root):
        return scan_shard(root, storage, known_version)
    if is_remote(root):
        return scan_bucket(root, storage, start)
    return scan_root(Path(root), start=start, exclude=exclude, follow_symlinks=follow_symlinks)


def read_stored(root: str, relpath: bytes, storage: Storage | None = None, limit: int = 0) -> bytes:
    """The bytes of an image ingested before, from wherever its root is.

    ``limit``: refuse a file larger than this many bytes (0: no limit).

    Raises:
        ImageError: the file cannot be read now (gone, denied, too large, changed).
        StorageError: a bucket's service fails.
    """
    storage = storage or Storage()
    if is_shard(root):
        return read_named(root, relpath, storage, limit)
    path = os.path.join(os.fsencode(root), relpath)
    if is_remote(root):
        if limit:
            try:
                size = stat(os.fsdecode(path), storage).size
            except NotFoundError:
                raise ImageError("the object is gone") from None
            if size > limit:
                raise ImageError(f"the object is larger than {limit} bytes")
        return fetch(path, storage)
    try:
        with open(path, "rb") as fh:
            if limit and os.fstat(fh.fileno()).st_size > limit:
                raise ImageError(f"the file is larger than {limit} bytes")
            return fh.read()
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror}") from None
