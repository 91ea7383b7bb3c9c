"""The report in a real browser: headless Chromium opens it from disk, logs no error, makes
no network request, runs no injected script, and hovering a point shows that image.

Needs the Debian package `chromium` and the Python package `playwright` (its own browser
downloads are never used); skipped when either is missing.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from organizer.report import write_report
from tests.test_report import HOSTILE, make_library

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HIT_RADIUS = 12  # px: how near the pointer a point must be to be picked (map_script.html)


@contextmanager
def chromium(tmp_path: Path, log: dict, on_dialog: Callable[[Any], None]) -> Iterator[Any]:
    """A fresh headless Chromium page (skipped without chromium or playwright) that writes
    what it logs into ``log``: console messages, page errors, requests; ``on_dialog``
    answers alerts and confirms."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda m: log["console"].append((m.type, m.text)))
        page.on("pageerror", lambda e: log["errors"].append(str(e)))
        page.on("request", lambda r: log["requests"].append(r.url))
        page.on("dialog", on_dialog)
        try:
            yield page
        finally:
            context.close()


@pytest.fixture
def browser_page(tmp_path):
    """A fresh headless Chromium page and what it logged: console, errors, requests, dialogs."""
    log: dict[str, list] = {"console": [], "errors": [], "requests": [], "dialogs": []}
    with chromium(tmp_path, log, lambda d: (log["dialogs"].append(d.message), d.dismiss())) as page:
        yield page, log


def _isolated_point(points: list[dict], prefer: int) -> int:
    """``prefer`` when no other point is within the hover radius, else the most isolated one."""

    def gap(i: int) -> float:
        p = points[i]
        others = (
            math.dist((p["x"], p["y"]), (q["x"], q["y"])) for j, q in enumerate(points) if j != i
        )
        return min(others, default=math.inf)

    if gap(prefer) > 2 * HIT_RADIUS:
        return prefer
    return max(range(len(points)), key=gap)


def test_report_in_chromium(fake_lib, tmp_path, browser_page):
    page, log = browser_page
    names = [*HOSTILE, *(f"album/photo{i:02d}.jpg" for i in range(12))]
    make_library(fake_lib, names, clusters=3)
    fake_lib.cluster(3, names=False)
    out = tmp_path / "report.html"
    write_report(fake_lib.engine, out)

    page.goto(out.as_uri())
    page.wait_for_load_state("load")
    page.locator("#map-wrap").scroll_into_view_if_needed()
    data = page.evaluate("JSON.parse(document.getElementById('report-data').textContent)")
    points = page.evaluate(
        "Array.from({length: organizerMap.count}, (_, i) => organizerMap.position(i))"
    )
    assert len(points) == len(data["p"]) == len(names)
    i = _isolated_point(points, prefer=data["p"].index(HOSTILE[0]))

    page.mouse.move(points[i]["x"], points[i]["y"])
    page.wait_for_selector("#tip:not([hidden])", timeout=5000)
    assert page.get_attribute("#tip-img", "src") == data["t"][i]
    assert page.inner_text("#tip-path") == data["p"][i]
    assert page.evaluate("document.getElementById('tip-img').naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0

    # A click pins the panel: it stays when the pointer leaves the point.
    page.mouse.click(points[i]["x"], points[i]["y"])
    page.mouse.move(5, 5)
    assert page.locator("#tip").is_visible()
    assert page.get_attribute("#tip-img", "src") == data["t"][i]

    # Hiding the point's cluster in the legend takes it off the map: hovering shows nothing.
    button = page.locator(f".legend-item[data-cluster='{data['c'][i]}']")
    button.click()
    assert button.get_attribute("aria-pressed") == "false"
    assert page.locator("#tip").is_hidden()
    page.mouse.move(points[i]["x"], points[i]["y"])
    assert page.locator("#tip").is_hidden()

    captions = page.eval_on_selector_all("figcaption", "els => els.map(e => e.title)")
    assert set(HOSTILE) <= set(captions), "hostile names are shown as plain text"
    broken = page.evaluate(
        "Array.from(document.images).filter(im => im.src && !im.naturalWidth).length"
    )
    assert broken == 0, "every image (thumbnails, static map) displays under the CSP"
    assert [m for m in log["console"] if m[0] in ("error", "warning")] == []
    assert log["errors"] == [] and log["dialogs"] == [], "no script error, no injected alert"
    assert all(url.startswith(("file:", "data:")) for url in log["requests"]), log["requests"]
