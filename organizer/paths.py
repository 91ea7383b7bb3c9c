"""Whether one path lies inside another, decided the same way everywhere.

A comparison of the path strings (or bytes) as given: nothing is resolved here, so a caller
that must not be fooled by symbolic links or ``..`` passes ``os.path.realpath`` of both.
"""

from __future__ import annotations

from typing import AnyStr


def is_within(path: AnyStr, folder: AnyStr, *, strictly: bool = False) -> bool:
    """Whether ``path`` is ``folder`` or below it (only below it with ``strictly``).

    "Below" is by whole names: ``/photos/2024`` is below ``/photos`` and ``/photos/``, while
    ``/photos2`` is not. Everything absolute is below ``/``.

    Example::

        is_within("/photos/2024", "/photos")  # True
        is_within("/photos", "/photos", strictly=True)  # False
    """
    sep = b"/" if isinstance(path, bytes) else "/"
    below = path.startswith(folder.rstrip(sep) + sep)
    return below if strictly else (path == folder or below)
