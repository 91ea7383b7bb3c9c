"""`organizer status` tells the truth about ingest runs: running, interrupted, finished."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes import camera_exif, make_folder, write_picture

pytestmark = pytest.mark.both_backends
REPO_ROOT = Path(__file__).resolve().parents[1]


def _ingest_running(library) -> bool:
    from organizer.config import Settings
    from organizer.library import Library

    with Library.open(Settings(library=library)) as lib:
        return lib.ingest_running()


def _status(cli) -> dict:
    result = cli("status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["last_ingest"]


def test_a_run_that_embedded_nothing_says_so(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    assert cli("ingest", photos).exit_code == 0  # everything unchanged
    text = cli("status").stdout
    assert "nothing to embed" in text and "None" not in text


def test_status_counts_what_the_photos_headers_said(cli, library, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)  # no header: no time taken, no camera
    write_picture(root / "arezzo.jpg", 10, exif=camera_exif())
    write_picture(root / "anywhere.jpg", 11, exif=camera_exif(position=None))
    write_picture(root / "at-sea.jpg", 12, exif=camera_exif(position=(0.5, -30.0)))
    assert cli("ingest", root).exit_code == 0
    counts = json.loads(cli("status", "--json").stdout)["metadata"]
    assert counts == {
        "read": 6,
        "with_time": 3,
        "with_coordinates": 2,
        "with_camera": 3,
        "with_place": 1,  # the Atlantic has no town within 100 km
        "unread": 0,
    }
    details = "3 with a time taken, 2 with coordinates (1 with a named place), 3 with a camera"
    assert f"details {details}\n" in cli("status").stdout

    from sqlalchemy import select

    from organizer.config import Settings
    from organizer.library import Library
    from organizer.store import meta_queries as mq
    from organizer.store import queries as q
    from organizer.store.db import write_transaction

    with Library.open(Settings(library=library)) as lib, write_transaction(lib.engine) as conn:
        mq.delete_meta(conn, list(conn.execute(select(q.images.c.id).limit(2)).scalars()))
    assert json.loads(cli("status", "--json").stdout)["metadata"]["unread"] == 2
    assert "; 2 not read yet: the next `organizer ingest` reads them" in cli("status").stdout
    assert cli("ingest", root).exit_code == 0  # reads them, embeds nothing
    assert json.loads(cli("status", "--json").stdout)["metadata"]["unread"] == 0


def test_running_then_killed_then_finished(cli, library, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 40)
    script = [sys.executable, "-m", "tests.reliability.crash_ingest", str(library), str(root)]
    writer = subprocess.Popen(
        [*script, "--slow", "0.2", "--batch-size", "2"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        seen = None
        while time.time() < deadline:
            result = cli("status", "--json")
            if result.exit_code == 0:
                last = json.loads(result.stdout)["last_ingest"]
                if last and last["status"] == "running" and last["summary"].get("done"):
                    seen = last
                    break
            time.sleep(0.1)
        assert seen is not None and seen["pid"] == writer.pid
        text = cli("status").stdout
        assert "running since" in text and f"(pid {writer.pid})" in text and "of 40 files" in text
        assert _ingest_running(library)  # what a server asks, without touching the lock
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
    assert not _ingest_running(library)  # killed: a server must not wait for it forever
    killed = _status(cli)
    assert killed["status"] == "interrupted" and killed["pid"] == writer.pid
    assert (
        "interrupted" in cli("status").stdout and "run `organizer ingest`" in cli("status").stdout
    )
    subprocess.run(script, cwd=REPO_ROOT, check=True, capture_output=True)  # finishes the rest
    assert _status(cli)["status"] == "finished"
