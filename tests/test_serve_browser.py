"""The web app in headless Chromium (Debian's): search and see thumbnails, open an image and
its similar images, the clusters page and its map (hovering shows a picture), duplicates;
no console error, no request leaves the server, no injected script runs. Screenshots are
kept in build/test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_report_browser import browser_page  # noqa: F401 - the fixture
from tests.test_serve import HOSTILE_NAME, site  # noqa: F401 - the fixture

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-{name}.png"), full_page=True)


def _loaded(img) -> bool:
    return img.evaluate("node => node.complete && node.naturalWidth > 0")


def test_the_app_in_a_browser(site, browser_page):  # noqa: F811 - fixtures
    page, log = browser_page
    server = site["server"]
    base = f"http://127.0.0.1:{server.port}"

    page.goto(base + "/")
    page.fill("#q", "a red square")
    page.press("#q", "Enter")
    page.wait_for_selector("#results .card img")
    cards = page.locator("#results .card")
    assert cards.count() == 11
    first = page.locator("#results .card img").first
    first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    assert _loaded(first)
    assert "results for a red square" in page.text_content("#message")
    _shot(page, "search")

    cards.first.click()
    page.wait_for_selector("#picture")
    assert _loaded(page.locator("#picture"))
    similar = page.locator("#similar .card")
    assert similar.count() == 10  # the others
    similar.first.click()
    page.wait_for_selector("#picture")
    assert "/view/" in page.url
    _shot(page, "image")

    page.goto(base + "/clusters")
    page.wait_for_selector("#map-message:has-text('images ·')")
    points = server.json("/api/map")["points"]
    box = page.locator("#map").bounding_box()
    size = min(box["width"], box["height"]) - 20
    left, top = (box["width"] - size) / 2, (box["height"] - size) / 2
    _, x, y, _ = points[0]
    page.mouse.move(box["x"] + left + x * size, box["y"] + top + (1 - y) * size)
    page.wait_for_selector("#map-tip:not([hidden])")
    tip = page.locator("#map-tip img")
    page.wait_for_timeout(300)
    assert "/thumb/" in tip.get_attribute("src") and _loaded(tip)
    _shot(page, "clusters")

    page.goto(base + "/duplicates")
    page.goto(base + "/status")
    page.goto(base + f"/?q={HOSTILE_NAME}")
    page.wait_for_selector("#results .card")
    _shot(page, "hostile")
    # Names are isolated: a right-to-left one cannot reorder the score beside it.
    assert page.locator("#results .card bdi.name").count() == 11
    assert "\\u202egnp.exe" in page.text_content("#results")

    # A file the server will not serve is a tile saying why, not a broken picture (which
    # would also log a 404 in the console).
    leaks = site["photos"] / "leaks.jpg"
    leaks.unlink()
    leaks.symlink_to(site["base"] / "outside" / "secret.jpg")
    try:
        page.goto(base + "/?q=photo")
        page.wait_for_selector("#results .card .unshown")
        tile = page.locator("#results .card .unshown")
        assert tile.count() == 1 and "leads out of its folder" in tile.text_content()
        assert page.locator("#results .card img").count() == 10
        _shot(page, "not-shown")
    finally:
        leaks.unlink()
        shutil.copy(site["base"] / "outside" / "secret.jpg", leaks)

    assert not log["errors"], log["errors"]
    assert not [m for m in log["console"] if m[0] == "error"], log["console"]
    assert not log["dialogs"], log["dialogs"]  # no injected script ran
    assert all(url.startswith(base) for url in log["requests"]), log["requests"]
