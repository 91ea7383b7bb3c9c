"""The one decision of how the model runs: (options, what the machine has) -> a plan, or a
usage error that says what to change. Machines are written out, never probed: each row
holds on every machine the tests run on."""

from __future__ import annotations

import pytest

from organizer.choices import Device, Precision, Runtime
from organizer.embed.runtime import Capabilities, Plan, options_problem, plan
from organizer.errors import OptionsError
from organizer.ingest.distributed import RayOptions, settle_model

# What decides: (bf16 units, a CUDA GPU, ONNX Runtime installed, OpenVINO installed)
AVX2 = Capabilities(cpu_bf16=False, cuda=False, onnxruntime=True, openvino=True)
AMX = Capabilities(cpu_bf16=True, cuda=False, onnxruntime=True, openvino=True)
AMX_NO_OPENVINO = Capabilities(cpu_bf16=True, cuda=False, onnxruntime=True, openvino=False)
BARE = Capabilities(cpu_bf16=False, cuda=False, onnxruntime=False, openvino=False)
GPU = Capabilities(cpu_bf16=False, cuda=True, onnxruntime=True, openvino=True)

CPU, CUDA = Device.CPU, Device.CUDA
FP32, BF16, FP16, INT8 = Precision.FP32, Precision.BF16, Precision.FP16, Precision.INT8
TORCH, ONNX, OPENVINO = Runtime.TORCH, Runtime.ONNX, Runtime.OPENVINO
NO_BF16_UNITS = (
    "this CPU has no bf16 matrix instructions (AMX / AVX512-BF16): bf16 runs about 10x "
    "slower than fp32 here; --precision auto picks the fast one"
)


@pytest.mark.parametrize(
    ("options", "caps", "want"),
    [
        # auto: ONNX Runtime fp32 on an AVX2-only CPU, OpenVINO bf16 on bf16 units
        (("auto", "auto", "auto"), AVX2, Plan(CPU, FP32, ONNX, True)),
        (("auto", "auto", "auto"), AMX, Plan(CPU, BF16, OPENVINO, True)),
        (("auto", "fp32", "auto"), AMX, Plan(CPU, FP32, ONNX, True)),
        # bf16 without OpenVINO (or without the units): images in torch, a query in ONNX Runtime
        (("cpu", "auto", "auto"), AMX_NO_OPENVINO, Plan(CPU, BF16, TORCH, True)),
        (("auto", "bf16", "auto"), AVX2, Plan(CPU, BF16, TORCH, True, NO_BF16_UNITS)),
        (("cpu", "int8", "auto"), AVX2, Plan(CPU, INT8, ONNX, True)),
        (("cpu", "int8", "onnx"), AMX, Plan(CPU, INT8, ONNX, True)),
        # a runtime asked for: its own precision
        (("cpu", "auto", "onnx"), AMX, Plan(CPU, FP32, ONNX, True)),
        (("cpu", "auto", "openvino"), AMX, Plan(CPU, BF16, OPENVINO, True)),
        (("cpu", "auto", "openvino"), AVX2, Plan(CPU, FP32, OPENVINO, True)),
        (("cpu", "fp32", "openvino"), AMX, Plan(CPU, FP32, OPENVINO, True)),
        # torch alone: asked for, on a GPU, or without ONNX Runtime
        (("cpu", "fp32", "torch"), AVX2, Plan(CPU, FP32, TORCH, False)),
        (("cpu", "auto", "torch"), AMX, Plan(CPU, BF16, TORCH, False)),
        (("auto", "auto", "auto"), BARE, Plan(CPU, FP32, TORCH, False)),
        (("auto", "auto", "auto"), GPU, Plan(CUDA, FP16, TORCH, False)),
        (("cuda", "fp32", "torch"), GPU, Plan(CUDA, FP32, TORCH, False)),
        (("cpu", "auto", "auto"), GPU, Plan(CPU, FP32, ONNX, True)),
    ],
)
def test_the_plan_for_each_machine(options, caps, want):
    assert plan(*options, caps) == want


@pytest.mark.parametrize(
    ("options", "caps", "message"),
    [
        (("cpu", "bf16", "onnx"), AMX, "--runtime onnx runs fp32, not bf16: leave out --precision"),
        (("cpu", "fp16", "openvino"), AMX, "--runtime openvino runs bf16 or fp32, not fp16"),
        (("cpu", "bf16", "openvino"), AVX2, "AVX512-BF16), which this CPU lacks: leave out"),
        (
            ("cpu", "int8", "openvino"),
            AMX,
            "int8 runs on the CPU in ONNX Runtime: leave out --runtime openvino",
        ),
        (
            ("auto", "int8", "torch"),
            AVX2,
            "int8 runs on the CPU in ONNX Runtime: leave out --runtime torch",
        ),
        (("cuda", "int8", "auto"), GPU, "int8 runs on the CPU in ONNX Runtime: use --device cpu"),
        (("auto", "auto", "onnx"), GPU, "--runtime onnx runs on the CPU: use --device cpu"),
        (("cuda", "auto", "openvino"), GPU, "--runtime openvino runs on the CPU"),
        (("cuda", "auto", "auto"), AMX, "--device cuda was asked for but no CUDA GPU is available"),
        (("cpu", "fp16", "auto"), GPU, "fp16 is slow and inaccurate on CPUs"),
        (("auto", "fp16", "auto"), AVX2, "fp16 is slow and inaccurate on CPUs"),
        (("cpu", "fp16", "torch"), AVX2, "fp16 is slow and inaccurate on CPUs"),
        # OpenVINO's towers are exported and checked by ONNX Runtime
        (("cpu", "auto", "onnx"), BARE, "ONNX Runtime is not installed: pip install onnxruntime"),
        (("cpu", "auto", "openvino"), BARE, "ONNX Runtime is not installed: pip install"),
        (("cpu", "int8", "auto"), BARE, "ONNX Runtime is not installed: pip install"),
        (("cpu", "auto", "openvino"), AMX_NO_OPENVINO, "OpenVINO is not installed: pip install"),
    ],
)
def test_what_cannot_run_is_a_one_line_usage_error(options, caps, message):
    with pytest.raises(OptionsError) as caught:
        plan(*options, caps)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("auto", "auto", "auto"), None),
        (("auto", "fp16", "auto"), None),  # a GPU's, should there be one
        (("cuda", "auto", "auto"), None),  # whether there is one: plan's, when the model loads
        (("auto", "auto", "onnx"), None),
        (("auto", "int8", "auto"), None),
        (("cpu", "fp16", "auto"), "fp16 is slow and inaccurate on CPUs"),
        (("auto", "bf16", "onnx"), "--runtime onnx runs fp32, not bf16"),
        (("auto", "int8", "torch"), "int8 runs on the CPU in ONNX Runtime: leave out --runtime"),
        (("cuda", "int8", "auto"), "int8 runs on the CPU in ONNX Runtime: use --device cpu"),
        (("cuda", "auto", "openvino"), "--runtime openvino runs on the CPU: use --device cpu"),
    ],
)
def test_the_settings_refuse_what_no_machine_could_run(options, message):
    """Before any command: what no machine could run, GPU or not, runtimes installed or not."""
    problem = options_problem(*options)
    assert problem == message if message is None else message in problem


@pytest.mark.parametrize(
    ("options", "cluster", "want"),
    [
        # the same plan the local engine makes on such machines
        (RayOptions(), AMX, Plan(CPU, BF16, OPENVINO, True)),
        (RayOptions(), AVX2, Plan(CPU, FP32, ONNX, True)),
        (RayOptions(precision="int8"), AVX2, Plan(CPU, INT8, ONNX, True)),
        (RayOptions(runtime="openvino"), AVX2, Plan(CPU, FP32, OPENVINO, True)),
        (RayOptions(runtime="torch"), AMX, Plan(CPU, BF16, TORCH, False)),
        # GPUs: Ray's to count, the plan's once given
        (RayOptions(gpus_per_worker=1.0), AVX2, Plan(CUDA, FP16, TORCH, False)),
        (RayOptions(gpus_per_worker=0.5, device="cuda"), AMX, Plan(CUDA, FP16, TORCH, False)),
        # a machine without bf16 units or OpenVINO decides for the cluster
        (RayOptions(), AMX.shared_with(AVX2), Plan(CPU, FP32, ONNX, True)),
        (RayOptions(), AMX.shared_with(AMX_NO_OPENVINO), Plan(CPU, BF16, TORCH, True)),
    ],
)
def test_the_ray_engine_settles_the_local_engines_plan(options, cluster, want):
    settled = settle_model(options, cluster)
    assert settled.plan == want
    assert (settled.device, settled.precision) == (str(want.device), str(want.precision))


@pytest.mark.parametrize(
    ("options", "cluster", "message"),
    [
        (RayOptions(device="cuda"), GPU, "--device cuda with --engine ray: give --gpus-per-worker"),
        (RayOptions(device="cpu", gpus_per_worker=1.0), GPU, "leave --gpus-per-worker out"),
        (RayOptions(precision="fp16"), AVX2, "fp16 is slow and inaccurate on CPUs"),
        (RayOptions(runtime="onnx", gpus_per_worker=1.0), AVX2, "--runtime onnx runs on the CPU"),
        (RayOptions(runtime="openvino"), AMX.shared_with(AMX_NO_OPENVINO), "pip install openvino"),
    ],
)
def test_what_a_cluster_cannot_run_is_refused(options, cluster, message):
    from organizer.errors import OrganizerError

    with pytest.raises(OrganizerError, match=message):
        settle_model(options, cluster)


def test_a_cluster_has_what_every_machine_has():
    assert AMX.shared_with(GPU) == Capabilities(False, False, True, True)
    assert AMX.shared_with(AMX) == AMX
    assert BARE.shared_with(AMX) == BARE
