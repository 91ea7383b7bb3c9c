"""When, where and with what a photo was taken, read from its EXIF header.

Only Pillow: this runs in the decode workers. Every field is checked on its own and a bad one
becomes unknown (None); nothing here raises for a file, however broken its metadata. The
file's modification time is not a time taken and never appears here.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from PIL import Image

# Bumped when the reader learns something new, so that the next ingest reads the headers of
# images read by an older reader again (their vectors stay).
READER_VERSION = 2  # 2: the time taken keeps its fraction of a second (SubSecTime*)

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 271, 272, 274, 306
_EXPOSURE, _FNUMBER, _ISO = 33434, 33437, 34855
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 36867, 36868
_OFFSET, _OFFSET_ORIGINAL, _OFFSET_DIGITIZED = 36880, 36881, 36882
_SUBSEC, _SUBSEC_ORIGINAL, _SUBSEC_DIGITIZED = 37520, 37521, 37522
_FOCAL_LENGTH, _LENS_MAKE, _LENS_MODEL = 37386, 42035, 42036
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6

# Photography began in the 1820s; an earlier year is a corrupt or unset clock.
_EARLIEST = datetime(1826, 1, 1)
# Days a camera with a flat clock battery starts from (0 s after its epoch, then counting).
_CLOCK_DEFAULTS = {(1970, 1, 1), (1980, 1, 1), (2000, 1, 1), (2001, 1, 1)}
_TEXT_LIMIT = 120


@dataclass(frozen=True)
class PhotoMeta:
    """What the header says, each field None when absent or not believable.

    ``taken_at`` is the camera's wall-clock time (naive); ``taken_offset`` its offset from UTC in
    minutes when the file records one (EXIF 2.31 OffsetTimeOriginal), else None: local time of
    an unknown zone.
    """

    taken_at: datetime | None = None
    taken_offset: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    make: str | None = None
    model: str | None = None
    lens: str | None = None
    focal_mm: float | None = None
    exposure_s: float | None = None
    f_number: float | None = None
    iso: int | None = None
    orientation: int | None = None

    @property
    def camera(self) -> str | None:
        """Make and model as people say it ("Canon EOS 5D", not "Canon Canon EOS 5D")."""
        if not self.model:
            return self.make
        if self.make and not self.model.lower().startswith(self.make.split()[0].lower()):
            return f"{self.make} {self.model}"
        return self.model

    @property
    def has_position(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def to_json(self) -> str:
        """The fields as JSON text (how Ray's batches carry them between processes)."""
        row = asdict(self)
        row["taken_at"] = self.taken_at.isoformat() if self.taken_at else None
        return json.dumps(row)

    @classmethod
    def from_json(cls, text: str) -> PhotoMeta:
        row = json.loads(text)
        if row.get("taken_at"):
            row["taken_at"] = datetime.fromisoformat(row["taken_at"])
        names = _FIELD_NAMES.get(cls) or _FIELD_NAMES.setdefault(cls, {f.name for f in fields(cls)})
        return cls(**{k: v for k, v in row.items() if k in names})


# A dataclass's field names, looked up once: fields() costs more than the JSON it checks
# (a Ray ingest decodes one per image).
_FIELD_NAMES: dict[type, set[str]] = {}


def read_meta(image: Image.Image, now: datetime | None = None) -> PhotoMeta:
    """The metadata of an opened image (its header only: nothing is decoded, except that a
    PNG keeps its eXIf chunk after the pixels and Pillow must read past them)."""
    try:
        exif = image.getexif()
    except Exception:  # a header Pillow cannot parse: no metadata, the image is still fine
        return PhotoMeta()
    return meta_from_exif(exif, now)


def meta_from_exif(exif: Image.Exif, now: datetime | None = None) -> PhotoMeta:
    """The fields of a parsed EXIF block, each checked on its own."""
    main = _safe_ifd(exif, _EXIF_IFD)
    gps = _safe_ifd(exif, _GPS_IFD)
    taken_at, offset = _taken(exif, main, now or datetime.now())
    latitude = _coordinate(gps, _GPS_LAT, _GPS_LAT_REF, "NS", 90)
    longitude = _coordinate(gps, _GPS_LON, _GPS_LON_REF, "EW", 180)
    if latitude is None or longitude is None or (latitude == 0 and longitude == 0):
        # 0,0 is in the Gulf of Guinea: what a receiver without a fix writes
        latitude = longitude = None
    make = _text(_get(exif, _MAKE))
    return PhotoMeta(
        taken_at=taken_at,
        taken_offset=offset,
        latitude=latitude,
        longitude=longitude,
        altitude=_altitude(gps) if latitude is not None else None,
        make=make.title() if make and make.isupper() and len(make) > 3 else make,
        model=_text(_get(exif, _MODEL)),
        lens=_text(_get(main, _LENS_MODEL)),
        focal_mm=_positive(_get(main, _FOCAL_LENGTH), 5000),
        exposure_s=_positive(_get(main, _EXPOSURE), 3600),
        f_number=_positive(_get(main, _FNUMBER), 1000),
        iso=_iso(_get(main, _ISO)),
        orientation=_orientation(_get(exif, _ORIENTATION)),
    )


def _safe_ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a broken sub-IFD loses its own fields only
        return {}


def _get(block: Any, tag: int) -> Any:
    try:
        return block.get(tag)
    except Exception:
        return None


# -- time ----------------------------------------------------------------------------------

_DATE = re.compile(r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T]+(\d{1,2}):(\d{1,2}):(\d{1,2})")
_OFFSET_TEXT = re.compile(r"^\s*([+-])(\d{1,2}):?(\d{2})\s*$")


def _taken(exif: Image.Exif, main: dict, now: datetime) -> tuple[datetime | None, int | None]:
    """The first believable of DateTimeOriginal, DateTimeDigitized, DateTime, with the fraction
    of a second and the offset recorded for that same field (a burst's shots share a second:
    only the fraction tells them apart)."""
    for value, subsec_tag, offset_tag in (
        (main.get(_DATETIME_ORIGINAL), _SUBSEC_ORIGINAL, _OFFSET_ORIGINAL),
        (main.get(_DATETIME_DIGITIZED), _SUBSEC_DIGITIZED, _OFFSET_DIGITIZED),
        (_get(exif, _DATETIME), _SUBSEC, _OFFSET),
    ):
        when = parse_exif_date(value, now)
        if when is not None:
            return when + parse_subsec(main.get(subsec_tag)), parse_offset(main.get(offset_tag))
    return None, None


def parse_subsec(value: Any) -> timedelta:
    """An EXIF SubSecTime ("123": the digits after the second's decimal point) as a
    timedelta; nothing usable is zero."""
    text = (_text(value) or "").strip()
    if not text.isdigit() or not text.isascii():
        return timedelta(0)
    return timedelta(microseconds=int((text + "000000")[:6]))


def parse_exif_date(value: Any, now: datetime | None = None) -> datetime | None:
    """An EXIF date ("2008:10:22 14:03:00") as a naive datetime, or None when it is absent,
    malformed, before photography, a camera's unset-clock default, or more than a day in the
    future (a day: the camera's zone may be ahead of this machine's)."""
    text = _text(value)
    match = _DATE.match(text) if text else None
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        when = datetime(year, month, day, hour, minute, second)
    except ValueError:  # 0000:00:00, month 13, 25 o'clock...
        return None
    if when < _EARLIEST or (when.year, when.month, when.day) in _CLOCK_DEFAULTS:
        return None
    if when > (now or datetime.now()) + timedelta(days=1):
        return None
    return when


def parse_offset(value: Any) -> int | None:
    """An EXIF offset ("+02:00", "-0530") in minutes east of UTC, or None."""
    text = _text(value)
    match = _OFFSET_TEXT.match(text) if text else None
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    total = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or total > 14 * 60:
        return None
    return -total if sign == "-" else total


# -- place ---------------------------------------------------------------------------------


def _coordinate(gps: dict, tag: int, ref_tag: int, refs: str, limit: float) -> float | None:
    """Degrees from an EXIF (degrees, minutes, seconds) triple (or the single decimal value
    some apps write) and its N/S or E/W reference; None without a reference (the hemisphere
    is unknown), for anything but numbers, or out of range. Minutes or seconds of 60 are
    accepted: writers round 59.9999 up."""
    ref = _text(gps.get(ref_tag))
    if not ref or ref[0].upper() not in refs:
        return None
    parts: Any = gps.get(tag)
    if not isinstance(parts, tuple | list) or len(parts) not in (1, 3):
        return None  # a string or bytes would be read character by character
    try:
        numbers = [float(p) for p in parts]
    except Exception:
        return None
    d, m, s = (*numbers, 0.0, 0.0)[:3]
    if not all(math.isfinite(x) and x >= 0 for x in (d, m, s)) or m > 60 or s > 60:
        return None
    degrees = d + m / 60 + s / 3600
    if degrees > limit:
        return None
    return -degrees if ref[0].upper() == refs[1] else degrees


def _altitude(gps: dict) -> float | None:
    value = _number(gps.get(_GPS_ALT))
    if value is None or not -1000 <= value <= 20000:
        return None
    ref = gps.get(_GPS_ALT_REF)
    if isinstance(ref, bytes):
        ref = ref[:1] == b"\x01"
    return -value if ref in (1, True) else value


# -- camera ---------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A printable, trimmed string of at most _TEXT_LIMIT characters, or None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    if any("\x80" <= c <= "\xff" for c in value):
        # Pillow reads an ASCII tag's bytes as Latin-1; cameras and apps write UTF-8 there.
        with contextlib.suppress(UnicodeError):
            value = value.encode("latin-1").decode("utf-8")
    cleaned = "".join(c for c in value if c.isprintable() and c != "\ufffd").strip()
    cleaned = " ".join(cleaned.split())[:_TEXT_LIMIT]
    return cleaned or None


def _number(value: Any) -> float | None:
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    try:
        number = float(value)
    except Exception:  # strings, None, rationals over zero
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any, limit: float) -> float | None:
    number = _number(value)
    return number if number is not None and 0 < number <= limit else None


def _iso(value: Any) -> int | None:
    number = _positive(value, 10_000_000)
    return int(number) if number is not None and number >= 1 else None


def _orientation(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number in range(1, 9) else None
