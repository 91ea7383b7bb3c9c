"""Events: the split rules (time gaps, changes of place), their names and dates, `organizer
events` and its JSON, `export --events`, on JPEGs whose EXIF says when and where."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from organizer.config import Settings
from organizer.errors import OptionsError
from organizer.events import EventRules, dates_text, split
from organizer.export import safe_folder_name
from organizer.filters import parse_filter
from organizer.library import Library
from organizer.places import Place
from organizer.scan import EXPORT_MARKER
from organizer.store.records import DatedPhoto
from tests.fakes import photo_exif, write_photo

pytestmark = pytest.mark.both_backends

AREZZO = (43.4633, 11.8797)
FLORENCE = (43.7696, 11.2558)  # 60 km from Arezzo
NEAR_AREZZO = (43.3, 11.9)  # 18 km away
PLACES = {
    AREZZO: Place("Arezzo", "Tuscany", "Italy", "IT"),
    FLORENCE: Place("Florence", "Tuscany", "Italy", "IT"),
    NEAR_AREZZO: Place("Arezzo", "Tuscany", "Italy", "IT"),
}


# -- the rules, on made-up photos ------------------------------------------------------------


def _photo(n: int, when: str, where: tuple[float, float] | None = None) -> DatedPhoto:
    lat, lon = where or (None, None)
    return DatedPhoto(n, datetime.fromisoformat(when), lat, lon, None, "/p", f"{n}.jpg".encode())


def _events(photos, **rules) -> list[list[int]]:
    return [[p.image_id for p in photos[a:b]] for a, b in split(photos, EventRules(**rules))]


@pytest.mark.parametrize(
    ("second", "together"),
    [
        ("2008-10-22 17:59:59", True),  # 7 h 59 min 59 s after
        ("2008-10-22 18:00:00", True),  # exactly the gap: not more than it
        ("2008-10-22 18:00:01", False),
        ("2008-10-23 09:00:00", False),  # the next morning
    ],
)
def test_a_gap_longer_than_the_threshold_starts_an_event(second, together):
    photos = [_photo(1, "2008-10-22 10:00"), _photo(2, second)]
    assert _events(photos) == ([[1, 2]] if together else [[1], [2]])


def test_the_gap_is_tunable():
    photos = [_photo(1, "2008-10-22 10:00"), _photo(2, "2008-10-22 13:00")]
    assert _events(photos, gap_hours=2) == [[1], [2]]
    assert _events(photos, gap_hours=3) == [[1, 2]]


def test_a_change_of_place_starts_an_event_without_a_gap():
    photos = [
        _photo(1, "2008-10-22 10:00", AREZZO),
        _photo(2, "2008-10-22 11:00", NEAR_AREZZO),  # 18 km: the same outing
        _photo(3, "2008-10-22 12:00", FLORENCE),  # 60 km from the last: a new place
        _photo(4, "2008-10-22 12:30", FLORENCE),
    ]
    assert _events(photos) == [[1, 2], [3, 4]]
    assert _events(photos, distance_km=100) == [[1, 2, 3, 4]]
    assert _events(photos, distance_km=float("inf")) == [[1, 2, 3, 4]]
    assert _events(photos, distance_km=10) == [[1], [2], [3, 4]]


def test_photos_without_coordinates_never_split_by_place():
    """A photo without coordinates stays with the event; the place is compared with the
    event's last photo that has coordinates, across those without."""
    photos = [
        _photo(1, "2008-10-22 10:00", AREZZO),
        _photo(2, "2008-10-22 11:00"),
        _photo(3, "2008-10-22 12:00"),
        _photo(4, "2008-10-22 13:00", FLORENCE),
        _photo(5, "2008-10-22 14:00"),
    ]
    assert _events(photos) == [[1, 2, 3], [4, 5]]


def test_a_place_is_compared_within_its_own_stretch_of_time_only():
    """After a gap the event starts afresh: its first located photo is not split from the
    photos without coordinates before it, wherever the previous event was."""
    photos = [
        _photo(1, "2008-10-22 10:00", AREZZO),
        _photo(2, "2008-10-23 10:00"),  # a gap: a new event
        _photo(3, "2008-10-23 11:00", FLORENCE),
    ]
    assert _events(photos) == [[1], [2, 3]]


def test_no_photos_no_events():
    assert split([], EventRules()) == []


@pytest.mark.parametrize(
    ("start", "end", "text"),
    [
        ("2008-10-22 10:00", "2008-10-22 23:00", "22 Oct 2008"),
        ("2008-10-22 10:00", "2008-10-24 09:00", "22–24 Oct 2008"),
        ("2008-10-30 10:00", "2008-11-02 09:00", "30 Oct – 2 Nov 2008"),
        ("2008-12-28 10:00", "2009-01-03 09:00", "28 Dec 2008 – 3 Jan 2009"),
        ("2009-01-01 00:00", "2009-01-01 00:00", "1 Jan 2009"),
    ],
)
def test_dates_read_as_a_title_says_them(start, end, text):
    assert dates_text(datetime.fromisoformat(start), datetime.fromisoformat(end)) == text


@pytest.mark.parametrize(
    ("rules", "option"),
    [
        ({"gap_hours": -1}, "--gap"),
        ({"gap_hours": 0}, "--gap"),
        ({"gap_hours": float("nan")}, "--gap"),
        ({"distance_km": 0}, "--distance"),
        ({"min_size": 0}, "--min-size"),
    ],
)
def test_rules_that_cannot_work_are_usage_errors(rules, option):
    with pytest.raises(OptionsError, match=option):
        EventRules(**rules)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("2008-10-22 Arezzo, Italy - old town", "2008-10-22 Arezzo, Italy - old town"),
        ('2008-10-22 a/b\\c:d*e?f"g<h>i|j', "2008-10-22 a-b-c-d-e-f-g-h-i-j"),
        ("2008-10-22 Kyiv\u202e\n\x00 ", "2008-10-22 Kyiv"),
        ("..hidden. ", "hidden"),
        ("", "untitled"),
        ("2008-10-22 " + "é" * 300, "2008-10-22 " + "é" * 94),  # 200 bytes of UTF-8
    ],
)
def test_folder_names_are_safe_on_any_disk(text, name):
    assert safe_folder_name(text) == name
    assert len(name.encode()) <= 200


# -- a library of dated JPEGs ----------------------------------------------------------------


def dated_jpeg(path: Path, seed: int, taken: str | None, where=None) -> Path:
    """A JPEG whose EXIF says when (DateTimeOriginal) and where (GPS) it was taken."""
    return write_photo(path, seed, photo_exif(taken, gps=where, camera=None))


TRIP = [  # file, taken, where
    ("arezzo/a1.jpg", "2008:10:22 10:00:00", AREZZO),
    ("arezzo/a2.jpg", "2008:10:22 13:00:00", AREZZO),
    ("arezzo/a3.jpg", "2008:10:22 17:59:00", None),  # no GPS: stays in Arezzo
    ("florence/f1.jpg", "2008:10:22 19:00:00", FLORENCE),  # 60 km on: a new event
    ("florence/f2.jpg", "2008:10:23 02:59:00", FLORENCE),  # 7 h 59 min later: the same
    ("home/h1.jpg", "2008:12:28 20:00:00", None),
    ("home/h2.jpg", "2009:01:03 01:00:00", None),  # more than 8 h later: another event
    ("scans/s1.jpg", None, None),  # no time taken: in no event
    ("scans/s2.jpg", None, None),
]


def _fake_gazetteer(coords):
    return [PLACES.get((round(lat, 4), round(lon, 4))) for lat, lon in coords]


@pytest.fixture
def trip(fake_lib, tmp_path, monkeypatch):
    """The library of TRIP, its places named by a made-up gazetteer."""
    from organizer.ingest import metadata

    monkeypatch.setattr(metadata, "name_places", _fake_gazetteer)
    photos = tmp_path / "photos"
    for seed, (name, taken, where) in enumerate(TRIP):
        dated_jpeg(photos / name, seed, taken, where)
    assert fake_lib.ingest([photos]).failed == 0
    return photos


def test_the_library_splits_by_time_and_place(fake_lib, trip):
    found = fake_lib.events()
    names = [[os.path.basename(p.relpath).decode() for p in e.photos] for e in found.events]
    assert names == [
        ["a1.jpg", "a2.jpg", "a3.jpg"],
        ["f1.jpg", "f2.jpg"],
        ["h1.jpg"],
        ["h2.jpg"],
    ]
    assert found.undated == 2 and found.photos == 7
    arezzo, florence, *_ = found.events
    assert (arezzo.place, arezzo.dates) == ("Arezzo, Italy", "22 Oct 2008")
    assert (florence.place, florence.dates) == ("Florence, Italy", "22–23 Oct 2008")
    assert found.events[2].place is None
    assert [e.number for e in found.events] == [1, 2, 3, 4]
    for e in found.events:
        assert e.label  # the tiny fake model's labels mean nothing, but each event has one
        assert e.name == " · ".join(p for p in (e.place, e.dates, e.label) if p)
        assert e.cover in e.photos
        assert (e.start, e.end) == (e.photos[0].taken_at, e.photos[-1].taken_at)


def test_the_gap_and_distance_are_the_callers(fake_lib, trip):
    longer = fake_lib.events(EventRules(gap_hours=200, distance_km=float("inf"), labels=False))
    assert [e.count for e in longer.events] == [5, 2]
    assert longer.events[1].dates == "28 Dec 2008 – 3 Jan 2009"


def test_min_size_hides_small_events_and_counts_them(fake_lib, trip):
    found = fake_lib.events(EventRules(min_size=2, labels=False))
    assert [e.count for e in found.events] == [3, 2]
    assert (found.smaller, found.smaller_photos) == (2, 2)
    assert [e.number for e in found.events] == [1, 2]


def test_a_filter_picks_the_photos_grouped(fake_lib, trip):
    florence = fake_lib.events(EventRules(labels=False), parse_filter(places=["florence"]))
    assert [e.place for e in florence.events] == ["Florence, Italy"]
    home = fake_lib.events(EventRules(labels=False), parse_filter(under=[str(trip / "home")]))
    assert [e.count for e in home.events] == [1, 1] and home.undated == 0
    scans = fake_lib.events(EventRules(labels=False), parse_filter(under=[str(trip / "scans")]))
    assert scans.events == () and scans.undated == 2


def test_without_labels_no_model_is_loaded(fake_lib, trip, settings):
    """Covers come from the stored vectors: only the labels' vocabulary may need the model."""

    def no_model(spec, settings):
        raise AssertionError("the model was loaded")

    with Library.open(Settings(library=settings.library), embedder_loader=no_model) as lib:
        found = lib.events(EventRules(labels=False))
    assert [e.label for e in found.events] == [None] * 4
    assert found.events[0].name == "Arezzo, Italy · 22 Oct 2008"
    assert all(e.cover in e.photos for e in found.events)


def test_labels_come_from_the_cached_vocabulary_the_second_time(fake_lib, trip, settings):
    first = fake_lib.events()

    def no_model(spec, settings):
        raise AssertionError("the model was loaded")

    with Library.open(Settings(library=settings.library), embedder_loader=no_model) as lib:
        again = lib.events()
    assert [e.name for e in again.events] == [e.name for e in first.events]


def test_an_empty_library_has_no_events(fake_lib):
    found = fake_lib.events()
    assert (found.events, found.undated, found.photos) == ((), 0, 0)


# -- the command line ------------------------------------------------------------------------


def test_events_json_shape(fake_lib, trip, cli):
    result = cli("events", "--json", "--no-labels")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"events", "photos", "undated", "smaller", "rules", "filter", "offline"}
    assert data["undated"] == 2 and data["photos"] == 7
    assert data["rules"] == {"gap_hours": 8.0, "distance_km": 50.0, "min_size": 1, "labels": False}
    first = data["events"][0]
    assert first["name"] == "Arezzo, Italy · 22 Oct 2008"
    assert (first["start"], first["end"]) == ("2008-10-22T10:00:00", "2008-10-22T17:59:00")
    assert first["count"] == 3 and first["label"] is None
    assert [i["path"] for i in first["images"]] == [
        "arezzo/a1.jpg",
        "arezzo/a2.jpg",
        "arezzo/a3.jpg",
    ]
    assert first["cover"]["image_id"] in [i["image_id"] for i in first["images"]]
    assert "latitude" not in json.dumps(data)


def test_no_limit_is_null_in_json_never_infinity(fake_lib, trip, cli):
    result = cli("events", "--json", "--no-labels", "--gap", "inf", "--distance", "inf")
    assert result.exit_code == 0, result.output

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert (data["rules"]["gap_hours"], data["rules"]["distance_km"]) == (None, None)


def test_events_text_has_a_line_per_event_and_the_undated(fake_lib, trip, cli):
    result = cli("events", "--no-labels", "--gap", "12", "--place", "italy")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Arezzo, Italy · 22 Oct 2008" in lines[1] and "(arezzo/" in lines[1]
    assert "Florence, Italy · 22–23 Oct 2008" in lines[2]
    # --place keeps the photos with coordinates there: a3, without, is left out.
    assert lines[-1] == "2 events of 4 photos; undated: 0 (no time taken, in no event)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gap=-1"], "--gap -1"),
        (["--gap", "0"], "--gap 0"),
        (["--gap", "soon"], "not a number"),
        (["--distance", "0"], "--distance 0"),
        (["--min-size", "0"], "--min-size 0"),
        (["--after", "2008-13"], "no such date"),
    ],
)
def test_bad_options_are_usage_errors(cli, args, message):
    result = cli("events", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


# -- export --events -------------------------------------------------------------------------


def test_export_events_makes_a_folder_of_links_per_event(fake_lib, trip, cli, tmp_path):
    out = tmp_path / "by-event"
    result = cli("export", "--events", "--no-labels", "--to", out, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["linked"] == 7
    assert sorted(os.listdir(out)) == [
        EXPORT_MARKER,
        "2008-10-22 Arezzo, Italy",
        "2008-10-22 Florence, Italy",
        "2008-12-28",
        "2009-01-03",
    ]
    links = sorted(os.listdir(out / "2008-10-22 Arezzo, Italy"))
    assert links == ["a1.jpg", "a2.jpg", "a3.jpg"]
    link = out / "2008-10-22 Arezzo, Italy" / "a1.jpg"
    assert link.is_symlink() and link.resolve() == (trip / "arezzo" / "a1.jpg").resolve()
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["events"]["gap_hours"] == 8.0 and len(marker["entries"]) == 7
    # Again with labels (their vocabulary cached by the library's fake model: the command
    # line's tiny one is not loaded) and --force: the previous links are replaced.
    fake_lib.events()
    again = cli("export", "--events", "--to", out, "--force", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["replaced"] == 7
    folders = sorted(f for f in os.listdir(out) if f != EXPORT_MARKER)
    assert len(folders) == 4 and folders[0].startswith("2008-10-22 Arezzo, Italy - ")


def test_export_events_takes_the_filters(fake_lib, trip, cli, tmp_path):
    out = tmp_path / "florence"
    result = cli("export", "--events", "--no-labels", "--place", "florence", "--to", out)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == [EXPORT_MARKER, "2008-10-22 Florence, Italy"]


def test_events_sharing_a_name_get_distinct_folders(fake_lib, trip, tmp_path):
    rules = EventRules(gap_hours=1, labels=False)  # every photo an event of its own
    fake_lib.export_events(tmp_path / "out", rules=rules)
    assert sorted(os.listdir(tmp_path / "out")) == [
        EXPORT_MARKER,
        "2008-10-22",  # a3, without coordinates
        "2008-10-22 Arezzo, Italy",
        "2008-10-22 Arezzo, Italy (2)",
        "2008-10-22 Florence, Italy",
        "2008-10-23 Florence, Italy",
        "2008-12-28",
        "2009-01-03",
    ]


def test_export_events_with_a_run_is_a_usage_error(cli, tmp_path):
    result = cli("export", "--events", "--run", "1", "--to", tmp_path / "x")
    assert result.exit_code == 2 and "--run" in result.stderr
    assert not (tmp_path / "x").exists()


def test_dated_photo_json_never_holds_coordinates():
    photo = DatedPhoto(1, datetime(2008, 10, 22) + timedelta(hours=1), 43.0, 11.0, "X", "/r", b"a")
    assert set(photo.to_dict()) == {"image_id", "path", "root", "taken"}


@pytest.mark.parametrize(
    ("place", "short"),
    [
        (Place("Arezzo", "Tuscany", "Italy", "IT"), "Arezzo, Italy"),
        (Place("Singapore", None, "Singapore", "SG"), "Singapore"),
        (Place("Monaco", "Monaco", "Monaco", "MC"), "Monaco"),
    ],
)
def test_an_event_names_its_place_by_city_and_country(place, short):
    assert place.short_label() == short
