"""Faults around a library: full disks, read-only folders, concurrent runs, hostile files.
Each leaves a clear one-line error (or a warning) and the previous state intact."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.battery import BATTERY
from tests.fakes import TINY_CONFIG, make_folder
from tests.reliability.conftest import assert_consistent, organizer_env, run_organizer

pytestmark = pytest.mark.slow


def _limit_file_size(limit: int):
    """A child that may not write files larger than ``limit`` bytes: writes fail with EFBIG,
    as on a full disk (SIGXFSZ ignored so the process sees the error instead of dying)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _status(env) -> dict:
    result = run_organizer(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def ingested(tmp_path):
    """A library of 6 images made with the tiny model (in this process: only the faults
    themselves need a real process), and 30 more files waiting to be ingested."""
    from organizer.config import Settings
    from organizer.library import Library

    root = tmp_path / "photos"
    make_folder(root, 6)
    settings = Settings(library=tmp_path / "lib", model=str(TINY_CONFIG), pretrained="none")
    with Library.open(settings, create=True) as library:
        library.ingest([root])
    make_folder(root / "more", 30, start_seed=100)
    return root, organizer_env(tmp_path / "lib"), tmp_path / "lib"


def test_disk_full_while_writing_the_database(ingested):
    root, env, lib = ingested
    before = _status(env)
    # Above the 32 KB shared-memory file, well below the ~100 KB of write-ahead log that
    # 30 images in batches of 4 need: the disk "fills up" in the middle of the run.
    limit = 48 * 1024
    with BATTERY.fault():
        small_batches = {**env, "ORGANIZER_BATCH_SIZE": "4"}
        result = run_organizer(["ingest", root], small_batches, preexec_fn=_limit_file_size(limit))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "disk is full" in result.stderr and "Traceback" not in result.stderr
        assert (
            len(result.stderr.strip().splitlines()) <= 2
        )  # the random-weights warning + the error
        after = _status(env)
        # nothing committed before was lost; batches committed before the disk filled stay
        assert before["images"]["ok"] <= after["images"]["ok"] <= 36
        result = run_organizer(["ingest", root, "--json"], env)  # space is back: it finishes
        summary = json.loads(result.stdout)
        assert summary["new"] == 36 - after["images"]["ok"] and summary["failed"] == 0
        assert _status(env)["images"] == {"ok": 36, "failed": 0, "missing": 0}
        assert_consistent(lib, BATTERY)


def test_disk_full_while_writing_the_index(ingested, monkeypatch):
    """The index file cannot be written: a warning, the database is complete, and the index
    is rebuilt on next use."""
    root, env, lib = ingested
    from organizer.config import Settings
    from organizer.library import Library

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("organizer.vectors.cache.write_index", full)  # a rebuild's
    monkeypatch.setattr("organizer.vectors.grown.write_bytes_atomic", full)  # an update's
    with BATTERY.fault():
        settings = Settings(library=lib, model=str(TINY_CONFIG), pretrained="none")
        with Library.open(settings) as library:
            summary = library.ingest([root])
        assert any("could not be saved (No space left on device)" in p for p in summary.problems)
        monkeypatch.undo()
        assert _status(env)["images"]["ok"] == 36
        assert_consistent(lib, BATTERY)


def test_read_only_library_is_a_clear_error_at_start(shared_tmp):
    root = shared_tmp / "photos"
    make_folder(root, 3)
    lib = shared_tmp / "lib"
    env = organizer_env(lib, HOME=str(shared_tmp), ORGANIZER_WORKERS="0")
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o755)
    assert run_organizer(["ingest", root], env, user="nobody").returncode == 0
    lib.chmod(0o500)  # the owner (nobody) may read but not write
    with BATTERY.fault():
        make_folder(root, 1, start_seed=50)
        for path in root.rglob("*"):
            path.chmod(path.stat().st_mode | 0o755)
        result = run_organizer(["ingest", root], env, user="nobody")
        assert result.returncode == 1
        assert "read-only" in result.stderr and "Traceback" not in result.stderr
    lib.chmod(0o700)


def _ingest_running(library) -> bool:
    """Whether an ingest has started (it records its run right after taking the lock)."""
    from organizer.config import Settings
    from organizer.library import Library

    try:
        with Library.open(Settings(library=library)) as lib, lib.engine.connect() as conn:
            return bool(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM ingest_runs WHERE status = 'running'"
                ).scalar()
            )
    except Exception:  # not created yet
        return False


@pytest.mark.both_backends
def test_second_ingest_is_refused_and_readers_work(tmp_path, library):
    root = tmp_path / "photos"
    make_folder(root, 80)
    lib = library
    env = organizer_env(lib, ORGANIZER_BATCH_SIZE="2")
    first = subprocess.Popen(
        [sys.executable, "-m", "organizer", "ingest", str(root), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with BATTERY.fault():
        deadline = time.time() + 120
        while time.time() < deadline and not _ingest_running(lib):
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # held mid-run, however fast it would finish
        try:
            second = run_organizer(["ingest", root], env)
            assert second.returncode == 1
            assert f"library is busy: ingest running (pid {first.pid}" in second.stderr
            assert "Traceback" not in second.stderr
            reader = run_organizer(["status", "--json"], env)  # never blocked by the writer
            assert reader.returncode == 0, reader.stderr
        finally:
            first.send_signal(signal.SIGCONT)
        waiting = run_organizer(["ingest", root, "--wait", "--json"], env)  # queues behind it
        assert waiting.returncode == 0 and json.loads(waiting.stdout)["unchanged"] == 80
        first.communicate(timeout=300)
        assert first.returncode == 0
        assert_consistent(lib, BATTERY)


def test_a_malicious_checkpoint_is_never_unpickled(tmp_path):
    """Checkpoints are loaded weights-only: a pickle that would run code is refused."""
    marker = tmp_path / "code-was-executed"
    payload = tmp_path / "evil.pt"
    code = (
        "import os, pickle, sys\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        f"        return (os.system, ('touch {marker}',))\n"
        "pickle.dump({'state_dict': Evil()}, open(sys.argv[1], 'wb'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(payload)], check=True)
    root = tmp_path / "photos"
    make_folder(root, 2)
    env = organizer_env(tmp_path / "lib", ORGANIZER_PRETRAINED=str(payload))
    with BATTERY.fault():
        result = run_organizer(["ingest", root], env)
        assert result.returncode == 1 and "cannot load" in result.stderr
        assert not marker.exists()
        assert "Traceback" not in result.stderr


def test_library_files_are_private(ingested):
    _, _, lib = ingested
    from organizer.config import Settings
    from organizer.library import Library

    with Library.open(Settings(library=lib)) as library:
        library.cluster(2, names=False)
    with BATTERY.fault():
        assert stat.S_IMODE(lib.stat().st_mode) & 0o077 == 0
        for path in lib.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path.name


def test_a_corrupt_database_is_a_clear_error(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "library.db").write_bytes(b"this is not a database" * 100)
    with BATTERY.fault():
        result = run_organizer(["status"], organizer_env(lib))
        assert result.returncode == 1 and "damaged" in result.stderr
        assert "Traceback" not in result.stderr


def test_model_config_is_checked_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    root = tmp_path / "photos"
    make_folder(root, 2)
    with BATTERY.fault():
        result = run_organizer(
            ["ingest", root], organizer_env(tmp_path / "lib", ORGANIZER_MODEL=str(bad))
        )
        assert result.returncode == 1 and "not valid JSON" in result.stderr
        assert TINY_CONFIG.exists() and os.path.isdir(tmp_path / "lib")
