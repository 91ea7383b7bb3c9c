"""Walking roots: links, hidden files, odd names, unreadable folders."""

from __future__ import annotations

import os

from organizer.scan import display_path, scan_root
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


def test_extensions_are_case_insensitive_and_others_ignored(tmp_path):
    root = tmp_path / "root"
    for name in ("A.JPG", "b.Png", "c.webp", "d.txt", "e.mov", "f"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    assert sorted(f.relpath for f in scan_root(root).files) == [b"A.JPG", b"b.Png", b"c.webp"]
