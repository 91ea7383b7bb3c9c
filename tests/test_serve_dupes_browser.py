"""The duplicates page's actions in headless Chromium (Debian's), against a real server
started with changes allowed (uvicorn on a thread, over a library of the fake model): choose
another keeper, "Not duplicates", "Keep all", each shown after a reload; "Move the others to
the trash" (after a confirm) and its Undo, checked on disk; errors show in the page. No
console error, no request leaves the server. Screenshots are kept in build/test-artifacts/.

Needs the Debian package `chromium` and the Python package `playwright`; skipped without."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_report_browser import chromium
from tests.test_serve_dupes import dupes_photos

pytest.importorskip("starlette", reason="the serve extra is not installed")

from organizer.serve import listen
from organizer.serve.app import create_app
from organizer.serve.service import Service

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"


@contextmanager
def serving(lib, allow_changes: bool = True) -> Iterator[str]:
    """The app over ``lib`` on a free loopback port, on a thread; yields its address."""
    import uvicorn

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(Service(lib), "127.0.0.1", None, port, allow_changes)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium page and what it logged; it answers confirm() with yes unless
    the log's "confirm" says otherwise."""
    log: dict = {"console": [], "errors": [], "requests": [], "dialogs": [], "confirm": True}

    def dialog(d) -> None:
        log["dialogs"].append(d.message)
        d.accept() if d.type == "confirm" and log["confirm"] else d.dismiss()

    with chromium(tmp_path, log, dialog) as page:
        yield page, log


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dupes-{name}.png"), full_page=True)


def _group(page, kind: str):
    return page.locator(f".dupes:has(.badge.kind:text-is('{kind}'))")


@pytest.fixture
def lib(fake_lib, tmp_path):
    fake_lib.ingest([dupes_photos(tmp_path / "photos")])
    return fake_lib


def test_decisions_in_a_browser(lib, browser):
    page, log = browser
    with serving(lib) as base:
        page.goto(base + "/duplicates?kind=near")
        near = _group(page, "near")
        assert "Keeps a/big.jpg: the most pixels" in near.locator(".reason").inner_text()
        _shot(page, "near-before")

        # Another keeper: the page reloads with it, and says so.
        near.locator(".card:has(bdi:text-is('b/medium.png')) button[data-action=keeper]").click()
        page.wait_for_selector("#notice:not([hidden])")
        assert "medium.png is now the keeper" in page.inner_text("#notice")
        near = _group(page, "near")
        assert "Keeps b/medium.png: you chose it" in near.locator(".reason").inner_text()
        keep = near.locator(".card.role-keep")
        assert keep.count() == 1 and "b/medium.png" in keep.inner_text()
        _shot(page, "near-keeper-chosen")

        # Not duplicates: the group goes, and stays gone after a reload.
        near.locator("button[data-action=not-duplicates]").click()
        page.wait_for_selector("#notice:has-text('not duplicates')")
        assert _group(page, "near").count() == 0
        page.reload()
        assert _group(page, "near").count() == 0 and "No near copies." in page.inner_text("main")
        assert page.locator("#notice").is_hidden()  # said once

        # Keep all: the exact group goes too.
        page.goto(base + "/duplicates?kind=exact")
        _group(page, "exact").locator("button[data-action=keep-all]").click()
        page.wait_for_selector("#notice:has-text('not listed again')")
        page.reload()
        assert "No duplicates found." in page.inner_text("main")
        _shot(page, "all-decided")

    assert not log["errors"], log["errors"]
    assert not [m for m in log["console"] if m[0] == "error"], log["console"]
    assert not log["dialogs"], log["dialogs"]
    assert all(url.startswith(base) for url in log["requests"]), log["requests"]


def test_trash_and_undo_in_a_browser(lib, browser, tmp_path):
    page, log = browser
    photos = tmp_path / "photos"
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    with serving(lib) as base:
        page.goto(base + "/duplicates?kind=near")
        _group(page, "near").locator("button[data-action=trash]").click()
        page.wait_for_selector("#cleaned")
        assert log["dialogs"] == [
            "Move 2 files of this group to the trash? The keeper stays; Undo puts them back."
        ]
        assert "Moved 2 files of group" in page.inner_text("#cleaned")
        assert _group(page, "near").count() == 0
        trash = photos / ".organizer-trash" / "b"
        assert sorted(p.name for p in trash.iterdir()) == ["medium.png", "small.jpg"]
        assert not (photos / "b" / "small.jpg").exists()
        assert (photos / "a" / "big.jpg").exists()
        page.reload()
        assert _group(page, "near").count() == 0 and page.locator("#undo").is_visible()
        _shot(page, "trashed")

        page.click("#undo")
        page.wait_for_selector("#notice:has-text('Put back 2 files')")
        assert page.locator("#cleaned").count() == 0
        assert _group(page, "near").count() == 1  # the group is back
        now = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
        assert now == before  # byte for byte, nothing left in the trash
        _shot(page, "undone")

        # A confirm answered "no" moves nothing.
        log["confirm"] = False
        _group(page, "near").locator("button[data-action=trash]").click()
        page.wait_for_timeout(300)
        assert (photos / "b" / "small.jpg").exists() and _group(page, "near").count() == 1
    assert not log["errors"], log["errors"]
    assert not [m for m in log["console"] if m[0] == "error"], log["console"]
    assert all(url.startswith(base) for url in log["requests"]), log["requests"]


def test_a_refused_change_shows_in_the_page(lib, browser):
    """The server's one-line answer shows under the group, not as an alert or a trace."""
    page, log = browser
    with serving(lib) as base:
        page.goto(base + "/duplicates?kind=near")
        # The token of a server since restarted: refused by the front door.
        page.evaluate("document.querySelector('meta[name=csrf-token]').content = 'stale'")
        near = _group(page, "near")
        near.locator("button[data-action=keep-all]").click()
        problem = near.locator(".problem")
        problem.wait_for(state="visible")
        assert "reload the page" in problem.inner_text()
        assert near.locator("button[data-action=keep-all]").is_enabled()
        _shot(page, "refused")
    assert not log["dialogs"] and not log["errors"], log
    # The browser logs the 403 itself; nothing else.
    assert all("403" in m[1] for m in log["console"] if m[0] == "error"), log["console"]


def test_read_only_shows_no_actions(lib, browser):
    page, log = browser
    with serving(lib, allow_changes=False) as base:
        page.goto(base + "/duplicates?kind=near")
        assert page.locator("[data-action]").count() == 0
        assert page.locator("button.copy").count() == 1
        assert "--allow-changes" in page.inner_text("main")
        _shot(page, "read-only")
    assert not log["errors"] and not log["console"], log
