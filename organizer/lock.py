"""The writer lock of a library: one writing process at a time, readers never wait.

An advisory ``flock`` on ``LIBRARY/lock``: the kernel drops it when the holder exits, even on
``kill -9``, so a crash never leaves a library locked. The holder writes its pid and command
into the file so that a refused process can say who is busy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from organizer.errors import LibraryBusyError

LOCK_FILE = "lock"


class WriterLock:
    """Exclusive lock on a library directory. Use as a context manager or acquire/release."""

    def __init__(self, library_dir: Path, purpose: str):
        self.path = library_dir / LOCK_FILE
        self.purpose = purpose
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as written by the holder ('ingest running (pid 123)')."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "another organizer process"

    def acquire(self, wait: bool = False, poll_s: float = 0.2) -> None:
        """Take the lock, or raise LibraryBusyError at once (``wait=False``) naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not wait:
                        raise LibraryBusyError(
                            f"library is busy: {self.holder()}; try again later or pass --wait"
                        ) from None
                    time.sleep(poll_s)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.purpose} running (pid {os.getpid()})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits, never raises for a busy library."""
        try:
            self.acquire(wait=False)
        except LibraryBusyError:
            return False
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
