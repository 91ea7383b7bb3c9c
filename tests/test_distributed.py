"""The Ray engine of ingest on a local Ray cluster (2 CPUs, small object store, no
dashboard): the same rows, statuses, failure reasons, hashes and vectors as the local
engine; a re-run embeds nothing; a killed actor or a file that crashes the decoder loses
nothing and doubles nothing."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from organizer.choices import JpegDecode, Runtime
from organizer.config import Settings
from organizer.ingest import IngestOptions, RayOptions
from organizer.ingest import run as run_module
from organizer.library import Library
from organizer.store import queries as q
from tests.fakes import TINY_CONFIG, make_folder, photo_exif, picture, slow_prepare, write_picture

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # as organizer's own ray.init
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray.init(
        num_cpus=2,
        object_store_memory=150 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        # the workers import the decoders tests hand in (tests.fakes), and read the test
        # buckets with the fake credentials of tests/s3.py (each worker has its own)
        runtime_env={
            "env_vars": {
                "PYTHONPATH": str(REPO),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        },
    )
    yield
    ray.shutdown()


def _settings(library: Path) -> Settings:
    return Settings(
        library=library, model=str(TINY_CONFIG), pretrained="none", precision="fp32", workers=1
    )


def _ingest(library: Path, paths, engine: str, **kw):
    options = IngestOptions(ray=RayOptions(workers=1) if engine == "ray" else None)
    with Library.open(_settings(library), create=True) as lib:
        return lib.ingest([str(p) for p in paths], options=options, **kw)


def _rows(library: Path) -> dict[str, tuple]:
    """Every image by path: status, failure reason, hash, size, dimensions, and its vector."""
    with Library.open(_settings(library)) as lib, lib.engine.connect() as conn:
        model = q.library_model(conn)
        rows = conn.execute(
            q.select(
                q.images.c.id,
                q.images.c.relpath,
                q.images.c.status,
                q.images.c.failure_reason,
                q.images.c.content_hash,
                q.images.c.size,
                q.images.c.width,
                q.images.c.height,
            )
        ).all()
        out = {}
        for r in rows:
            vector = q.get_vector(conn, r.id, model.id)
            out[r.relpath.decode()] = (
                r.status,
                r.failure_reason,
                r.content_hash,
                r.size,
                r.width,
                r.height,
                vector,
            )
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for path in a:
        assert a[path][:-1] == b[path][:-1], path
        va, vb = a[path][-1], b[path][-1]
        assert (va is None) == (vb is None), path
        if va is not None:
            assert float(va @ vb) >= 0.99999, path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """200 files: 180 distinct pictures, 8 broken ones, 12 copies under other names."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    paths = make_folder(root, 180)
    for i in range(8):
        (root / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(50 + i))
    (root / "copies").mkdir()
    for i in range(12):
        shutil.copy(paths[i * 7], root / "copies" / f"copy{i}.jpg")
    return root


def test_ray_and_local_engines_write_the_same_library(photos, tmp_path):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    a = _ingest(local, [photos], "local")
    b = _ingest(distributed, [photos], "ray")
    assert b.engine == "ray" and a.engine == "local"
    assert (a.new, a.failed, a.embedded, a.reused) == (b.new, b.failed, b.embedded, b.reused)
    assert (b.new, b.failed, b.embedded, b.reused) == (192, 8, 180, 12)
    _same(_rows(local), _rows(distributed))

    # Renames, new files, a deletion: moves and copies behave the same; then nothing is left.
    for name in ("img000.jpg", "img001.jpg", "sub/img002.jpg"):
        (photos / name).rename(photos / f"renamed-{Path(name).name}")
    make_folder(photos / "new", 3, start_seed=500)
    (photos / "img003.jpg").unlink()
    try:
        a = _ingest(local, [photos], "local")
        b = _ingest(distributed, [photos], "ray")
        assert (a.new, a.moved, a.missing, a.embedded) == (b.new, b.moved, b.missing, b.embedded)
        assert (b.moved, b.new, b.missing, b.embedded) == (3, 3, 1, 3)
        _same(_rows(local), _rows(distributed))
        again = _ingest(distributed, [photos], "ray")
        assert (again.embedded, again.new, again.unchanged) == (0, 0, b.unchanged + b.new + b.moved)
    finally:
        for name in ("img000.jpg", "img001.jpg", "sub/img002.jpg"):
            (photos / f"renamed-{Path(name).name}").rename(photos / name)
        shutil.rmtree(photos / "new")
        write_picture(photos / "img003.jpg", 3)


@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_both_engines_embed_with_the_same_plan_and_answer_alike(tmp_path, precision):
    """The same photos ingested by each engine on this machine: the same runtime (OpenVINO
    bf16 on a CPU with bf16 units, ONNX Runtime fp32 on one without; int8 in ONNX Runtime),
    so the same vectors and the same answers to `similar`."""
    import numpy as np

    from organizer.embed.runtime import Capabilities, plan

    root = tmp_path / "photos"
    make_folder(root, 40)  # more than a batch: the engines batch them differently
    summaries, libraries = {}, {}
    for engine in ("local", "ray"):
        libraries[engine] = tmp_path / engine
        settings = Settings(
            library=libraries[engine],
            model=str(TINY_CONFIG),
            pretrained="none",
            precision=precision,
            workers=1,
        )
        options = IngestOptions(ray=RayOptions(workers=1) if engine == "ray" else None)
        with Library.open(settings, create=True) as lib:
            summaries[engine] = lib.ingest([str(root)], options=options)
    local, on_ray = summaries["local"], summaries["ray"]
    want = plan("auto", precision, "auto", Capabilities.probe())
    runs = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}[want.runtime]
    assert (local.runtime, local.precision) == (runs, str(want.precision))
    assert (on_ray.runtime, on_ray.precision, on_ray.embedded) == (runs, local.precision, 40)

    vectors = {engine: _rows(library) for engine, library in libraries.items()}
    _same(vectors["local"], vectors["ray"])
    # One runtime, one precision: the very same numbers, though each engine batches its own
    # way (the libraries differed in the fourth decimal when Ray's actors ran torch).
    for path, row in vectors["local"].items():
        assert np.array_equal(row[-1], vectors["ray"][path][-1]), path
    for photo in ("img000.jpg", "sub/img005.jpg", "img019.jpg"):
        answers = {}
        for engine, library in libraries.items():
            with Library.open(Settings(library=library)) as lib:
                found = lib.similar(root / photo, limit=10).results
            answers[engine] = [(r.relpath, r.score) for r in found]
        assert len(answers["local"]) == 10
        assert answers["local"] == answers["ray"], photo


def _actor_pids() -> list[int]:
    """Processes of Ray's embedding actors (their title names the class)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if b"_Embedder" in fh.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_actors_that_decode_jpegs_on_their_device_write_what_the_cpu_path_does(photos, tmp_path):
    """ORGANIZER_JPEG_DECODE=device on CPU actors runs the GPU path's code (torchvision's
    decoder): the decode tasks leave JPEGs encoded, the actors decode, turn and resize them;
    a PNG and a CMYK JPEG are decoded by the tasks; the broken files fail as locally."""
    root = tmp_path / "mixed"
    shutil.copytree(photos, root)
    picture(1, (90, 60)).save(root / "flat.png")
    picture(2, (90, 60)).convert("CMYK").save(root / "cmyk.jpg")
    exif = photo_exif()
    exif[0x0112] = 6  # shown turned a quarter
    picture(3, (120, 80)).save(root / "turned.jpg", exif=exif.tobytes())
    reference = tmp_path / "local"
    torch = {"runtime": Runtime.TORCH}  # the device decoder goes with torch's model
    with Library.open(replace(_settings(reference), **torch), create=True) as lib:
        lib.ingest([str(root)])
    library = tmp_path / "ray"
    options = IngestOptions(ray=RayOptions(workers=1), batch_size=8)
    settings = replace(_settings(library), jpeg_decode=JpegDecode.DEVICE, **torch)
    with Library.open(settings, create=True) as lib:
        summary = lib.ingest([str(root)], options=options)
    assert (summary.new, summary.failed) == (195, 8)
    a, b = _rows(reference), _rows(library)
    assert a.keys() == b.keys()
    for path in a:
        assert a[path][:-1] == b[path][:-1], path  # status, reason, hash, size, upright size
        va, vb = a[path][-1], b[path][-1]
        assert (va is None) == (vb is None), path
        if va is not None:
            assert float(va @ vb) >= 0.999, path
    assert b["turned.jpg"][4:6] == (80, 120)
    # the actors did decode: their resize (from the whole picture, in floats) is not Pillow's
    same = [p for p in a if a[p][-1] is not None and (a[p][-1] == b[p][-1]).all()]
    assert len(same) < len(a) // 2, same


def test_a_killed_actor_loses_nothing_and_doubles_nothing(photos, tmp_path, monkeypatch):
    from organizer.ingest import distributed

    monkeypatch.setattr(distributed, "DECODE", slow_prepare)
    # A write every model batch (not up to 256 files), so that progress shows the actor at
    # work even when its results come in a burst.
    monkeypatch.setattr(run_module, "RAY_WRITE_ROWS", 32)
    reference = tmp_path / "local"
    _ingest(reference, [photos], "local")
    library = tmp_path / "ray"
    seen = []
    result: dict = {}

    def run() -> None:
        try:
            result["summary"] = _ingest(library, [photos], "ray", progress=seen.append)
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not (seen and seen[-1].done >= 40 and _actor_pids()):
        assert time.monotonic() < deadline and thread.is_alive(), result
        time.sleep(0.1)
    killed, at = _actor_pids(), seen[-1].done
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    assert killed and at < 150  # it was killed mid-run
    summary = result["summary"]
    assert (summary.new, summary.failed) == (192, 8)
    _same(_rows(reference), _rows(library))


def test_a_killed_driver_keeps_what_it_committed(photos, tmp_path):
    """kill -9 of the process that writes: the committed batches stay, and a re-run embeds
    only the rest (nothing twice), ending with the local engine's library."""
    import sqlite3
    import subprocess
    import sys

    reference = tmp_path / "local"
    _ingest(reference, [photos], "local")
    library = tmp_path / "ray"
    address = ray.get_runtime_context().gcs_address
    env = {
        **os.environ,
        "ORGANIZER_MODEL": str(TINY_CONFIG),
        "ORGANIZER_PRETRAINED": "none",
        "ORGANIZER_PRECISION": "fp32",
        "ORGANIZER_BATCH_SIZE": "2",
        "PYTHONPATH": str(REPO),
    }
    # The CLI, with decoding 50 ms slower a file: results arrive over seconds, and the driver
    # writes what came at least once a second (on Ray it writes up to 256 files at once).
    slow = (
        "import sys; from organizer.ingest import distributed; from tests.fakes import "
        "slow_prepare; distributed.DECODE = slow_prepare; from organizer.cli import main; "
        "sys.argv[0] = 'organizer'; main()"
    )
    cmd = [sys.executable, "-c", slow, "-L", str(library), "ingest", str(photos)]
    driver = subprocess.Popen(
        [*cmd, "--engine", "ray", "--ray-address", address, "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    committed = 0
    deadline = time.monotonic() + 120
    while committed < 10:
        assert driver.poll() is None and time.monotonic() < deadline, "it ended too soon"
        try:
            with sqlite3.connect(f"file:{library / 'library.db'}?mode=ro", uri=True) as db:
                committed = db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    with sqlite3.connect(f"file:{library / 'library.db'}?mode=ro", uri=True) as db:
        kept = db.execute(
            "SELECT count(DISTINCT i.content_hash) FROM images i "
            "JOIN embeddings e ON e.image_id = i.id"
        ).fetchone()[0]
    assert 0 < kept < 180
    after = _ingest(library, [photos], "ray")
    assert after.embedded == 180 - kept  # the rest, and nothing twice
    _same(_rows(reference), _rows(library))


def test_a_file_that_crashes_the_decoder_is_recorded_failed(tmp_path, monkeypatch):
    from organizer.ingest import distributed
    from tests.fakes import misbehaving_prepare

    monkeypatch.setattr(distributed, "DECODE", misbehaving_prepare)
    root = tmp_path / "photos"
    make_folder(root, 20)
    write_picture(root / "crash-me.jpg", 99)
    summary = _ingest(tmp_path / "lib", [root], "ray")
    assert (summary.new, summary.failed, summary.embedded) == (20, 1, 20)
    rows = _rows(tmp_path / "lib")
    assert rows["crash-me.jpg"][:2] == ("failed", "the decoder crashed on this file")
    assert all(r[0] == "ok" for p, r in rows.items() if p != "crash-me.jpg")


def test_a_bucket_needs_no_shared_mount_on_ray(s3, tmp_path):
    pytest.importorskip("s3fs")
    paths = make_folder(tmp_path / "up", 20)
    (tmp_path / "up" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(40))
    shutil.copy(paths[3], tmp_path / "up" / "copy.jpg")
    s3.upload_folder(tmp_path / "up", "p")
    done = {}
    for engine in ("local", "ray"):
        settings = replace(_settings(tmp_path / engine), endpoint_url=s3.endpoint)
        options = IngestOptions(ray=RayOptions(workers=1) if engine == "ray" else None)
        with Library.open(settings, create=True) as lib:
            done[engine] = lib.ingest([s3.url("p")], options=options)
    assert done["ray"].engine == "ray"
    assert (done["ray"].new, done["ray"].failed, done["ray"].reused) == (21, 1, 1)
    _same(_rows(tmp_path / "local"), _rows(tmp_path / "ray"))


def test_every_worker_must_see_the_photos(tmp_path):
    from organizer.errors import LibraryError
    from organizer.ingest import distributed
    from organizer.pipeline import Job

    with pytest.raises(LibraryError) as caught:
        distributed.check_paths([str(tmp_path), str(tmp_path / "not-here")])
    message = str(caught.value)
    assert "Ray worker" in message and str(tmp_path / "not-here") in message
    assert "same path" in message and "\n" not in message
    # A root that is there but holds other files (an empty mount point): the sample says so
    picture = write_picture(tmp_path / "a.jpg", 1)
    st = picture.stat()
    from organizer.embed.runtime import Capabilities

    found = distributed.check_nodes(
        [str(tmp_path)], [Job(0, bytes(picture), st.st_size, st.st_mtime_ns)]
    )
    assert found == Capabilities.probe(gpu=False)  # one machine: its own
    for job in (
        Job(0, bytes(tmp_path / "gone.jpg"), 1, 1),
        Job(0, bytes(picture), st.st_size + 1, st.st_mtime_ns),
    ):
        with pytest.raises(LibraryError, match="same path"):
            distributed.check_nodes([str(tmp_path)], [job])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus_per_worker": 1.0}, "GPUs"),
        ({"workers": 2}, "use --workers 1"),
        ({"precision": "fp16"}, "fp16 is slow"),
        ({"device": "cuda"}, "give --gpus-per-worker"),
    ],
)
def test_what_cannot_run_is_refused_before_anything_is_written(tmp_path, options, message):
    """Ray Data would wait forever for actors it cannot place; a CPU cannot run fp16."""
    from dataclasses import replace

    from organizer.errors import OrganizerError

    root = tmp_path / "photos"
    make_folder(root, 2)
    settings = _settings(tmp_path / "lib")  # device and precision come from the settings
    settings = replace(
        settings, **{k: v for k, v in options.items() if k in ("precision", "device")}
    )
    options = {k: v for k, v in options.items() if k not in ("precision", "device")}
    started = time.monotonic()
    with (
        Library.open(settings, create=True) as lib,
        pytest.raises(OrganizerError, match=message),
    ):
        lib.ingest([str(root)], options=IngestOptions(ray=RayOptions(**options)))
    assert time.monotonic() - started < 60
    with Library.open(_settings(tmp_path / "lib")) as lib:
        assert lib.model() is None and lib.roots() == []  # nothing recorded


@pytest.mark.parametrize("address", ["127.0.0.1:1", "nowhere", "ray://127.0.0.1:1"])
def test_an_unreachable_cluster_is_one_line_in_seconds(address):
    from organizer.errors import LibraryError
    from organizer.ingest import distributed

    started = time.monotonic()
    with pytest.raises(LibraryError) as caught:
        distributed._check_reachable(address)
    assert time.monotonic() - started < 10 and "\n" not in str(caught.value)


def test_an_unreachable_cluster_makes_no_library_and_records_no_run(tmp_path):
    import json

    from typer.testing import CliRunner

    from organizer.cli import app

    root, library = tmp_path / "photos", tmp_path / "lib"
    make_folder(root, 2)
    env = {"ORGANIZER_MODEL": str(TINY_CONFIG), "ORGANIZER_PRETRAINED": "none"}

    def organizer(*args: str):
        return CliRunner().invoke(app, ["-L", str(library), *args], env=env)

    on_ray = ["ingest", str(root), "--engine", "ray", "--ray-address", "ray://127.0.0.1:1"]
    result = organizer(*on_ray)
    assert result.exit_code == 1, result.output
    assert "cannot reach the Ray cluster at ray://127.0.0.1:1" in result.stderr
    assert not library.exists()
    assert organizer("ingest", str(root)).exit_code == 0
    before = json.loads(organizer("status", "--json").stdout)["last_ingest"]
    make_folder(root, 2, start_seed=10)  # work to do: the run would reach Ray
    assert organizer(*on_ray).exit_code == 1
    assert json.loads(organizer("status", "--json").stdout)["last_ingest"] == before


def test_a_changed_checkpoint_is_refused_on_ray_too(tmp_path):
    import open_clip
    import torch
    from safetensors.torch import save_file

    from organizer.errors import ModelError

    open_clip.add_model_config(TINY_CONFIG)
    checkpoint = tmp_path / "tiny.safetensors"
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = open_clip.create_model("tiny-clip")
        if seed == 1:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    root = tmp_path / "photos"
    make_folder(root, 2)
    settings = Settings(
        library=tmp_path / "lib", model=str(TINY_CONFIG), pretrained=str(checkpoint), workers=1
    )
    with Library.open(settings, create=True) as lib:
        lib.ingest([str(root)])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    make_folder(root, 2, start_seed=10)
    with (
        Library.open(Settings(library=tmp_path / "lib", workers=1)) as lib,
        pytest.raises(ModelError, match="changed since this library was built"),
    ):
        lib.ingest([str(root)], options=IngestOptions(ray=RayOptions()))


def test_the_command_line(tmp_path):
    """`--engine ray` in the summary; Ray's options without it are a usage error."""
    import json

    from typer.testing import CliRunner

    from organizer.cli import app

    root = tmp_path / "photos"
    make_folder(root, 4)
    env = {"ORGANIZER_MODEL": str(TINY_CONFIG), "ORGANIZER_PRETRAINED": "none"}
    args = ["-L", str(tmp_path / "lib"), "ingest", str(root)]
    result = CliRunner().invoke(app, [*args, "--engine", "ray", "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["engine"] == "ray" and summary["embedded"] == 4
    result = CliRunner().invoke(app, [*args, "--ray-address", "auto"], env=env)
    assert result.exit_code == 2 and "go with --engine ray" in result.stderr
    result = CliRunner().invoke(app, [*args, "--engine", "ray", "--workers", "0"], env=env)
    assert result.exit_code == 2 and "1 or more" in result.stderr
