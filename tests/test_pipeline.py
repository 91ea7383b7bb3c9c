"""The parallel decode stage: same vectors as the reference path, crashes and hangs become
recorded failures, Ctrl-C stops everything and leaves a consistent library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from organizer.imaging import PreprocessSpec
from organizer.pipeline import DecodePool, Job, prepare
from tests.fakes import TINY_CONFIG, make_folder, misbehaving_prepare, uneven_prepare, write_picture


def _jobs(paths):
    return [
        Job(i, os.fsencode(p), p.stat().st_size, p.stat().st_mtime_ns) for i, p in enumerate(paths)
    ]


def test_pool_results_equal_in_process_results(tmp_path):
    paths = make_folder(tmp_path / "p", 8)
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    expected = {p.key: p for p in (prepare(j, spec) for j in _jobs(paths))}
    with DecodePool(2, spec) as pool:
        got = {p.key: p for p in pool.results(_jobs(paths))}
    assert set(got) == set(expected)
    for key, p in got.items():
        assert p.content_hash == expected[key].content_hash
        np.testing.assert_array_equal(p.pixels, expected[key].pixels)


def test_crashing_and_hanging_files_become_failures(tmp_path):
    root = tmp_path / "p"
    good = make_folder(root, 4)
    bad = [write_picture(root / "crash.jpg", 90), write_picture(root / "hang.jpg", 91)]
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    started = time.monotonic()
    with DecodePool(2, spec, timeout_s=3, prepare_fn=misbehaving_prepare) as pool:
        results = {os.path.basename(j.path): None for j in _jobs(good + bad)}
        by_key = {j.key: os.path.basename(j.path) for j in _jobs(good + bad)}
        for p in pool.results(_jobs(good + bad)):
            results[by_key[p.key]] = p
    assert time.monotonic() - started < 30
    assert "crashed" in results[b"crash.jpg"].error
    assert "longer than 3 s" in results[b"hang.jpg"].error
    assert all(results[os.path.basename(os.fsencode(p))].error is None for p in good)


def test_a_slow_consumer_does_not_make_finished_files_fail(tmp_path):
    """Results that wait in their pipes while the consumer is busy (ingest waiting for its
    model) are not taken for stuck decoders."""
    paths = make_folder(tmp_path / "p", 6)
    spec = PreprocessSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    got = []
    with DecodePool(2, spec, timeout_s=1, buffer=1, prepare_fn=uneven_prepare) as pool:
        for p in pool.results(_jobs(paths)):
            if not got:
                time.sleep(3)  # the queue fills; a worker finishes and waits past the timeout
            got.append(p)
    assert len(got) == 6 and [p.error for p in got] == [None] * 6


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fast_path_matches_the_reference_path(tmp_path, precision):
    """Draft decoding + our resize in workers + batches vs full decode, open_clip's own
    transform, fp32, one image per forward pass: cosine >= 0.999 for every image."""
    import open_clip
    import torch
    from PIL import Image

    from organizer.config import Settings
    from organizer.library import Library

    root = tmp_path / "big"
    for i in range(6):  # large enough for draft decoding to kick in
        write_picture(root / f"b{i}.jpg", 200 + i)
        Image.open(root / f"b{i}.jpg").resize((1600, 1200)).save(root / f"b{i}.jpg", quality=92)
    settings = Settings(
        library=tmp_path / "lib",
        model=str(TINY_CONFIG),
        pretrained="none",
        precision=precision,
        batch_size=4,
    )
    with Library.open(settings, create=True) as lib:
        lib.ingest([root])
        ids, vecs = _db_vectors(lib)
        names = _names(lib)
    open_clip.add_model_config(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip")
    model.eval()
    cosines = []
    with torch.inference_mode():
        for image_id, vec in zip(ids.tolist(), vecs, strict=True):
            image = Image.open(root / names[image_id]).convert("RGB")
            ref = model.encode_image(preprocess(image).unsqueeze(0)).float()
            ref = torch.nn.functional.normalize(ref, dim=-1)[0].numpy()
            cosines.append(float(ref @ vec))
    assert min(cosines) >= 0.999, cosines


def _db_vectors(lib):
    from organizer.store import queries as q

    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        return q.ok_vectors(conn, model.id, model.dim)


def _names(lib):
    from organizer.store import queries as q

    with lib.engine.connect() as conn:
        return {i: p.decode() for i, p in conn.execute(q.select(q.images.c.id, q.images.c.relpath))}


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if marker.encode() in fh.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_keeps_the_library_consistent(tmp_path):
    root = tmp_path / "photos"
    # Enough files that the run is still going when the interrupt lands on a busy machine
    # (with 60, a poll delayed by a few hundred ms let one run finish before it).
    n = 300
    make_folder(root, n)
    marker = f"ORGANIZER_TEST_MARK={uuid.uuid4()}"
    env = {
        **os.environ,
        "ORGANIZER_LIBRARY": str(tmp_path / "lib"),
        "ORGANIZER_MODEL": str(TINY_CONFIG),
        "ORGANIZER_PRETRAINED": "none",
        "ORGANIZER_BATCH_SIZE": "2",
        "ORGANIZER_WORKERS": "2",
        # No input remembered from other tests' runs: the model loads first and files are
        # written as they are read, so the interrupt lands mid-run (a drain of files read
        # during a load takes milliseconds with this model; tests/test_ingest.py covers it).
        "ORGANIZER_MODEL_CACHE": str(tmp_path / "models"),
        marker.split("=")[0]: marker.split("=")[1],
    }
    cmd = [sys.executable, "-m", "organizer", "ingest", str(root), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "lib" / "library.db"
    deadline = time.time() + 60
    while time.time() < deadline and not (db.exists() and _count_rows(db) >= 4):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    time.sleep(0.5)
    assert _processes_with(marker) == []  # no decode worker outlives the run
    result = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["new"] + _committed_before(summary) == n
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "organizer", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert status["images"]["ok"] == n and status["index"]["in_sync"]


def _committed_before(summary):
    return summary["unchanged"]


def _count_rows(db) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0
