"""`organizer serve`: a real server process per module (the tiny model), its JSON API, its
files, and its front door (Host check, token, origin, CSP, paths that lead out)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from tests.fakes import TINY_CONFIG, make_folder, write_picture
from tests.test_formats import float64_tiff, multipage_tiff
from tests.test_imaging import png_claiming

pytest.importorskip("starlette", reason="the serve extra is not installed")
from starlette.exceptions import HTTPException
from starlette.requests import Request

from organizer.serve import uploads
from organizer.serve.uploads import BUSY, DECODING, WAITING, Gate

HOSTILE_NAME = "<img src=x onerror=alert(1)>.jpg"
# A right-to-left override: unescaped, this name shows as "invoice-gpj.exe.png".
BIDI_NAME = "invoice-\u202egnp.exe.jpg"
TOKEN = "correct-horse-battery-staple"
ENV = {"ORGANIZER_MODEL": str(TINY_CONFIG), "ORGANIZER_PRETRAINED": "none"}


def _organizer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "organizer", *args],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Server:
    """``organizer serve --port 0`` in a child process; the address is read from its output."""

    def __init__(self, library: Path, *extra: str):
        self.log = library.parent / f"serve-{uuid.uuid4().hex[:6]}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "organizer", "-L", str(library), "serve", "--port", "0", *extra],
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "w"),  # noqa: SIM115 - the child owns it
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if "serving " in text:
                url = text.split(" at ", 1)[1].split()[0]
                self.port = int(url.split(":")[2].split("/")[0])
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the server stopped: {text}")
            time.sleep(0.1)
        raise AssertionError("the server did not start")

    def request(self, method: str, path: str, body=None, headers=None, host=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def json(self, path: str, **kw):
        status, _, data = self.get(path, **kw)
        assert status == 200, (path, status, data)
        return json.loads(data)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A library of 11 pictures (one hostile name, one not UTF-8, one with a right-to-left
    override in its name, one with GPS in its EXIF, one that will become a symlink out of the
    root) and a broken file, clustered, served without a token."""
    base = tmp_path_factory.mktemp("serve")
    photos = base / "photos"
    make_folder(photos, 6)
    write_picture(photos / HOSTILE_NAME, 50)
    exif = Image.Exif()
    exif[0x010E] = "private description"
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}  # GPS latitude
    write_picture(photos / "gps.jpg", 51, exif=exif.tobytes())
    write_picture(photos / "leaks.jpg", 52)
    write_picture(photos / os.fsdecode(b"odd-\xff\xfe.jpg"), 53)  # not UTF-8
    write_picture(photos / BIDI_NAME, 54)
    (photos / f"broken-{BIDI_NAME}").write_bytes(b"\xff\xd8 not really")
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes((photos / "leaks.jpg").read_bytes())
    library = base / "lib"
    done = _organizer("-L", str(library), "ingest", str(photos), "--json")
    assert done.returncode == 0, done.stderr
    assert _organizer("-L", str(library), "cluster", "-k", "2").returncode == 0
    server = Server(library)
    yield {"server": server, "photos": photos, "library": library, "base": base}
    log = server.stop()
    assert "Traceback" not in log, log


def _ids(server) -> dict[str, int]:
    found = server.json("/api/search?q=photo&n=50")
    return {Path(r["path"]).name: r["image_id"] for r in found["results"]}


# -- the API -----------------------------------------------------------------------------------


def test_search_answers_in_the_cli_shape(site):
    server = site["server"]
    found = server.json("/api/search?q=a+red+square&n=4")
    assert found["query"] == "a red square"
    assert len(found["results"]) == 4
    first = found["results"][0]
    assert {"path", "score", "image_id", "rank", "root"} <= set(first)
    more = server.json("/api/search?q=a+red+square&n=4&offset=4")
    assert [r["rank"] for r in more["results"]] == [5, 6, 7, 8]
    assert not {r["image_id"] for r in more["results"]} & {r["image_id"] for r in found["results"]}
    minus = server.json("/api/search?q=red+-blue+%2Bgreen&n=3")
    assert minus["query"] == "red -blue +green" and len(minus["results"]) == 3


def test_search_filters(site):
    """The page's filters are the command line's: checked the same way, a 400 when bad; the
    results never carry coordinates (only the image page shows them)."""
    server = site["server"]
    everything = server.json("/api/search?q=photo&n=50")
    assert all("latitude" not in r for r in everything["results"])
    assert all({"taken", "place", "camera"} <= set(r) for r in everything["results"])
    assert server.json("/api/search?q=photo&n=50&after=2001")["results"] == []  # none dated
    assert server.json("/api/search?q=photo&n=50&camera=hasselblad")["results"] == []
    dated = server.json("/api/search?q=photo&n=5&sort=date&place=")
    assert dated["sort"] == "date" and len(dated["results"]) == 5
    for bad, message in [
        ("after=yesterday", "--after takes a year"),
        ("near=91,0", "latitude must be in"),
        ("sort=size", "sort must be score or date"),
        ("after=2020&before=2019", "later than"),
    ]:
        status, _, body = server.get(f"/api/search?q=photo&{bad}")
        assert status == 400 and message in json.loads(body)["error"], body


def test_search_terms_are_texts_never_paths(site):
    """A term naming a file on the server is embedded as words: the server reads no path a
    client gives it (the CLI would read it as a picture)."""
    server = site["server"]
    secret = site["base"] / "outside" / "secret.jpg"
    status, _, data = server.get(f"/api/search?q={quote(str(secret))}&n=3")
    assert status == 200 and len(json.loads(data)["results"]) == 3


def test_bad_queries_are_one_line_400s(site):
    server = site["server"]
    for path in (
        "/api/search?q=",
        "/api/search?q=-people",
        "/api/search?q=x&n=0",
        "/api/search?q=x&n=abc",
        "/api/search?q=x&n=100000",
        "/api/search?q=" + quote(" ".join(["+ab"] * 40)),
        "/api/search?q=" + "a" * 2000,
        "/api/clusters?n=-1",
        "/api/clusters?n=100000000",
        "/api/clusters?run=99999999999999999999",
    ):
        status, headers, data = server.get(path)
        assert status == 400, path
        assert headers["content-type"].startswith("application/json")
        assert "\n" not in json.loads(data)["error"]


def test_search_by_uploaded_picture(site):
    server = site["server"]
    picture = (site["photos"] / "img000.jpg").read_bytes()
    boundary = "organizer-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + picture
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, data = server.request(
        "POST",
        "/api/search?n=3",
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200, data
    found = json.loads(data)
    assert Path(found["results"][0]["path"]).name == "img000.jpg"
    assert found["results"][0]["score"] > 0.999
    # A raw body works too (scripts: curl --data-binary @photo.jpg)
    status, _, data = server.request(
        "POST", "/api/search?n=2", body=picture, headers={"Content-Type": "image/jpeg"}
    )
    assert status == 200 and Path(json.loads(data)["results"][0]["path"]).name == "img000.jpg"
    # Not a picture: a one-line 400 that names no server path, not a crash
    status, _, data = server.request(
        "POST", "/api/search", body=b"hello", headers={"Content-Type": "image/jpeg"}
    )
    error = json.loads(data)["error"]
    assert status == 400 and "not a picture" in error and "/tmp" not in error
    # The bytes decide the decoder, not the name the client sends (no RAW decoder here)
    named = body.replace(b'filename="q.jpg"', b'filename="q.nef"')
    status, _, data = server.request(
        "POST",
        "/api/search?n=1",
        body=named,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 200 and Path(json.loads(data)["results"][0]["path"]).name == "img000.jpg"


def test_an_uploaded_tiff_is_its_first_page_or_a_clear_refusal(site):
    server = site["server"]
    with Image.open(site["photos"] / "img000.jpg") as first:
        pages = multipage_tiff(first.convert("RGB"), Image.new("RGB", first.size, (0, 0, 255)))
    status, _, data = server.request(
        "POST", "/api/search?n=1", body=pages, headers={"Content-Type": "image/tiff"}
    )
    assert status == 200 and Path(json.loads(data)["results"][0]["path"]).name == "img000.jpg"
    status, _, data = server.request(
        "POST", "/api/search", body=float64_tiff(), headers={"Content-Type": "image/tiff"}
    )
    error = json.loads(data)["error"]
    assert status == 400 and "64-bit floating-point" in error and "allowed" not in error


def test_an_upload_too_large_to_decode_is_refused_from_its_header(site):
    """81 MP of RGBA would hold ~620 MB in the server: a one-line 400 that says what to do,
    without decoding (the file has no pixels to decode)."""
    status, _, data = site["server"].request(
        "POST", "/api/search", body=png_claiming(9000, 9000), headers={"Content-Type": "image/png"}
    )
    error = json.loads(data)["error"]
    assert status == 400 and "\n" not in error
    assert error.startswith("the uploaded picture is too large to search by: 9000 x 9000 pixels")
    assert "a smaller copy will do" in error


def test_uploads_past_the_line_are_turned_away(site):
    """Two uploads decode at once and six wait: the next is answered 503 at once, before its
    body is read, and gets its turn once the line moves. Eight uploads whose bodies never
    finish hold the line here."""
    server = site["server"]
    held = []
    for _ in range(DECODING + WAITING):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(
            f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\npart of it".encode()
        )
        held.append(sock)

    def probe() -> tuple[int, dict, bytes]:
        return server.request(
            "POST", "/api/search", body=b"x", headers={"Content-Type": "image/png"}
        )

    try:
        deadline = time.monotonic() + 30
        while (answer := probe())[0] != 503:  # the held uploads take their places
            assert answer[0] == 400 and time.monotonic() < deadline, answer
        _, headers, data = answer
        assert json.loads(data)["error"] == BUSY and headers["retry-after"] == "2"
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30
    while (answer := probe())[0] == 503:  # the cut-off uploads leave the line
        assert time.monotonic() < deadline, "the line never moved"
    assert answer[0] == 400 and "not a picture" in json.loads(answer[2])["error"]


def test_the_gate_lets_two_decode_and_six_wait():
    async def scenario() -> None:
        gate = Gate(decoding=2, waiting=6)
        async with contextlib.AsyncExitStack() as places:
            for _ in range(8):
                await places.enter_async_context(gate.admitted())
            with pytest.raises(HTTPException) as refused:
                await places.enter_async_context(gate.admitted())
            assert refused.value.status_code == 503
            await places.enter_async_context(gate.turn())
            await places.enter_async_context(gate.turn())
            assert gate.turn().locked()  # a third decode waits
        async with gate.admitted(), gate.turn():  # all given back
            pass

    asyncio.run(scenario())


def test_an_upload_that_trickles_in_is_given_up(monkeypatch):
    """A body sent a byte at a time would hold its place in the line for ever: past its
    grace it must come at MIN_RATE, or the upload is answered 408 and its place freed."""
    monkeypatch.setattr(uploads, "GRACE_S", 0.2)
    monkeypatch.setattr(uploads, "MIN_RATE", 10**6)

    async def scenario() -> int:
        sent = [{"type": "http.request", "body": b"x", "more_body": True}]

        async def receive() -> dict:
            if sent:
                return sent.pop()
            await asyncio.sleep(3600)  # the rest never comes
            return {}

        scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"100000")]}
        with pytest.raises(HTTPException) as slow:
            await uploads.read_body(Request(scope, receive))
        assert slow.value.detail == "the upload was too slow: 1 bytes came in 0 s"
        return slow.value.status_code

    started = time.monotonic()
    assert asyncio.run(scenario()) == 408
    assert time.monotonic() - started < 5


def test_uploads_are_capped_however_they_are_sent(site):
    """A chunked body has no Content-Length to check first: it is counted as it comes."""
    server = site["server"]
    chunk = bytes(1 << 20)

    def chunks():
        for _ in range(70):  # 70 MB, over the 64 MB cap
            yield chunk

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request(
        "POST",
        "/api/search",
        body=chunks(),
        headers={"Content-Type": "image/jpeg", "Host": f"127.0.0.1:{server.port}"},
        encode_chunked=True,
    )
    assert conn.getresponse().status == 413
    conn.close()
    status, _, _ = server.request(
        "POST",
        "/api/search",
        body=b"x",
        headers={"Content-Type": "image/jpeg", "Content-Length": str(100 << 20)},
    )
    assert status == 413


def test_similar_leaves_the_image_out(site):
    server = site["server"]
    ids = _ids(server)
    found = server.json(f"/api/similar/{ids['img001.jpg']}?n=5")
    assert found["query"] == "img001.jpg"
    assert ids["img001.jpg"] not in [r["image_id"] for r in found["results"]]
    assert len(found["results"]) == 5


def _cli_json(site, *args: str) -> dict:
    done = _organizer("-L", str(site["library"]), *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


_ONLY_CLI = {"not_shown", "latitude", "longitude", "altitude"}


def _results(found: dict) -> list[dict]:
    """The results as both show them: the web app's note on unserved files left out, and the
    coordinates that only the command line's --json carries."""
    return [{k: v for k, v in r.items() if k not in _ONLY_CLI} for r in found["results"]]


@pytest.mark.parametrize(
    ("cli_args", "api"),
    [
        (["search", "a red square", "-n", "6"], "/api/search?q=a+red+square&n=6"),
        (
            ["search", "a red square", "--plus", "sunset", "--minus", "people", "-n", "6"],
            "/api/search?q=a+red+square+%2Bsunset+-people&n=6",
        ),
        (
            ["search", "--plus", "blue", "--minus", "green", "-n", "6"],
            "/api/search?q=%2Bblue+-green&n=6",
        ),
    ],
)
def test_the_cli_and_the_web_app_search_alike(site, cli_args, api):
    """One question, one answer: the same ranks, images, paths and scores, to the last bit."""
    from_cli = _cli_json(site, *cli_args)
    from_web = site["server"].json(api)
    assert _results(from_web) == _results(from_cli)
    assert len(from_cli["results"]) == 6


def test_the_cli_and_the_web_app_find_the_same_similar_images(site):
    ids = _ids(site["server"])
    from_cli = _cli_json(site, "similar", str(site["photos"] / "img001.jpg"), "-n", "6")
    from_web = site["server"].json(f"/api/similar/{ids['img001.jpg']}?n=6")
    assert _results(from_web) == _results(from_cli)
    assert len(from_cli["results"]) == 6


def test_clusters_duplicates_and_status_are_the_cli_documents(site):
    server = site["server"]
    library = site["library"]
    clusters = server.json("/api/clusters")
    cli = json.loads(_organizer("-L", str(library), "clusters", "--json").stdout)
    assert {k: v for k, v in clusters.items() if k != "clusters"} == {
        k: v for k, v in cli.items() if k != "clusters"
    }
    assert [c["size"] for c in clusters["clusters"]] == [c["size"] for c in cli["clusters"]]
    assert all(len(c["representative_ids"]) <= 5 for c in clusters["clusters"])
    status = server.json("/api/status")
    cli_status = json.loads(_organizer("-L", str(library), "status", "--json").stdout)
    assert status["images"] == cli_status["images"] and status["roots"] == cli_status["roots"]
    groups = server.json("/api/duplicates")
    assert set(groups) == {"groups"}
    map_data = server.json("/api/map")
    assert len(map_data["points"]) == 11
    assert all(0 <= p[1] <= 1 and 0 <= p[2] <= 1 for p in map_data["points"])


def test_thumbnails_are_small_cached_jpegs_without_metadata(site):
    server = site["server"]
    ids = _ids(server)
    status, headers, data = server.get(f"/thumb/{ids['gps.jpg']}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(data))
    assert max(thumb.size) <= 256
    assert not thumb.getexif() and "icc_profile" not in thumb.info
    cached = list((site["library"] / "thumbs").rglob(f"{ids['gps.jpg']}-*.jpg"))
    assert len(cached) == 1
    status, _, large = server.get(f"/thumb/{ids['gps.jpg']}?size=l")
    assert status == 200 and max(Image.open(io.BytesIO(large)).size) <= 1280
    assert server.get(f"/thumb/{ids['gps.jpg']}?size=xxl")[0] == 404


def test_originals_are_served_as_they_are(site):
    server = site["server"]
    ids = _ids(server)
    status, headers, data = server.get(f"/image/{ids['img002.jpg']}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert data == next(site["photos"].rglob("img002.jpg")).read_bytes()
    odd = next(i for name, i in ids.items() if name.startswith("odd-"))
    status, _, data = server.get(f"/image/{odd}")  # a name that is not UTF-8
    assert status == 200
    assert data == (site["photos"] / os.fsdecode(b"odd-\xff\xfe.jpg")).read_bytes()
    assert server.get(f"/view/{odd}")[0] == 200


# -- what is never served ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/image/999999",
        "/thumb/999999",
        "/view/999999",
        "/api/similar/999999",
        "/image/../../etc/passwd",
        "/image/..%2F..%2Fetc%2Fpasswd",
        "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/image//etc/passwd",
        "/image/%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/image/-1",
        "/image/0",
        "/image/99999999999999999999",
        "/view/99999999999999999999",
        "/api/similar/99999999999999999999",
        "/clusters/99999999999999999999/1",
    ],
)
def test_unknown_ids_and_traversals_are_404(site, path):
    status, _, data = site["server"].get(path)
    assert status == 404, (path, status)
    assert b"root:" not in data


def test_a_symlink_leading_out_of_its_root_is_not_followed(site):
    server = site["server"]
    ids = _ids(server)
    leaks = site["photos"] / "leaks.jpg"
    assert server.get(f"/image/{ids['leaks.jpg']}")[0] == 200
    leaks.unlink()
    leaks.symlink_to(site["base"] / "outside" / "secret.jpg")
    try:
        assert server.get(f"/image/{ids['leaks.jpg']}")[0] == 404
        assert server.get(f"/thumb/{ids['leaks.jpg']}?size=l")[0] == 404
        _assert_shown_as_not_served(server, ids, "leaks.jpg", "a link that leads out of its folder")
    finally:
        leaks.unlink()
        shutil.copy(site["base"] / "outside" / "secret.jpg", leaks)


def test_a_file_gone_since_the_ingest_is_a_tile_that_says_so(site):
    server = site["server"]
    ids = _ids(server)
    gone = site["photos"] / "img003.jpg"
    kept = gone.with_name("img003.kept")
    gone.rename(kept)
    try:
        _assert_shown_as_not_served(server, ids, "img003.jpg", "the file is no longer there")
    finally:
        kept.rename(gone)
    assert server.json(f"/api/similar/{ids['img000.jpg']}?n=20")["results"]
    assert not [r for r in server.json("/api/search?q=x&n=20")["results"] if "not_shown" in r]


def _assert_shown_as_not_served(server, ids: dict[str, int], name: str, why: str) -> None:
    """Results and pages keep the image (its rank is right, its page opens) but show a tile
    saying why instead of a picture that could not load."""
    image_id = ids[name]
    found = server.json(f"/api/similar/{ids['img000.jpg']}?n=20")["results"]
    assert {r["image_id"]: r.get("not_shown") for r in found}[image_id] == f"Not shown: {why}"
    assert [r for r in found if "not_shown" in r] == [r for r in found if r["image_id"] == image_id]
    for path in (f"/view/{ids['img000.jpg']}", "/clusters", f"/view/{image_id}"):
        status, _, page = server.get(path)
        assert status == 200, path
        assert f'src="/thumb/{image_id}"' not in page.decode(), path
        assert f'src="/thumb/{image_id}?size=l"' not in page.decode(), path
        assert f"Not shown: {why}" in page.decode(), path


def test_failed_and_missing_files_are_not_served(site, tmp_path):
    photos = tmp_path / "p"
    make_folder(photos, 3)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    library = tmp_path / "lib"
    assert _organizer("-L", str(library), "ingest", str(photos)).returncode == 0
    server = Server(library)
    try:
        ids = {
            Path(r["path"]).name: r["image_id"]
            for r in server.json("/api/search?q=x&n=9")["results"]
        }
        assert "broken.jpg" not in ids and len(ids) == 3
        # broken.jpg has the next id: known to the library, failed, so never served
        assert server.get(f"/image/{max(ids.values()) + 1}")[0] == 404
        status, _, page = server.get("/status")
        failed = page.split(b'<table class="failures"')[1]
        assert status == 200 and b"broken.jpg" in failed
        assert str(photos.resolve()).encode() in failed  # which folder it is in
    finally:
        server.stop()


def test_hostile_file_names_render_inert(site):
    server = site["server"]
    ids = _ids(server)
    for path in (f"/view/{ids[HOSTILE_NAME]}", "/clusters", "/duplicates", "/status"):
        status, _, page = server.get(path)
        assert status == 200, path
        assert b"<img src=x onerror" not in page, path
    status, _, page = server.get(f"/view/{ids[HOSTILE_NAME]}")
    assert b"&lt;img src=x onerror=alert(1)&gt;.jpg" in page


def test_invisible_characters_in_names_show_escaped_and_isolated(site):
    """A right-to-left override would reorder the name and what follows it: it shows as
    \\u202e, and every name sits in a <bdi> (the JSON path keeps the exact bytes)."""
    server = site["server"]
    ids = _ids(server)
    shown = BIDI_NAME.replace("\u202e", "\\u202e")
    found = server.json(f"/api/similar/{ids['img000.jpg']}?n=20")["results"]
    entry = next(r for r in found if r["image_id"] == ids[shown])
    assert entry["path"] == shown
    assert base64.b64decode(entry["path_b64"]).endswith(BIDI_NAME.encode())
    isolated = re.compile(r"<bdi[^>]*>[^<]*" + re.escape(shown) + "</bdi>")
    for path in (f"/view/{ids[shown]}", f"/view/{ids['img000.jpg']}", "/clusters", "/status"):
        status, _, page = server.get(path)
        text = page.decode()
        assert status == 200 and "\u202e" not in text, path
        assert isolated.search(text), path  # on /status: the broken file, in the failed list
    assert server.json(f"/api/similar/{ids[shown]}?n=1")["query"] == shown


def test_every_response_has_the_security_headers(site):
    server = site["server"]
    for path in ("/", "/clusters", "/api/status", "/static/app.js", "/image/999999"):
        _, headers, _ = server.get(path)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
    _, _, page = server.get("/")
    assert b"<script>" not in page and b"onclick" not in page  # nothing inline to allow


def test_a_foreign_host_header_is_refused(site):
    """DNS rebinding: a page of evil.example resolving its name to 127.0.0.1."""
    server = site["server"]
    assert server.get("/api/status", host="evil.example")[0] == 400
    assert server.get("/api/status", host=f"evil.example:{server.port}")[0] == 400
    assert server.get("/api/status", host=f"localhost:{server.port}")[0] == 200


def test_a_post_from_another_origin_is_refused(site):
    server = site["server"]
    status, _, _ = server.request(
        "POST", "/api/search", body=b"x", headers={"Origin": "http://evil.example"}
    )
    assert status == 403


def test_serving_changes_nothing_on_disk_but_thumbnails(site):
    server = site["server"]

    def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")
            if "thumbs" not in p.parts
        }

    photos, library = snapshot(site["photos"]), snapshot(site["library"])
    ids = _ids(server)
    for path in (
        "/",
        "/clusters",
        "/duplicates",
        "/status",
        f"/view/{ids['img003.jpg']}",
        f"/thumb/{ids['img004.jpg']}",
        f"/image/{ids['img004.jpg']}",
        "/api/map",
    ):
        assert server.get(path)[0] == 200, path
    assert snapshot(site["photos"]) == photos
    assert snapshot(site["library"]) == library


def test_the_server_never_writes_the_index(tmp_path):
    """A missing index file is rebuilt in memory: the server writes nothing but thumbnails
    (and never takes the writer lock, which could turn an ingest away)."""
    photos = tmp_path / "p"
    make_folder(photos, 3)
    library = tmp_path / "lib"
    assert _organizer("-L", str(library), "ingest", str(photos)).returncode == 0
    (library / "vectors.faiss").unlink()
    server = Server(library)
    try:
        assert len(server.json("/api/search?q=x&n=10")["results"]) == 3
        assert not (library / "vectors.faiss").exists()
    finally:
        server.stop()


def test_new_images_appear_after_an_ingest(site, tmp_path):
    photos = tmp_path / "p"
    make_folder(photos, 3)
    library = tmp_path / "lib"
    assert _organizer("-L", str(library), "ingest", str(photos)).returncode == 0
    server = Server(library)
    try:
        assert server.json("/api/status")["images"]["ok"] == 3
        make_folder(photos, 2, start_seed=40)
        assert _organizer("-L", str(library), "ingest").returncode == 0
        assert server.json("/api/status")["images"]["ok"] == 5
        # The new index is loaded in the background, swapped in when ready.
        deadline = time.monotonic() + 30
        while len(server.json("/api/search?q=x&n=10")["results"]) < 5:
            assert time.monotonic() < deadline, "the new images never appeared"
            time.sleep(0.2)
    finally:
        server.stop()


# -- the token ----------------------------------------------------------------------------------


def test_with_a_token_every_request_needs_it(site):
    server = Server(site["library"], "--token", TOKEN)
    try:
        assert server.get("/api/status")[0] == 401
        assert server.get("/thumb/1")[0] == 401
        assert (
            server.get("/api/status", headers={"Authorization": "Bearer wrong-token-xx"})[0] == 401
        )
        for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 7235: case-insensitive
            ok = server.get("/api/status", headers={"Authorization": f"{scheme} {TOKEN}"})
            assert ok[0] == 200, scheme
        assert server.get("/api/status", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        # The printed link sets an HttpOnly cookie and drops the token from the address.
        status, headers, _ = server.get(f"/clusters?token={TOKEN}")
        assert status == 303 and headers["location"] == "/clusters"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        assert cookie.startswith(f"organizer_session_{server.port}=")  # one name per port
        # The redirect stays on this server, whatever path the link names
        for path in ("//evil.example/", "/%0d%0aX:%20y"):
            status, headers, _ = server.get(f"{path}?token={TOKEN}")
            assert status == 303 and not headers["location"].startswith("//")
            assert "\r" not in headers["location"] and "\n" not in headers["location"]
        session = cookie.split(";")[0]
        assert server.get("/api/status", headers={"Cookie": session})[0] == 200
        assert server.get("/api/status?token=wrong-token-xx")[0] == 401
    finally:
        log = server.stop()
    assert f"?token={TOKEN}" in log  # the link to open, printed once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "give --token too"),
        (["--host", "192.168.1.10"], "give --token too"),
        (["--token", "short"], "at least 12"),
        (["--token", "abc+def&x=1#yz%41"], "at least 12"),
        (["--host", "127.0.0.1.nip.io"], "give --token too"),
        (["--port", "70000"], "65535"),
    ],
)
def test_unsafe_or_bad_options_are_usage_errors(site, args, message):
    done = _organizer("-L", str(site["library"]), "serve", *args, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert "short" not in done.stderr or "--token" not in args  # a token is never echoed


def test_a_taken_port_is_a_one_line_error(site):
    done = _organizer("-L", str(site["library"]), "serve", "--port", str(site["server"].port))
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1" in done.stderr and done.stderr.count("\n") == 1
