"""Photo metadata at ingest: name the places of what was read, record it, and fill in the
images whose headers were never read (a library made before organizer read them, or files
whose vector was copied) without decoding or embedding anything again."""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from sqlalchemy import Connection, Engine

from organizer.photo_meta import PhotoMeta
from organizer.pipeline import header_meta
from organizer.places import Place, name_places
from organizer.store import meta_queries as mq
from organizer.store.db import write_transaction

Coordinates = tuple[float, float]
# Headers read and recorded per transaction in a backfill.
FILL_BATCH = 2000


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
) -> int:
    """Read the headers of the ok images (under ``root_ids``) never read before, and record
    what they say; vectors are kept. Returns how many images were filled in.

    A file that cannot be read now gets an empty record (so it is not read again each run;
    a changed file is re-read when ingest sees the change).
    """
    with engine.connect() as conn:
        todo = mq.unread(conn, root_ids)
    done = 0
    for batch in _batches(todo, FILL_BATCH):
        ids = [image_id for image_id, _ in batch]
        metas = [m or PhotoMeta() for m in _read_headers([p for _, p in batch], workers)]
        places = name_places_of(metas)
        with write_transaction(engine) as conn:
            record_meta(conn, list(zip(ids, metas, strict=True)), places)
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))
    return done


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read_headers(paths: list[bytes], workers: int) -> list[PhotoMeta | None]:
    """Pillow parses EXIF in Python: more than a few hundred headers go to processes."""
    if workers <= 1 or len(paths) < 200:
        return [header_meta(p) for p in paths]
    chunk = max(1, math.ceil(len(paths) / (workers * 4)))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(header_meta, paths, chunksize=chunk))
