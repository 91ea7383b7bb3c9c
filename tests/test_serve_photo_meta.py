"""`organizer serve` and photo metadata: the image page says when, where and with what a photo
was taken (coordinates on that page only), hostile camera strings stay text, and nothing else
the server sends (thumbnails, other pages, the JSON API) carries GPS or a serial number."""

from __future__ import annotations

import io
import re
from html import unescape
from pathlib import Path

import pytest
from PIL import Image

from tests.fakes import SERIAL, camera_exif, make_folder, write_picture
from tests.test_report_browser import browser_page  # noqa: F401 - the fixture
from tests.test_serve import Server, _organizer

pytest.importorskip("starlette", reason="the serve extra is not installed")

HOSTILE_MAKE = "<script>alert(1)</script>"
HOSTILE_LENS = '</dd><img src=x onerror="alert(2)">'
# The position as any page or JSON could spell it: decimal degrees to four places (floats,
# rounded or not), or degrees and minutes.
POSITION = re.compile(r"43[.,]4633|11[.,]8799|11[.,]8800|43°|11°")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served library of photos with headers: one from a camera with GPS (in Arezzo), one
    without an offset or a position, one with hostile camera and lens names, and plain ones."""
    base = tmp_path_factory.mktemp("serve-meta")
    photos = base / "photos"
    make_folder(photos, 4)
    write_picture(photos / "camera.jpg", 60, exif=camera_exif())
    write_picture(photos / "nozone.jpg", 61, exif=camera_exif(offset=None, position=None))
    hostile = camera_exif(make=HOSTILE_MAKE, model="x", lens=HOSTILE_LENS, position=None)
    write_picture(photos / "hostile.jpg", 62, exif=hostile)
    library = base / "lib"
    done = _organizer("-L", str(library), "ingest", str(photos))
    assert done.returncode == 0, done.stderr
    assert _organizer("-L", str(library), "cluster", "-k", "2").returncode == 0
    server = Server(library)
    found = server.json("/api/search?q=photo&n=50")
    ids = {Path(r["path"]).name: r["image_id"] for r in found["results"]}
    yield {"server": server, "ids": ids, "library": library}
    log = server.stop()
    assert "Traceback" not in log, log


def _page(site, name: str) -> str:
    status, headers, data = site["server"].get(f"/view/{site['ids'][name]}")
    assert status == 200 and headers["content-type"].startswith("text/html")
    return data.decode()


def _text(html: str) -> str:
    """The page as a person reads it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_the_image_page_says_when_where_and_with_what(site):
    html = _page(site, "camera.jpg")
    text = _text(html)
    assert "Taken 22 Oct 2008 14:03 (UTC+02:00)" in text
    assert "Place Arezzo, Tuscany, Italy" in text
    assert "Camera Canon EOS 5D" in text
    assert "Lens EF50mm f/1.8 II" in text
    assert "Exposure 1/250 s · f/2.8 · ISO 400 · 50 mm" in text
    assert "Coordinates 43.46330° N, 11.87997° E, 250 m above sea level" in text
    links = re.findall(r'href="([^"]*)"', html)
    assert "geo:43.463300,11.879970" in links
    # Nothing that leads off this machine: the position opens in the user's own map app.
    outward = re.compile(r"//|(?!geo:|data:)[a-z][a-z0-9+.-]*:")
    assert not [link for link in links + re.findall(r'src="([^"]*)"', html) if outward.match(link)]
    assert SERIAL not in html


def test_a_time_without_an_offset_is_local_time_of_an_unknown_zone(site):
    text = _text(_page(site, "nozone.jpg"))
    assert "Taken 22 Oct 2008 14:03 (local time, zone unknown)" in text
    assert "Coordinates" not in text and "Place" not in text


def test_without_a_time_taken_the_modification_time_is_labelled_as_such(site):
    text = _text(_page(site, "img000.jpg"))
    taken = text.split("Taken ", 1)[1]
    assert taken.startswith("unknown (the file was last modified ")
    assert "which is not when the photo was taken)" in taken
    for absent in ("Camera", "Lens", "Exposure", "Coordinates", "Place", "not read yet"):
        assert absent not in text


def test_a_header_not_read_yet_says_the_next_ingest_reads_it(site):
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import meta_queries as mq
    from organizer.store.db import write_transaction

    with (
        Library.open(Settings(library=site["library"])) as lib,
        write_transaction(lib.engine) as conn,
    ):
        mq.delete_meta(conn, [site["ids"]["img001.jpg"]])
    text = _text(_page(site, "img001.jpg"))
    assert "details are not read yet: the next organizer ingest reads them" in text
    assert "which is not when the photo was taken" in text


def test_hostile_camera_and_lens_names_are_text(site):
    html = _page(site, "hostile.jpg")
    assert "<script>alert" not in html and "<img src=x" not in html and "</dd><img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = _text(html)
    assert f"Camera {HOSTILE_MAKE} x" in text and f"Lens {HOSTILE_LENS}" in text


@pytest.mark.parametrize("size", ["s", "l"])
def test_thumbnails_carry_no_gps_serial_or_maker_note(site, size):
    original = Image.open(io.BytesIO(_original(site)))
    assert original.getexif().get_ifd(0x8825) and SERIAL in str(
        dict(original.getexif().get_ifd(0x8769))
    )
    status, _, data = site["server"].get(f"/thumb/{site['ids']['camera.jpg']}?size={size}")
    assert status == 200
    thumb = Image.open(io.BytesIO(data))
    exif = thumb.getexif()
    assert not exif.get_ifd(0x8825), "a GPS IFD"
    assert not {0x927C, 0xA431} & set(exif.get_ifd(0x8769)), "a maker note or a serial number"
    assert not exif and "exif" not in thumb.info
    for leak in (SERIAL.encode(), b"Exif", b"Canon", b"EF50mm"):
        assert leak not in data


def _original(site) -> bytes:
    status, _, data = site["server"].get(f"/image/{site['ids']['camera.jpg']}")
    assert status == 200
    return data


def test_coordinates_appear_on_the_image_page_only(site):
    """Every other page and every JSON answer that names the GPS photo carries its place at
    most, never its position or the camera's serial number."""
    server, ids = site["server"], site["ids"]
    camera = ids["camera.jpg"]
    assert POSITION.search(_text(_page(site, "camera.jpg")))  # the pattern does find it
    elsewhere = [
        "/",
        "/clusters",
        "/clusters/1/1",
        "/clusters/1/2",
        "/timeline",
        "/timeline/1",
        "/duplicates",
        "/status",
        *(f"/view/{i}" for name, i in ids.items() if name != "camera.jpg"),
        "/api/search?q=photo&n=50",
        "/api/search?q=photo&n=50&place=Arezzo&sort=date",
        f"/api/similar/{camera}?n=50",
        "/api/clusters?n=50",
        "/api/map",
        "/api/events",
        "/api/duplicates",
        "/api/status",
    ]
    for path in elsewhere:
        status, _, data = server.get(path)
        assert status == 200, path
        body = data.decode()
        assert not POSITION.search(body) and not POSITION.search(_text(body)), path
        assert SERIAL not in body, path
    # The answers above did name the photo: its place, not its position.
    found = server.json("/api/search?q=photo&n=50")["results"]
    assert {r["place"] for r in found if r["image_id"] == camera} == {"Arezzo, Tuscany, Italy"}
    assert "Arezzo, Italy" in server.get("/api/events")[2].decode()


def test_the_status_page_counts_what_the_headers_said(site):
    text = _text(site["server"].get("/status")[2].decode())
    assert "Details 3 with a time taken, 1 with coordinates (1 with a named place)" in text


def test_the_image_page_in_a_browser(site, browser_page):  # noqa: F811 - the fixture
    page, log = browser_page
    server = site["server"]
    base = f"http://127.0.0.1:{server.port}"
    page.goto(f"{base}/view/{site['ids']['camera.jpg']}")
    page.wait_for_selector("#picture")
    page.wait_for_timeout(300)
    assert page.text_content("#taken") == "22 Oct 2008 14:03 (UTC+02:00)"
    assert page.text_content("#place") == "Arezzo, Tuscany, Italy"
    link = page.locator("#coordinates a")
    assert link.get_attribute("href") == "geo:43.463300,11.879970"
    shots = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "serve-image-meta.png"), full_page=True)
    page.goto(f"{base}/view/{site['ids']['hostile.jpg']}")
    page.wait_for_selector("#camera")
    assert page.text_content("#camera") == f"{HOSTILE_MAKE} x"
    assert page.text_content("#lens") == HOSTILE_LENS
    assert not log["errors"], log["errors"]
    assert not log["dialogs"], log["dialogs"]  # no injected script ran
    assert all(url.startswith(base) for url in log["requests"]), log["requests"]
