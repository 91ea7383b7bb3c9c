"""Events: the library's dated photos split where the time taken jumps or the place changes.

The rule (:func:`split`): photos go in order of their time taken, the camera's wall-clock
time. A photo starts a new event when it was taken more than ``gap_hours`` after the photo
before it, or more than ``distance_km`` (great-circle) from the last photo of the event so
far that has coordinates. A photo without coordinates never starts an event by place, and a
photo without a time taken is in no event (its file's modification time says when it was
copied, not taken): the result counts them as ``undated``.

The defaults:

- ``gap_hours`` 8: longer than the pauses of a day out (a meal, a drive between sights),
  shorter than a night, so a night's sleep ends an event unless shooting went on through it
  (a party past midnight stays one). iPhoto offered "eight-hour gaps" as one of its ways to
  split events; its "one event per day" would cut that party in two.
- ``distance_km`` 50: wider than a day's wandering in and around one city (Rome's ring road
  is 20 km across), narrower than the hop from one city to the next on a trip (Florence to
  Siena, 50 km; Arezzo to Florence, 60), so a trip through several towns in a day splits by
  town without a gap between them.
- ``min_size`` 1: a single photo is an event of its own (a quick snap on an ordinary day is
  still the only photo of that day); ``min_size`` hides the smaller ones and counts them.

Each event is named from its place (the most common among its photos), its dates and the
zero-shot label of its mean vector (the vocabulary that names clusters), and has a cover:
the photo closest to that mean. Covers need only the stored vectors; labels need the
vocabulary's text vectors, cached beside the library after the first time (the first
time, or after a model change, loads the model to embed them).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine

from organizer import naming
from organizer.embed import Embedder
from organizer.errors import OptionsError
from organizer.export import ExportFolder, ExportSummary, export_folders, safe_folder_name
from organizer.filters import PhotoFilter
from organizer.sources import Storage
from organizer.store import meta_queries as mq
from organizer.store import queries as q
from organizer.store.filter_queries import great_circle_km, kept_ids
from organizer.store.records import DatedPhoto, LibraryModel, OfflineImages

DEFAULT_GAP_HOURS = 8.0
DEFAULT_DISTANCE_KM = 50.0
# English whatever the locale (strftime's names follow it).
_MONTH_NAMES = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MONTHS = tuple(name[:3] for name in _MONTH_NAMES)
# Photos whose vectors are read at once to find their events' mean vectors and covers.
_VECTOR_BATCH = 20_000


@dataclass(frozen=True)
class EventRules:
    """How the library is split into events (see the module's docstring for the defaults).

    Raises:
        OptionsError: a gap or distance that is not a number above 0, a min_size below 1.
    """

    gap_hours: float = DEFAULT_GAP_HOURS
    distance_km: float = DEFAULT_DISTANCE_KM
    min_size: int = 1
    labels: bool = True  # name events by the vocabulary (may load the model once)

    def __post_init__(self) -> None:
        if math.isnan(self.gap_hours) or self.gap_hours <= 0:
            raise OptionsError(
                f"--gap {self.gap_hours:g}: give the hours between two events, above 0 "
                f"(default {DEFAULT_GAP_HOURS:g})"
            )
        if math.isnan(self.distance_km) or self.distance_km <= 0:
            raise OptionsError(
                f"--distance {self.distance_km:g}: give the kilometres between two events' "
                f"places, above 0 (default {DEFAULT_DISTANCE_KM:g}; 'inf' never splits by place)"
            )
        if self.min_size < 1:
            raise OptionsError(f"--min-size {self.min_size}: an event holds at least 1 photo")

    def to_dict(self) -> dict:
        return {
            "gap_hours": self.gap_hours if math.isfinite(self.gap_hours) else None,
            "distance_km": self.distance_km if math.isfinite(self.distance_km) else None,
            "min_size": self.min_size,
            "labels": self.labels,
        }


@dataclass(frozen=True)
class Event:
    """Photos taken together: one place and stretch of time (see :func:`split`)."""

    number: int  # 1, 2, ... in order of time
    photos: tuple[DatedPhoto, ...]  # by time taken
    place: str | None  # the most common short place name of its photos ("Arezzo, Italy")
    label: str | None  # the closest concept of the vocabulary to its mean vector
    cover: DatedPhoto  # the photo closest to its mean vector

    @property
    def start(self) -> datetime:
        return self.photos[0].taken_at

    @property
    def end(self) -> datetime:
        return self.photos[-1].taken_at

    @property
    def count(self) -> int:
        return len(self.photos)

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(p.image_id for p in self.photos)

    @property
    def dates(self) -> str:
        """ "22 Oct 2008", "22–24 Oct 2008", "30 Oct – 2 Nov 2008"..."""
        return dates_text(self.start, self.end)

    @property
    def name(self) -> str:
        """ "Arezzo, Italy · 22 Oct 2008 · old town": its place, dates and label."""
        return " · ".join(part for part in (self.place, self.dates, self.label) if part)

    def folder_name(self) -> str:
        """Its export folder: "2008-10-22 Arezzo, Italy - old town", safe on any disk."""
        head = " ".join(part for part in (f"{self.start:%Y-%m-%d}", self.place) if part)
        text = f"{head} - {self.label}" if self.label else head
        return safe_folder_name(text, f"{self.start:%Y-%m-%d}")

    def sample(self, n: int) -> tuple[DatedPhoto, ...]:
        """The cover, then up to ``n - 1`` of its other photos spread over the event."""
        others = [p for p in self.photos if p is not self.cover]
        if len(others) >= n:
            others = [others[i] for i in np.linspace(0, len(others) - 1, n - 1).round().astype(int)]
        return (self.cover, *others[: n - 1])

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "number": self.number,
            "name": self.name,
            "place": self.place,
            "dates": self.dates,
            "label": self.label,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "count": self.count,
            "cover": self.cover.to_dict(absolute),
            "images": [p.to_dict(absolute) for p in self.photos],
        }


@dataclass(frozen=True)
class TimelineMonth:
    """The events that began in one month."""

    year: int
    month: int
    events: tuple[Event, ...]

    @property
    def name(self) -> str:
        return _MONTH_NAMES[self.month - 1]

    @property
    def photos(self) -> int:
        return sum(e.count for e in self.events)


@dataclass(frozen=True)
class TimelineYear:
    """The events that began in one year, month by month."""

    year: int
    months: tuple[TimelineMonth, ...]

    @property
    def events(self) -> int:
        return sum(len(m.events) for m in self.months)

    @property
    def photos(self) -> int:
        return sum(m.photos for m in self.months)


@dataclass(frozen=True)
class EventList:
    """The library's events, and what is in none."""

    events: tuple[Event, ...]
    rules: EventRules
    undated: int  # ok images without a time taken (of those the filter keeps)
    smaller: int = 0  # events of fewer than rules.min_size photos, left out
    smaller_photos: int = 0  # their photos
    where: PhotoFilter = field(default_factory=PhotoFilter)
    offline: OfflineImages = field(default_factory=OfflineImages)

    @property
    def photos(self) -> int:
        return sum(e.count for e in self.events)

    def event(self, number: int) -> Event | None:
        return self.events[number - 1] if 1 <= number <= len(self.events) else None

    def calendar(self) -> list[TimelineYear]:
        """The events by the year and month they began in, oldest first."""
        years: dict[int, dict[int, list[Event]]] = {}
        for e in self.events:
            years.setdefault(e.start.year, {}).setdefault(e.start.month, []).append(e)
        return [
            TimelineYear(
                year, tuple(TimelineMonth(year, m, tuple(evs)) for m, evs in months.items())
            )
            for year, months in years.items()
        ]

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "events": [e.to_dict(absolute) for e in self.events],
            "photos": self.photos,
            "undated": self.undated,
            "smaller": {"events": self.smaller, "photos": self.smaller_photos},
            "rules": self.rules.to_dict(),
            "filter": self.where.to_dict(),
            "offline": self.offline.to_dict(),
        }


def dates_text(start: datetime, end: datetime) -> str:
    """A span of days as a title says it, in English whatever the locale:
    "22 Oct 2008", "22–24 Oct 2008", "30 Oct – 2 Nov 2008", "28 Dec 2008 – 3 Jan 2009"."""
    a, b = start.date(), end.date()
    first = f"{a.day} {_MONTHS[a.month - 1]} {a.year}"
    if a == b:
        return first
    last = f"{b.day} {_MONTHS[b.month - 1]} {b.year}"
    if a.year != b.year:
        return f"{first} – {last}"
    if a.month != b.month:
        return f"{a.day} {_MONTHS[a.month - 1]} – {last}"
    return f"{a.day}–{last}"


def split(photos: Sequence[DatedPhoto], rules: EventRules) -> list[tuple[int, int]]:
    """Where the events of ``photos`` (ordered by time taken) begin and end: (start, stop)
    index pairs, one per event, covering them all in order."""
    n = len(photos)
    if n == 0:
        return []
    seconds = np.array([p.taken_at for p in photos], dtype="datetime64[s]").astype(np.int64)
    starts = np.ones(n, dtype=bool)
    starts[1:] = np.diff(seconds) > rules.gap_hours * 3600
    lat = np.array([p.latitude if p.has_position else np.nan for p in photos], dtype=np.float64)
    lon = np.array([p.longitude if p.has_position else np.nan for p in photos], dtype=np.float64)
    located = ~np.isnan(lat)
    # The last photo with coordinates before each photo; compared only within the same
    # stretch of time (a place split never ends an event before one of its photos).
    before = np.concatenate(([-1], np.maximum.accumulate(np.where(located, np.arange(n), -1))[:-1]))
    stretch = np.cumsum(starts)
    compare = located & (before >= 0)
    compare[compare] &= stretch[before[compare]] == stretch[compare]
    far = np.zeros(n, dtype=bool)
    far[compare] = (
        great_circle_km(lat[before[compare]], lon[before[compare]], lat[compare], lon[compare])
        > rules.distance_km
    )
    edges = [*np.flatnonzero(starts | far).tolist(), n]
    return list(pairwise(edges))


def most_common_place(photos: Sequence[DatedPhoto]) -> str | None:
    """The place most of the photos were taken at (the earliest of those tied)."""
    counts = Counter(p.place for p in photos if p.place)
    return max(counts, key=lambda place: counts[place]) if counts else None


EmbedderProvider = Callable[[], Embedder]


class Events:
    """The events of a library's photos: find them, export them."""

    def __init__(
        self,
        engine: Engine,
        embedder: EmbedderProvider,
        cache_dir: Path | None,
        roots: Sequence[int] | None = None,
        offline: OfflineImages | None = None,
    ):
        """``embedder()`` loads the model, only to name events when the vocabulary's text
        vectors are not cached in ``cache_dir``; only images under ``roots`` (when given)
        are grouped, and ``offline`` says what absent roots left out."""
        self.engine = engine
        self.embedder = embedder
        self.cache_dir = cache_dir
        self.roots = roots
        self.offline = offline or OfflineImages()

    def find(self, rules: EventRules | None = None, where: PhotoFilter | None = None) -> EventList:
        """The events of the ok images with a time taken (those ``where`` keeps)."""
        rules = rules or EventRules()
        where = where or PhotoFilter()
        with self.engine.connect() as conn, conn.begin():
            model = q.library_model(conn)
            photos = mq.dated_photos(conn, self.roots)
            undated = mq.undated_ids(conn, self.roots)
            if not where.empty:
                kept = set(kept_ids(conn, where).tolist())
                photos = [p for p in photos if p.image_id in kept]
                undated = [i for i in undated if i in kept]
            groups = [photos[a:b] for a, b in split(photos, rules)]
            shown = [g for g in groups if len(g) >= rules.min_size]
            means, covers = (
                _centres(conn, model, shown) if model is not None else (np.empty((0, 0)), [])
            )
        labels: list[str | None] = [None] * len(shown)
        if rules.labels and model is not None and shown:
            labels = [label for label, _ in self._labels(model, means)]
        events = tuple(
            Event(n, tuple(g), most_common_place(g), label, cover)
            for n, (g, label, cover) in enumerate(zip(shown, labels, covers, strict=True), 1)
        )
        return EventList(
            events,
            rules,
            undated=len(undated),
            smaller=len(groups) - len(shown),
            smaller_photos=sum(len(g) for g in groups if len(g) < rules.min_size),
            where=where,
            offline=self.offline,
        )

    def _labels(self, model: LibraryModel, means: np.ndarray) -> list[tuple[str, float]]:
        vocabulary = naming.load_vocabulary()
        concepts = naming.concept_vectors(
            self.embedder, model.spec, model.dim, vocabulary, self.cache_dir
        )
        return naming.closest(means, concepts, vocabulary)

    def export(
        self,
        target: Path,
        mode: str | None = None,
        force: bool = False,
        rules: EventRules | None = None,
        where: PhotoFilter | None = None,
        storage: Storage | None = None,
    ) -> ExportSummary:
        """One folder per event ("2008-10-22 Arezzo, Italy - old town") of links to (or
        copies of) its photos, as clusters are exported (see export_folders)."""
        found = self.find(rules, where)
        return export_folders(
            event_folders(found.events),
            target,
            mode,
            force,
            {"events": {**found.rules.to_dict(), "filter": found.where.to_dict()}},
            storage,
        )


def event_folders(events: Sequence[Event]) -> list[ExportFolder]:
    """Each event's folder; a name two events share gets " (2)", " (3)"... after it."""
    used: Counter[str] = Counter()
    folders = []
    for e in events:
        name = e.folder_name()
        used[name.casefold()] += 1  # one folder on a case-insensitive disk
        if used[name.casefold()] > 1:
            name = f"{name} ({used[name.casefold()]})"
        folders.append(ExportFolder(name, e.photos))
    return folders


def _centres(
    conn: Connection, model: LibraryModel, groups: Sequence[Sequence[DatedPhoto]]
) -> tuple[np.ndarray, list[DatedPhoto]]:
    """Each group's mean unit vector and its photo closest to it (the earliest of a tie),
    reading the vectors of a batch of groups at a time."""
    means = np.zeros((len(groups), model.dim), dtype=np.float32)
    covers: list[DatedPhoto] = []
    batch: list[int] = []
    held = 0
    for g, group in enumerate(groups):
        batch.append(g)
        held += len(group)
        if held >= _VECTOR_BATCH or g == len(groups) - 1:
            photos = [p for i in batch for p in groups[i]]
            vectors = q.vectors_of(conn, model.id, model.dim, [p.image_id for p in photos])
            at = 0
            for i in batch:
                own = vectors[at : at + len(groups[i])]
                mean = own.mean(axis=0)
                means[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
                covers.append(groups[i][int(np.argmax(own @ means[i]))])
                at += len(groups[i])
            batch, held = [], 0
    return means, covers
