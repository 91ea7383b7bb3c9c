"""The HTML report: structure, escaping of hostile names, no remote references or absolute
paths, sampling, placeholders, clean errors and atomic writes, the projection."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from organizer.errors import ReportError
from organizer.report import projection as proj
from organizer.report import write_report
from organizer.report.render import script_json
from organizer.report.thumbs import PLACEHOLDER, SIDE
from tests.fakes import (
    AREZZO,
    SERIAL,
    camera_exif,
    clustered_vectors,
    photos_root,
    store_vectors,
    write_picture,
)

pytestmark = pytest.mark.both_backends

HOSTILE = ["<img src=x onerror=alert(1)>.jpg", "</script>.jpg", "a\"quote'&amp;.jpg"]


def make_library(lib, names: list[str], clusters: int = 2, files: bool = True) -> Path:
    """Store clustered vectors under ``names`` (cycling through the clusters) and, with
    ``files``, write a distinct real picture for each; returns the photo root."""
    per = -(-len(names) // clusters)
    vectors, _, _ = clustered_vectors(clusters, per, seed=1)
    order = np.arange(clusters * per).reshape(clusters, per).T.ravel()[: len(names)]
    store_vectors(lib, vectors[order], names)
    root = photos_root(lib)
    for seed, name in enumerate(names if files else []):
        write_picture(root / name, seed)
    return root


class Page(HTMLParser):
    """The parts of the report a test looks at."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.text: list[str] = []
        self._script: dict | None = None
        self.feed(html)
        self.close()
        data = next(body for attrs, body in self.scripts if attrs.get("id") == "report-data")
        self.data = json.loads(data)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)
        else:
            self.text.append(data)

    def find(self, tag: str, **attrs) -> list[dict]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]

    def sections(self) -> list[dict]:
        return [a for t, a in self.tags if t == "section" and a.get("class") == "cluster"]


def report(lib, tmp_path: Path, **options) -> tuple[Page, str, object]:
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir(exist_ok=True)
    summary = write_report(lib.engine, out, **options)
    html = out.read_text(encoding="utf-8")
    return Page(html), html, summary


CLUSTERED_NAMES = [f"{folder}/img{i:02d}.jpg" for folder in ("beach", "city") for i in range(6)]


@pytest.fixture
def clustered_lib(fake_lib):
    """``fake_lib`` holding CLUSTERED_NAMES, clustered with k=2."""
    make_library(fake_lib, CLUSTERED_NAMES)
    fake_lib.cluster(2, names=False)
    return fake_lib


def test_report_structure(clustered_lib, tmp_path):
    clustered_lib.cluster("auto", k_min=2, k_max=3, names=False)
    page, html, summary = report(clustered_lib, tmp_path)
    n = len(CLUSTERED_NAMES)
    assert summary.n_images == summary.n_points == n and not summary.sampled
    assert summary.size_bytes == len(html.encode()) and summary.placeholders == 0
    assert len(page.data["x"]) == len(page.data["y"]) == len(page.data["c"]) == n
    assert sorted(page.data["p"]) == sorted(CLUSTERED_NAMES)
    assert all(0 <= v <= 1 for v in page.data["x"] + page.data["y"])
    k = summary.k
    assert k == 2 and len(page.sections()) == k and len(page.find("button")) == k
    assert sorted(set(page.data["c"])) == [1, 2]
    for uri in page.data["t"]:  # real thumbnails: small JPEGs
        image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert image.format == "JPEG" and max(image.size) <= SIDE
    assert page.find("table", **{"class": "sweep"}), "the k sweep of -k auto is shown"
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in csp and "img-src data:" in csp
    assert all(img["src"].startswith("data:") for img in page.find("img") if "src" in img)
    assert "http://" not in html and "https://" not in html
    assert str(tmp_path) not in html, "no absolute path of the library or its photos"


@pytest.mark.parametrize("where", ["file names", "cluster label"])
def test_hostile_names_are_escaped(fake_lib, tmp_path, where):
    names = [*HOSTILE, "plain/one.jpg", "plain/two.jpg", "plain/three.jpg"]
    make_library(fake_lib, names)
    run = fake_lib.cluster(2, names=False)
    if where == "cluster label":
        from sqlalchemy import update

        from organizer.store.cluster_queries import clusters_t
        from organizer.store.db import write_transaction

        with write_transaction(fake_lib.engine) as conn:
            conn.execute(
                update(clusters_t)
                .where(clusters_t.c.run_id == run.run.id)
                .values(label="</style><script>alert(1)</script>$x^")
            )
    page, html, _ = report(fake_lib, tmp_path)
    for raw in ["<img src=x", "</script>.jpg", "</style><script>"]:
        assert raw not in html
    assert not [a for t, a in page.tags if "onerror" in a]
    alts = {a.get("alt") for a in page.find("img")}
    assert set(HOSTILE) <= alts, "attribute values end where they should"
    assert len(page.find("script")) == 2, "no script element but the report's own two"
    assert sorted(page.data["p"]) == sorted(names), "names survive exactly, as data"
    text = "".join(page.text)
    if where == "file names":
        from organizer.report.render import middle

        assert all(middle(name) in text for name in HOSTILE), "shown as text in the galleries"
        titles = {a.get("title") for a in page.find("figcaption")}
        assert set(HOSTILE) <= titles, "the whole name on hover"
    else:
        assert "</style><script>alert(1)</script>$x^" in text
        assert any("</style><script>" in c["name"] for c in page.data["clusters"])


def test_without_a_cluster_run_the_report_says_how_to_cluster(fake_lib, tmp_path):
    make_library(fake_lib, [f"img{i}.jpg" for i in range(8)])
    page, html, summary = report(fake_lib, tmp_path)
    assert summary.run_id is None and summary.n_points == 8 and not page.sections()
    assert "organizer cluster -k auto" in html
    assert set(page.data["c"]) == {0}


def test_beyond_max_points_a_seeded_sample_and_the_report_says_so(fake_lib, tmp_path):
    make_library(fake_lib, [f"img{i:03d}.jpg" for i in range(60)], files=False)
    page, html, summary = report(fake_lib, tmp_path, max_points=20)
    assert summary.n_points == 20 and summary.n_images == 60 and summary.sampled
    assert len(page.data["p"]) == 20 and "sample of 20 of the 60 images" in html
    assert "--max-points 60" in html
    again, _, _ = report(fake_lib, tmp_path, max_points=20)
    assert again.data == page.data, "the same library gives the same map"
    assert set(page.data["t"]) == {PLACEHOLDER}, "files that are not there get the placeholder"
    assert summary.placeholders == 20


def test_absolute_paths_only_when_asked(clustered_lib, tmp_path):
    root = str(photos_root(clustered_lib))
    page, _, _ = report(clustered_lib, tmp_path, absolute=True)
    assert all(p.startswith(root + "/") for p in page.data["p"])
    _, html, _ = report(clustered_lib, tmp_path)
    assert root not in html


def test_png_is_written_and_embedded(clustered_lib, tmp_path):
    png = tmp_path / "map.png"
    page, _, summary = report(clustered_lib, tmp_path, png=png)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and summary.png == png
    embedded = [a["src"] for a in page.find("img") if a.get("src", "").startswith("data:image/png")]
    assert embedded == ["data:image/png;base64," + base64.b64encode(data).decode()]
    assert b"matplotlib.org" not in data


def test_undecodable_and_missing_files_get_a_placeholder(fake_lib, tmp_path):
    names = ["good.jpg", "garbage.jpg", "gone.jpg", "other.jpg", "more.jpg"]
    root = make_library(fake_lib, names)
    (root / "garbage.jpg").write_bytes(b"not an image at all")
    (root / "gone.jpg").unlink()
    page, _, summary = report(fake_lib, tmp_path)
    thumbs = dict(zip(page.data["p"], page.data["t"], strict=True))
    assert thumbs["garbage.jpg"] == thumbs["gone.jpg"] == PLACEHOLDER
    assert thumbs["good.jpg"].startswith("data:image/jpeg") and summary.placeholders == 2


def test_thumbnails_carry_no_exif_or_gps(fake_lib, tmp_path):
    root = make_library(fake_lib, ["a.jpg", "b.jpg", "c.jpg"])
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    write_picture(root / "a.jpg", 0, exif=exif.tobytes())
    assert b"SecretCam" in (root / "a.jpg").read_bytes()
    page, _, _ = report(fake_lib, tmp_path)
    for uri in page.data["t"]:
        raw = base64.b64decode(uri.split(",", 1)[1])
        assert b"Exif" not in raw and b"SecretCam" not in raw


def _read_headers(lib, root: Path, places: dict[str, object]) -> None:
    """Record what each picture's header says, as ingest would, with the named ``places``
    (file name -> Place) of those that have one."""
    from sqlalchemy import select

    from organizer.photo_meta import read_meta
    from organizer.store import meta_queries as mq
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    with write_transaction(lib.engine) as conn:
        ids = {row.relpath.decode(): row.id for row in conn.execute(select(q.images))}
        items = [(i, read_meta(Image.open(root / name))) for name, i in ids.items()]
        mq.put_meta(conn, items, {ids[name]: place for name, place in places.items()})


def test_the_report_names_places_and_days_never_coordinates(fake_lib, tmp_path):
    from organizer.places import Place

    names = [f"trip/img{i:02d}.jpg" for i in range(8)]
    root = make_library(fake_lib, names)
    for seed, name in enumerate(names[:4]):  # a camera with GPS, in Arezzo
        write_picture(root / name, seed, exif=camera_exif())
    write_picture(root / names[4], 4, exif=camera_exif(position=None))  # a day, no place
    arezzo = Place("Arezzo", "Tuscany", "Italy", "IT")
    _read_headers(fake_lib, root, {name: arezzo for name in names[:4]})
    fake_lib.cluster(2, names=False)
    page, html, _ = report(fake_lib, tmp_path)
    about = dict(zip(page.data["p"], page.data["a"], strict=True))
    assert about[names[0]] == "Arezzo, Tuscany, Italy · 22 Oct 2008"
    assert about[names[4]] == "22 Oct 2008" and about[names[5]] == ""
    captions = [a["title"] for a in page.find("figcaption")]
    assert f"{names[0]} · Arezzo, Tuscany, Italy · 22 Oct 2008" in captions
    assert "Arezzo, Tuscany, Italy · 22 Oct 2008" in page.text
    # No number in the page (text, attributes, the map's data) is the position, however
    # rounded, and no serial number came along.
    numbers = [float(n) for n in re.findall(r"\d+\.\d+", html)]
    assert numbers, "the map's coordinates at least"
    assert not [n for n in numbers for deg in AREZZO if abs(n - deg) < 0.01]
    assert "°" not in html and SERIAL not in html
    for uri in page.data["t"]:
        thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert not thumb.getexif() and "exif" not in thumb.info


@pytest.mark.parametrize(
    "options, message",
    [
        ({"run_id": 99}, "no cluster run 99"),
        ({"max_points": 0}, "--max-points must be at least 1"),
        ({"tsne": "magic"}, "unknown t-SNE backend"),
        ({"output": "nowhere/report.html"}, "does not exist"),
        ({"output": "."}, "is a folder"),
        ({"png": "nowhere/map.png"}, "does not exist"),
    ],
)
def test_bad_requests_are_clear_errors(clustered_lib, tmp_path, options, message):
    options = dict(options)
    output = tmp_path / options.pop("output", "report.html")
    if "png" in options:
        options["png"] = tmp_path / options["png"]
    with pytest.raises(ReportError, match=message):
        write_report(clustered_lib.engine, output, **options)
    assert not (tmp_path / "report.html").exists()


def test_empty_library_is_a_clear_error(fake_lib, tmp_path):
    with pytest.raises(ReportError, match="no images yet"):
        write_report(fake_lib.engine, tmp_path / "report.html")


def test_a_full_disk_leaves_no_half_written_file(clustered_lib, tmp_path, monkeypatch):
    from organizer.report import render

    out = tmp_path / "report.html"
    out.write_text("the previous report")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(render.os, "fsync", full)
    with pytest.raises(ReportError, match="disk is full"):
        write_report(clustered_lib.engine, out)
    assert out.read_text() == "the previous report"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.html")]


def test_script_json_cannot_end_its_script_element():
    value = {"p": "</script><!--<script>&amp;\u2028\u2029", "n": [1, 2.5]}
    text = str(script_json(value))
    assert not set("<>&") & set(text) and "\u2028" not in text
    assert json.loads(text) == value


@pytest.mark.parametrize("tsne", ["opentsne", "sklearn"])
def test_projection_is_seeded_and_deterministic(tsne):
    pytest.importorskip("openTSNE") if tsne == "opentsne" else None
    x, _, _ = clustered_vectors(3, 20, dim=64)
    a, b = proj.project(x, seed=1, backend=tsne), proj.project(x, seed=1, backend=tsne)
    assert a.backend == tsne and np.array_equal(a.xy, b.xy)
    assert a.xy.shape == (60, 2) and a.xy.min() >= 0 and a.xy.max() <= 1


def test_without_opentsne_scikit_learn_is_used(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openTSNE", None)
    x, _, _ = clustered_vectors(2, 10)
    assert proj.project(x).backend == "sklearn"
    with pytest.raises(ReportError, match="openTSNE is not installed"):
        proj.project(x, backend="opentsne")


@pytest.mark.parametrize("n", [0, 1, 2, 4])
def test_a_handful_of_points_needs_no_tsne(n):
    xy = proj.project(np.eye(max(n, 1), 8, dtype=np.float32)[:n]).xy
    assert xy.shape == (n, 2) and (n == 0 or (xy.min() >= 0 and xy.max() <= 1))


def test_sample_is_seeded():
    a, b = proj.sample_rows(1000, 10, seed=3), proj.sample_rows(1000, 10, seed=3)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10
    assert np.array_equal(proj.sample_rows(5, 10, seed=3), np.arange(5))


def test_undecodable_and_control_character_names_are_shown_losslessly(fake_lib, tmp_path):
    from sqlalchemy import update

    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    root = make_library(fake_lib, ["one.jpg", "two.jpg", "three.jpg", "four.jpg"])
    renames = {
        "one.jpg": b"caf\xe9.jpg",
        "two.jpg": b"new\nline.jpg",
        "three.jpg": "photo\u202egpj.exe.jpg".encode(),  # right-to-left override
    }
    with write_transaction(fake_lib.engine) as conn:
        for old, new in renames.items():
            os.rename(root / old, os.path.join(os.fsencode(root), new))
            conn.execute(
                update(q.images).where(q.images.c.relpath == old.encode()).values(relpath=new)
            )
    fake_lib.cluster(2, names=False)
    page, html, summary = report(fake_lib, tmp_path)
    shown = {"caf\\xe9.jpg", "new\\nline.jpg", "photo\\u202egpj.exe.jpg"}
    assert shown <= set(page.data["p"])
    assert "\u202e" not in html
    # names are isolated: a right-to-left name cannot reorder the text around it
    assert "<figcaption" in html and html.count("<figcaption") == html.count("<bdi>")
    assert summary.placeholders == 0, "the files behind odd names are found and shown"


def test_images_added_after_the_run_are_marked_with_the_remedy(clustered_lib, tmp_path):
    extra, _, _ = clustered_vectors(1, 3, seed=5)
    store_vectors(clustered_lib, extra, ["new/a.jpg", "new/b.jpg", "new/c.jpg"])
    page, html, summary = report(clustered_lib, tmp_path)
    assert summary.n_points == len(CLUSTERED_NAMES) + 3
    assert (
        page.data["c"].count(0) == 3 and page.data["clusters"][-1]["name"] == "added after this run"
    )
    assert f"organizer cluster assign --run {summary.run_id}" in html
