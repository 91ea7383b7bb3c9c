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

from organizer.embed import ModelSpec
from organizer.embed.onnx import cache_root, write_atomic
from organizer.imaging import PreprocessSpec

_FILE = "inputs.json"


def _key(spec: ModelSpec) -> str:
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    identity = [spec.name, spec.pretrained, spec.config_json, version]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _entries() -> dict:
    try:
        data = json.loads((cache_root() / _FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(spec: ModelSpec) -> PreprocessSpec | None:
    """The input ``spec``'s model had when it was last loaded here, if known."""
    entry = _entries().get(_key(spec))
    try:
        return PreprocessSpec.from_dict(entry) if isinstance(entry, dict) else None
    except (TypeError, ValueError):
        return None


def remember(spec: ModelSpec, preprocess: PreprocessSpec) -> None:
    """Keep ``preprocess`` for ``spec`` (best effort: a cache that cannot be written is
    only slower next time)."""
    key, value = _key(spec), asdict(preprocess)
    entries = _entries()
    if entries.get(key) == json.loads(json.dumps(value)):
        return
    entries[key] = value
    with contextlib.suppress(OSError):
        cache_root().mkdir(parents=True, exist_ok=True)
        write_atomic(cache_root() / _FILE, json.dumps(entries))
