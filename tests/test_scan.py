"""Walking roots: links, hidden files, odd names, unreadable folders."""

from __future__ import annotations

import base64
import os

import pytest

from organizer.scan import display_path, exact_path, scan_root
from tests.fakes import write_picture


def test_symlink_loop_broken_link_and_outside_link(tmp_path):
    root = tmp_path / "root"
    write_picture(root / "a.jpg", 1)
    outside = write_picture(tmp_path / "outside" / "o.jpg", 2)
    os.symlink(root, root / "loop")  # folder link to itself: never followed
    os.symlink(root / "nothing.jpg", root / "broken.jpg")
    os.symlink(outside, root / "out.jpg")
    os.symlink(root / "a.jpg", root / "inside-link.jpg")
    result = scan_root(root)
    assert sorted(f.relpath for f in result.files) == [b"a.jpg", b"inside-link.jpg"]
    reasons = {p.relpath: p.reason for p in result.problems}
    assert reasons[b"broken.jpg"] == "broken symbolic link"
    assert "outside the root" in reasons[b"out.jpg"]
    followed = scan_root(root, follow_symlinks=True)
    assert b"out.jpg" in {f.relpath for f in followed.files}


def test_non_utf8_and_odd_names_are_kept_as_bytes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    names = [
        b"caf\xe9.jpg",
        "café.jpg".encode(),
        "cafe\u0301.jpg".encode(),
        b"new\nline.jpg",
        b"x" * 251 + b".jpg",
    ]
    for name in names:
        write_picture(root / os.fsdecode(name), 3)
    found = sorted(f.relpath for f in scan_root(root).files)
    assert found == sorted(names)
    assert display_path(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert display_path(b"new\nline.jpg") == "new\\nline.jpg"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("photo\u202egpj.exe.jpg", "photo\\u202egpj.exe.jpg"),  # right-to-left override
        ("a\u2066b\u2069\u200f.jpg", "a\\u2066b\\u2069\\u200f.jpg"),  # isolates, RLM
        ("next\x85line\u2028.jpg", "next\\x85line\\u2028.jpg"),  # C1 control, separator
        ("tab\there.jpg", "tab\\there.jpg"),
        ("\u0645\u0631\u062d\u0628\u0627.jpg", "\u0645\u0631\u062d\u0628\u0627.jpg"),  # Arabic
        ("family-\U0001f468\u200d\U0001f469.jpg", "family-\U0001f468\u200d\U0001f469.jpg"),  # ZWJ
    ],
)
def test_names_show_their_invisible_characters(name, shown):
    """Control and bidirectional-control characters show escaped (they would hide or reorder
    the name); the JSON path then comes with the exact bytes too."""
    relpath = name.encode()
    assert display_path(relpath) == shown
    exact = exact_path("/photos", relpath)
    if shown == name:
        assert exact == {}
    else:
        assert base64.b64decode(exact["path_b64"]) == b"/photos/" + relpath


def test_extensions_are_case_insensitive_and_others_ignored(tmp_path):
    root = tmp_path / "root"
    for name in ("A.JPG", "b.Png", "c.webp", "d.txt", "e.mov", "f"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    assert sorted(f.relpath for f in scan_root(root).files) == [b"A.JPG", b"b.Png", b"c.webp"]
