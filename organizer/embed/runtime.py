"""Which runtime and precision run each tower on this machine, decided without torch.

- A GPU runs torch (fp16 by default).
- A CPU with bf16 matrix units (AMX, AVX512-BF16) runs the image tower in torch bf16, the
  fastest there (bench/ingest.py).
- A CPU without them runs the image tower in ONNX Runtime fp32, faster than torch fp32.
- Text runs in ONNX Runtime on every CPU, so a query needs neither torch's model build nor
  the image tower; but many texts at once (naming clusters) run in torch bf16 where the CPU
  has bf16 units: twice ONNX Runtime's fp32 speed there.

``--runtime torch`` keeps everything in torch; ``--runtime onnx`` runs both towers in ONNX
Runtime (fp32). A tower that cannot be exported falls back to torch with a warning.
``--precision int8`` (opt-in, never chosen by ``auto``) runs the image tower in ONNX Runtime
with int8 weights: about twice fp32's speed on a CPU, but its accuracy with real CLIP
weights is not measured here (they have outlier activations that random weights lack).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from organizer.errors import ModelError

if TYPE_CHECKING:
    from organizer.embed import Embedder, ModelSpec


def usable_cores() -> int:
    """The cores this process may run on (taskset, a container's cpuset), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> fp16 on CUDA, bf16 on CPUs with bf16 matrix units, else fp32."""
    if precision != "auto":
        if precision == "fp16" and device == "cpu":
            raise ModelError("fp16 is slow and inaccurate on CPUs: use --precision bf16 or fp32")
        if precision == "bf16" and device == "cpu" and not cpu_has_bf16():
            warnings.warn(
                "this CPU has no bf16 matrix instructions (AMX / AVX512-BF16): bf16 runs about "
                "10x slower than fp32 here; --precision auto picks the fast one",
                stacklevel=2,
            )
        return precision
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def gpu_possible() -> bool:
    """Whether a CUDA GPU may be present (then torch is asked): an NVIDIA driver is loaded
    and CUDA_VISIBLE_DEVICES does not hide every device. Saves importing torch (1.3 s) on
    machines without one."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def load(
    spec: ModelSpec,
    device: str = "auto",
    precision: str = "auto",
    runtime: str = "auto",
    offline: bool = False,
) -> Embedder:
    """The embedder for ``spec`` on this machine (see the module's docstring).

    Raises:
        ModelError, WeightsUnavailableError: as :func:`organizer.embed.openclip.load`;
        ModelError for ``--runtime onnx`` with a GPU, bf16, or no onnxruntime installed.
    """
    if device == "cuda" or (device == "auto" and gpu_possible()):
        from organizer.embed.openclip import resolve_device

        device = resolve_device(device)
    else:
        device = "cpu"
    if runtime == "onnx" and device != "cpu":
        raise ModelError("--runtime onnx runs on the CPU: add --device cpu, or use a GPU")
    if runtime == "onnx" and precision not in ("auto", "fp32", "int8"):
        raise ModelError(f"--runtime onnx runs fp32, not {precision}: leave out --precision")
    if precision == "int8" and (device != "cpu" or runtime == "torch"):
        raise ModelError(
            "--precision int8 runs on the CPU in ONNX Runtime: leave out --runtime torch, and "
            "add --device cpu on a machine with a GPU"
        )
    if (runtime == "onnx" or precision == "int8") and not onnxruntime_installed():
        raise ModelError("ONNX Runtime is not installed: pip install onnxruntime")
    if device != "cpu" or runtime == "torch" or not onnxruntime_installed():
        from organizer.embed import openclip

        return openclip.load(spec, device, precision, offline)
    from organizer.embed.onnx import OnnxEmbedder

    if runtime == "onnx" and precision == "auto":
        precision = "fp32"
    precision = resolve_precision(precision, device)
    return OnnxEmbedder(spec, precision, precision in ("fp32", "int8"), offline=offline)
