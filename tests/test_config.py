"""Settings come from CLI > ORGANIZER_* > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from organizer.choices import Device, Precision, Runtime
from organizer.config import DEFAULT_MODEL, Settings, resolve_settings
from organizer.errors import OptionsError


def test_cli_beats_env_beats_default(tmp_path):
    env = {
        "ORGANIZER_LIBRARY": str(tmp_path / "env-lib"),
        "ORGANIZER_MODEL": "ViT-B-16",
        "ORGANIZER_BATCH_SIZE": "8",
    }
    s = resolve_settings(env=env)
    assert s.library == tmp_path / "env-lib" and s.model == "ViT-B-16" and s.batch_size == 8
    s = resolve_settings(env=env, library=Path("cli-lib"), model=None)
    assert s.library == Path("cli-lib") and s.model == "ViT-B-16"
    s = resolve_settings(env={})
    assert s.model is None and s.library.name == "library" and DEFAULT_MODEL == "ViT-B-32-256"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ORGANIZER_BATCH_SIZE": "many"}, "not a whole number"),
        ({"ORGANIZER_DEVICE": "tpu"}, "unknown device"),
        ({"ORGANIZER_PRECISION": "int4"}, "unknown precision"),
        ({"ORGANIZER_BATCH_SIZE": "0"}, "at least 1"),
        ({"ORGANIZER_WORKERS": "-1"}, "at least 0"),
        ({"ORGANIZER_LIBRARY": "mysql://bob@db/photos"}, "unsupported library URL"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag_and_the_variable(env, message):
    ((variable, value),) = env.items()
    flag = "--" + variable.removeprefix("ORGANIZER_").lower().replace("_", "-")
    with pytest.raises(OptionsError, match=message) as from_env:
        resolve_settings(env=env)
    assert f"({flag} or {variable})" in str(from_env.value)
    with pytest.raises(OptionsError) as from_flag:
        resolve_settings(env={}, **{flag[2:].replace("-", "_"): value})
    assert str(from_flag.value) == str(from_env.value)


def test_settings_hold_enums_from_text_or_enums():
    s = resolve_settings(
        env={"ORGANIZER_DEVICE": "cpu", "ORGANIZER_WORKERS": "2"}, precision="fp32"
    )
    assert s.device is Device.CPU and s.precision is Precision.FP32 and s.runtime is Runtime.AUTO
    assert s.workers == 2
    direct = Settings(library=Path("lib"), device=Device.CPU, runtime="onnx")
    assert direct.device is Device.CPU and direct.runtime is Runtime.ONNX
