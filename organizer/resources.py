"""Where the files organizer ships live: the Alembic revisions and the data folder.

In a source checkout they are top-level folders (``migrations/``, ``data/``); an installed
wheel carries them inside the package as ``organizer/_migrations`` and ``organizer/_data``.
"""

from __future__ import annotations

from pathlib import Path

from organizer.errors import SchemaError

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """A top-level folder of the source tree, or its copy inside an installed wheel.

    Raises:
        SchemaError: organizer was installed without that folder.
    """
    for candidate in (_PACKAGE.parent / name, _PACKAGE / f"_{name}"):
        if candidate.is_dir():
            return candidate
    raise SchemaError(f"organizer is installed without its {name}/ folder: reinstall it")


def migrations_dir() -> Path:
    """The Alembic environment and its revisions."""
    return resource_dir("migrations")


def vocabulary_path() -> Path:
    """The default vocabulary for naming clusters."""
    return resource_dir("data") / "vocabulary.txt"
