"""The engines that run an exported tower: ONNX Runtime, and OpenVINO (bf16 on a CPU's bf16
units, or fp32).

A tower file is opened only after its checksum and its probe: the vectors it gave for a fixed
input when it was made must come again (ONNX Runtime to :data:`MIN_COSINE`; OpenVINO bf16 to
:data:`MIN_COSINE_BF16`), so that a damaged or stale file is found, not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from organizer.embed.backend.cache import OPENVINO_CACHE
from organizer.embed.backend.tokenizer import (
    FAST_TOKENIZER,
    PROBE_TEXTS,
    FastTokenizer,
    clip_tokenizer,
)
from organizer.embed.runtime import usable_cores
from organizer.imaging import PreprocessSpec

MIN_COSINE = 0.9999  # fp32 against fp32: a right export gives 0.99999+
MIN_COSINE_BF16 = 0.999  # bf16 against fp32: the floor for what --precision auto picks
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"  # what runs an exported tower
IMAGE, TEXT, IMAGE_INT8 = "image", "text", "image-int8"
PROBE_IMAGES = 2


@dataclass(frozen=True)
class TowerRecord:
    """What is kept beside an exported tower: enough to use it without torch."""

    tower: str
    size: int  # bytes of the .onnx file
    sha256: str  # of the .onnx file: a damaged weight the probe does not use is found too
    dim: int
    preprocess: dict  # PreprocessSpec's fields
    context_length: int | None  # text tower: the tokenizer's
    fast_tokenizer: str | None  # text tower: SHA-256 of text-tokenizer.json, if it is exact
    probe: list[list[float]]  # the vectors this file gave for the probe input when made
    cos_min: float  # those against torch fp32's
    export_s: float


def probe_pixels(preprocess: PreprocessSpec) -> np.ndarray:
    """The fixed pixels an image tower is checked on: the same on every machine and run."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (PROBE_IMAGES, *preprocess.size, 3), dtype=np.uint8)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each row of ``a`` with the same row of ``b``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


class EngineFailed(Exception):
    """A sound tower file that an engine other than ONNX Runtime cannot run right."""


class Tower:
    """One exported tower, run by ONNX Runtime or OpenVINO."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], record: TowerRecord, folder: Path):
        self.run = run
        self.record = record
        self.folder = folder
        self._fast: FastTokenizer | None = None

    @classmethod
    def open(
        cls, folder: Path, tower: str, engine: str = ONNXRUNTIME, precision: str = "fp32"
    ) -> Tower | None:
        """The tower if its files are there and still give the probe's vectors, else None
        (the caller exports again, replacing them under the folder's lock).

        Raises:
            EngineFailed: the file is sound (its checksum) but OpenVINO does not give the
                probe's vectors with it: exporting again would not help.
        """
        path, meta = folder / f"{tower}.onnx", folder / f"{tower}.json"
        try:
            record = TowerRecord(**json.loads(meta.read_text()))
            if path.stat().st_size != record.size:
                raise ValueError("size")
            with open(path, "rb") as fh:  # streamed: a tower is hundreds of MB
                if hashlib.file_digest(fh, "sha256").hexdigest() != record.sha256:
                    raise ValueError("checksum")
            if engine == ONNXRUNTIME:
                found = cls(onnxruntime_session(path), record, folder)
                got = found.run(found.probe_input())
                if float(cosines(got, np.asarray(record.probe)).min()) < MIN_COSINE:
                    raise ValueError("probe")
                return found
        except Exception:  # absent, or damaged in one of many ways: export it again
            return None
        compiled = folder / OPENVINO_CACHE
        # another user's, or read-only: compiled in memory each time
        writable = os.access(compiled if compiled.exists() else folder, os.W_OK)
        cache = compiled if writable else None
        try:
            return cls._in_openvino(path, record, folder, precision, cache)
        except EngineFailed:
            if cache is None:
                raise
        # The compiled copy failed (damaged, half written by another process, not writable):
        # from the file alone, which alone says whether OpenVINO can run the tower. If it
        # can, the copy goes, to be written afresh next time (a process that mapped it keeps
        # its pages).
        found = cls._in_openvino(path, record, folder, precision, None)
        shutil.rmtree(cache, ignore_errors=True)
        return found

    @classmethod
    def _in_openvino(
        cls, path: Path, record: TowerRecord, folder: Path, precision: str, cache: Path | None
    ) -> Tower:
        try:
            found = cls(openvino_compiled(path, precision, cache), record, folder)
            got = found.run(found.probe_input())
            cos_min = float(cosines(got, np.asarray(record.probe)).min())
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise EngineFailed(reason) from None
        floor = MIN_COSINE_BF16 if precision == "bf16" else MIN_COSINE
        if not cos_min >= floor:  # NaN too
            raise EngineFailed(f"its vectors differ from ONNX Runtime's (cosine {cos_min:.6f})")
        return found

    def probe_input(self) -> np.ndarray:
        """The input this tower is checked on (pixels, or the probe texts' tokens)."""
        if self.record.tower in (IMAGE, IMAGE_INT8):
            return probe_pixels(PreprocessSpec.from_dict(self.record.preprocess))
        return self.tokenize(list(PROBE_TEXTS))

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """Token rows (int64, padded with 0) cut after the longest prompt's end token."""
        tokens = self.tokens(texts)
        return tokens[:, : int(tokens.argmax(axis=1).max()) + 1]

    def tokens(self, texts: list[str]) -> np.ndarray:
        """Token rows of the tokenizer's context length (int64, padded with 0)."""
        if self.record.fast_tokenizer and self._fast is None:
            try:
                self._fast = FastTokenizer(
                    self.folder / FAST_TOKENIZER,
                    self.record.context_length,
                    self.record.fast_tokenizer,
                )
            except Exception:  # absent or damaged: open_clip's tokenizer does the same
                self.record = replace(self.record, fast_tokenizer=None)
        tokens = self._fast(texts) if self._fast is not None else None
        if tokens is not None:
            return tokens
        return clip_tokenizer(self.record.context_length)(texts).numpy()


def onnxruntime_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A model file run by ONNX Runtime on the CPU (thread-safe)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: organizer reports itself
    # ONNX Runtime sizes its pool from the machine's cores, not the ones this process may use
    # (taskset, a container's cpuset): more threads than cores would fight over them.
    options.intra_op_num_threads = usable_cores()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def openvino_compiled(
    path: Path, precision: str, cache: Path | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A model file compiled by OpenVINO for the CPU, in bf16 (its matrix units: AMX,
    AVX512-BF16) or fp32. With ``cache``, OpenVINO keeps the compiled model there and maps
    it the next time: it opens in 0.2 s instead of 1.7 s, and its weights are file pages,
    not 350 MB more of the process's own memory (ViT-B-32-256's image tower).

    Calls are serialised: one request runs on all the cores (the latency hint), so requests
    side by side would only share them, each with its own hundreds of MB of activations."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": usable_cores(),  # as ONNX Runtime: this process's cores
        "PERFORMANCE_HINT": "LATENCY",
    }
    if cache is not None:
        config["CACHE_DIR"] = str(cache)
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with lock:
            return np.array(request.infer({0: x})[0])  # a copy: the request reuses its buffer

    return run
