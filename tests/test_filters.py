"""Filters by date, camera, place, position and folder, checked against a brute-force filter
of the same photos, on both backends; `-n` returns exactly n whenever n images pass."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest

from organizer.choices import Sort
from organizer.errors import OptionsError
from organizer.filters import Near, parse_filter, parse_near, period
from organizer.store import queries as q
from organizer.store.filter_queries import distances_km, kept_ids
from tests.fakes import photo_exif, write_photo

pytestmark = pytest.mark.both_backends

PLACES = {
    "arezzo": (43.4633, 11.8796),
    "florence": (43.7696, 11.2558),
    "sydney": (-33.8688, 151.2093),
    "rio": (-22.9068, -43.1729),
    "suva": (-18.1416, 178.4419),
    "taveuni": (-16.8500, -179.9700),  # across the antimeridian from Suva
}
CAMERAS = [("Canon", "Canon EOS 5D"), ("NIKON CORPORATION", "NIKON D750"), ("Apple", "iPhone 12")]
FOLDERS = ["a", "a/deeper", "ab", "b", ""]


@dataclass(frozen=True)
class Truth:
    name: str
    taken: datetime | None
    camera: tuple[str, str] | None
    place: str | None


def _truths(n: int = 48) -> list[Truth]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        taken = (
            None
            if i % 9 == 4
            else datetime(2015, 1, 1) + timedelta(hours=int(rng.integers(0, 6 * 365 * 24)))
        )
        camera = None if i % 7 == 3 else CAMERAS[int(rng.integers(0, len(CAMERAS)))]
        place = None if i % 5 == 1 else list(PLACES)[int(rng.integers(0, len(PLACES)))]
        folder = FOLDERS[i % len(FOLDERS)]
        out.append(Truth(f"{folder}/p{i:02d}.jpg".lstrip("/"), taken, camera, place))
    return out


@pytest.fixture
def filtered(fake_lib, tmp_path):
    root = tmp_path / "photos"
    truths = _truths()
    for i, t in enumerate(truths):
        exif = photo_exif(
            taken=t.taken.strftime("%Y:%m:%d %H:%M:%S") if t.taken else None,
            camera=t.camera,
            gps=PLACES[t.place] if t.place else None,
        )
        write_photo(root / t.name, 100 + i, exif)
    assert fake_lib.ingest([root]).new == len(truths)
    with fake_lib.engine.connect() as conn:
        ids = {r.relpath.decode(): r.id for r in conn.execute(q.select(q.images)).all()}
    return fake_lib, root, {ids[t.name]: t for t in truths}


CASES = {
    "after 2017": (dict(after="2017"), lambda t, r: t.taken and t.taken >= datetime(2017, 1, 1)),
    "before 2016-06": (
        dict(before="2016-06"),
        lambda t, r: t.taken and t.taken < datetime(2016, 7, 1),
    ),
    "2018 only": (
        dict(after="2018", before="2018"),
        lambda t, r: t.taken and t.taken.year == 2018,
    ),
    "one day": (
        dict(after="2019-03-01", before="2019-03-31"),
        lambda t, r: t.taken and (t.taken.year, t.taken.month) == (2019, 3),
    ),
    "canon": (dict(camera=["canon"]), lambda t, r: t.camera == CAMERAS[0]),
    "canon or iphone": (
        dict(camera=["canon", "IPHONE"]),
        lambda t, r: t.camera in (CAMERAS[0], CAMERAS[2]),
    ),
    "nikon d7": (dict(camera=["d7"]), lambda t, r: t.camera == CAMERAS[1]),
    "the make": (dict(camera=["corporation"]), lambda t, r: t.camera == CAMERAS[1]),
    "italy": (dict(place=["Italy"]), lambda t, r: t.place in ("arezzo", "florence")),
    "tuscany": (dict(place=["tuscany"]), lambda t, r: t.place in ("arezzo", "florence")),
    "tusc (part of a name)": (dict(place=["tusc"]), lambda t, r: t.place in ("arezzo", "florence")),
    "arezzo": (dict(place=["arezzo"]), lambda t, r: t.place == "arezzo"),
    "BR (country code)": (dict(place=["br"]), lambda t, r: t.place == "rio"),
    "sydney or fiji": (
        dict(place=["sydney", "fiji"]),
        lambda t, r: t.place in ("sydney", "suva", "taveuni"),
    ),
    "nowhere": (dict(place=["atlantis"]), lambda t, r: False),
    "near arezzo": (dict(near="43.4633,11.8796,10"), lambda t, r: t.place == "arezzo"),
    "near tuscany": (dict(near="43.6,11.55,60"), lambda t, r: t.place in ("arezzo", "florence")),
    "across the antimeridian": (
        dict(near="-17.5,179.5,200"),
        lambda t, r: t.place in ("suva", "taveuni"),
    ),
    "under a": (dict(under=["a"]), lambda t, r: t.name.startswith("a/")),
    "under a/deeper": (dict(under=["a/deeper"]), lambda t, r: t.name.startswith("a/deeper/")),
    "under ab and b": (
        dict(under=["ab", "b"]),
        lambda t, r: t.name.startswith(("ab/", "b/")),
    ),
    "under the root": (dict(under=[""]), lambda t, r: True),
    "everything at once": (
        dict(
            after="2015",
            before="2020",
            camera=["canon", "nikon"],
            place=["italy", "australia"],
            under=["a"],
        ),
        lambda t, r: bool(
            t.taken
            and t.taken.year < 2021
            and t.camera in CAMERAS[:2]
            and t.place in ("arezzo", "florence", "sydney")
            and t.name.startswith("a/")
        ),
    ),
}


def _filter(root, options: dict):
    options = dict(options)
    if "under" in options:
        options["under"] = [str(root / u) if u else str(root) for u in options["under"]]
    return parse_filter(
        options.get("after"),
        options.get("before"),
        options.get("camera", ()),
        options.get("place", ()),
        options.get("near"),
        options.get("under", ()),
    )


@pytest.mark.parametrize("case", list(CASES))
def test_filters_keep_what_a_brute_force_filter_keeps(filtered, case):
    lib, root, truth = filtered
    options, keep = CASES[case]
    where = _filter(root, options)
    expected = sorted(i for i, t in truth.items() if keep(t, root))
    with lib.engine.connect() as conn:
        assert kept_ids(conn, where).tolist() == expected


@pytest.mark.parametrize(
    "case", ["after 2017", "canon", "italy", "under a", "nowhere", "2018 only"]
)
@pytest.mark.parametrize("n", [1, 3, 10, 100])
def test_n_results_whenever_n_images_pass(filtered, case, n):
    """The best n of the filtered set, exactly as a scan of that set ranks them."""
    lib, root, truth = filtered
    options, keep = CASES[case]
    where = _filter(root, options)
    expected = {i for i, t in truth.items() if keep(t, root)}
    vectors = _vectors(lib)
    text = lib.finder().text_vectors(["a quiet street"])[0]
    res = lib.search("a quiet street", limit=n, where=where)
    best = sorted(expected, key=lambda i: -float(vectors[i] @ text))[:n]
    assert [r.image_id for r in res.results] == best
    first = min(truth)  # a photo of the library: itself left out
    res = lib.similar(root / truth[first].name, limit=n, where=where)
    best = sorted(expected - {first}, key=lambda i: -float(vectors[i] @ vectors[first]))[:n]
    assert [r.image_id for r in res.results] == best


def _vectors(lib) -> dict[int, np.ndarray]:
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
    return dict(zip(ids.tolist(), vecs, strict=True))


def test_sort_by_date_keeps_the_same_results(filtered):
    lib, _root, _truth = filtered
    by_score = lib.search("a quiet street", limit=20)
    by_date = lib.search("a quiet street", limit=20, sort=Sort.DATE)
    assert {r.image_id for r in by_date.results} == {r.image_id for r in by_score.results}
    dated = [r.taken_at for r in by_date.results if r.taken_at is not None]
    assert dated == sorted(dated)
    undated = [r for r in by_date.results if r.taken_at is None]
    assert by_date.results[len(dated) :] == undated  # undated last, by rank
    assert [r.rank for r in undated] == sorted(r.rank for r in undated)


def test_duplicates_within_a_filter(fake_lib, tmp_path):
    root = tmp_path / "photos"
    write_photo(root / "italy/a.jpg", 1, photo_exif(gps=PLACES["arezzo"]))
    stripped = {"taken": None, "camera": None}  # a copy whose date and camera were removed
    write_photo(root / "italy/a-copy.jpg", 1, photo_exif(gps=PLACES["arezzo"], **stripped))
    write_photo(root / "rio/b.jpg", 2, photo_exif(gps=PLACES["rio"]))
    write_photo(root / "rio/b-copy.jpg", 2, photo_exif(gps=PLACES["rio"], **stripped))
    fake_lib.ingest([root])
    assert len(fake_lib.duplicates().groups) == 2
    groups = fake_lib.duplicates(where=parse_filter(places=["italy"])).groups
    assert [sorted(m.relpath.decode() for m in g.files) for g in groups] == [
        ["italy/a-copy.jpg", "italy/a.jpg"]
    ]


def test_cluster_export_and_report_take_a_filter(filtered, tmp_path):
    lib, root, truth = filtered
    where = _filter(root, {"place": ["italy"]})
    italy = {i for i, t in truth.items() if t.place in ("arezzo", "florence")}
    run = lib.cluster(2, where=where, names=False)
    assert run.run.n_images == len(italy)
    assert {m.image_id for _, m in run.members} == italy
    lib.cluster(2, names=False)  # the whole library: the latest run
    out = lib.export(None, tmp_path / "export", where=where)
    linked = sorted(p.name for p in (tmp_path / "export").rglob("*.jpg"))
    assert len(linked) == len(italy) and out is not None
    summary = lib.report(tmp_path / "italy.html", where=where)
    page = (tmp_path / "italy.html").read_text()
    assert summary.n_images == len(italy)
    assert "<dt>Filter</dt><dd>place italy</dd>" in page
    assert f"{len(italy)} with a vector, of those the filter keeps" in page
    with pytest.raises(Exception, match="keeps no image"):
        lib.report(tmp_path / "r.html", where=_filter(root, {"place": ["atlantis"]}))


# -- the words of a filter --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, first, after",
    [
        ("2019", datetime(2019, 1, 1), datetime(2020, 1, 1)),
        ("2019-12", datetime(2019, 12, 1), datetime(2020, 1, 1)),
        ("2019-02", datetime(2019, 2, 1), datetime(2019, 3, 1)),
        ("2020-02-29", datetime(2020, 2, 29), datetime(2020, 3, 1)),
        (" 2019-6-7 ", datetime(2019, 6, 7), datetime(2019, 6, 8)),
    ],
)
def test_periods(text, first, after):
    assert period(text) == (first, after)


@pytest.mark.parametrize(
    "text",
    ["", "19", "2019-13", "2019-02-30", "last year", "2019/06", "2019-06-07T10", "0000", "9999"],
)
def test_bad_periods(text):
    with pytest.raises(OptionsError):
        period(text, "--after")


@pytest.mark.parametrize(
    "text, near",
    [
        ("43.46,11.88", Near(43.46, 11.88, 10)),
        ("-33.87, 151.21, 2.5", Near(-33.87, 151.21, 2.5)),
        ("0,180,1", Near(0, 180, 1)),
    ],
)
def test_near(text, near):
    assert parse_near(text) == near


@pytest.mark.parametrize(
    "text", ["43.46", "a,b", "91,0", "0,181", "1,2,0", "1,2,-5", "nan,1", "1,2,3,4"]
)
def test_bad_near(text):
    with pytest.raises(OptionsError):
        parse_near(text)


def test_after_later_than_before_is_a_usage_error():
    with pytest.raises(OptionsError, match="later than"):
        parse_filter(after="2020", before="2019-12")


def test_distances():
    arezzo, florence = PLACES["arezzo"], PLACES["florence"]
    d = distances_km(Near(*arezzo), np.array([florence[0]]), np.array([florence[1]]))
    assert 59 < d[0] < 62  # about 60 km as the crow flies


@pytest.mark.parametrize(
    "args, message",
    [
        (["--after", "yesterday"], "--after takes a year, month or day"),
        (["--before", "2019-02-30"], "no such date"),
        (["--near", "91,0"], "latitude must be in"),
        (["--after", "2020", "--before", "2019"], "later than"),
        (["--camera", " "], "--camera needs a non-empty text"),
        (["--under", ""], "empty path"),
        (["--under", "~nosuchuser-x/photos"], "home directory"),
        (["--before", "9999-12-31"], "no such date"),
    ],
)
def test_bad_filters_exit_2(cli, filtered, args, message):
    lib, _root, _truth = filtered
    result = cli("search", "x", *args, "--library", lib.settings.library)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_the_command_line(cli, filtered):
    """`similar` on a library photo needs no model (the fake one cannot be loaded here)."""
    lib, root, truth = filtered
    italy = {i for i, t in truth.items() if t.place in ("arezzo", "florence")}
    first = min(truth)
    photo = str(root / truth[first].name)
    args = ["--place", "italy", "-n", "50", "--library", lib.settings.library]
    result = cli("similar", photo, *args, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {r["image_id"] for r in out["results"]} == italy - {first}
    assert out["filter"] == {"place": "italy"}
    assert all(r["place"].endswith("Tuscany, Italy") for r in out["results"])
    assert all(isinstance(r["latitude"], float) for r in out["results"])
    text = cli("similar", photo, *args[:2], "-n", "2", "--library", lib.settings.library)
    assert text.exit_code == 0
    assert text.stdout.startswith("filter: place italy\n")
    assert "Tuscany, Italy" in text.stdout


def test_place_words_ignore_case_and_accents():
    from organizer.store.filter_queries import plain

    assert plain("São Paulo") == plain("sao paulo") == plain("SA\u0303O PAULO") == "sao paulo"
    assert plain("Zürich") == "zurich"


def test_assigning_new_images_to_a_filtered_run_keeps_its_filter(filtered):
    lib, root, _truth = filtered
    run = lib.cluster(2, where=_filter(root, {"place": ["italy"]}), names=False)
    write_photo(root / "new/italy.jpg", 900, photo_exif(gps=PLACES["florence"]))
    write_photo(root / "new/brazil.jpg", 901, photo_exif(gps=PLACES["rio"]))
    lib.ingest([root])
    assigned = lib.assign_new(run.run.id)
    assert assigned.assigned == 1
    names = {m.relpath.decode() for _, m in assigned.summary.members}
    assert "new/italy.jpg" in names and "new/brazil.jpg" not in names
