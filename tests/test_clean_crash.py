"""kill -9 during `organizer clean`, in a real process: a re-run of the same plan completes
the clean-up, and `clean --undo` puts every file back instead; no file is ever lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from organizer.config import Settings
from organizer.library import Library
from organizer.store import queries as q
from tests.test_clean import TRASH, snapshot, write_plan

pytestmark = [pytest.mark.slow, pytest.mark.both_backends]

REPO_ROOT = Path(__file__).resolve().parents[1]
COPIES = 5  # groups of two: each moves a copy and its .xmp, so ten moves

# Runs the real command line; `link` kills the process just after the N-th hard link into
# the trash (the file has two names then: the move is half made), `library` once the
# library's rows are changed but not committed.
DYING_CLEAN = """
import os, signal, sys
n, mode = int(sys.argv[1]), sys.argv[2]
if mode == "link":
    real, made = os.link, []
    def link(src, dst, **kw):
        real(src, dst, **kw)
        made.append(dst)
        if len(made) == n:
            os.kill(os.getpid(), signal.SIGKILL)
    os.link = link
else:
    from organizer.store import trash_queries as tq
    real_mark = tq.mark_trashed
    def mark(conn, files):
        real_mark(conn, files)
        os.kill(os.getpid(), signal.SIGKILL)
    tq.mark_trashed = mark
from organizer.cli import main
sys.argv = ["organizer", *sys.argv[3:]]
main()
"""


@pytest.fixture
def crowded(photos, fake_lib, tmp_path):
    """Photos with a copy (and the copy's sidecar) each, ingested; a plan to trash the copies."""
    groups = []
    for n, keep in enumerate(sorted(photos.rglob("img*.jpg"))[:COPIES]):
        copy = photos / "copies" / f"copy{n}.jpg"
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(keep, copy)
        copy.with_suffix(".xmp").write_text(f"sidecar {n}")
        groups.append((keep, [copy]))
    fake_lib.ingest([photos])
    return photos, write_plan(tmp_path, *groups)


def _kill(library, plan: Path, n: int, mode: str) -> None:
    env = {**os.environ, "ORGANIZER_LIBRARY": str(library)}
    args = [sys.executable, "-c", DYING_CLEAN, str(n), mode, "clean", str(plan)]
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _contents(root: Path) -> list[str]:
    """The digest of every file under ``root``, trash included: none lost, none doubled."""
    return sorted(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    )


def _ok(library) -> set[str]:
    with Library.open(Settings(library=library)) as lib, lib.engine.connect() as conn:
        rows = conn.execute(q.select(q.images.c.relpath).where(q.images.c.status == "ok"))
        return {os.fsdecode(r) for r in rows.scalars()}


KILLS = [(1, "link"), (4, "link"), (2 * COPIES, "link"), (0, "library")]


@pytest.mark.parametrize(("n", "mode"), KILLS, ids=[f"{m}-{n}" for n, m in KILLS])
def test_a_rerun_completes_a_killed_clean_up(crowded, library, cli, n, mode):
    root, plan = crowded
    before, contents = snapshot(root), _contents(root)
    _kill(library, plan, n, mode)
    assert _contents(root) == contents or mode == "link"  # two names of one file, for now

    halfway = snapshot(root, skip_trash=False)
    dry = cli("clean", plan, "--dry-run")
    assert "would finish the interrupted clean-up of this plan" in dry.stdout
    assert snapshot(root, skip_trash=False) == halfway
    result = cli("clean", plan)
    assert result.exit_code == 0, result.output
    assert "finished the interrupted clean-up of this plan" in result.stdout
    assert f"moved {2 * COPIES} files of {COPIES} groups" in result.stdout
    assert not (root / "copies").exists() or not list((root / "copies").iterdir())
    assert _contents(root) == contents
    assert not {f"copies/copy{i}.jpg" for i in range(COPIES)} & _ok(library)

    again = cli("clean", plan)
    assert "nothing moved" in again.stdout and "earlier clean-up of this plan" in again.stdout
    assert cli("clean", "--undo", "last").exit_code == 0
    assert snapshot(root) == before


@pytest.mark.parametrize(("n", "mode"), KILLS, ids=[f"{m}-{n}" for n, m in KILLS])
def test_undo_restores_a_killed_clean_up(crowded, library, cli, n, mode):
    root, plan = crowded
    before = snapshot(root)
    ok_before = _ok(library)
    _kill(library, plan, n, mode)

    result = cli("clean", "--undo", "last")
    assert result.exit_code == 0, result.output
    assert "refused" not in result.stdout
    assert snapshot(root) == before
    assert not [p for p in (root / TRASH).rglob("*") if p.is_file()]
    assert _ok(library) == ok_before
    assert "nothing left to undo" in cli("clean", "--undo", "last").stdout
    # an undone clean-up is never resumed: the same plan starts afresh
    result = cli("clean", plan)
    assert "finished the interrupted" not in result.stdout
    assert f"moved {2 * COPIES} files" in result.stdout
