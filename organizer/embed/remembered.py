"""The input each model wants, remembered per user from its last load.

A new library learns its model's input (size, normalisation) only once the model is built:
seconds of imports and initialisation, more on a GPU. Remembered, it lets a first ingest
decode photos while the model loads. An entry is keyed by what decides the input (the
model's name, weights tag, config and open_clip's version); one that is stale anyway costs
ingest a second start of its decoding, never a wrong vector: ingest compares it with the
loaded model's before it writes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from pathlib import Path

from organizer.embed import ModelSpec
from organizer.embed.onnx import cache_root, write_atomic
from organizer.imaging import PreprocessSpec

_FILE = "inputs.json"
_RESIZE_MODES = ("shortest", "longest", "squash")
_INTERPOLATIONS = ("bicubic", "bilinear")


def _cache_file() -> Path:
    return cache_root() / _FILE


_file = _cache_file  # tests give each test its own


def _key(spec: ModelSpec) -> str:
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    identity = [spec.name, spec.pretrained, spec.config_json, version]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _entries() -> dict:
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(spec: ModelSpec) -> PreprocessSpec | None:
    """The input ``spec``'s model had when it was last loaded here, if known."""
    entry = _entries().get(_key(spec))
    try:
        found = PreprocessSpec.from_dict(entry) if isinstance(entry, dict) else None
    except (TypeError, ValueError):
        return None
    return found if found is not None and _plausible(found) else None


def _plausible(p: PreprocessSpec) -> bool:
    """A shared or hand-edited cache could hold anything: only a sane input is used."""

    def numbers(values: object, low: float) -> bool:
        return (
            isinstance(values, tuple)
            and len(values) == 3
            and all(isinstance(v, int | float) and low < v < 10 for v in values)
        )

    return (
        isinstance(p.size, tuple)
        and len(p.size) == 2
        and all(isinstance(v, int) and 0 < v <= 4096 for v in p.size)
        and numbers(p.mean, -10)
        and numbers(p.std, 0)
        and p.interpolation in _INTERPOLATIONS
        and p.resize_mode in _RESIZE_MODES
        and isinstance(p.fill_color, int)
    )


def remember(spec: ModelSpec, preprocess: PreprocessSpec) -> None:
    """Keep ``preprocess`` for ``spec`` (best effort: a cache that cannot be written is
    only slower next time)."""
    key, value = _key(spec), asdict(preprocess)
    entries = _entries()
    if entries.get(key) == json.loads(json.dumps(value)):
        return
    entries[key] = value
    with contextlib.suppress(OSError):
        _file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_file(), json.dumps(entries))
