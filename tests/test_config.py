"""Settings come from CLI > ORGANIZER_* > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from organizer.config import DEFAULT_MODEL, resolve_settings
from organizer.errors import OrganizerError


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
    ],
)
def test_bad_values_are_one_line_errors(env, message):
    with pytest.raises(OrganizerError, match=message):
        resolve_settings(env=env)
