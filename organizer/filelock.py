"""Advisory file locks between processes of one machine (``flock`` on a lock file).

The kernel drops a lock when its holder's process exits, even on ``kill -9``: a crash never
leaves anything locked. The library's writer lock, the index files' lock and the model
cache's exporter lock are all this one kind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    """A ``flock`` on ``path`` (created if missing), shared or exclusive; release it, or use
    it in a ``with`` block (exclusive, waiting).

    Example::

        with FileLock(folder / ".lock"):
            ...  # one process at a time here
    """

    def __init__(self, path: Path, mode: int = 0o600):
        """``mode``: permissions of a new lock file before the umask (0o666 for a folder other
        users lock too)."""
        self.path = path
        self.mode = mode
        self.fd: int | None = None

    def acquire(self, *, shared: bool = False, wait: bool = True) -> bool:
        """Take the lock; without ``wait``, return False at once when another process holds
        it (exclusively, or at all for an exclusive lock).

        Raises:
            OSError: the lock file cannot be opened or created (a read-only folder).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        """Let the lock go (nothing when not held)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
