"""A photo's header facts written as people read them: the time taken with its zone, the
exposure as photographers write it, the place, and (only where the user asked) coordinates.

Pages and the report show these strings; ``--json`` keeps the numbers
(:meth:`organizer.store.records.ImageRecord.facts`). Month names are spelt here rather than by
``strftime`` so that a server's locale cannot change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from organizer.photo_meta import PhotoMeta

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Longer than this an exposure is written in seconds (0.3 s), shorter as a fraction (1/250 s).
_FRACTION_BELOW_S = 0.25001


@dataclass(frozen=True)
class PhotoFacts:
    """What a page says about a photo; each None when the header did not say.

    ``read`` is False while the header was never read (the next ingest reads it).
    ``coordinates`` and ``geo_uri`` are set only when asked for (the image page).
    """

    read: bool
    taken: str | None = None
    place: str | None = None
    camera: str | None = None
    lens: str | None = None
    exposure: str | None = None
    coordinates: str | None = None
    geo_uri: str | None = None


def photo_facts(meta: PhotoMeta | None, place: str | None, coordinates: bool = False) -> PhotoFacts:
    """The facts of an image's header (``meta`` None: never read) and its named place.

    >>> photo_facts(PhotoMeta(f_number=2.8, iso=400), None).exposure
    'f/2.8 · ISO 400'
    """
    if meta is None:
        return PhotoFacts(read=False)
    located = coordinates and meta.latitude is not None and meta.longitude is not None
    return PhotoFacts(
        read=True,
        taken=taken_words(meta),
        place=place,
        camera=meta.camera,
        lens=meta.lens,
        exposure=exposure_words(meta),
        coordinates=coordinates_words(meta) if located else None,
        geo_uri=geo_uri(meta) if located else None,
    )


def caption(meta: PhotoMeta | None, place: str | None) -> str:
    """Place and day, for a thumbnail ("Arezzo, Tuscany, Italy · 22 Oct 2008"); "" when
    neither is known. Never coordinates."""
    day = day_words(meta.taken_at) if meta is not None and meta.taken_at else None
    return " · ".join(part for part in (place, day) if part)


def day_words(when: datetime) -> str:
    """``22 Oct 2008``."""
    return f"{when.day} {_MONTHS[when.month - 1]} {when.year}"


def taken_words(meta: PhotoMeta) -> str | None:
    """The camera's wall-clock time with its zone: ``22 Oct 2008 14:03 (UTC+02:00)``, or
    ``(local time, zone unknown)`` when the file records no offset; None without a time."""
    when = meta.taken_at
    if when is None:
        return None
    zone = "local time, zone unknown" if meta.taken_offset is None else offset_words(meta)
    return f"{day_words(when)} {when:%H:%M} ({zone})"


def offset_words(meta: PhotoMeta) -> str:
    """``UTC+02:00``, ``UTC-05:30``."""
    offset = meta.taken_offset or 0
    hours, minutes = divmod(abs(offset), 60)
    return f"UTC{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}"


def exposure_words(meta: PhotoMeta) -> str | None:
    """``1/250 s · f/2.8 · ISO 400 · 50 mm``, with what the header gives; None if nothing."""
    parts = []
    if meta.exposure_s is not None:
        parts.append(shutter_words(meta.exposure_s))
    if meta.f_number is not None:
        parts.append(f"f/{_trimmed(meta.f_number)}")
    if meta.iso is not None:
        parts.append(f"ISO {meta.iso}")
    if meta.focal_mm is not None:
        parts.append(f"{_trimmed(meta.focal_mm)} mm")
    return " · ".join(parts) or None


def shutter_words(seconds: float) -> str:
    """An exposure time as a camera shows it: ``1/250 s`` below a quarter second, else in
    seconds (``0.3 s``, ``2 s``, ``30 s``)."""
    if seconds < _FRACTION_BELOW_S:
        return f"1/{round(1 / seconds)} s"
    return f"{_trimmed(seconds)} s"


def coordinates_words(meta: PhotoMeta) -> str | None:
    """``43.46330° N, 11.87997° E`` (five decimals: about a metre), with the altitude when
    known; None without a position."""
    lat, lon = meta.latitude, meta.longitude
    if lat is None or lon is None:
        return None
    text = f"{abs(lat):.5f}° {'S' if lat < 0 else 'N'}, {abs(lon):.5f}° {'W' if lon < 0 else 'E'}"
    if meta.altitude is not None:
        where = "below" if meta.altitude < 0 else "above"
        text += f", {abs(meta.altitude):.0f} m {where} sea level"
    return text


def geo_uri(meta: PhotoMeta) -> str | None:
    """The position as an RFC 5870 ``geo:`` URI (a map application on the user's machine
    opens it; nothing is sent anywhere by the page); None without a position."""
    if meta.latitude is None or meta.longitude is None:
        return None
    return f"geo:{meta.latitude:.6f},{meta.longitude:.6f}"


def _trimmed(number: float) -> str:
    """One decimal, without a trailing ``.0`` (2.8, 8, 4.2)."""
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text
