"""Check that every relative link in the project's Markdown resolves.

    python scripts/check_links.py [FILE.md ...]

Without arguments it checks README.md, CHANGELOG.md and docs/**/*.md. A link resolves when
its file or folder exists and, for `#anchor` links into a Markdown file (or `#anchor` alone,
into the same file), when that file has a heading whose GitHub anchor is the anchor. Links
with a scheme (https:, mailto:) and links inside code are not checked. Prints one line per
broken link, `FILE:LINE: TARGET: why`, and exits 1 if there is any; standard library only.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
HTML_ID = re.compile(r"<a\s[^>]*\b(?:id|name)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def default_files(root: Path = ROOT) -> list[Path]:
    files = [root / "README.md", root / "CHANGELOG.md"]
    return [f for f in files if f.exists()] + sorted((root / "docs").rglob("*.md"))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, characters other than
    letters, digits, marks, `-`, `_` and spaces dropped, each space made a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text)  # so does inline HTML
    kept = []
    for ch in text.lower():
        if ch in "-_ " or unicodedata.category(ch)[0] in "LMN":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code blanked out."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        yield number, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown file's headings (and `<a id=...>` tags) define, numbered as
    GitHub numbers repeated ones (`name`, `name-1`, ...)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    raw = text.splitlines()
    previous = None  # the prose line just before, for a setext (underlined) heading
    for number, line in _prose_lines(text):
        found.update(HTML_ID.findall(line))
        title = None
        match = HEADING.match(line)
        if match:
            title = HEADING.match(raw[number - 1]).group(2)  # with its inline code
        elif SETEXT.match(line) and previous is not None:
            title = raw[previous - 1].strip()
        previous = number if line.strip() and not match and not SETEXT.match(line) else None
        if title is None:
            continue
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link in a Markdown file's prose."""
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in INLINE.finditer(line):
            yield number, match.group(1).strip("<>")
        match = REFERENCE.match(line)
        if match:
            yield number, match.group(1).strip("<>")


def broken(path: Path, cache: dict[Path, set[str]] | None = None) -> list[str]:
    """One line per link in `path` that does not resolve."""
    cache = {} if cache is None else cache
    shown = path.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else path
    problems = []
    for number, target in links(path):
        if not target or SCHEME.match(target) or target.startswith("//"):
            continue
        where, _, anchor = target.partition("#")
        where = unquote(where.split("?", 1)[0])
        if where.startswith("/"):
            problems.append(f"{shown}:{number}: {target}: an absolute path; make it relative")
            continue
        dest = path if not where else path.parent / where
        if not dest.exists():
            problems.append(f"{shown}:{number}: {target}: no such file")
            continue
        if not anchor or dest.is_dir() or dest.suffix.lower() != ".md":
            continue
        dest = dest.resolve()
        if dest not in cache:
            cache[dest] = anchors(dest)
        if unquote(anchor) not in cache[dest]:
            problems.append(f"{shown}:{number}: {target}: no heading there has this anchor")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    files = [Path(a) for a in args] if args else default_files()
    cache: dict[Path, set[str]] = {}
    problems = [line for path in files for line in broken(path, cache)]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
