"""Passwords are never shown: the one place that knows how to hide them in text.

Standard library only, so that the lowest layers (console output) can use it.
"""

from __future__ import annotations

import re

_PASSWORDS = (
    (re.compile(r"(://[^:/@\s]*:)[^@\s]*@"), r"\1***@"),  # scheme://user:password@host
    (re.compile(r"([?&]password=)[^&\s]*", re.IGNORECASE), r"\1***"),  # ...?password=...
)


def hide_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ***."""
    for pattern, replacement in _PASSWORDS:
        text = pattern.sub(replacement, text)
    return text
