"""Small re-encoded thumbnails as data URIs, decoded in parallel threads.

Each thumbnail is decoded by :func:`organizer.imaging.decode` (allow-listed formats, bomb
guard, EXIF orientation) and re-encoded from bare pixels, so no EXIF, GPS, ICC profile or
comment of the original reaches the report. A file that cannot be read or decoded gets
:data:`PLACEHOLDER`, never an exception.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from organizer.imaging import decode, thumbnail
from organizer.scan import is_raw_name
from organizer.sources import Storage, read_stored

SIDE = 112
QUALITY = 70
# Busy pictures are re-encoded harder so that the report's size stays predictable.
MAX_BYTES = 4_000
FALLBACK_QUALITY = 45
MAX_FILE_BYTES = 512 * 1024 * 1024

# A grey square with a darker frame: "this image could not be shown".
PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="112" height="112">'
        b'<rect width="112" height="112" fill="#ddd" stroke="#999" stroke-width="4"/>'
        b'<path d="M36 36L76 76M76 36L36 76" stroke="#999" stroke-width="6"/></svg>'
    ).decode()
)


def draft_side(side: int, width: int | None, height: int | None) -> int:
    """The short side a JPEG must keep when decoded at reduced scale (``Image.draft``) for a
    thumbnail whose long side is ``side``; asking for ``side`` on both sides would often
    decode at twice the scale needed (measured ~15-25% slower on 1024-px photos)."""
    if not width or not height:
        return side
    return max(1, math.ceil(side * min(width, height) / max(width, height)))


def data_uri(
    root: str,
    relpath: bytes,
    min_side: int | None = None,
    side: int = SIDE,
    storage: Storage | None = None,
) -> str:
    """A JPEG data URI of the image at ``relpath`` under ``root`` (a folder, a bucket or a
    tar shard), at most ``side`` pixels on either side. Never raises: :data:`PLACEHOLDER`.

    ``min_side`` (see :func:`draft_side`) lets JPEGs decode at a smaller scale.
    ``storage``: how buckets are reached (see :meth:`organizer.library.Library.storage`).
    """
    min_side = min_side or side
    try:
        data = read_stored(root, relpath, storage, limit=MAX_FILE_BYTES)
        if len(data) > MAX_FILE_BYTES:  # a shard's member is read whole, then measured
            return PLACEHOLDER
        image, _info = decode(data, min_size=(min_side, min_side), raw=is_raw_name(relpath))
        small = thumbnail(image, side)
    except Exception:  # unreadable (ImageError, StorageError), undecodable, or a decoder bug
        return PLACEHOLDER  # on an odd file: one image must never cost the whole report
    # Re-made from its pixels alone: nothing of the original file's metadata can come along.
    bare = Image.fromarray(np.asarray(small.convert("RGB")))
    jpeg = _jpeg(bare, QUALITY)
    if len(jpeg) > MAX_BYTES:
        jpeg = _jpeg(bare, FALLBACK_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def data_uris(
    files: Sequence[tuple[str, bytes, int | None]],
    side: int = SIDE,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    storage: Storage | None = None,
) -> list[str]:
    """Thumbnails of many files, in order; threads, since Pillow decodes without the GIL
    (and a bucket's reads wait on the network without it).

    Args:
        files: (root, relpath, ``min_side`` or None) of each image.
        side: the longest side of each thumbnail, in pixels.
        workers: threads (default: the number of CPUs).
        progress: called with (done, total) every few hundred images.
        storage: how buckets are reached.
    """
    workers = workers or os.cpu_count() or 1
    out: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for uri in pool.map(lambda f: data_uri(f[0], f[1], f[2], side, storage), files):
            out.append(uri)
            if progress and (len(out) % 250 == 0 or len(out) == len(files)):
                progress(len(out), len(files))
    return out
