"""An embedder's towers: opened from the model cache, else exported (or quantised) from the
torch model and kept there, else left to torch, with a warning that says why.

A failure is kept beside the model's files (a marker), so that the next process neither
exports nor compiles again in vain, nor stays silent about it.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from organizer.embed import remembered
from organizer.embed.backend.cache import (
    export_failure,
    folder_lock,
    keep_failure,
    model_dir,
    openvino_failure,
    pinned,
    read_failure,
    sweep,
    write_atomic,
)
from organizer.embed.backend.engines import (
    IMAGE,
    IMAGE_INT8,
    ONNXRUNTIME,
    OPENVINO,
    TEXT,
    EngineFailed,
    Tower,
)
from organizer.embed.backend.export import ExportNotice, export, exportable_text, quantize, quiet
from organizer.errors import ModelError

if TYPE_CHECKING:
    from organizer.embed import ModelSpec


class Towers:
    """The towers of one model at one precision in this process, each found once (thread-safe:
    organizer serve answers in threads, and one export at a time is enough).

    ``opened`` maps (tower, engine) to what was found: a :class:`Tower`, or None (torch runs
    it). ``torch`` is the torch model once built (to export a tower, or to run one), and
    ``spec`` gains a tag's checkpoint hash once a tower or the torch model is open.
    """

    def __init__(self, spec: ModelSpec, precision: str, offline: bool = False):
        self.spec = spec
        self.precision = precision
        self._offline = offline
        self.opened: dict[tuple[str, str], Tower | None] = {}
        self.torch: Any = None
        self._lock = threading.RLock()

    def records(self) -> list[Any]:
        """The records of the towers open now."""
        with self._lock:  # organizer serve's warm-up may be adding a tower
            return [tower.record for tower in self.opened.values() if tower is not None]

    def torch_embedder(self) -> Any:
        """The torch model at this precision (fp32 for int8), built the first time."""
        with self._lock:
            if self.torch is None:
                precision = "fp32" if self.precision == "int8" else self.precision
                self.torch = self._load_torch(precision)
            return self.torch

    def _load_torch(self, precision: str) -> Any:
        from organizer.embed import openclip

        with quiet():  # its random-weights warning was given already
            loaded = openclip.load(self.spec, "cpu", precision, self._offline)
        self.spec = loaded.spec  # a tag's checkpoint hash is known now
        return loaded

    def get(self, name: str, engine: str = ONNXRUNTIME) -> Tower | None:
        """The tower ``name`` in ``engine``, or None: it runs in torch."""
        with self._lock:  # one export at a time (organizer serve answers in threads)
            if (name, engine) not in self.opened:
                self.opened[name, engine] = self._find(name, engine)
            return self.opened[name, engine]

    def _find(self, name: str, engine: str) -> Tower | None:
        if not pinned(self.spec) and not self.spec.is_checkpoint_path:
            # A tag: the file it names now, found and hashed without torch when known here,
            # kept if towers were exported from that file; else torch settles the hash.
            guess = remembered.pinned_tag(self.spec)
            if guess is not None and (model_dir(guess) / f"{name}.json").is_file():
                self.spec = guess
        folder = model_dir(self.spec) if pinned(self.spec) else None
        if engine == OPENVINO and folder is not None and self._openvino_failed(folder, name):
            return None
        try:
            found = Tower.open(folder, name, engine, self.precision) if folder else None
            if found is None:
                found = self._quantized() if name == IMAGE_INT8 else self._export(name)
                if found is not None and engine == OPENVINO:  # the spec is pinned now
                    if self._openvino_failed(found.folder, name):
                        return None
                    found = Tower.open(found.folder, name, engine, self.precision)
            return found
        except EngineFailed as exc:
            self._openvino_failed(model_dir(self.spec), name, str(exc))
            return None

    def _openvino_failed(self, folder: Path, name: str, reason: str | None = None) -> bool:
        """Whether OpenVINO failed on this tower (with this version of it), saying so; with
        ``reason``, record that it did, so that later runs do not compile it again."""
        marker = openvino_failure(folder, name, self.precision)
        if reason is not None:
            reason = (
                f"OpenVINO cannot run {self.spec.name}'s {name} tower in {self.precision}: {reason}"
            )
            keep_failure(marker, reason)
        else:  # none, or an unreadable cache (opening says)
            reason = read_failure(marker)
        if reason is None:
            return False
        instead = "ONNX Runtime" if name == TEXT or self.precision == "fp32" else "torch"
        warnings.warn(f"{reason}; running it in {instead}", stacklevel=6)
        return True

    def _quantized(self) -> Tower:
        image = self.get(IMAGE)
        if image is None:
            raise ModelError(
                f"--precision int8 needs {self.spec.name}'s image tower in ONNX Runtime, "
                "which did not export: use --precision fp32"
            )
        try:
            with folder_lock(image.folder):
                found = Tower.open(image.folder, IMAGE_INT8)
                if found is not None:
                    return found
                warnings.warn(
                    f"quantising {self.spec.name}'s image tower to int8 (once per model on "
                    "this machine)",
                    ExportNotice,
                    stacklevel=5,
                )
                return quantize(image)
        except OSError as exc:
            raise ModelError(
                f"cannot keep the int8 image tower in {image.folder}: {exc.strerror or exc}"
            ) from None

    def _export(self, name: str) -> Tower | None:
        """Export ``name`` from the fp32 torch model (built for this only and let go after,
        unless it already runs), or None: it runs in torch, with a warning saying why."""
        have = self.torch is not None and self.torch.precision == "fp32"
        fp32 = self.torch if have else self._load_torch("fp32")
        folder = model_dir(self.spec)
        failed = export_failure(folder, name)
        try:
            with folder_lock(folder):
                found = Tower.open(folder, name)  # another process may have exported it
                if found is not None:
                    return found
                if name == TEXT and not exportable_text(fp32):
                    return None
                if failed.is_file():  # tried once on this machine: not every run again
                    warnings.warn(
                        f"{failed.read_text().strip()}; running it in torch", stacklevel=5
                    )
                    return None
                sweep(folder)
                warnings.warn(
                    f"exporting {self.spec.name}'s {name} tower to ONNX (once per "
                    "model on this machine)",
                    ExportNotice,
                    stacklevel=5,
                )
                try:
                    return export(fp32, name, folder)
                except ModelError as exc:
                    write_atomic(failed, str(exc))
                    warnings.warn(f"{exc}; running it in torch", stacklevel=5)
                    return None
        except OSError as exc:
            warnings.warn(
                f"cannot keep {self.spec.name}'s exported {name} tower in {folder} "
                f"({exc.strerror or exc}); running it in torch",
                stacklevel=5,
            )
            return None
