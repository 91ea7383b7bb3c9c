"""kill -9 at random and at named moments: a re-run completes, embeds nothing twice, loses
nothing committed, and the index agrees with the database."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect

from organizer.choices import is_url
from organizer.config import Settings
from organizer.errors import LibraryError
from organizer.library import Library
from organizer.store import queries as q
from organizer.store.db import create_engine_for
from tests.battery import BATTERY
from tests.fakes import TINY_CONFIG, FakeEmbedder, make_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_MODULE = "tests.reliability.crash_ingest"  # run with -m from the repository root
N_IMAGES = 24
RANDOM_KILLS = 30

pytestmark = [pytest.mark.slow, pytest.mark.both_backends]


@pytest.fixture(scope="module")
def crash_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "photos"
    make_folder(root, N_IMAGES)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, crash_photos) -> dict[bytes, np.ndarray]:
    """Vectors of a clean, uninterrupted run."""
    fake = FakeEmbedder()
    lib_dir = tmp_path_factory.mktemp("clean") / "lib"
    with Library.open(
        Settings(library=lib_dir), create=True, embedder_loader=lambda s, t: fake
    ) as lib:
        lib.ingest([crash_photos])
        return _state(lib)


def _state(lib) -> dict[bytes, np.ndarray]:
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
        paths = dict(conn.execute(q.select(q.images.c.id, q.images.c.relpath)).all())
    return {paths[i]: v for i, v in zip(ids.tolist(), vecs, strict=True)}


def _tables(library: Path | str) -> set[str]:
    """The tables of a library's database, without opening (and so migrating) it."""
    engine = create_engine_for(library if is_url(library) else Path(library) / "library.db")
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _run_script(lib_dir: Path | str, root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", SCRIPT_MODULE, str(lib_dir), str(root), *extra],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _recover_and_check(lib_dir: Path | str, root: Path, reference: dict) -> None:
    """Re-run to completion and assert the library equals a clean run's."""
    committed_before = {}
    with contextlib.suppress(LibraryError), Library.open(Settings(library=lib_dir)) as lib:
        if lib.model() is not None:
            committed_before = _state(lib)
    fake = FakeEmbedder()
    with Library.open(
        Settings(library=lib_dir), create=True, embedder_loader=lambda s, t: fake
    ) as lib:
        summary = lib.ingest([root])
        state = _state(lib)
        # nothing committed was lost or redone; everything else was done once
        assert fake.images_embedded == N_IMAGES - len(committed_before)
        assert summary.new == N_IMAGES - len(committed_before)
        BATTERY.mismatch(set(state) == set(reference), "re-run and clean run hold other files")
        for path, vec in state.items():
            BATTERY.mismatch(
                np.allclose(vec, reference[path], atol=1e-6), f"vector of {path!r} differs"
            )
        with lib.engine.connect() as conn:
            assert q.status_counts(conn) == {"ok": N_IMAGES, "failed": 0, "missing": 0}
        index = lib.vectors()
        with lib.engine.connect() as conn:
            model = q.library_model(conn)
            ids, _ = q.ok_vectors(conn, model.id, model.dim)
        BATTERY.mismatch(sorted(index.ids().tolist()) == ids.tolist(), "index ids != database")
        BATTERY.mismatch(lib.status().index.in_sync, "index file not in sync")


@pytest.mark.parametrize("seed", range(RANDOM_KILLS))
def test_kill_at_random_moment(seed, crash_photos, reference, library):
    rng = random.Random(seed)
    lib_dir = library
    with BATTERY.fault():
        proc = _run_script(lib_dir, crash_photos, "--slow", "0.05")
        time.sleep(rng.uniform(0.1, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        _recover_and_check(lib_dir, crash_photos, reference)


@pytest.mark.parametrize("commit", [1, 2, 4, 7])
def test_kill_right_after_a_batch_commit(commit, crash_photos, reference, library):
    lib_dir = library
    with BATTERY.fault():
        proc = _run_script(lib_dir, crash_photos, "--die-after-commit", str(commit))
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        _recover_and_check(lib_dir, crash_photos, reference)


def test_kill_during_the_index_write(crash_photos, reference, library):
    lib_dir = library
    with BATTERY.fault():
        proc = _run_script(lib_dir, crash_photos, "--die-in-index-write")
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        with Library.open(Settings(library=lib_dir)) as lib:
            assert not lib.status().index.in_sync  # the torn file is detected, never trusted
        _recover_and_check(lib_dir, crash_photos, reference)


def test_kill_during_a_schema_migration(crash_photos, reference, library):
    """kill -9 after the migration's DDL, before its commit: the next open completes it."""
    lib_dir = library
    with BATTERY.fault():
        proc = _run_script(lib_dir, crash_photos, "--die-in-migration")
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        assert "images" not in _tables(lib_dir)  # nothing half-made was committed
        _recover_and_check(lib_dir, crash_photos, reference)


def test_kill_the_real_cli(tmp_path, library):
    """The real `organizer ingest` with the tiny open_clip model, killed mid-run."""
    root = tmp_path / "photos"
    make_folder(root, 40)
    lib_dir = library
    env = {
        **os.environ,
        "ORGANIZER_LIBRARY": str(lib_dir),
        "ORGANIZER_MODEL": str(TINY_CONFIG),
        "ORGANIZER_PRETRAINED": "none",
        "ORGANIZER_BATCH_SIZE": "2",
    }
    cmd = [sys.executable, "-m", "organizer", "ingest", str(root), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            with Library.open(Settings(library=lib_dir)) as lib:
                committed = sum(lib.status().images.values())
        except Exception:
            continue
        if committed >= 4:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    result = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with Library.open(Settings(library=lib_dir)) as lib:
        st = lib.status()
        assert st.images == {"ok": 40, "failed": 0, "missing": 0}
        assert st.index.in_sync and st.index.count == 40
