"""The web app's duplicates page and its actions (``organizer serve --allow-changes``): the
page pages through each kind's groups; a change is refused without --allow-changes, without
the token when one is set, from another origin (or none named), and without the page's CSRF
token; the decisions it records show on the next page. The app is called in-process
(Starlette's TestClient) over a library of the fake model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.fakes import picture, write_picture

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("httpx2", reason="Starlette's TestClient needs httpx2")

from starlette.testclient import TestClient

from organizer.choices import DuplicateKind
from organizer.duplicates.groups import DuplicateFile, DuplicateGroup, Duplicates, Role
from organizer.duplicates.keeper import Keeper
from organizer.serve.app import create_app
from organizer.serve.guard import (
    BAD_CSRF,
    CROSS_ORIGIN,
    NO_CSRF,
    NO_ORIGIN,
    READ_ONLY,
    ChangeCheck,
    is_change,
)
from organizer.serve.service import Service
from organizer.store.records import ImageRecord, ImageStatus

BASE = "http://127.0.0.1:8765"
TOKEN = "correct-horse-battery-staple"
CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def dupes_photos(photos: Path) -> Path:
    """An exact group (one picture in two folders) and a near group (a picture, a smaller
    JPEG of it and a PNG of it: three contents)."""
    write_picture(photos / "a" / "copy.jpg", 1)
    (photos / "b").mkdir(parents=True)
    shutil.copy(photos / "a" / "copy.jpg", photos / "b" / "copy.jpg")
    big = picture(2, (192, 128))
    big.save(photos / "a" / "big.jpg", quality=95)
    big.resize((96, 64)).save(photos / "b" / "small.jpg", quality=80)
    big.resize((144, 96)).save(photos / "b" / "medium.png")
    return photos


@pytest.fixture
def lib(fake_lib, tmp_path):
    fake_lib.ingest([dupes_photos(tmp_path / "photos")])
    return fake_lib


def client(lib, allow: bool = True, token: str | None = None) -> TestClient:
    return TestClient(create_app(Service(lib), token=token, allow_changes=allow), base_url=BASE)


def page_token(web: TestClient, **kw) -> str:
    html = web.get("/duplicates", **kw).text
    found = CSRF.search(html)
    assert found, html[:500]
    return found.group(1)


def change(web: TestClient, path: str, body=None, csrf: str | None = None, **headers: str):
    """A change as the page sends it: JSON, same origin, the CSRF token (unless told)."""
    sent = {"Origin": BASE, "Content-Type": "application/json", **headers}
    if csrf is not None:
        sent["X-CSRF-Token"] = csrf
    return web.post(path, json=body or {}, headers=sent)


def groups(web: TestClient) -> dict[str, dict]:
    """The groups /api/duplicates lists, by kind (one of each in these tests)."""
    listed = web.get("/api/duplicates").json()["groups"]
    return {g["kind"]: g for g in listed}


def named(group: dict, name: str) -> int:
    return next(f["image_id"] for f in group["images"] if f["path"].endswith(name))


# -- refused -----------------------------------------------------------------------------------


def test_read_only_by_default_no_buttons_and_every_change_refused(lib):
    web = client(lib, allow=False)
    html = web.get("/duplicates").text
    assert "data-action" not in html and "csrf-token" not in html
    assert "organizer serve --allow-changes" in html  # the page says how to act
    assert "Copy the list of the others" in html
    near = groups(web)["near"]
    for action in ("keeper", "not-duplicates", "keep-all", "trash"):
        done = change(web, f"/api/duplicates/{near['id']}/{action}", {"image_id": 1}, csrf="0" * 64)
        assert done.status_code == 403 and done.text == READ_ONLY + "\n", action
    assert change(web, "/api/clean-ups/undo", csrf="0" * 64).text == READ_ONLY + "\n"
    assert len(groups(web)) == 2  # nothing changed


def test_a_token_is_needed_first(lib):
    web = client(lib, token=TOKEN)
    assert web.get("/duplicates").status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    csrf = page_token(web, headers=bearer)
    exact = groups_with(web, bearer)["exact"]["id"]
    done = change(web, f"/api/duplicates/{exact}/keep-all", csrf=csrf)
    assert done.status_code == 401 and "a token is needed" in done.text
    done = change(web, f"/api/duplicates/{exact}/keep-all", csrf=csrf, **bearer)
    assert done.status_code == 200, done.text
    # The session cookie the printed link sets does as well as the header.
    web.cookies.clear()
    web.get(f"/?token={TOKEN}", follow_redirects=False)
    near = groups(web)["near"]["id"]
    assert change(web, f"/api/duplicates/{near}/keep-all", csrf=csrf).status_code == 200


def groups_with(web: TestClient, headers: dict) -> dict[str, dict]:
    listed = web.get("/api/duplicates", headers=headers).json()["groups"]
    return {g["kind"]: g for g in listed}


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"Origin": "http://evil.example"}, CROSS_ORIGIN),
        ({"Origin": "http://127.0.0.1:9999"}, CROSS_ORIGIN),  # another port: another origin
        ({"Origin": "null"}, CROSS_ORIGIN),  # a sandboxed frame, a data: URL
        ({"Origin": ""}, CROSS_ORIGIN),
        ({"Referer": "http://evil.example/duplicates"}, CROSS_ORIGIN),
        ({"Referer": f"http://user@{BASE[7:]}/duplicates"}, CROSS_ORIGIN),
        ({"Referer": "not a url ["}, CROSS_ORIGIN),
        ({}, NO_ORIGIN),
    ],
)
def test_a_change_from_another_origin_or_none_is_refused(lib, headers, refused):
    web = client(lib)
    csrf = page_token(web)
    exact = groups(web)["exact"]["id"]
    sent = {"Content-Type": "application/json", "X-CSRF-Token": csrf, **headers}
    done = web.post(f"/api/duplicates/{exact}/keep-all", content=b"{}", headers=sent)
    assert (done.status_code, done.text) == (403, refused + "\n")
    assert "exact" in groups(web)


def test_a_same_origin_referer_stands_in_for_a_missing_origin(lib):
    web = client(lib)
    csrf = page_token(web)
    exact = groups(web)["exact"]["id"]
    sent = {"Content-Type": "application/json", "X-CSRF-Token": csrf, "Referer": BASE + "/x"}
    done = web.post(f"/api/duplicates/{exact}/keep-all", content=b"{}", headers=sent)
    assert done.status_code == 200, done.text


def test_a_change_needs_the_pages_csrf_token(lib):
    web = client(lib)
    csrf = page_token(web)
    exact = groups(web)["exact"]["id"]
    path = f"/api/duplicates/{exact}/keep-all"
    assert (change(web, path).status_code, change(web, path).text) == (403, NO_CSRF + "\n")
    for wrong in ("0" * 64, csrf[:-1], csrf + "0", "é"):
        done = change(web, path, csrf=wrong) if wrong != "é" else _raw_csrf(web, path, wrong)
        assert (done.status_code, done.text) == (403, BAD_CSRF + "\n"), wrong
    # Another server's token (or this one's before a restart) is not this one's.
    other = page_token(client(lib))
    assert other != csrf
    assert change(web, path, csrf=other).text == BAD_CSRF + "\n"
    assert "exact" in groups(web)
    assert change(web, path, csrf=csrf).status_code == 200


def _raw_csrf(web: TestClient, path: str, value: str):
    headers = [
        (b"origin", BASE.encode()),
        (b"content-type", b"application/json"),
        (b"x-csrf-token", value.encode("latin-1")),
    ]
    return web.post(path, content=b"{}", headers=headers)


def test_only_changes_are_checked(lib):
    """Pages, the API's GETs and the search by picture need no CSRF token."""
    for method, path, changes in [
        ("GET", "/duplicates", False),
        ("HEAD", "/duplicates", False),
        ("POST", "/api/search", False),
        ("POST", "/api/duplicates/abc/keep-all", True),
        ("POST", "/api/search/other", True),
        ("PUT", "/api/search", True),
        ("DELETE", "/api/duplicates", True),
    ]:
        assert is_change({"method": method, "path": path}) == changes, (method, path)
    assert ChangeCheck(False).page_token() is None


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{", "application/json", "not JSON"),
        (b"[1]", "application/json", "a JSON object"),
        (b"[" * 3000, "application/json", "not JSON"),
        (b"{}", "text/plain", "as JSON"),
        (b'{"x": "' + b"a" * 5000 + b'"}', "application/json", "at most 4096 bytes"),
        (b"{}", "application/json", "image_id"),
        (b'{"image_id": "3"}', "application/json", "image_id"),
        (b'{"image_id": true}', "application/json", "image_id"),
        (b'{"image_id": 0}', "application/json", "image_id"),
    ],
)
def test_a_bad_body_is_a_one_line_400(lib, body, content_type, message):
    web = client(lib)
    csrf = page_token(web)
    near = groups(web)["near"]["id"]
    sent = {"Origin": BASE, "Content-Type": content_type, "X-CSRF-Token": csrf}
    done = web.post(f"/api/duplicates/{near}/keeper", content=body, headers=sent)
    assert done.status_code == 400 and message in done.json()["error"], done.text
    assert "\n" not in done.json()["error"]


def test_unknown_groups_and_images_that_cannot_be_kept(lib):
    web = client(lib)
    csrf = page_token(web)
    found = groups(web)
    near, exact = found["near"], found["exact"]
    for gid in ("0123456789ab", "nothex", "0123456789AB", "0123456789abc"):
        done = change(web, f"/api/duplicates/{gid}/keep-all", csrf=csrf)
        assert done.status_code == 404 and done.json() == {"error": "not found"}, gid
    keeper = near["keep"]["image_id"]
    for image_id, message in [
        (named(exact, "copy.jpg"), "is not in group"),
        (keeper, "is the keeper"),
        (999999, "is not in group"),
    ]:
        done = change(web, f"/api/duplicates/{near['id']}/keeper", {"image_id": image_id}, csrf)
        assert done.status_code == 400 and message in done.json()["error"], done.text
    other_copy = next(f["image_id"] for f in exact["images"] if f["role"] == "move")
    done = change(web, f"/api/duplicates/{exact['id']}/keeper", {"image_id": other_copy}, csrf)
    assert done.status_code == 400 and "identical copies" in done.json()["error"]
    done = change(web, f"/api/duplicates/{exact['id']}/not-duplicates", csrf=csrf)
    assert done.status_code == 400 and "identical copies are duplicates" in done.json()["error"]
    assert groups(web) == found  # nothing was recorded


# -- done --------------------------------------------------------------------------------------


def test_choosing_another_keeper_shows_on_the_next_page(lib):
    web = client(lib)
    csrf = page_token(web)
    near = groups(web)["near"]
    assert near["keep"]["path"].endswith("big.jpg") and near["keep"]["rule"] == "pixels"
    path = f"/api/duplicates/{near['id']}/keeper"
    done = change(web, path, {"image_id": named(near, "medium.png")}, csrf)
    assert done.status_code == 200, done.text
    assert done.json()["done"] == f"medium.png is now the keeper of group {near['id']}."
    again = groups(web)["near"]
    assert again["id"] == near["id"] and again["keep"]["path"].endswith("medium.png")
    assert again["keep"]["rule"] == "chosen"
    html = web.get("/duplicates?kind=near").text
    assert re.search(r"Keeps <bdi>b/medium\.png</bdi>: you chose it", html)
    # A second choice in the group replaces the first (both would otherwise tie).
    done = change(web, path, {"image_id": named(near, "small.jpg")}, csrf)
    assert done.status_code == 200, done.text
    assert groups(web)["near"]["keep"]["path"].endswith("small.jpg")
    decided = lib.duplicates().groups  # the library's own answer, as the CLI would list it
    assert next(g for g in decided if g.kind == "near").keep.record.relpath == b"b/small.jpg"


@pytest.mark.parametrize("action", ["not-duplicates", "keep-all"])
def test_a_decided_group_is_not_listed_again(lib, action):
    web = client(lib)
    csrf = page_token(web)
    near = groups(web)["near"]
    assert f'id="group-{near["id"]}"' in web.get("/duplicates?kind=near").text
    done = change(web, f"/api/duplicates/{near['id']}/{action}", csrf=csrf)
    assert done.status_code == 200, done.text
    assert isinstance(done.json()["decision"], int)
    assert "near" not in groups(web)
    html = web.get("/duplicates?kind=near").text
    assert near["id"] not in html and "No near copies." in html
    assert "near" not in {g.kind for g in lib.duplicates().groups}  # for the CLI too
    again = change(web, f"/api/duplicates/{near['id']}/{action}", csrf=csrf)
    assert again.status_code == 404


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_the_others_go_to_the_trash_and_undo_puts_them_back(lib, tmp_path):
    photos = tmp_path / "photos"
    before = _files(photos)
    web = client(lib)
    csrf = page_token(web)
    near = groups(web)["near"]
    assert (
        change(web, "/api/clean-ups/undo", csrf=csrf)
        .json()["error"]
        .startswith("no clean-up made here")
    )
    done = change(web, f"/api/duplicates/{near['id']}/trash", csrf=csrf)
    assert done.status_code == 200, done.text
    assert done.json() == {
        "done": f"Moved 2 files of group {near['id']} to the trash.",
        "decision": None,
        "undo": True,
    }
    trash = photos / ".organizer-trash"
    assert _files(trash) == {
        "b/medium.png": before["b/medium.png"],
        "b/small.jpg": before["b/small.jpg"],
    }
    assert not (photos / "b" / "small.jpg").exists() and (photos / "a" / "big.jpg").exists()
    assert "near" not in groups(web)
    [plan] = (lib.home.cache_dir / "plans").iterdir()  # the plan it carried out, for people
    assert near["id"] in plan.name
    html = web.get("/duplicates").text
    assert f"Moved 2 files of group <code>{near['id']}</code> to the trash" in html
    assert 'id="undo"' in html
    again = change(web, f"/api/duplicates/{near['id']}/trash", csrf=csrf)
    assert again.status_code == 404  # the group is gone

    done = change(web, "/api/clean-ups/undo", csrf=csrf)
    assert done.status_code == 200, done.text
    assert done.json()["done"] == f"Put back 2 files of group {near['id']}."
    assert _files(photos) == before  # byte for byte, and the trash is empty again
    assert groups(web)["near"]["id"] == near["id"]
    assert 'id="undo"' not in web.get("/duplicates").text
    assert change(web, "/api/clean-ups/undo", csrf=csrf).status_code == 400


def test_a_file_changed_since_the_page_stays(lib, tmp_path):
    """The plan names each file's content: one changed since is left where it is, and the
    answer says so."""
    web = client(lib)
    csrf = page_token(web)
    near = groups(web)["near"]
    small = tmp_path / "photos" / "b" / "small.jpg"
    small.write_bytes(small.read_bytes() + b"edited")
    done = change(web, f"/api/duplicates/{near['id']}/trash", csrf=csrf)
    assert done.status_code == 200, done.text
    said = done.json()["done"]
    assert said.startswith(f"Moved 1 file of group {near['id']}") and "b/small.jpg stayed" in said
    assert small.exists() and not (tmp_path / "photos" / "b" / "medium.png").exists()


# -- the page ----------------------------------------------------------------------------------


def test_the_page_shows_kinds_keepers_roles_and_actions(lib):
    web = client(lib)
    html = web.get("/duplicates").text
    assert re.search(r'kind=exact" aria-current="page">Exact copies <span class="count">1<', html)
    assert re.search(r'kind=near" >Near copies <span class="count">1<', html)
    assert re.search(r'kind=burst" >Bursts <span class="count">0<', html)
    assert "1 group<" in html and "groups 1–1" not in html  # one page: no pager
    exact = groups(web)["exact"]
    assert f"<code>{exact['id']}</code>" in html
    # identical copies: no keeper to choose, not "not duplicates"; the others can go
    assert 'data-action="keeper"' not in html and 'data-action="not-duplicates"' not in html
    assert 'data-action="keep-all"' in html
    near = web.get("/duplicates?kind=near").text
    assert "Keeps <bdi>a/big.jpg</bdi>: the most pixels (192×128, against 144×96)." in near
    assert near.count('data-action="keeper"') == 2 and 'data-action="not-duplicates"' in near
    assert near.count("badge role-move") == 2 and near.count("badge role-keep") == 1
    assert "<script>" not in near and "onclick" not in near


def synthetic(n: int, root: Path) -> Duplicates:
    """``n`` groups of two files each: a third near, the rest exact."""

    def record(i: int) -> ImageRecord:
        return ImageRecord(
            i, str(root), f"p{i}.jpg".encode(), 1000, 0, 8, 8, "JPEG", ImageStatus.OK, f"{i:064x}"
        )

    made = []
    for n_ in range(n):
        kind = DuplicateKind.NEAR if n_ % 3 == 0 else DuplicateKind.EXACT
        a, b = record(2 * n_ + 1), record(2 * n_ + 2)
        files = (DuplicateFile(a, Role.KEEP, False), DuplicateFile(b, Role.MOVE, False))
        made.append(DuplicateGroup(f"{n_:012x}", kind, files, Keeper(a.id, "size", "why"), 0.99))
    return Duplicates(made)


def test_thousands_of_groups_are_found_once_and_shown_a_page_at_a_time(lib, tmp_path):
    calls = []

    def found(*args, **kwargs):
        calls.append(1)
        return synthetic(3000, tmp_path)

    lib.duplicates = found
    web = client(lib)
    html = web.get("/duplicates").text
    assert html.count('class="dupes"') == 30
    assert re.search(r"Exact copies <span class=\"count\">2,000<", html)
    assert re.search(r"Near copies <span class=\"count\">1,000<", html)
    assert "groups 1–30 of 2,000" in html and 'rel="next"' in html and 'rel="prev"' not in html
    html = web.get("/duplicates?kind=exact&page=2").text
    assert "groups 31–60 of 2,000" in html and 'rel="prev"' in html
    assert 'href="/duplicates?kind=exact&amp;page=3"' in html
    last = web.get("/duplicates?kind=near&page=34").text
    assert "groups 991–1,000 of 1,000" in last and last.count('class="dupes"') == 10
    assert 'rel="next"' not in last
    assert "groups 991–1,000" in web.get("/duplicates?kind=near&page=999").text  # the last
    assert "groups 1–30 of 1,000" in web.get("/duplicates?kind=near&page=0").text
    assert len(calls) == 1  # computed once, sliced for every page
    for bad in ("page=two", "kind=copies", "page=99999999999999999999"):
        done = web.get(f"/duplicates?{bad}")
        assert done.status_code == 400 and done.text.count("\n") == 1, bad
    assert len(web.get("/api/duplicates").json()["groups"]) == 3000


def test_no_duplicates_says_so(fake_lib, tmp_path):
    write_picture(tmp_path / "photos" / "one.jpg", 1)
    fake_lib.ingest([tmp_path / "photos"])
    html = client(fake_lib).get("/duplicates").text
    assert "No duplicates found." in html and "groups 1" not in html


# -- the command -------------------------------------------------------------------------------


def test_allow_changes_is_off_unless_asked_and_said_at_start(lib, monkeypatch):
    import uvicorn

    from organizer.serve import serve

    apps = []

    def run(self, sockets=None):
        apps.append(self.config.app)
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(Service, "warm_up", lambda self: None)
    for allow in (False, True):
        said: list[str] = []
        serve(lib, "127.0.0.1", 0, None, False, said.append, allow_changes=allow)
        assert ("changes are allowed" in " ".join(said)) == allow
        assert apps[-1].changes.allowed == allow


def test_the_flag_reaches_the_server(cli, lib, monkeypatch):
    import organizer.serve

    got = []
    monkeypatch.setattr(organizer.serve, "serve", lambda *args: got.append(args))
    for args in (["serve"], ["serve", "--allow-changes"]):
        done = cli(*args)
        assert done.exit_code == 0, done.output
    assert [args[-1] for args in got] == [False, True]
