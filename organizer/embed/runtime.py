"""Which runtime and precision run each tower on this machine, decided without torch.

- A GPU runs torch (fp16 by default).
- A CPU with bf16 matrix units (AMX, AVX512-BF16) runs both towers in OpenVINO bf16: its
  kernels beat torch bf16's, and it opens an exported tower in a fraction of a second where
  importing torch and building the model take seconds (bench/ingest.py). Without OpenVINO
  installed, images run in torch bf16.
- A CPU without them runs both towers in ONNX Runtime fp32, faster than torch fp32.

``--runtime torch`` keeps everything in torch; ``--runtime onnx`` runs both towers in ONNX
Runtime (fp32); ``--runtime openvino`` in OpenVINO (bf16 where the CPU has bf16 units, else
fp32). A tower that cannot be exported or run falls back to torch with a warning.
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


def ray_problem(runtime: str) -> str | None:
    """Why ``--engine ray`` cannot take ``runtime`` (its workers run torch), or None."""
    if runtime in ("onnx", "openvino"):
        return (
            f"--engine ray runs the model in torch on its workers: leave out --runtime "
            f"{runtime} (or ORGANIZER_RUNTIME)"
        )
    return None


def combination_problem(device: str, precision: str, runtime: str) -> str | None:
    """Why these choices cannot run together (a one-line error), or None. The options check
    it as given; :func:`load` again once ``auto`` has picked a device."""
    if runtime in ("onnx", "openvino") and device == "cuda":
        return f"--runtime {runtime} runs on the CPU: use --device cpu, or leave out --runtime"
    if runtime == "onnx" and precision not in ("auto", "fp32", "int8"):
        return f"--runtime onnx runs fp32, not {precision}: leave out --precision (or give int8)"
    if precision == "int8" and (runtime in ("torch", "openvino") or device == "cuda"):
        remedy = "use --device cpu" if device == "cuda" else f"leave out --runtime {runtime}"
        return f"--precision int8 runs on the CPU in ONNX Runtime: {remedy}"
    if runtime == "openvino" and precision == "fp16":
        return "--runtime openvino runs bf16 or fp32, not fp16: leave out --precision"
    if runtime == "openvino" and precision == "bf16" and not cpu_has_bf16():
        return (
            "--runtime openvino --precision bf16 needs bf16 matrix instructions (AMX / "
            "AVX512-BF16), which this CPU lacks: leave out --precision (fp32 here)"
        )
    return None


def gpu_possible() -> bool:
    """Whether a CUDA GPU may be present (then torch is asked): an NVIDIA driver is loaded
    and CUDA_VISIBLE_DEVICES does not hide every device. Saves importing torch (1.3 s) on
    machines without one."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


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
    problem = combination_problem(device, precision, runtime)
    if problem:
        raise ModelError(problem)
    # OpenVINO's towers are exported and checked by ONNX Runtime
    if (runtime in ("onnx", "openvino") or precision == "int8") and not onnxruntime_installed():
        raise ModelError("ONNX Runtime is not installed: pip install onnxruntime")
    if runtime == "openvino" and not openvino_installed():
        raise ModelError("OpenVINO is not installed: pip install openvino")
    if device != "cpu" or runtime == "torch" or not onnxruntime_installed():
        from organizer.embed import openclip

        return openclip.load(spec, device, precision, offline)
    from organizer.embed.onnx import ONNXRUNTIME, OPENVINO, OnnxEmbedder

    if runtime in ("onnx", "openvino") and precision == "auto":
        precision = "bf16" if runtime == "openvino" and cpu_has_bf16() else "fp32"
    precision = resolve_precision(precision, device)
    if runtime == "openvino":
        engine = OPENVINO
    elif precision == "bf16":  # OpenVINO's bf16 only where the CPU has bf16 units
        engine = OPENVINO if openvino_installed() and cpu_has_bf16() else None
    else:
        engine = ONNXRUNTIME
    return OnnxEmbedder(spec, precision, engine, offline=offline)
