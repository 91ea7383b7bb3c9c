"""Shared fixtures: a temporary library, the tiny open_clip config, generated images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from organizer.config import Settings
from organizer.library import Library
from tests.fakes import TINY_CONFIG, FakeEmbedder, make_folder

REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "openimages-100"


@pytest.fixture(autouse=True)
def _no_network_no_env(monkeypatch, tmp_path):
    """No test reaches the network, and no ORGANIZER_* variable of the developer leaks in."""
    for key in list(os.environ):
        if key.startswith("ORGANIZER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("ORGANIZER_OFFLINE", "1")


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    make_folder(root, 6)
    return root


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(library=tmp_path / "lib", model=str(TINY_CONFIG), pretrained="none")


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
def cli(tmp_path):
    """Run the organizer CLI in-process with the tiny model and a temporary library."""
    from organizer.cli import app

    runner = CliRunner()
    env = {
        "ORGANIZER_LIBRARY": str(tmp_path / "lib"),
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
