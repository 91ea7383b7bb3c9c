"""One helper per chore: atomic writes, file locks, "is this path inside that folder", and
SQL dialect differences each live in one module, and behave as their callers rely on."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from organizer.atomic import replacing, write_bytes_atomic, write_text_atomic
from organizer.filelock import FileLock
from organizer.paths import is_within

SOURCE = Path(__file__).resolve().parent.parent / "organizer"

# (what, pattern, the one module allowed to contain it)
ONE_PLACE = [
    ("renames over a file", re.compile(r"\bos\.replace\("), "atomic.py"),
    ("file locks", re.compile(r"\bfcntl\b|\bflock\("), "filelock.py"),
    (
        "is-this-path-inside checks",
        re.compile(r"""rstrip\(b?["']/["']\) \+ b?["']/["']|is_relative_to\(|commonpath\("""),
        "paths.py",
    ),
    (
        "SQL dialect tests",
        re.compile(r"\.dialect\.name\b|get_backend_name\(|\bsqlalchemy\.dialects\b"),
        "store/dialect.py",
    ),
]


@pytest.mark.parametrize(("what", "pattern", "home"), ONE_PLACE, ids=[w for w, _, _ in ONE_PLACE])
def test_each_chore_is_written_in_one_module(what, pattern, home):
    elsewhere = [
        f"{path.relative_to(SOURCE)}:{n}: {line.strip()}"
        for path in sorted(SOURCE.rglob("*.py"))
        if path.relative_to(SOURCE).as_posix() != home
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not elsewhere, f"{what} belong in organizer/{home}, not in:\n" + "\n".join(elsewhere)


@pytest.mark.parametrize(
    ("path", "folder", "within", "strictly_within"),
    [
        ("/photos/2024", "/photos", True, True),
        ("/photos/2024", "/photos/", True, True),
        ("/photos", "/photos", True, False),
        ("/photos2", "/photos", False, False),
        ("/photo", "/photos", False, False),
        ("/photos", "/photos/2024", False, False),
        ("/anything", "/", True, True),
        (b"/photos/a.jpg", b"/photos", True, True),
        (b"/photos", b"/photos", True, False),
        (b"/photosx/a.jpg", b"/photos", False, False),
        ("2024/a.jpg", "2024", True, True),
        ("20245/a.jpg", "2024", False, False),
    ],
)
def test_is_within_compares_whole_names(path, folder, within, strictly_within):
    assert is_within(path, folder) is within
    assert is_within(path, folder, strictly=True) is strictly_within


def test_is_within_resolves_nothing(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    inside = str(tmp_path / "link" / "a.jpg")
    assert not is_within(inside, str(tmp_path / "real"))
    assert is_within(os.path.realpath(inside), os.path.realpath(tmp_path / "real"))


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    write_bytes_atomic(target, b"\x00" * 100_000, fsync=False)
    assert target.read_bytes() == b"\x00" * 100_000
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text("the previous report")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(target, b"new")
    with pytest.raises(RuntimeError), replacing(target, fsync=False) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


@pytest.mark.parametrize(
    ("mode", "umask", "expected"), [(0o600, 0o022, 0o600), (0o666, 0o022, 0o644)]
)
def test_atomic_write_mode_is_before_the_umask(tmp_path, mode, umask, expected):
    old = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "f", b"x", mode=mode, fsync=False)
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == expected


def test_replacing_names_its_temporary_file_as_asked(tmp_path):
    with replacing(tmp_path / "vectors.faiss", prefix=".vectors-") as tmp:
        assert tmp.name.startswith(".vectors-") and tmp.name.endswith(".tmp")
        assert tmp.parent == tmp_path and tmp.exists()
        tmp.write_bytes(b"index")
    assert (tmp_path / "vectors.faiss").read_bytes() == b"index"


def test_file_lock_excludes_and_shares(tmp_path):
    path = tmp_path / "lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire(wait=False) and first.held
    assert not second.acquire(wait=False) and not second.held
    assert not second.acquire(shared=True, wait=False)
    first.release()
    assert not first.held
    assert first.acquire(shared=True, wait=False) and second.acquire(shared=True, wait=False)
    assert not FileLock(path).acquire(wait=False)
    first.release()
    second.release()
    with FileLock(path) as held:
        assert held.held
    assert FileLock(path).acquire(wait=False)
    assert path.stat().st_mode & 0o777 == 0o600
