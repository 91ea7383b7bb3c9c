"""Embedders turn images and texts into L2-normalised vectors.

This package imports no torch: the open_clip implementation lives in
:mod:`organizer.embed.openclip` and is imported only when a model must actually run.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from organizer.errors import ModelError

if TYPE_CHECKING:  # imported for real only where pixels are handled (keeps `similar` light)
    import numpy as np

    from organizer.imaging import PreprocessSpec

RANDOM_WEIGHTS = "none"


class RandomWeightsWarning(UserWarning):
    """The model runs with random weights: vectors are consistent but carry no meaning."""


def random_weights_warning(spec: ModelSpec, stacklevel: int) -> None:
    warnings.warn(
        f"{spec.name} runs with random weights (--pretrained none): vectors are "
        "consistent but meaningless; use this only for tests and benchmarks",
        RandomWeightsWarning,
        stacklevel=stacklevel,
    )


@dataclass(frozen=True)
class ModelSpec:
    """The identity of a model as a library records it.

    ``name`` is an open_clip model name (for a custom config, its file stem; the config's text
    is kept in ``config_json`` so the library does not depend on the file staying put).
    ``pretrained`` is a weights tag, a checkpoint path, or ``"none"`` for random weights;
    ``weights_sha256`` identifies the checkpoint file's content (for a tag, the file it resolved
    to when the library was made).
    """

    name: str
    pretrained: str
    weights_sha256: str | None = None
    config_json: str | None = None

    @property
    def is_random(self) -> bool:
        return self.pretrained == RANDOM_WEIGHTS

    def describe(self) -> str:
        return f"{self.name}/{self.pretrained}"

    def same_model(self, other: ModelSpec) -> bool:
        """Whether vectors of ``other`` can be mixed with vectors of this spec."""
        if self.name != other.name or (self.config_json or None) != (other.config_json or None):
            return False
        if self.weights_sha256 and other.weights_sha256:
            return self.weights_sha256 == other.weights_sha256
        return self.pretrained == other.pretrained

    @property
    def is_checkpoint_path(self) -> bool:
        """``pretrained`` names a checkpoint file (not a tag nor random weights)."""
        return not self.is_random and looks_like_path(self.pretrained)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def request_spec(model: str, pretrained: str) -> ModelSpec:
    """Turn the user's ``--model`` / ``--pretrained`` values into a spec, reading files they name.

    ``model`` may be an open_clip name or a path to an open_clip model-config JSON file;
    ``pretrained`` a tag, ``none``, or a path to a checkpoint.

    Raises:
        ModelError: a config file that is not valid JSON, or a checkpoint path that does not exist.
    """
    name, config_json = model, None
    if model.endswith(".json") or Path(model).is_file():
        path = Path(model).expanduser()
        try:
            config = json.loads(path.read_text())
        except OSError as exc:
            raise ModelError(f"cannot read model config {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ModelError(f"model config {path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict) or "vision_cfg" not in config or "embed_dim" not in config:
            raise ModelError(
                f"model config {path} lacks embed_dim / vision_cfg: not an open_clip config"
            )
        name, config_json = path.stem, json.dumps(config, sort_keys=True)
    weights_sha256 = None
    if pretrained != RANDOM_WEIGHTS and looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelError(
                f"checkpoint file {path} not found: pass --pretrained with an existing file or a "
                f"weights tag of {name}"
            )
        weights_sha256 = sha256_file(path)
        pretrained = str(path.resolve())
    return ModelSpec(name, pretrained, weights_sha256, config_json)


def looks_like_path(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors")
    )


@dataclass(frozen=True)
class ModelShape:
    """What a library records about its model, known without loading its weights: the spec
    (with the checkpoint's hash), the vector size and the input the model expects."""

    spec: ModelSpec
    dim: int
    preprocess: PreprocessSpec


class Embedder(Protocol):
    """What ingest and search need from a model."""

    # Read-only: an embedder may keep them as attributes or properties.
    @property
    def spec(self) -> ModelSpec: ...
    @property
    def dim(self) -> int: ...
    @property
    def preprocess(self) -> PreprocessSpec: ...
    @property
    def device(self) -> str: ...
    @property
    def precision(self) -> str: ...

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 model-sized images -> (N, dim) float32 unit vectors."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, dim) float32 unit vectors (prompting is the caller's choice)."""
        ...
