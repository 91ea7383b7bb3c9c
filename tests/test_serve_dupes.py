"""The web app's duplicates page: tabs per kind with counts, each group's keeper and why,
its files' roles, a page of groups at a time. The app is called in-process (Starlette's
TestClient) over a library of the fake model."""

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
from organizer.serve.service import Service
from organizer.store.records import ImageRecord, ImageStatus

BASE = "http://127.0.0.1:8765"


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


def client(lib) -> TestClient:
    return TestClient(create_app(Service(lib)), base_url=BASE)


def groups(web: TestClient) -> dict[str, dict]:
    """The groups /api/duplicates lists, by kind (one of each in these tests)."""
    listed = web.get("/api/duplicates").json()["groups"]
    return {g["kind"]: g for g in listed}


# -- the page --------------------------------------------------------------------------------


def test_the_page_shows_kinds_keepers_roles_and_actions(lib):
    web = client(lib)
    html = web.get("/duplicates").text
    assert re.search(r'kind=exact" aria-current="page">Exact copies <span class="count">1<', html)
    assert re.search(r'kind=near" >Near copies <span class="count">1<', html)
    assert re.search(r'kind=burst" >Bursts <span class="count">0<', html)
    assert "1 group<" in html and "groups 1–1" not in html  # one page: no pager
    exact = groups(web)["exact"]
    assert f"<code>{exact['id']}</code>" in html
    assert "data-action" not in html and "Copy the list of the others" in html
    near = web.get("/duplicates?kind=near").text
    assert "Keeps <bdi>a/big.jpg</bdi>: the most pixels (192×128, against 144×96)." in near
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
