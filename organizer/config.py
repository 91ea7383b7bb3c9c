"""Settings: the few knobs of organizer, resolved from CLI > ORGANIZER_* env > defaults.

A flag and the variable that stands for it are checked by the same code: both reach
:class:`Settings` as the text the user typed, and its checks name both spellings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

import platformdirs

from organizer.choices import Device, JpegDecode, Precision, Runtime, is_url
from organizer.embed.runtime import options_problem
from organizer.errors import LibraryURLError, OptionsError

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
ENV_PREFIX = "ORGANIZER_"


def default_library_dir() -> Path:
    """The per-user library directory (e.g. ~/.local/share/organizer/library on Linux)."""
    return platformdirs.user_data_path("organizer", appauthor=False) / "library"


def env_name(setting: str) -> str:
    """The variable that stands for a setting: ``batch_size`` -> ``ORGANIZER_BATCH_SIZE``."""
    return ENV_PREFIX + setting.upper()


def spellings(setting: str) -> str:
    """Where a setting comes from, for messages: ``--batch-size or ORGANIZER_BATCH_SIZE``."""
    if setting in _VARIABLE_ONLY:
        return env_name(setting)
    return f"--{setting.replace('_', '-')} or {env_name(setting)}"


_VARIABLE_ONLY = frozenset({"offline", "jpeg_decode"})  # settings with no flag


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know besides its own arguments.

    ``library`` is a folder, or a database URL (``postgresql://user@host/db``) kept as the
    text the user gave, so it is left out of the repr: it may hold a password.
    ``model`` and ``pretrained`` are ``None`` when the user chose nothing: the library's
    recorded model is used then, or the defaults for a new library.

    Each field also takes the text of its flag or variable ("cpu", "8"): it is checked and
    converted here, so ``device``, ``precision`` and ``runtime`` always hold enums.

    Raises:
        OptionsError: a value that cannot work, naming its flag and variable.
    """

    library: Path | str = field(repr=False)
    model: str | None = None
    pretrained: str | None = None
    device: Device = Device.AUTO
    precision: Precision = Precision.AUTO
    runtime: Runtime = Runtime.AUTO
    batch_size: int | None = None
    workers: int | None = None
    offline: bool = False
    endpoint_url: str | None = None  # an S3-compatible service that is not AWS
    jpeg_decode: JpegDecode = JpegDecode.AUTO  # ORGANIZER_JPEG_DECODE only: no flag

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        problem = options_problem(self.device, self.precision, self.runtime)
        if problem:
            raise OptionsError(problem)


def _library(name: str, value: Path | str) -> Path | str:
    """A folder (never "", which Path() reads as the working folder), or a usable URL."""
    if isinstance(value, str) and not value.strip():
        raise OptionsError(
            f"{value!r} is an empty path ({spellings(name)}): give a folder or a database URL "
            "(is a shell variable unset?)"
        )
    if not is_url(value):
        return Path(value).expanduser()
    from organizer.store.db import library_url

    try:
        library_url(str(value))
    except LibraryURLError as exc:  # says what is wrong, the password hidden
        raise LibraryURLError(f"{exc} ({spellings(name)})") from None
    return value


def _choice(name: str, value: object) -> StrEnum:
    kind = _ENUMS[name]
    try:
        return kind(str(value))
    except ValueError:
        raise OptionsError(
            f"unknown {name} {value!r} ({spellings(name)}): choose one of {', '.join(kind)}"
        ) from None


def _whole(name: str, value: object) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if isinstance(value, str) else value
    except ValueError:
        raise OptionsError(f"{value!r} is not a whole number ({spellings(name)})") from None
    least = _LEAST[name]
    if not isinstance(number, int) or number < least:
        what = name.replace("_", " ")
        raise OptionsError(f"{what} must be at least {least}, not {value!r} ({spellings(name)})")
    return number


def _flag(name: str, value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _named(name: str, value: object) -> object:
    """A model name or config path, a weights tag or checkpoint path: never blank (a
    checkpoint path of "" would be the working folder; a blank name no model at all)."""
    if isinstance(value, str) and not value.strip():
        raise OptionsError(
            f"{value!r} is empty ({spellings(name)}): name one, or leave the option out "
            "(is a shell variable unset?)"
        )
    return value


def _endpoint(name: str, value: object) -> str | None:
    """An http(s) URL with a host and nothing secret in it (it is recorded with the roots)."""
    if value is None:
        return None
    from urllib.parse import urlsplit

    text = str(value).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise OptionsError(
            f"the endpoint must be an http:// or https:// URL with a host ({spellings(name)})"
        )
    if parts.username or parts.password:
        raise OptionsError(
            f"the endpoint must not hold a user name or password ({spellings(name)}): "
            "credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile"
        )
    return text.rstrip("/")


_ENUMS: dict[str, type[StrEnum]] = {
    "device": Device,
    "precision": Precision,
    "runtime": Runtime,
    "jpeg_decode": JpegDecode,
}
_LEAST = {"batch_size": 1, "workers": 0}
_CHECKS = {
    "library": _library,
    "model": _named,
    "pretrained": _named,
    "device": _choice,
    "precision": _choice,
    "runtime": _choice,
    "batch_size": _whole,
    "workers": _whole,
    "offline": _flag,
    "endpoint_url": _endpoint,
    "jpeg_decode": _choice,
}


def resolve_settings(env: dict[str, str] | None = None, **cli: object) -> Settings:
    """Build Settings from CLI values (``None`` = not given), then ORGANIZER_* variables, then defaults.

    A flag's value may be the text the user typed: it is checked as its variable's would be.

    Example: ``resolve_settings(model=None, library=Path("lib"))`` takes the model from
    ``ORGANIZER_MODEL`` if set and the library from the argument.

    Raises:
        OptionsError: a value that cannot work, from a flag or a variable.
    """
    env = dict(os.environ) if env is None else env
    values: dict[str, object] = {}
    for f in fields(Settings):
        value = cli.get(f.name)
        if value is None:
            value = env.get(env_name(f.name)) or None  # set but empty counts as not set
        if value is not None:
            values[f.name] = value
    values.setdefault("library", default_library_dir())
    return Settings(**values)  # type: ignore[arg-type]
