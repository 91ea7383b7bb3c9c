"""Shared fixtures: a temporary library, the tiny open_clip config, generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from organizer.config import Settings
from organizer.library import Library
from tests.fakes import TINY_CONFIG, FakeEmbedder, make_folder
from tests.pg import PgServer
from tests.s3 import moto_server, s3, s3_env, s3_proxy  # noqa: F401 - fixtures for every test

REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "openimages-100"


@pytest.fixture(scope="session")
def _model_cache(tmp_path_factory) -> Path:
    """Models exported for ONNX Runtime, shared by the session's tests (an export takes
    seconds; tests of the export itself use their own folder)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session", autouse=True)
def _session_caches(_model_cache, tmp_path_factory):
    """The caches as each test sets them (below), for module and session fixtures too: they
    run before a test's own settings, and would otherwise write to the developer's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORGANIZER_MODEL_CACHE", str(_model_cache))
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(autouse=True)
def _own_remembered_inputs(monkeypatch, tmp_path):
    """Each test its own remembered model inputs: a new library then loads its model before
    reading files unless the test remembers an input itself (tests/test_ingest.py does)."""
    from organizer.embed import remembered

    monkeypatch.setattr(remembered, "_file", lambda: tmp_path / "remembered-inputs.json")
    monkeypatch.setattr(remembered, "_weights_file", lambda: tmp_path / "remembered-weights.json")


@pytest.fixture(autouse=True)
def _no_network_no_env(monkeypatch, tmp_path, _model_cache):
    """No test reaches the network, and no ORGANIZER_* variable of the developer leaks in;
    caches (a catalogue's index, Hugging Face's) stay in the test's own folder."""
    for key in list(os.environ):
        if key.startswith("ORGANIZER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(_model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ORGANIZER_OFFLINE", "1")


# -- the two homes of a library: a folder (SQLite) and a PostgreSQL server ------------------

BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    both = metafunc.definition.get_closest_marker("both_backends")
    if both and not metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request) -> str:
    """Where the test's library lives: "sqlite" unless the test runs on both."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the session (unix socket only)."""
    try:
        server = PgServer()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}: CI must run the PostgreSQL tests (.ci/run installs it)")
        pytest.skip(f"{exc}: install Debian's postgresql to run these tests")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def library(backend, tmp_path, request) -> Path | str:
    """The test's library: a folder, or a fresh database on the session's server."""
    if backend == "postgresql":
        return request.getfixturevalue("pg_server").new_database()
    return tmp_path / "lib"


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    make_folder(root, 6)
    return root


@pytest.fixture
def settings(library) -> Settings:
    return Settings(library=library, model=str(TINY_CONFIG), pretrained="none")


@pytest.fixture
def fake() -> FakeEmbedder:
    """The numpy FakeEmbedder behind ``fake_lib``; it counts its calls."""
    return FakeEmbedder()


@pytest.fixture
def fake_lib(settings, fake):
    """A library whose embedder is the ``fake`` fixture (numpy, no torch)."""
    fake_settings = Settings(library=settings.library)
    lib = Library.open(fake_settings, create=True, embedder_loader=lambda spec, s: fake)
    yield lib
    lib.close()


@pytest.fixture
def cli(library):
    """Run the organizer CLI in-process with the tiny model and the test's library."""
    from organizer.cli import app

    runner = CliRunner()
    env = {
        "ORGANIZER_LIBRARY": str(library),
        "ORGANIZER_MODEL": str(TINY_CONFIG),
        "ORGANIZER_PRETRAINED": "none",
        "ORGANIZER_OFFLINE": "1",
    }

    def run(*args: str, **extra_env: str):
        return runner.invoke(app, [str(a) for a in args], env={**env, **extra_env})

    return run


@pytest.fixture
def real_photos() -> Path:
    if not REAL_PHOTOS.is_dir():
        pytest.skip(f"real photos not available at {REAL_PHOTOS}")
    return REAL_PHOTOS


def pytest_terminal_summary(terminalreporter):
    from tests.battery import BATTERY

    line = BATTERY.line()
    if line:
        terminalreporter.write_line(line)
