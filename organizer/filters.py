"""Which images a listing keeps: by when, where and with what they were taken, and where
they are. One :class:`PhotoFilter` serves every command that lists images and the web app;
the store turns it into the ids it keeps (:func:`organizer.store.filter_queries.kept_ids`).

Dates are periods, both ends inclusive: ``--after 2019-06 --before 2019-08`` keeps June,
July and August 2019, ``--after 2019 --before 2019`` the year 2019. An image whose time taken
is unknown is left out by any date filter (its file's modification time is not a time taken).
Values of one option are alternatives (``--camera canon --camera nikon``); options combine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from organizer.errors import OptionsError

DEFAULT_NEAR_KM = 10.0
_PERIOD = re.compile(r"^\s*(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?\s*$")


@dataclass(frozen=True)
class Near:
    """Within ``km`` kilometres (great-circle) of a point."""

    latitude: float
    longitude: float
    km: float = DEFAULT_NEAR_KM

    def __str__(self) -> str:
        return f"{self.latitude:g},{self.longitude:g},{self.km:g}"


@dataclass(frozen=True)
class PhotoFilter:
    """A filter of images; the empty filter keeps every image.

    ``start`` and ``end`` bound the time taken (``start`` <= taken < ``end``); ``cameras``
    and ``places`` match case-insensitive parts of a camera's make and model, of a place's
    city, region or country (or its two-letter country code); ``under`` holds absolute folder
    paths. Build one from the user's words with :func:`parse_filter`.
    """

    start: datetime | None = None
    end: datetime | None = None
    cameras: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    near: Near | None = None
    under: tuple[str, ...] = ()
    given: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # the options as typed, for parse_filter(**options) to make this filter again later
    options: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def empty(self) -> bool:
        return not (
            self.start or self.end or self.cameras or self.places or self.near or self.under
        )

    @property
    def needs_time(self) -> bool:
        return self.start is not None or self.end is not None

    def describe(self) -> str:
        """The filter in words, as the user gave it ("after 2019-06, camera canon")."""
        return ", ".join(f"{k} {v}" for k, v in self.given.items())

    def to_dict(self) -> dict[str, str]:
        return dict(self.given)


def parse_filter(
    after: str | None = None,
    before: str | None = None,
    cameras: list[str] | tuple[str, ...] = (),
    places: list[str] | tuple[str, ...] = (),
    near: str | None = None,
    under: list[str] | tuple[str, ...] = (),
) -> PhotoFilter:
    """A filter from its options' text.

    Raises:
        OptionsError: a date, a position or a folder that cannot be understood.
    """
    start = period(after, "--after")[0] if after else None
    end = period(before, "--before")[1] if before else None
    if start and end and start >= end:
        raise OptionsError(f"--after {after} is later than --before {before}: nothing can match")
    given: dict[str, str] = {}
    for name, value in (("after", after), ("before", before), ("near", near)):
        if value:
            given[name] = value.strip()
    for name, values in (("camera", cameras), ("place", places), ("under", under)):
        if values:
            given[name] = " or ".join(v.strip() for v in values)
    return PhotoFilter(
        start=start,
        end=end,
        cameras=tuple(_words(cameras, "--camera")),
        places=tuple(_words(places, "--place")),
        near=parse_near(near) if near else None,
        under=tuple(under),
        given=given,
        options={
            "after": after,
            "before": before,
            "cameras": list(cameras),
            "places": list(places),
            "near": near,
            "under": list(under),
        },
    )


def period(text: str, option: str = "a date") -> tuple[datetime, datetime]:
    """The first moment of a year, month or day ("2019", "2019-06", "2019-06-14") and the
    first moment after it.

    Raises:
        OptionsError: not one of those forms, or not a real date.
    """
    match = _PERIOD.match(text or "")
    if match is None:
        raise OptionsError(
            f"{option} takes a year, month or day (2019, 2019-06, 2019-06-14), not {text!r}"
        )
    year, month, day = (int(p) if p else None for p in match.groups())
    try:
        first = date(year or 0, month or 1, day or 1)  # year 0 is no year: ValueError
        if day is not None:
            after = first + timedelta(days=1)
        elif month is not None:
            after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        else:
            after = date(first.year + 1, 1, 1)
    except (ValueError, OverflowError):  # 2019-02-30, year 0, or the end of 9999
        raise OptionsError(f"{option} {text.strip()}: no such date (years 1 to 9998)") from None
    return datetime.combine(first, datetime.min.time()), datetime.combine(
        after, datetime.min.time()
    )


def parse_near(text: str) -> Near:
    """``LAT,LON[,KM]`` in decimal degrees (south and west negative) and kilometres.

    Raises:
        OptionsError: not two or three numbers, or out of range.
    """
    parts = [p.strip() for p in (text or "").split(",")]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3) or not all(math.isfinite(n) for n in numbers):
        raise OptionsError(
            f"--near takes LAT,LON or LAT,LON,KM in decimal degrees, e.g. 43.46,11.88,5; not {text!r}"
        )
    lat, lon, km = (*numbers, DEFAULT_NEAR_KM)[:3]
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise OptionsError(
            f"--near {text}: latitude must be in [-90, 90], longitude in [-180, 180]"
        )
    if not 0 < km <= 20_038:
        raise OptionsError(
            f"--near {text}: the distance must be more than 0 km (and at most half the Earth)"
        )
    return Near(lat, lon, km)


def _words(values: list[str] | tuple[str, ...], option: str) -> list[str]:
    cleaned = [" ".join(v.split()).lower() for v in values]
    if any(not v for v in cleaned):
        raise OptionsError(f"{option} needs a non-empty text")
    return cleaned
