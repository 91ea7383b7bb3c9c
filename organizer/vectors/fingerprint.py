"""A quick fingerprint of files: their sizes and sampled content, cheap at any size.

Every file's size, and its whole content up to ``WHOLE_MAX``, else ``BLOCKS`` blocks of
``BLOCK`` bytes spread over it (first and last included). The index files are checked with
it each time they are opened (see :mod:`organizer.vectors.files`), and so are the files
its updates write (see :mod:`organizer.vectors.grown`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

WHOLE_MAX = 64 << 20
BLOCK = 64 << 10
BLOCKS = 64


def quick_fingerprint(paths: Sequence[Path]) -> str | None:
    """Sizes and sampled content of ``paths`` in one digest; None if one cannot be read."""
    digest = hashlib.sha256()
    try:
        for path in paths:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                digest.update(f"{size};".encode())
                if size <= WHOLE_MAX:
                    digest.update(hashlib.file_digest(fh, "sha256").digest())
                    continue
                step = (size - BLOCK) / (BLOCKS - 1)
                for i in range(BLOCKS):
                    fh.seek(int(i * step))
                    digest.update(fh.read(BLOCK))
    except OSError:
        return None
    return digest.hexdigest()
