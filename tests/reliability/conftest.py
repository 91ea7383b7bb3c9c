"""Helpers for the reliability battery: running organizer as a real process, as root or as
an unprivileged user, and checking that database and index agree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fakes import TINY_CONFIG


def organizer_env(library: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORGANIZER_")}
    if os.environ.get("ORGANIZER_MODEL_CACHE"):  # the session's exported towers: a fault
        env["ORGANIZER_MODEL_CACHE"] = os.environ["ORGANIZER_MODEL_CACHE"]  # hits the run only
    env.update(
        ORGANIZER_LIBRARY=str(library),
        ORGANIZER_MODEL=str(TINY_CONFIG),
        ORGANIZER_PRETRAINED="none",
        ORGANIZER_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    env.update(extra)
    return env


def run_organizer(args, env, user: str | None = None, preexec_fn=None, timeout: float = 300):
    """`python -m organizer ARGS` in a fresh process (optionally as an unprivileged user)."""
    cmd = [sys.executable, "-m", "organizer", *map(str, args)]
    if user == "nobody" and os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", *cmd]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
    )


@pytest.fixture
def shared_tmp():
    """A temporary folder an unprivileged user can use too (pytest's own is root-only)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a case as an unprivileged user")
    path = Path(tempfile.mkdtemp(prefix="organizer-rel-"))
    path.chmod(0o777)
    yield path
    subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def assert_consistent(library: Path, battery) -> dict:
    """Index file == database, status in sync; returns the status."""
    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import queries as q

    with Library.open(Settings(library=library)) as lib:
        index = lib.vectors()
        with lib.engine.connect() as conn:
            model = q.library_model(conn)
            ids = q.ok_ids(conn, model.id).tolist() if model else []
        battery.mismatch(sorted(index.ids().tolist()) == ids, "index ids differ from the database")
        status = lib.status()
        battery.mismatch(status.index.in_sync or not ids, "index file not in sync after a run")
        return status
