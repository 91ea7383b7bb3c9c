"""What a model's last load taught, remembered per user in the model cache.

The input each model wants: a new library learns its model's input (size, normalisation)
only once the model is built: seconds of imports and initialisation, more on a GPU.
Remembered, it lets a first ingest decode photos while the model loads. An entry is keyed by
what decides the input (the model's name, weights tag, config and open_clip's version); one
that is stale anyway costs ingest a second start of its decoding, never a wrong vector:
ingest compares it with the loaded model's before it writes anything.

Where a weights tag's checkpoint is looked for: open_clip's table says it, and reading that
table imports torch. Remembered under the same key, a new library finds (and hashes) the
file its tag names now without torch, and so opens the towers exported from that file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from organizer.embed import ModelSpec, sha256_file
from organizer.embed.backend.cache import cache_root, folder_lock, write_atomic
from organizer.imaging import PreprocessSpec

_FILE = "inputs.json"
_WEIGHTS_FILE = "weights.json"
_RESIZE_MODES = ("shortest", "longest", "squash")
_INTERPOLATIONS = ("bicubic", "bilinear")


def _cache_file() -> Path:
    return cache_root() / _FILE


def _weights_cache_file() -> Path:
    return cache_root() / _WEIGHTS_FILE


_file = _cache_file  # tests give each test its own
_weights_file = _weights_cache_file


def _key(spec: ModelSpec) -> str:
    try:
        version = importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    identity = [spec.name, spec.pretrained, spec.config_json, version]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _entries(file: Path | None = None) -> dict:
    try:
        data = json.loads((file or _file()).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(file: Path, key: str, value: object) -> None:
    """Best effort: a cache that cannot be written is only slower next time. Under the
    cache's lock: two processes keeping two models' entries must not lose one."""
    if _entries(file).get(key) == json.loads(json.dumps(value)):
        return
    with contextlib.suppress(OSError), folder_lock(file.parent):
        entries = _entries(file)
        entries[key] = value
        write_atomic(file, json.dumps(entries))


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
    _store(_file(), _key(spec), asdict(preprocess))


def find_checkpoint(where: dict, cache_dir: str | None = None) -> str | None:
    """The checkpoint file ``where`` (see :func:`organizer.embed.openclip.checkpoint_places`)
    names, if it is on disk: a Hugging Face cache entry (the first of its file names there),
    a file in open_clip's download folder (``cache_dir`` for either, if given), or a plain
    path. Touches no network, imports no torch."""
    for repo_id, filename in where.get("hf_hub", []):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    path = where.get("path")
    if "clip_cache_file" in where:
        folder = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        path = str(folder / os.path.basename(where["clip_cache_file"]))
    return path if isinstance(path, str) and os.path.isfile(path) else None


def remember_checkpoint(spec: ModelSpec, where: dict) -> None:
    """Keep where ``spec``'s tag looks for its checkpoint (the default caches only)."""
    _store(_weights_file(), _key(spec), where)


def pinned_tag(spec: ModelSpec) -> ModelSpec | None:
    """``spec`` (a weights tag) with the hash of the file its tag names now, found as open_clip
    would find it (in the default caches), or None: not known here (nor to this version of
    open_clip), or not on disk (open_clip then says why)."""
    where = _entries(_weights_file()).get(_key(spec))
    if not isinstance(where, dict):
        return None
    try:
        hub = [(str(r), str(f)) for r, f in where.get("hf_hub", [])]
        places = {k: str(v) for k, v in where.items() if k in ("path", "clip_cache_file")}
        path = find_checkpoint({"hf_hub": hub, **places})
        return replace(spec, weights_sha256=sha256_file(Path(path))) if path else None
    except (OSError, TypeError, ValueError):  # a hand-edited entry, a file going away
        return None
