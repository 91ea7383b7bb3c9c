"""The embedder on a CPU that runs open_clip's towers exported to ONNX (see
:mod:`organizer.embed.backend` for the cache, the export and the engines).

Why: on a CPU without bf16 matrix units (AVX2-only), ONNX Runtime's fp32 kernels run the
image tower faster than torch's fp32 (bench/ingest.py), which is what such a CPU must use;
and a text query needs only the text tower, which ONNX Runtime opens in about half a second
with no model to build (``search`` does not wait for torch to build the whole model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from organizer.choices import Runtime
from organizer.embed import random_weights_warning
from organizer.embed.backend.engines import (
    IMAGE,
    IMAGE_INT8,
    ONNXRUNTIME,
    OPENVINO,
    TEXT,
    Tower,
    TowerRecord,
)
from organizer.embed.backend.towers import Towers
from organizer.imaging import PreprocessSpec

if TYPE_CHECKING:
    from organizer.embed import ModelSpec
    from organizer.embed.runtime import Plan

_TEXT_BATCH = 64
_ENGINES = {Runtime.ONNX: ONNXRUNTIME, Runtime.OPENVINO: OPENVINO, Runtime.TORCH: None}


class OnnxEmbedder:
    """The embedder on a CPU, running exported towers: fp32 (and int8) in ONNX Runtime, bf16
    in OpenVINO, whose bf16 kernels use the CPU's bf16 units and open in a fraction of a
    second (torch's import and model build take seconds).

    - Images run in the plan's runtime (torch for bf16 without OpenVINO).
    - A few texts (a query) run in ONNX Runtime fp32: exact, and open in half a second.
    - Many texts (cluster names) run in OpenVINO where it runs the images; in torch bf16
      where torch does (twice ONNX Runtime's fp32 speed on such a CPU); else ONNX Runtime.

    A tower that cannot be exported, or that OpenVINO cannot run, runs in torch (texts in
    ONNX Runtime then), with a warning. The torch model is built only then, or to export a
    tower (once per model and machine)."""

    device = "cpu"

    def __init__(self, spec: ModelSpec, plan: Plan, offline: bool = False):
        self.precision = str(plan.precision)
        self._engine = _ENGINES[plan.runtime]  # what runs the image tower; None: torch
        self.towers = Towers(spec, self.precision, offline)
        if spec.is_random:
            random_weights_warning(spec, stacklevel=5)

    @property
    def _image(self) -> str:
        return IMAGE_INT8 if self.precision == "int8" else IMAGE

    @property
    def runtime(self) -> str:
        """What runs the images: "onnxruntime", "openvino" or "torch" (before the first
        batch: what is meant to)."""
        if self._engine is None:
            return "torch"
        if self.towers.opened.get((self._image, self._engine), 1) is not None:
            return self._engine
        if self.towers.opened.get((IMAGE, ONNXRUNTIME)) is not None:
            return ONNXRUNTIME  # OpenVINO fp32 failed: ONNX Runtime's fp32 instead
        return "torch"

    @property
    def spec(self) -> ModelSpec:
        """The model; with a tag's checkpoint hash once a tower or the torch model is open."""
        return self.towers.spec

    @property
    def dim(self) -> int:
        return self._shape_source().dim

    @property
    def preprocess(self) -> PreprocessSpec:
        source = self._shape_source()
        if isinstance(source, TowerRecord):
            return PreprocessSpec.from_dict(source.preprocess)
        return source.preprocess

    def _shape_source(self) -> Any:
        """A record of an open tower, or the torch model: what knows the vector size and
        the input, opening as little as it can."""
        records = self.towers.records()
        if records:
            return records[0]
        if self.towers.torch is None and self._engine is not None:
            tower = self.towers.get(self._image, self._engine)
            if tower is not None:
                return tower.record
        return self.towers.torch_embedder()

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        tower = self._image_tower()
        if tower is None:
            return self.towers.torch_embedder().embed_pixels(batch)
        return tower.run(np.ascontiguousarray(batch, dtype=np.uint8))

    def _image_tower(self) -> Tower | None:
        if self._engine is None:
            return None
        tower = self.towers.get(self._image, self._engine)
        if tower is None and self._engine == OPENVINO and self.precision == "fp32":
            tower = self.towers.get(IMAGE)  # the same fp32, checked against torch already
        return tower

    def _text_tower(self, count: int) -> Tower | None:
        """The tower that runs ``count`` texts (see the class), or None: torch. Once a bulk
        engine runs texts, it runs every batch of more than one (cluster naming's last,
        smaller batch too): one vocabulary is never embedded by two engines."""
        bulk = count > _TEXT_BATCH or (
            count > 1
            and (
                self.towers.opened.get((TEXT, OPENVINO)) is not None
                or (self.towers.torch is not None and self.towers.torch.precision == "bf16")
            )
        )
        if bulk and self._engine == OPENVINO:
            return self.towers.get(TEXT, OPENVINO) or self.towers.get(TEXT)
        if bulk and self._engine is None and self.precision == "bf16":
            return None
        return self.towers.get(TEXT)

    def prepare_texts(self, count: int) -> None:
        """Import now the libraries :meth:`embed_texts` of ``count`` texts will run on, and
        open (the first time on a machine: export) the text tower, so that a caller can
        schedule that work (seconds of Python holding the GIL)."""
        if self._text_tower(count) is None:
            import open_clip  # noqa: F401 (torch with it)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> unit vectors, in batches of similar length, each cut after its longest
        prompt's end token."""
        tower = self._text_tower(len(texts))
        if tower is None:
            return self.towers.torch_embedder().embed_texts(texts)
        out = np.zeros((len(texts), tower.record.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = tower.tokens(texts)
        lengths = tokens.argmax(axis=1) + 1
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), _TEXT_BATCH):
            rows = order[start : start + _TEXT_BATCH]
            out[rows] = tower.run(tokens[rows, : int(lengths[rows].max())])
        return out
