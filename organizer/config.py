"""Settings: the few knobs of organizer, resolved from CLI > ORGANIZER_* env > defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import platformdirs

from organizer.choices import Device, Precision, Runtime, is_url
from organizer.embed.runtime import options_problem
from organizer.errors import OptionsError, OrganizerError

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
ENV_PREFIX = "ORGANIZER_"


DEVICES = tuple(d.value for d in Device)
PRECISIONS = tuple(p.value for p in Precision)
RUNTIMES = tuple(r.value for r in Runtime)


def default_library_dir() -> Path:
    """The per-user library directory (e.g. ~/.local/share/organizer/library on Linux)."""
    return platformdirs.user_data_path("organizer", appauthor=False) / "library"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know besides its own arguments.

    ``library`` is a folder, or a database URL (``postgresql://user@host/db``) kept as the
    text the user gave, so it is left out of the repr: it may hold a password.
    ``model`` and ``pretrained`` are ``None`` when the user chose nothing: the library's
    recorded model is used then, or the defaults for a new library.
    """

    library: Path | str = field(repr=False)
    model: str | None = None
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise OrganizerError(
                f"unknown device {self.device!r}: choose one of {', '.join(DEVICES)}"
            )
        if self.precision not in PRECISIONS:
            raise OrganizerError(
                f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.runtime not in RUNTIMES:
            raise OrganizerError(
                f"unknown runtime {self.runtime!r}: choose one of {', '.join(RUNTIMES)}"
            )
        problem = options_problem(self.device, self.precision, self.runtime)
        if problem:
            raise OptionsError(problem)
        if self.batch_size is not None and self.batch_size < 1:
            raise OrganizerError(f"batch size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise OrganizerError(f"workers must be 0 or more, not {self.workers}")


def _from_env(name: str, kind: type, env: dict[str, str]) -> object | None:
    raw = env.get(ENV_PREFIX + name.upper())
    if raw is None or raw == "":
        return None
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise OrganizerError(
                f"{ENV_PREFIX}{name.upper()}={raw!r} is not a whole number"
            ) from None
    if kind is Path:
        return raw if is_url(raw) else Path(raw).expanduser()
    return raw


_KINDS = {
    "library": Path,
    "model": str,
    "pretrained": str,
    "device": str,
    "precision": str,
    "runtime": str,
    "batch_size": int,
    "workers": int,
    "offline": bool,
}


def resolve_settings(env: dict[str, str] | None = None, **cli: object) -> Settings:
    """Build Settings from CLI values (``None`` = not given), then ORGANIZER_* variables, then defaults.

    Example: ``resolve_settings(model=None, library=Path("lib"))`` takes the model from
    ``ORGANIZER_MODEL`` if set and the library from the argument.
    """
    env = dict(os.environ) if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        value = cli.get(f.name)
        if value is None:
            value = _from_env(f.name, _KINDS[f.name], env)
        if value is not None:
            values[f.name] = value
    if "library" not in values:
        values["library"] = default_library_dir()
    library = values["library"]
    if not is_url(library):
        values["library"] = Path(library).expanduser()  # type: ignore[arg-type]
    return Settings(**values)  # type: ignore[arg-type]
