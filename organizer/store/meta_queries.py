"""Named queries for photo metadata, cameras and places (see queries.py for the conventions)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, case, delete, func, insert, literal, or_, select

from organizer.photo_meta import READER_VERSION, PhotoMeta
from organizer.places import Place as NamedPlace
from organizer.store import queries as q
from organizer.store.models import Camera, PhotoMetaRow, Place, table_of
from organizer.store.records import DatedPhoto, ImageStatus

meta_t = table_of(PhotoMetaRow)
cameras_t = table_of(Camera)
places_t = table_of(Place)


def put_meta(
    conn: Connection,
    items: Sequence[tuple[int, PhotoMeta]],
    places: dict[int, NamedPlace | None] | None = None,
) -> None:
    """Record the metadata read for each image (replacing what was there), with the named
    place of those that have one (``places``: image id -> place)."""
    if not items:
        return
    cameras = camera_ids(conn, [m for _, m in items])
    named = places or {}
    place_of = place_ids(conn, [p for p in named.values() if p is not None])
    rows = []
    for image_id, meta in items:
        place = named.get(image_id)
        row = {name: getattr(meta, name) for name in q.META_FIELDS}
        row.update(
            image_id=image_id,
            reader=READER_VERSION,
            camera_id=cameras.get((meta.make, meta.model)),
            place_id=place_of.get(place.label()) if place is not None else None,
        )
        rows.append(row)
    delete_meta(conn, [image_id for image_id, _ in items])
    for chunk in q.chunked(rows, 1000):
        conn.execute(insert(meta_t), list(chunk))


def copy_meta(conn: Connection, source_id: int, image_id: int) -> None:
    """Give an image the metadata read for another of the same content (same bytes, same
    header), if that one has been read."""
    delete_meta(conn, [image_id])
    columns = [c for c in meta_t.c if c.name != "image_id"]
    rows = select(literal(image_id), *columns).where(meta_t.c.image_id == source_id)
    conn.execute(insert(meta_t).from_select(["image_id", *(c.name for c in columns)], rows))


def delete_meta(conn: Connection, image_ids: Sequence[int]) -> None:
    """Forget what was read of these images (their content changed: read again later)."""
    for chunk in q.chunked(list(image_ids)):
        conn.execute(delete(meta_t).where(meta_t.c.image_id.in_(chunk)))


def camera_ids(conn: Connection, metas: Sequence[PhotoMeta]) -> dict[tuple, int]:
    """The id of each (make, model) these files name, adding the new ones."""
    wanted = {(m.make, m.model): m.camera for m in metas if m.camera}
    if not wanted:
        return {}
    known = {(row.make, row.model): row.id for row in conn.execute(select(cameras_t))}
    for key, label in wanted.items():
        if key not in known:
            made = conn.execute(insert(cameras_t).values(make=key[0], model=key[1], label=label))
            known[key] = q.new_id(made)
    return known


def place_ids(conn: Connection, places: Sequence[NamedPlace]) -> dict[str, int]:
    """The id of each named place, by label, adding the new ones."""
    wanted = {p.label(): p for p in places}
    if not wanted:
        return {}
    known: dict[str, int] = {}
    for chunk in q.chunked(list(wanted)):
        stmt = select(places_t.c.label, places_t.c.id).where(places_t.c.label.in_(chunk))
        known.update({row.label: row.id for row in conn.execute(stmt)})
    for label, place in wanted.items():
        if label not in known:
            values = dict(
                city=place.city,
                region=place.region,
                country=place.country,
                country_code=place.country_code,
                label=label,
            )
            known[label] = q.new_id(conn.execute(insert(places_t).values(**values)))
    return known


def unread(conn: Connection, root_ids: Sequence[int] | None = None) -> list[tuple[int, str, bytes]]:
    """(id, root, relpath) of the ok images whose header was never read, or read by an older
    reader: what the next ingest fills in."""
    images, roots = q.images, q.roots_t
    stmt = (
        select(images.c.id, roots.c.path, images.c.relpath)
        .join(roots, roots.c.id == images.c.root_id)
        .outerjoin(meta_t, meta_t.c.image_id == images.c.id)
        .where(
            images.c.status == ImageStatus.OK,
            or_(meta_t.c.image_id.is_(None), meta_t.c.reader < READER_VERSION),
        )
        .order_by(images.c.root_id, images.c.relpath)
    )
    if root_ids is not None:
        stmt = stmt.where(images.c.root_id.in_(list(root_ids)))
    return [(row.id, row.path, row.relpath) for row in conn.execute(stmt)]


def meta_counts(conn: Connection) -> dict[str, int]:
    """Of the ok images: how many were read, how many have a time taken, coordinates, a
    camera, a named place, and how many are ``unread`` (never read, or read by an older
    reader: what the next ingest reads, as :func:`unread` lists them)."""
    images = q.images
    stale = or_(meta_t.c.image_id.is_(None), meta_t.c.reader < READER_VERSION)
    stmt = (
        select(
            func.count(meta_t.c.image_id),
            func.count(meta_t.c.taken_at),
            func.count(meta_t.c.latitude),
            func.count(meta_t.c.camera_id),
            func.count(meta_t.c.place_id),
            func.count(case((stale, 1))),
        )
        .select_from(images)
        .outerjoin(meta_t, meta_t.c.image_id == images.c.id)
        .where(images.c.status == ImageStatus.OK)
    )
    read, taken, located, camera, placed, pending = conn.execute(stmt).one()
    return {
        "read": read,
        "with_time": taken,
        "with_coordinates": located,
        "with_camera": camera,
        "with_place": placed,
        "unread": pending,
    }


def dated_photos(conn: Connection, root_ids: Sequence[int] | None = None) -> list[DatedPhoto]:
    """The ok images with a time taken (under ``root_ids`` when given), by time taken then
    id, with their coordinates and the short name of their place."""
    images, roots = q.images, q.roots_t
    stmt = (
        select(
            images.c.id,
            meta_t.c.taken_at,
            meta_t.c.latitude,
            meta_t.c.longitude,
            meta_t.c.place_id,
            roots.c.path,
            images.c.relpath,
        )
        .join(meta_t, meta_t.c.image_id == images.c.id)
        .join(roots, roots.c.id == images.c.root_id)
        .where(images.c.status == ImageStatus.OK, meta_t.c.taken_at.is_not(None))
        .order_by(meta_t.c.taken_at, images.c.id)
    )
    if root_ids is not None:
        stmt = stmt.where(images.c.root_id.in_(list(root_ids)))
    names = short_place_names(conn)
    return [
        DatedPhoto(
            row.id,
            row.taken_at,
            row.latitude,
            row.longitude,
            names.get(row.place_id) if row.place_id is not None else None,
            row.path,
            row.relpath,
        )
        for row in conn.execute(stmt)
    ]


def undated_ids(conn: Connection, root_ids: Sequence[int] | None = None) -> list[int]:
    """Ids of the ok images (under ``root_ids`` when given) without a time taken."""
    images = q.images
    stmt = (
        select(images.c.id)
        .outerjoin(meta_t, meta_t.c.image_id == images.c.id)
        .where(images.c.status == ImageStatus.OK, meta_t.c.taken_at.is_(None))
        .order_by(images.c.id)
    )
    if root_ids is not None:
        stmt = stmt.where(images.c.root_id.in_(list(root_ids)))
    return list(conn.execute(stmt).scalars())


def all_places(conn: Connection) -> dict[int, NamedPlace]:
    """Every named place, by id."""
    rows = conn.execute(
        select(
            places_t.c.id,
            places_t.c.city,
            places_t.c.region,
            places_t.c.country,
            places_t.c.country_code,
        )
    )
    return {row.id: NamedPlace(row.city, row.region, row.country, row.country_code) for row in rows}


def short_place_names(conn: Connection) -> dict[int, str]:
    """Every named place's short name ("Arezzo, Italy"), by id."""
    return {i: place.short_label() for i, place in all_places(conn).items()}
