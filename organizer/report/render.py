"""HTML rendering (Jinja2 template files, autoescaped) and the atomic write of the result.

The page's one script and one style sheet are allowed by their SHA-256 in the
Content-Security-Policy, so even a name that escaped escaping could not run script; nothing
remote is allowed at all.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from organizer.atomic import write_bytes_atomic
from organizer.errors import ReportError

if TYPE_CHECKING:
    from jinja2 import Environment

# What JSON.parse reads back unchanged but an HTML parser can never take for markup: "<" and
# ">" (no "</script>", no "<!--"), "&" (no character references), and the two line separators.
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def script_json(data: object) -> Markup:
    """JSON safe to put verbatim inside a ``<script type="application/json">`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Markup(text.translate(_JSON_ESCAPES))


def _environment() -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("organizer.report", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda n: f"{n:,}"
    env.filters["score"] = lambda x: "n/a" if x is None else f"{x:.3f}"
    env.filters["middle"] = middle
    return env


def middle(text: str, limit: int = 17) -> str:
    """A long file name shortened in the middle (``IMG_2019…_0042.jpg``): its start and its
    end, where names differ, stay readable under a thumbnail. The full name goes in a title."""
    if len(text) <= limit:
        return text
    tail = (limit - 1) // 2
    return text[: limit - 1 - tail] + "\u2026" + text[-tail:]


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy(script: str, style: str) -> str:
    """Nothing remote, no plugins, no forms; only this page's own script, style and data: images."""
    return (
        f"default-src 'none'; img-src data:; style-src {_sha256(style)}; "
        f"script-src {_sha256(script)}; base-uri 'none'; form-action 'none'"
    )


def render(context: dict) -> str:
    """The report page for a template context (see :mod:`organizer.report.build`)."""
    env = _environment()
    style = env.get_template("style.html").render(legend=context["legend"]).strip()
    script = env.get_template("map_script.html").render().strip()
    return env.get_template("report.html").render(
        **context,
        style=Markup(style),
        script=Markup(script),
        csp=content_security_policy(script, style),
    )


def check_target(path: Path, what: str = "report") -> None:
    """Fail early, before any slow work, when ``path`` cannot be written.

    Raises:
        ReportError: ``path`` is a folder, or its folder is missing or not writable.
    """
    if path.is_dir():
        raise ReportError(f"{path} is a folder: give the {what} a file name, like {path / 'x'}")
    folder = path.parent
    if not folder.is_dir():
        raise ReportError(f"cannot write the {what} to {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write the {what} to {path}: folder {folder} is not writable")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``: the
    file is either the old one or complete, never half-written.

    Raises:
        ReportError: the file cannot be written (permissions, a full disk...).
    """
    try:
        write_bytes_atomic(path, data, mode=0o666)  # a file to share: the umask decides
    except OSError as exc:
        raise ReportError(_write_reason(path, exc)) from None


def _write_reason(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: the disk is full (nothing was written): free some space"
    if exc.errno == errno.EISDIR:
        return f"{path} is a folder: give a file name, like {path / 'report.html'}"
    return f"cannot write {path}: {exc.strerror or exc}"
