"""Which device, precision and runtime run the model: decided once, by :func:`plan`, from the
options and what the machine (or a Ray cluster) has. Standard library only: the options'
check runs before any command loads anything.

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

The local engine plans from this machine's :class:`Capabilities`, the Ray engine from what
every machine of its cluster has; both then load the model the same way from the
:class:`Plan`, so a library's vectors do not depend on the engine that made them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from organizer.choices import Device, Precision, Runtime
from organizer.errors import OptionsError


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


def gpu_possible() -> bool:
    """Whether a CUDA GPU may be present (then torch is asked): an NVIDIA driver is loaded
    and CUDA_VISIBLE_DEVICES does not hide every device. Saves importing torch (1.3 s) on
    machines without one."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@dataclass(frozen=True)
class Capabilities:
    """What a machine (or every machine of a cluster) has that decides how the model runs."""

    cpu_bf16: bool  # bf16 matrix units (AMX, AVX512-BF16)
    cuda: bool  # a CUDA GPU torch can use
    onnxruntime: bool  # installed
    openvino: bool  # installed

    @classmethod
    def probe(cls, gpu: bool = True) -> Capabilities:
        """This machine's. ``gpu``: ask torch for a CUDA GPU where a driver says one may be
        there (the import costs a second); False takes it that there is none."""
        cuda = False
        if gpu and gpu_possible():
            import torch

            cuda = torch.cuda.is_available()
        return cls(cpu_has_bf16(), cuda, _installed("onnxruntime"), _installed("openvino"))

    def shared_with(self, other: Capabilities) -> Capabilities:
        """What both have: a cluster runs one plan on every machine."""
        return Capabilities(
            self.cpu_bf16 and other.cpu_bf16,
            self.cuda and other.cuda,
            self.onnxruntime and other.onnxruntime,
            self.openvino and other.openvino,
        )


@dataclass(frozen=True)
class Plan:
    """How the model runs, settled by :func:`plan`: nothing here is ``auto``.

    ``runtime`` runs the image tower (torch, ONNX Runtime or OpenVINO). ``exported`` says
    whether exported towers are used at all: then a text query runs in ONNX Runtime even
    where images run in torch (bf16 without OpenVINO); without, torch runs everything.
    ``warning``, when set, is said once the model loads.
    """

    device: Device
    precision: Precision
    runtime: Runtime
    exported: bool
    warning: str | None = None


_NO_BF16_UNITS = (
    "this CPU has no bf16 matrix instructions (AMX / AVX512-BF16): bf16 runs about 10x "
    "slower than fp32 here; --precision auto picks the fast one"
)


def plan(
    device: str | Device, precision: str | Precision, runtime: str | Runtime, caps: Capabilities
) -> Plan:
    """The device, precision and runtime that run the model with these options on a machine
    with ``caps`` (see the module for the rules).

    Example: ``plan("auto", "auto", "auto", Capabilities(True, False, True, True))`` is
    ``Plan(Device.CPU, Precision.BF16, Runtime.OPENVINO, exported=True)``.

    Raises:
        OptionsError: the options cannot work together, or not on such a machine (one line
            that says what to change).
    """
    precision, runtime = Precision(precision), Runtime(runtime)
    on = _device(Device(device), caps)
    problem = _combination_problem(on, precision, runtime, caps.cpu_bf16)
    if problem:
        raise OptionsError(problem)
    # OpenVINO's towers are exported and checked by ONNX Runtime
    if (runtime in (Runtime.ONNX, Runtime.OPENVINO) or precision == Precision.INT8) and not (
        caps.onnxruntime
    ):
        raise OptionsError("ONNX Runtime is not installed: pip install onnxruntime")
    if runtime == Runtime.OPENVINO and not caps.openvino:
        raise OptionsError("OpenVINO is not installed: pip install openvino")
    exported = on == Device.CPU and runtime != Runtime.TORCH and caps.onnxruntime
    if exported and precision == Precision.AUTO and runtime != Runtime.AUTO:
        openvino_bf16 = runtime == Runtime.OPENVINO and caps.cpu_bf16
        precision = Precision.BF16 if openvino_bf16 else Precision.FP32
    precision, warning = _precision(precision, on, caps.cpu_bf16)
    images = _image_runtime(precision, runtime, caps) if exported else Runtime.TORCH
    return Plan(on, precision, images, exported, warning)


def _device(device: Device, caps: Capabilities) -> Device:
    if device == Device.CUDA and not caps.cuda:
        raise OptionsError(
            "--device cuda was asked for but no CUDA GPU is available: use --device cpu"
        )
    if device == Device.CUDA or (device == Device.AUTO and caps.cuda):
        return Device.CUDA
    return Device.CPU


def _combination_problem(
    device: Device, precision: Precision, runtime: Runtime, cpu_bf16: bool
) -> str | None:
    """Why these choices cannot run together on ``device`` (a one-line error), or None."""
    if runtime in (Runtime.ONNX, Runtime.OPENVINO) and device == Device.CUDA:
        return f"--runtime {runtime} runs on the CPU: use --device cpu, or leave out --runtime"
    if runtime == Runtime.ONNX and precision not in (
        Precision.AUTO,
        Precision.FP32,
        Precision.INT8,
    ):
        return f"--runtime onnx runs fp32, not {precision}: leave out --precision (or give int8)"
    if precision == Precision.INT8 and (
        runtime in (Runtime.TORCH, Runtime.OPENVINO) or device == Device.CUDA
    ):
        remedy = "use --device cpu" if device == Device.CUDA else f"leave out --runtime {runtime}"
        return f"--precision int8 runs on the CPU in ONNX Runtime: {remedy}"
    if runtime == Runtime.OPENVINO and precision == Precision.FP16:
        return "--runtime openvino runs bf16 or fp32, not fp16: leave out --precision"
    if runtime == Runtime.OPENVINO and precision == Precision.BF16 and not cpu_bf16:
        return (
            "--runtime openvino --precision bf16 needs bf16 matrix instructions (AMX / "
            "AVX512-BF16), which this CPU lacks: leave out --precision (fp32 here)"
        )
    return None


def _precision(
    precision: Precision, device: Device, cpu_bf16: bool
) -> tuple[Precision, str | None]:
    """'auto' -> fp16 on CUDA, bf16 on CPUs with bf16 matrix units, else fp32; with the
    warning bf16 asked for without those units earns."""
    if precision == Precision.AUTO:
        if device == Device.CUDA:
            return Precision.FP16, None
        return (Precision.BF16 if cpu_bf16 else Precision.FP32), None
    if precision == Precision.FP16 and device == Device.CPU:
        raise OptionsError("fp16 is slow and inaccurate on CPUs: use --precision bf16 or fp32")
    if precision == Precision.BF16 and device == Device.CPU and not cpu_bf16:
        return precision, _NO_BF16_UNITS
    return precision, None


def _image_runtime(precision: Precision, runtime: Runtime, caps: Capabilities) -> Runtime:
    """What runs the image tower on a CPU where exported towers are used."""
    if runtime == Runtime.OPENVINO:
        return Runtime.OPENVINO
    if precision == Precision.BF16:  # OpenVINO's bf16 only where the CPU has bf16 units
        return Runtime.OPENVINO if caps.openvino and caps.cpu_bf16 else Runtime.TORCH
    return Runtime.ONNX


def options_problem(
    device: str | Device, precision: str | Precision, runtime: str | Runtime
) -> str | None:
    """Why no machine with this CPU could run these options (one line), or None: what the
    settings check before any command runs. It reads the CPU's flags (a file) and asks
    nothing else: whether a GPU or a runtime is there is :func:`plan`'s to say when the
    model loads, so that commands that load none (``status``) never import torch."""
    without_gpu = Capabilities(cpu_has_bf16(), cuda=False, onnxruntime=True, openvino=True)
    with_gpu = Capabilities(without_gpu.cpu_bf16, cuda=True, onnxruntime=True, openvino=True)
    machines = [with_gpu, without_gpu] if device == Device.CUDA else [without_gpu, with_gpu]
    problems = []
    for caps in machines:
        try:
            plan(device, precision, runtime, caps)
            return None
        except OptionsError as exc:
            problems.append(str(exc))
    return problems[0]
