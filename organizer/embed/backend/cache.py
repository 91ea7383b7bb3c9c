"""The model cache: where a model's exported towers live, and how its files are written.

Files live in the per-user cache (``ORGANIZER_MODEL_CACHE`` overrides it), one folder per
model identity (name, config, weights and their hash, and the torch and open_clip versions
that built and exported it): libraries with the same model share them. Each folder has a
lock (one exporter at a time, across processes), files replaced in one rename, and failure
markers (a tower that did not export, or that OpenVINO cannot run) so that later runs do
not try again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from organizer.atomic import replacing
from organizer.filelock import FileLock

if TYPE_CHECKING:
    from organizer.embed import ModelSpec

FORMAT = 2  # bump when the exported graphs or their records change: older folders are ignored
OPENVINO_CACHE = "openvino-cache"  # OpenVINO's compiled towers, beside the files


def cache_root() -> Path:
    """The folder of every model's files (``ORGANIZER_MODEL_CACHE``, else the user's cache)."""
    override = os.environ.get("ORGANIZER_MODEL_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    return platformdirs.user_cache_path("organizer", appauthor=False) / "models"


def package_version(package: str) -> str:
    """The installed version of ``package``, or "?" when it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def model_dir(spec: ModelSpec) -> Path:
    """The folder of ``spec``'s exported towers. Only a spec whose weights are pinned (random,
    or with their hash) may be looked up: a tag's file could change under the same name."""
    identity = {
        "format": FORMAT,
        "name": spec.name,
        "config": spec.config_json,
        "pretrained": spec.pretrained,
        "sha256": spec.weights_sha256,
        # What builds the model and writes the graph. onnxruntime is not here: each open
        # reruns the probe under the installed one.
        "torch": package_version("torch"),
        "open_clip": package_version("open_clip_torch"),
        "timm": package_version("timm"),
        "onnx": package_version("onnx"),
        "onnxscript": package_version("onnxscript"),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)
    return cache_root() / f"{safe}-{key}"


def pinned(spec: ModelSpec) -> bool:
    """Whether ``spec`` names exactly one set of weights without reading them."""
    return spec.is_random or spec.weights_sha256 is not None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One exporter at a time per model folder, across processes (and users: a cache shared
    through ORGANIZER_MODEL_CACHE is locked by others too)."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock", mode=0o666):
        yield


def sweep(folder: Path, older_than_s: float = 3600) -> None:
    """Remove scratch files a killed exporter left (hidden files, but the lock)."""
    for leftover in folder.glob(".*"):
        try:
            if leftover.name != ".lock" and time.time() - leftover.stat().st_mtime > older_than_s:
                leftover.unlink()
        except OSError:
            pass


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (a cache file: readable by all)."""
    with replacing(path, fsync=False) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, 0o644)  # whatever the umask


@contextlib.contextmanager
def scratch(folder: Path, tower: str) -> Iterator[Path]:
    """A temporary file in ``folder``, removed unless it was kept (renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{tower}-", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def export_failure(folder: Path, tower: str) -> Path:
    """The marker of a tower that did not export on this machine (it holds the reason)."""
    return folder / f"{tower}.failed"


def openvino_failure(folder: Path, tower: str, precision: str) -> Path:
    """The marker of a tower that this version of OpenVINO cannot run in ``precision``."""
    return folder / f"{tower}.openvino-{package_version('openvino')}-{precision}.failed"


def read_failure(marker: Path) -> str | None:
    """The reason a failure marker holds, or None: there is none (or it cannot be read)."""
    with contextlib.suppress(OSError):
        return marker.read_text().strip()
    return None


def keep_failure(marker: Path, reason: str) -> None:
    """Write a failure marker, best effort: a read-only cache is only tried again next time."""
    with contextlib.suppress(OSError):
        write_atomic(marker, reason)
