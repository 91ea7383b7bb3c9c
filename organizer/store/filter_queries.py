"""The ids a :class:`~organizer.filters.PhotoFilter` keeps (see queries.py for the conventions).

Cameras and places are matched in their own small tables first, so the query over
``photo_meta`` uses its indexes (time taken, latitude, camera, place) whatever the size of
the library; distances are finished in numpy on the few rows the bounding box leaves.
"""

from __future__ import annotations

import math
import os
import unicodedata

import numpy as np
from sqlalchemy import ColumnElement, Connection, and_, false, or_, select

from organizer.filters import Near, PhotoFilter
from organizer.paths import is_within
from organizer.store import queries as q
from organizer.store.meta_queries import all_places, cameras_t, meta_t

EARTH_KM = 6371.0088


def kept_ids(conn: Connection, where: PhotoFilter) -> np.ndarray:
    """The sorted ids (int64) of the images the filter keeps, whatever their status: a
    listing intersects them with what it lists (the index holds ok images only).

    The query starts from the photo_meta index that the filter narrows (time taken,
    latitude, camera, place); a status condition would lead SQLite to walk every ok image
    instead.
    """
    images = q.images
    uses_meta = bool(where.start or where.end or where.cameras or where.places or where.near)
    key = meta_t.c.image_id if uses_meta else images.c.id
    stmt = select(key).select_from(meta_t if uses_meta else images)
    if where.start is not None:
        stmt = stmt.where(meta_t.c.taken_at >= where.start)
    if where.end is not None:
        stmt = stmt.where(meta_t.c.taken_at < where.end)
    if where.cameras:
        stmt = stmt.where(meta_t.c.camera_id.in_(camera_matches(conn, where.cameras)))
    if where.places:
        stmt = stmt.where(meta_t.c.place_id.in_(place_matches(conn, where.places)))
    if where.under:
        if uses_meta:
            stmt = stmt.join(images, images.c.id == meta_t.c.image_id)
        stmt = stmt.where(_under(conn, where.under))
    if where.near is None:
        return np.sort(np.fromiter(conn.execute(stmt).scalars(), np.int64))
    stmt = stmt.add_columns(meta_t.c.latitude, meta_t.c.longitude).where(_box(where.near))
    rows = conn.execute(stmt).all()
    if not rows:
        return np.empty(0, np.int64)
    found = np.array(rows, dtype=np.float64)
    close = distances_km(where.near, found[:, 1], found[:, 2]) <= where.near.km
    return np.sort(found[close, 0].astype(np.int64))


def camera_matches(conn: Connection, words: tuple[str, ...]) -> list[int]:
    """Cameras whose make, model or label contains any of the (lower-case) words."""
    rows = conn.execute(
        select(cameras_t.c.id, cameras_t.c.make, cameras_t.c.model, cameras_t.c.label)
    ).all()
    return [
        row.id
        for row in rows
        if any(w in " ".join(filter(None, (row.make, row.model, row.label))).lower() for w in words)
    ]


def place_matches(conn: Connection, words: tuple[str, ...]) -> list[int]:
    """Places named by any of the words: a city, region or country of that name (or a
    two-letter country code); a word that names none matches the places containing it
    ("tusc" finds Tuscany). Case and accents do not matter ("sao paulo" is São Paulo)."""
    places = all_places(conn)
    names = {
        i: [plain(part) for part in (p.city, p.region, p.country) if part]
        for i, p in places.items()
    }
    codes = {i: p.country_code.lower() for i, p in places.items()}
    found: set[int] = set()
    for word in map(plain, words):
        exact = {
            i
            for i, parts in names.items()
            if word in parts or (len(word) == 2 and word == codes[i])
        }
        found |= exact or {i for i, parts in names.items() if any(word in p for p in parts)}
    return sorted(found)


def plain(text: str) -> str:
    """Lower case without accents, whatever the Unicode form typed ("São" and "Sa\u0303o")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _under(conn: Connection, folders: tuple[str, ...]) -> ColumnElement[bool]:
    """Images whose file is in one of the folders (at any depth)."""
    images = q.images
    terms: list[ColumnElement[bool]] = []
    for root_id, root in q.all_roots(conn).items():
        for folder in folders:
            if is_within(root, folder):
                terms.append(images.c.root_id == root_id)
            elif is_within(folder, root, strictly=True):
                prefix = os.fsencode(os.path.relpath(folder, root)) + b"/"
                upper = prefix[:-1] + b"0"  # the first name after every "prefix/..."
                terms.append(
                    and_(
                        images.c.root_id == root_id,
                        images.c.relpath >= prefix,
                        images.c.relpath < upper,
                    )
                )
    return or_(*terms) if terms else false()


def _box(near: Near) -> ColumnElement[bool]:
    """A latitude/longitude box around the circle (the index on latitude narrows first)."""
    dlat = math.degrees(near.km / EARTH_KM)
    south, north = near.latitude - dlat, near.latitude + dlat
    terms = [meta_t.c.latitude >= south, meta_t.c.latitude <= north]
    widest = max(abs(south), abs(north))
    if widest < 89:
        dlon = dlat / math.cos(math.radians(widest))
        west, east = near.longitude - dlon, near.longitude + dlon
        if west >= -180 and east <= 180:
            terms += [meta_t.c.longitude >= west, meta_t.c.longitude <= east]
        elif dlon < 180:  # the box crosses the antimeridian
            wrapped = west + 360 if west < -180 else east - 360
            outer = meta_t.c.longitude >= wrapped if west < -180 else meta_t.c.longitude <= wrapped
            inner = meta_t.c.longitude <= east if west < -180 else meta_t.c.longitude >= west
            terms.append(or_(inner, outer))
    return and_(*terms)


def distances_km(near: Near, latitudes: np.ndarray, longitudes: np.ndarray) -> np.ndarray:
    """Great-circle distances from ``near``'s point, in kilometres."""
    return great_circle_km(near.latitude, near.longitude, latitudes, longitudes)


def great_circle_km(
    lat1: np.ndarray | float,
    lon1: np.ndarray | float,
    lat2: np.ndarray | float,
    lon2: np.ndarray | float,
) -> np.ndarray:
    """Great-circle (haversine) distances between points in degrees, in kilometres
    (element-wise, broadcast)."""
    phi1, lam1 = np.radians(lat1), np.radians(lon1)
    phi2, lam2 = np.radians(lat2), np.radians(lon2)
    a = (
        np.sin((phi2 - phi1) / 2) ** 2
        + np.cos(phi1) * np.cos(phi2) * np.sin((lam2 - lam1) / 2) ** 2
    )
    return np.asarray(2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1))))
