"""Listing a bucket root: every object under its prefix, as the walk of a folder lists files.

A bucket has no folders, only keys: a key's parts play the part of folders (a part starting
with '.' is hidden, as on a disk), and keys ending in '/' (folder markers some tools write)
are not objects. Each file keeps its size, the time it was last modified and its ETag, which
the next scan compares to tell a changed object from an unchanged one without reading it.
"""

from __future__ import annotations

from organizer.scan import FileEntry, ScanResult, is_image_name
from organizer.sources.remote import Storage, error_code, filesystem, service_error, stat_of


def scan_bucket(root: str, storage: Storage, start: bytes = b"") -> ScanResult:
    """List the image objects under ``root`` (or its sub-prefix ``start``).

    Raises:
        StorageError: the bucket is missing, access is denied, or the service fails.
    """
    result = ScanResult(root=root)
    fs, base = filesystem(root, storage)
    where = base + "/" + start.decode("utf-8").strip("/") if start else base
    try:
        found = fs.find(where, detail=True)
    except Exception as exc:
        raise service_error(exc, root) from None
    cut = len(base) + 1
    for key in sorted(found):
        info = found[key]
        if info.get("type") == "directory" or key.endswith("/") or len(key) < cut:
            continue
        relpath = key[cut:].encode("utf-8")
        parts = relpath.split(b"/")
        if any(part in (b"", b".", b"..") for part in parts):
            # "a//b", "./a", "a/../b": no path on a disk or in a URL says it back
            result.skipped.append(relpath)
            continue
        if any(part.startswith(b".") for part in parts):
            continue
        if not is_image_name(relpath):
            result.skipped.append(relpath)
            continue
        st = stat_of(info)
        result.files.append(FileEntry(relpath, st.size, st.mtime_ns, etag=st.etag))
    return result


def list_top(root: str, storage: Storage) -> None:
    """List the first level under a bucket root (a check that it can be listed at all).

    Raises:
        StorageError: the bucket is missing, access is denied, or the service fails.
    """
    fs, base = filesystem(root, storage)
    try:
        fs.ls(base, detail=False)
    except FileNotFoundError as exc:
        if error_code(exc) == "NoSuchBucket" or "/" not in base:
            raise service_error(exc, root) from None
    except Exception as exc:
        raise service_error(exc, root) from None
