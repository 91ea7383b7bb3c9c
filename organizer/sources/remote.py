"""Objects in buckets (S3 and any fsspec protocol): the one place organizer talks to them.

Every request goes through :func:`filesystem`, which sets timeouts, a connection pool deep
enough for the reads kept in flight, and retries with exponential backoff and jitter
(botocore's standard mode, which retries throttling such as S3's "503 Slow Down" too; its
adaptive mode also paces every later request, measured slower here). Failures come out in
two kinds:

- :class:`~organizer.errors.ImageError` for one object (gone since the listing, denied,
  changed): ingest records it and goes on;
- :class:`~organizer.errors.StorageError` for the service (missing bucket, wrong
  credentials, unreachable, timing out after the retries): the run stops with one line.

Messages name the URL and the service's error code, never a credential.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from organizer.errors import ImageError, NotFoundError, OptionsError, StorageError
from organizer.paths import is_within

# A URL's scheme: ``s3://``, ``gs://``, ``az://``... (``file://`` is a folder on this machine).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# Object stores whose fsspec filesystem needs nothing from the URL but the key.
OBJECT_STORES = frozenset(("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"))
# Per request: a connection that takes longer than this to open counts as failed...
CONNECT_TIMEOUT_S = 10
# ...and so does one silent for this long. botocore then retries (ATTEMPTS in all).
READ_TIMEOUT_S = 60
ATTEMPTS = 5
# s3fs's own retries, around botocore's (which already back off): kept short, so that a
# service that has gone away is reported in seconds, not minutes.
S3FS_RETRIES = 2
# Connections per process: above the reads kept in flight (see organizer.pipeline).
POOL_CONNECTIONS = 64


def scheme(location: str | bytes) -> str | None:
    """``"s3"`` for ``s3://bucket/key``; None for a path on this machine (and ``file://``)."""
    text = os.fsdecode(location)
    match = _SCHEME.match(text)
    if match is None or match.group(1).lower() == "file":
        return None
    return match.group(1).lower()


def is_remote(location: str | bytes) -> bool:
    """Whether ``location`` is an object in a bucket (a URL), not a path on this machine."""
    return scheme(location) is not None


def normalise(url: str) -> str:
    """A bucket URL as a root keeps it: scheme in lower case, no trailing slash.

    Raises:
        OptionsError: a URL without a bucket (``s3://``), or with ``..`` in its path.
    """
    proto = scheme(url)
    assert proto is not None  # only URLs come here
    rest = url[len(proto) + 3 :].strip("/")
    parts = rest.split("/")
    if not rest or not parts[0]:
        raise OptionsError(
            f"{url!r} names no bucket: give {proto}://BUCKET or {proto}://BUCKET/PREFIX"
        )
    if any(p in (".", "..") for p in parts) or "" in parts:
        raise OptionsError(f"{url!r} is not a plain bucket path (empty, '.' or '..' parts)")
    return f"{proto}://{rest}"


@dataclass(frozen=True)
class Storage:
    """How to reach buckets: the endpoint of an S3-compatible service that is not AWS
    (MinIO, Ceph, B2, R2...). Credentials are never held here: botocore finds them where it
    always does (environment, shared config and profiles, instance roles), and it also reads
    ``AWS_ENDPOINT_URL`` and a profile's ``endpoint_url`` when no endpoint is given."""

    endpoint_url: str | None = None
    # Bucket roots and the endpoint each was ingested through (from the library).
    recorded: tuple[tuple[str, str], ...] = ()

    def endpoint_for(self, url: str) -> str | None:
        """The endpoint for an object: the one given now, else its root's recorded one."""
        if self.endpoint_url:
            return self.endpoint_url
        best = None
        for root, endpoint in self.recorded:
            if is_within(url, root) and (best is None or len(root) > len(best[0])):
                best = (root, endpoint)
        if best is None:  # another root in the same bucket was reached through one
            bucket = _bucket_of(url)
            best = next(((r, e) for r, e in self.recorded if _bucket_of(r) == bucket), None)
        return best[1] if best else None

    def options(self, protocol: str, url: str = "") -> dict[str, Any]:
        """Keyword arguments for fsspec's filesystem of ``protocol`` (for ``url``)."""
        if protocol not in ("s3", "s3a"):
            return {}
        options: dict[str, Any] = {
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "max_pool_connections": POOL_CONNECTIONS,
                "retries": {"max_attempts": ATTEMPTS, "mode": "standard"},
            },
            # Every scan lists afresh: a cached listing would hide what changed since.
            "use_listings_cache": False,
        }
        endpoint = self.endpoint_for(url)
        if endpoint:
            options["endpoint_url"] = endpoint
        return options


def filesystem(url: str | bytes, storage: Storage) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path it knows the object by (no scheme).

    Raises:
        OptionsError: an unknown protocol, or one whose package is not installed.
    """
    text = os.fsdecode(url)
    proto = scheme(text)
    assert proto is not None  # only URLs come here
    try:
        import fsspec
    except ImportError:
        raise OptionsError(
            f"{proto}:// needs fsspec: pip install 'organizer[s3]' (or the fsspec package "
            f"for {proto})"
        ) from None
    try:
        if proto in OBJECT_STORES:  # the key whole, whatever it holds ("a::b" too)
            fs = fsspec.filesystem(proto, **storage.options(proto, text))
            path = text[len(proto) + 3 :]
        else:  # the URL may carry what the filesystem needs (a host, an account)
            fs, path = fsspec.core.url_to_fs(text, **storage.options(proto, text))
    except ImportError as exc:
        raise OptionsError(
            f"{proto}:// needs a package that is not installed ({_first_line(exc)}): "
            "pip install 'organizer[s3]' for S3-compatible buckets"
        ) from None
    except ValueError:
        raise OptionsError(f"{proto}:// is not a storage protocol fsspec knows") from None
    except Exception as exc:  # a filesystem that cannot be made from this URL alone
        if proto in OBJECT_STORES:  # its client failed (credentials fetched, say)
            raise service_error(exc, _bucket_of(text)) from None
        raise OptionsError(
            f"{proto}:// cannot be opened from its URL alone ({type(exc).__name__}): organizer "
            "reads object stores such as s3://, gs:// and az://"
        ) from None
    if hasattr(fs, "retries"):
        fs.retries = S3FS_RETRIES
    return fs, path


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def error_code(exc: BaseException) -> str | None:
    """The service's error code behind an exception s3fs translated (``AccessDenied``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code:
                return str(code)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


_CREDENTIALS = (
    "check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the "
    "shared config) and the bucket's policy"
)


def service_error(exc: BaseException, url: str) -> StorageError:
    """One line for a failure of the bucket or the service as a whole."""
    code = error_code(exc)
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{url}: the bucket does not exist (or the endpoint is wrong)")
    if isinstance(exc, PermissionError) or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        what = f"access denied ({code})" if code else "access denied"
        return StorageError(f"{url}: {what}: {_CREDENTIALS}")
    if _no_credentials(exc):
        return StorageError(f"{url}: no credentials were found: {_CREDENTIALS}")
    if type(exc).__name__ == "ProfileNotFound":
        return StorageError(f"{url}: the AWS profile named in AWS_PROFILE is not defined")
    reason = code or _kind_of_failure(exc)
    return StorageError(
        f"{url}: the storage service cannot be reached or did not answer ({reason}); for a "
        "service that is not AWS, give its --endpoint-url"
    )


def _no_credentials(exc: BaseException) -> bool:
    return type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError")


def _kind_of_failure(exc: BaseException) -> str:
    """A short name for a transport failure, without its text (which may hold a URL with a
    user name, or a signed query)."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return "timed out"
    if isinstance(exc, ConnectionError) or "Connect" in name or "Connection" in name:
        return "connection failed"
    return name


def object_error(exc: BaseException, url: str) -> Exception:
    """What one failed read means: an :class:`ImageError` for the object alone (gone,
    denied), a :class:`StorageError` when the service itself failed."""
    code = error_code(exc)
    if isinstance(exc, FileNotFoundError) and code != "NoSuchBucket":
        return ImageError("the object is gone since the listing; it will be retried")
    if isinstance(exc, PermissionError) and code not in (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
    ):
        return ImageError(f"access to this object is denied ({code or 'AccessDenied'})")
    if code == "InvalidRange":
        return ImageError("the object is shorter than listed (changed since the listing)")
    return service_error(exc, url)


@dataclass(frozen=True)
class ObjectStat:
    """An object as a listing or a HEAD request describes it."""

    size: int
    mtime_ns: int
    etag: str | None


def stat_of(info: dict[str, Any]) -> ObjectStat:
    """An fsspec ``info``/``find(detail=True)`` entry as size, modification time and ETag."""
    size = int(info.get("size") or info.get("Size") or 0)
    when = info.get("LastModified") or info.get("last_modified") or info.get("mtime")
    mtime_ns = 0
    if isinstance(when, datetime):
        mtime_ns = int(when.timestamp() * 1_000_000) * 1000
    elif isinstance(when, (int, float)):
        mtime_ns = int(when * 1e9)
    elif isinstance(when, str):
        with contextlib.suppress(ValueError):
            mtime_ns = int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1e9)
    etag = info.get("ETag") or info.get("etag")
    return ObjectStat(size, mtime_ns, str(etag).strip('"') if etag else None)


def stat(url: str, storage: Storage) -> ObjectStat:
    """Size, modification time and ETag of one object (a HEAD request).

    Raises:
        NotFoundError: no such object (the bucket is there).
        StorageError: its bucket or the service cannot be reached.
    """
    fs, path = filesystem(url, storage)
    try:
        info = fs.info(path)
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) and error_code(exc) != "NoSuchBucket":
            raise NotFoundError(f"{url}: not found") from None
        raise service_error(exc, url) from None
    if info.get("type") == "directory":
        raise NotFoundError(f"{url}: is a prefix, not an object")
    return stat_of(info)


def fetch(url: str | bytes, storage: Storage, size: int = -1, start: int | None = None) -> bytes:
    """The bytes of one object (``size`` of them from ``start``, for a tar member).

    With ``size`` known (from the listing), fewer or more bytes than that mean the object
    changed since: an :class:`ImageError`, so the file is retried next run.

    Raises:
        ImageError: this object is gone, denied or changed.
        StorageError: the service failed (after its retries).
    """
    text = os.fsdecode(url)
    if size == 0:
        return b""  # no request: a range of nothing is not one S3 serves
    fs, path = filesystem(text, storage)
    if start is not None:
        begin, end = start, start + size
    elif size > 0:
        # A range one byte past the listed size: one GET, no HEAD first (s3fs asks for the
        # size of a whole read), and an object that grew since is still noticed.
        begin, end = 0, size + 1
    else:
        begin, end = None, None
    try:
        data = fs.cat_file(path, start=begin, end=end)
    except Exception as exc:
        raise object_error(exc, _bucket_of(text)) from None
    if size >= 0 and len(data) != size:
        raise ImageError("the object changed since the listing; it will be retried")
    return data


def _bucket_of(url: str) -> str:
    """The bucket part of a URL, for messages about the service (``s3://bucket``)."""
    proto = scheme(url)
    rest = url[len(proto) + 3 :] if proto else url
    return f"{proto}://{rest.split('/', 1)[0]}"
