"""Photo metadata at ingest: name the places of what was read, record it, and fill in the
images whose headers were never read (a library made before organizer read them, or files
whose vector was copied) without decoding or embedding anything again."""

from __future__ import annotations

import contextlib
import functools
import itertools
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from sqlalchemy import Connection, Engine

from organizer.photo_meta import PhotoMeta
from organizer.pipeline import stored_header_meta
from organizer.places import Place, name_places
from organizer.sources import Storage
from organizer.store import meta_queries as mq
from organizer.store.db import write_transaction

Coordinates = tuple[float, float]
# Headers read and recorded per transaction in a backfill; from how many images on it is
# worth starting reader processes (each costs a Python start and Pillow's import).
FILL_BATCH = 2000
PARALLEL_FROM = 500
READ_CHUNK = 256  # headers a reader process is sent at a time


def name_places_of(metas: Sequence[PhotoMeta]) -> dict[Coordinates, Place | None]:
    """The place of each distinct position these photos were taken at (offline gazetteer;
    loaded on the first photo with coordinates only)."""
    where = sorted({_position(m) for m in metas if m.has_position})
    return dict(zip(where, name_places(where), strict=True)) if where else {}


def record_meta(
    conn: Connection,
    items: Sequence[tuple[int, PhotoMeta]],
    places: dict[Coordinates, Place | None],
) -> None:
    """Record what was read of each image, with the place its coordinates name."""
    mq.put_meta(
        conn,
        items,
        {i: places.get(_position(m)) for i, m in items if m.has_position},
    )


def _position(meta: PhotoMeta) -> Coordinates:
    assert meta.latitude is not None and meta.longitude is not None
    return meta.latitude, meta.longitude


def backfill(
    engine: Engine,
    root_ids: Sequence[int] | None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    storage: Storage | None = None,
) -> int:
    """Read the headers of the ok images (under ``root_ids``) never read before, and record
    what they say; vectors are kept. Returns how many images were filled in.

    A file that cannot be read now (a network share away, a permission, an object gone)
    stays unread, to be tried again by the next ingest; one whose header says nothing usable
    is recorded empty (read again only when it changes). Objects in buckets (``storage``
    says how to reach them) and shards' members are read whole.

    Raises:
        StorageError: a bucket's service fails; what was recorded before is kept.
    """
    with engine.connect() as conn:
        todo = mq.unread(conn, root_ids)
    if not todo:
        return 0
    done = filled = 0
    with _headers([(root, relpath) for _, root, relpath in todo], workers, storage) as headers:
        for start in range(0, len(todo), FILL_BATCH):
            batch = todo[start : start + FILL_BATCH]
            read = zip(batch, itertools.islice(headers, len(batch)), strict=True)
            items = [(image_id, meta) for (image_id, *_), meta in read if meta is not None]
            places = name_places_of([meta for _, meta in items])
            with write_transaction(engine) as conn:
                record_meta(conn, items, places)
            done += len(batch)
            filled += len(items)
            if progress is not None:
                progress(done, len(todo))
    return filled


@contextlib.contextmanager
def _headers(
    images: list[tuple[str, bytes]], workers: int, storage: Storage | None
) -> Iterator[Iterator[PhotoMeta | None]]:
    """Each image's header, in order: read in this process for a few images, else (Pillow
    parses EXIF in Python) by ``workers`` processes started once, which read ahead while
    this process names places and writes."""
    read = functools.partial(stored_header_meta, storage=storage)
    if workers <= 1 or len(images) < PARALLEL_FROM:
        yield (read(image) for image in images)
        return
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield pool.map(read, images, chunksize=READ_CHUNK)
