"""The web app's timeline: years, months and events with their counts and thumbnails, an
event's page, and /api/events in the CLI's shape; names are escaped whatever they hold.
The app is called in-process (ASGI), over a library of the fake model on both backends."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from organizer.places import Place
from organizer.store import meta_queries as mq
from organizer.store import queries as q
from tests.test_events import FLORENCE, dated_jpeg

pytest.importorskip("starlette", reason="the serve extra is not installed")

from organizer.serve.app import create_app
from organizer.serve.service import Service

pytestmark = pytest.mark.both_backends

HOSTILE_TOWN = '<script>alert("town")</script>\u202eKyiv'


def _get(app, path: str) -> tuple[int, str]:
    """One GET through the ASGI app, as a browser on the loopback sends it."""
    raw, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": "GET",
        "path": raw,
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1:8765")],
        "scheme": "http",
        "server": ("127.0.0.1", 8765),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "http_version": "1.1",
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


@pytest.fixture
def site(fake_lib, tmp_path):
    """Photos over two years (one event in Florence, whose town has a hostile name), one
    without a time taken; served by an app over the library."""
    photos = tmp_path / "photos"
    taken = [
        ("2008:10:22 10:00:00", FLORENCE),
        ("2008:10:22 11:30:00", FLORENCE),
        ("2008:10:22 12:00:00", None),
        ("2008:11:02 09:00:00", None),
        ("2009:01:03 20:00:00", None),
        (None, None),
    ]
    for n, (when, where) in enumerate(taken):
        dated_jpeg(photos / f"p{n}.jpg", n, when, where)
    fake_lib.ingest([photos])
    with fake_lib.engine.begin() as conn:  # the town's name, as a gazetteer might give it
        records = q.describe_images(conn, q.ok_ids(conn, fake_lib.model().id).tolist())
        located = [(i, r.meta) for i, r in records.items() if r.meta and r.meta.has_position]
        town = Place(HOSTILE_TOWN, "Tuscany", "Italy", "IT")
        mq.put_meta(conn, located, {i: town for i, _ in located})
    return create_app(Service(fake_lib))


def test_the_timeline_shows_years_months_and_events(site):
    status, html = _get(site, "/timeline")
    assert status == 200
    assert re.search(r"<h2>2008 <span[^>]*>2 events · 4 photos</span></h2>", html)
    assert re.search(r"<h2>2009 <span[^>]*>1 event · 1 photo</span></h2>", html)
    assert re.findall(r"<h3>(\w+) <span", html) == ["October", "November", "January"]
    assert "3 events of 5 photos · 1 photo without a time taken (in no event)" in html
    assert "22 Oct 2008" in html and "2 Nov 2008" in html and "3 Jan 2009" in html
    # Thumbnails through the app's own route, each event linking to its page.
    assert len(re.findall(r'<img src="/thumb/\d+"', html)) == 5
    assert html.count('href="/timeline/') == 6  # the pictures and the name of 3 events
    assert 'href="/timeline" aria-current="page">Timeline</a>' in html


def test_names_are_escaped_and_isolated(site):
    status, html = _get(site, "/timeline")
    assert status == 200
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;town&#34;)&lt;/script&gt;" in html
    assert "<bdi>&lt;script&gt;" in html  # a right-to-left override cannot reorder the page


def test_an_event_page_shows_its_photos(site):
    status, html = _get(site, "/timeline/1")
    assert status == 200
    assert html.count('class="card"') == 3
    assert "22 Oct 2008" in html and "<script>alert" not in html
    assert _get(site, "/timeline/4")[0] == 404
    assert _get(site, "/timeline?year=1999")[0] == 404
    assert _get(site, "/timeline?year=soon")[0] == 400


def test_one_year_at_a_time_when_asked(site):
    status, html = _get(site, "/timeline?year=2009")
    assert status == 200
    assert "<h2>2009" in html and "<h2>2008" not in html
    assert 'href="/timeline?year=2008"' in html


def test_api_events_is_the_cli_document(site):
    status, body = _get(site, "/api/events")
    assert status == 200
    data = json.loads(body)
    assert [e["count"] for e in data["events"]] == [3, 1, 1]
    assert data["undated"] == 1
    assert data["events"][0]["place"].startswith("<script>")  # JSON: data, not markup
    assert "latitude" not in body


def test_an_undated_library_says_why_it_has_no_events(fake_lib, tmp_path):
    dated_jpeg(tmp_path / "photos" / "scan.jpg", 1, None)
    fake_lib.ingest([tmp_path / "photos"])
    status, html = _get(create_app(Service(fake_lib)), "/timeline")
    assert status == 200 and "none of its photos records when it was taken (1 photo)" in html
