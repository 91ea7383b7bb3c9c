"""The documentation's links: scripts/check_links.py, and the repository's own pages."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_links.py"

_spec = importlib.util.spec_from_file_location("check_links", SCRIPT)
check_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_links)


def run(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_repository_docs_resolve():
    """README.md, CHANGELOG.md and docs/*.md: every relative link and anchor resolves."""
    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    checked = check_links.default_files()
    assert ROOT / "README.md" in checked
    assert ROOT / "CHANGELOG.md" in checked
    assert any(p.parent == ROOT / "docs" for p in checked)


def test_the_readme_links_each_docs_page():
    """The README is the front door: every page under docs/ is reachable from it."""
    readme = ROOT / "README.md"
    linked = {
        (readme.parent / target.partition("#")[0]).resolve()
        for _, target in check_links.links(readme)
        if target.startswith("docs/")
    }
    pages = set((ROOT / "docs").glob("*.md"))
    assert pages, "no docs/ pages"
    assert {p.resolve() for p in pages} <= linked


def test_broken_links_are_reported_one_a_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## `index build`, and more\n\nText.\n\n## Twice\n\n## Twice\n"
    )
    (tmp_path / "README.md").write_text(
        "# Title\n\n"
        "[fine](docs/page.md) [anchor](docs/page.md#index-build-and-more)\n"
        "[own](#title) [repeated](docs/page.md#twice-1) [web](https://example.com/x.md#nope)\n"
        "[missing](docs/gone.md)\n"
        "[bad anchor](docs/page.md#nowhere)\n"
        "[own bad](#no-such-heading)\n"
        "`[in code](docs/gone.md)`\n"
        "```\n[in a block](docs/gone.md)\n```\n"
        "[ref]: docs/also-gone.md\n"
    )
    result = run(tmp_path / "README.md", tmp_path / "docs" / "page.md", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    assert lines[0].endswith("README.md:5: docs/gone.md: no such file")
    assert lines[1].endswith("README.md:6: docs/page.md#nowhere: no heading there has this anchor")
    assert lines[2].endswith("README.md:7: #no-such-heading: no heading there has this anchor")
    assert lines[3].endswith("README.md:12: docs/also-gone.md: no such file")


def test_github_heading_slugs():
    assert check_links.slug("Set-up: two commands") == "set-up-two-commands"
    assert check_links.slug("similar, search, duplicates") == "similar-search-duplicates"
    assert check_links.slug("On a GPU (lent H200)") == "on-a-gpu-lent-h200"
    assert check_links.slug("`A_B` and [links](x.md)") == "a_b-and-links"
    assert check_links.slug("Ten million images -- and more") == "ten-million-images----and-more"
