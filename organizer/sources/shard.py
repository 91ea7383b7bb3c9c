"""Tar shards (WebDataset's format): a ``.tar`` on this machine or in a bucket is a root whose
image members are its files.

A member is never extracted: its bytes are read where they lie (``offset``, ``size``), so a
member's name is only ever a label, whatever it holds ("../x" or "/etc/x" are refused all the
same). A shard's fingerprint (its ETag in a bucket, its size and modification time on a disk)
is recorded after each whole read, and a shard that still has it is not opened again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tarfile
from collections.abc import Iterator
from typing import IO

from organizer.errors import ImageError, LibraryError, NotFoundError, StorageError
from organizer.scan import FileEntry, ScanProblem, ScanResult, is_image_name
from organizer.sources.remote import (
    ObjectStat,
    Storage,
    fetch,
    filesystem,
    is_remote,
    service_error,
    stat,
)

SUFFIX = ".tar"
# A remote shard is listed through reads of this size (headers lie between members' bytes).
LIST_BLOCK = 16 * 1024 * 1024


def is_shard(location: str | bytes) -> bool:
    """Whether ``location`` names a tar shard: a ``.tar`` name that is not a folder on this
    machine (a folder may be called ``photos.tar``)."""
    text = os.fsdecode(location)
    if not text.lower().endswith(SUFFIX):
        return False
    return is_remote(text) or not os.path.isdir(text)


def _stat(location: str, storage: Storage) -> ObjectStat:
    if is_remote(location):
        try:
            return stat(location, storage)
        except NotFoundError:
            raise NotFoundError(f"shard not found: {location}") from None
    try:
        st = os.stat(location)
    except FileNotFoundError:
        raise NotFoundError(f"shard not found: {location}") from None
    except OSError as exc:
        raise LibraryError(f"cannot read the shard {location}: {exc.strerror}") from None
    return ObjectStat(st.st_size, st.st_mtime_ns, None)


def fingerprint(location: str, storage: Storage) -> str:
    """What tells a rewritten shard from the one read before: ETag, else size and mtime."""
    st = _stat(location, storage)
    return st.etag or f"{st.size}:{st.mtime_ns}"


@contextlib.contextmanager
def _opened(location: str, storage: Storage) -> Iterator[IO[bytes]]:
    if not is_remote(location):
        with open(location, "rb") as fh:
            yield fh
        return
    fs, path = filesystem(location, storage)
    try:
        fh = fs.open(path, "rb", block_size=LIST_BLOCK, cache_type="readahead")
    except Exception as exc:
        raise service_error(exc, location) from None
    with fh:
        yield fh


def member_name(info: tarfile.TarInfo) -> bytes | None:
    """A member's name as a relative path, or None for one that climbs out or is absolute."""
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    return name.encode("utf-8", "surrogateescape")


def scan_shard(location: str, storage: Storage, known_version: str | None = None) -> ScanResult:
    """List a shard's image members, unless its fingerprint is ``known_version``.

    A damaged shard is listed as far as it can be read, with a problem saying where it broke
    (its fingerprint is then not given, so that it is read again next time).

    Raises:
        LibraryError: the shard is not there (on this machine).
        StorageError: the bucket or service fails.
    """
    version = fingerprint(location, storage)
    result = ScanResult(root=location, version=version)
    if version == known_version:
        result.unchanged = True
        return result
    try:
        _list_members(location, storage, result)
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        # Listed as far as it reads: nothing after the damage counts as gone, and the shard
        # is read again next time (no fingerprint kept).
        result.version = None
        reason = str(exc) or type(exc).__name__
        result.unlisted_dirs.append(b"")
        result.problems.append(ScanProblem(b"", f"the shard is damaged ({reason})"))
    except StorageError:
        raise
    except Exception as exc:
        if not is_remote(location) and isinstance(exc, OSError):
            raise LibraryError(f"cannot read the shard {location}: {exc.strerror}") from None
        raise service_error(exc, location) from None
    return result


def _list_members(location: str, storage: Storage, result: ScanResult) -> None:
    # A name written twice (tar -r appends) is the last one, as tar itself extracts it.
    files: dict[bytes, FileEntry] = {}
    try:
        _read_headers(location, storage, result, files)
    finally:
        result.files.extend(files.values())


def _read_headers(
    location: str, storage: Storage, result: ScanResult, files: dict[bytes, FileEntry]
) -> None:
    with _opened(location, storage) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = member_name(info)
            if name is None:
                result.problems.append(
                    ScanProblem(
                        os.fsencode(info.name), "a member name that climbs out of the shard"
                    )
                )
                continue
            if any(part.startswith(b".") for part in name.split(b"/")):
                continue
            if not is_image_name(name):
                result.skipped.append(name)
                continue
            mtime_ns = int(info.mtime) * 1_000_000_000
            files.pop(name, None)
            files[name] = FileEntry(name, info.size, mtime_ns, offset=info.offset_data)


def read_member(
    location: str | bytes,
    offset: int,
    size: int,
    storage: Storage,
    version: str | None = None,
    name: bytes | None = None,
) -> bytes:
    """A member's bytes, where the listing found them.

    ``version``: the shard's fingerprint at the listing; a shard on this machine that has
    another now changed since (its offsets may be stale), and the member is retried.

    Raises:
        ImageError: the member cannot be read whole, or its shard changed.
        StorageError: the service fails.
    """
    # The member's own header block comes with its bytes: a shard rewritten since the
    # listing (its members moved) is caught there, in a bucket as on a disk.
    start = offset - tarfile.BLOCKSIZE
    if start < 0:
        raise ImageError("not a member's place in the shard")
    if is_remote(location):
        data = fetch(location, storage, size=size + tarfile.BLOCKSIZE, start=start)
    else:
        try:
            with open(location, "rb") as fh:
                st = os.fstat(fh.fileno())
                if version is not None and version != f"{st.st_size}:{st.st_mtime_ns}":
                    raise ImageError("the shard changed since it was listed; it will be retried")
                fh.seek(start)
                data = fh.read(size + tarfile.BLOCKSIZE)
        except OSError as exc:
            raise ImageError(f"cannot read the shard: {exc.strerror}") from None
        if len(data) != size + tarfile.BLOCKSIZE:
            raise ImageError("the member is cut short (a truncated shard)")
    _check_header(data[: tarfile.BLOCKSIZE], size, name)
    return data[tarfile.BLOCKSIZE :]


def _same_name(written: bytes, name: bytes, full: bool) -> bool:
    """Whether a header's name field is the member's name as tar writers put it there: the
    name itself; for a long name (kept in a GNU or pax record before it), whatever start
    fits in a ``full`` field; and in a pax archive, the name with each non-ASCII character
    written as '?'."""
    if written == name or (full and name.startswith(written[:90])):
        return True
    if b"?" not in written:
        return False
    pattern = re.escape(written.decode("ascii", "replace")).replace(r"\?", ".")
    return re.fullmatch(pattern, name.decode("utf-8", "surrogateescape"), re.S) is not None


def _check_header(block: bytes, size: int, name: bytes | None) -> None:
    """The block before a member's bytes must be its tar header: that many bytes, and its
    name (the start of it, for a long name the header cannot hold whole)."""
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        info = None
    same = info is not None and info.size == size
    if same and info is not None and name is not None:
        full = len(info.name.encode("utf-8", "surrogateescape")) >= 98  # cut to fit, maybe
        same = _same_name(member_name(info) or b"", name, full)
    if not same:
        raise ImageError("the shard changed since it was listed; it will be retried")


@functools.lru_cache(maxsize=8)
def _index(location: str, version: str, storage: Storage) -> dict[bytes, tuple[int, int]]:
    """Member name -> (offset, size) of one version of a shard (kept for a few shards)."""
    result = ScanResult(root=location)
    _list_members(location, storage, result)
    return {f.relpath: (f.offset, f.size) for f in result.files}


def read_named(location: str, name: bytes, storage: Storage, limit: int = 0) -> bytes:
    """A member's bytes by its name (thumbnails, the web app, export); ``limit``: refuse a
    member larger than this many bytes before reading it (0: no limit).

    Raises:
        ImageError: no such member now, or it cannot be read.
        StorageError: the service fails.
    """
    version = fingerprint(location, storage)
    try:
        index = _index(location, version, storage)
    except (tarfile.TarError, EOFError) as exc:
        raise ImageError(f"the shard is damaged ({exc})") from None
    except OSError as exc:
        raise ImageError(f"cannot read the shard: {exc.strerror}") from None
    found = index.get(name)
    if found is None:
        raise ImageError("the shard no longer holds this member")
    offset, size = found
    if limit and size > limit:
        raise ImageError(f"the member is larger than {limit} bytes")
    local_version = None if is_remote(location) else version
    return read_member(location, offset, size, storage, local_version, name)
