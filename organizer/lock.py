"""The writer lock of a library: one writing process at a time, readers never wait.

A folder library: an advisory file lock (:mod:`organizer.filelock`) on ``LIBRARY/lock``. The kernel drops it when the
holder exits, even on ``kill -9``, so a crash never leaves a library locked. The holder
writes its pid and command into the file so that a refused process can say who is busy.

A library on PostgreSQL: a session-level advisory lock, held on a connection of its own.
The server drops it when that connection ends (the holder exited, or its machine went
away); the holder names itself in ``application_name`` for the refused process to read.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Self

from sqlalchemy import Connection, Engine, text

from organizer.errors import LibraryBusyError
from organizer.filelock import FileLock

LOCK_FILE = "lock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is alive (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Lock:
    """What both locks share: take it if free, hold it in a ``with`` block."""

    def acquire(self, wait: bool = False, poll_s: float = 0.2) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    @property
    def held(self) -> bool:
        raise NotImplementedError

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits, never raises for a busy library."""
        try:
            self.acquire(wait=False)
        except LibraryBusyError:
            return False
        return True

    def __enter__(self) -> Self:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class WriterLock(_Lock):
    """Exclusive lock on a library directory. Use as a context manager or acquire/release."""

    def __init__(self, library_dir: Path, purpose: str):
        self.path = library_dir / LOCK_FILE
        self.purpose = purpose
        self._file = FileLock(self.path)

    def holder(self) -> str:
        """Who holds the lock, as written by the holder ('ingest running (pid 123)')."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "another organizer process"

    def acquire(self, wait: bool = False, poll_s: float = 0.2) -> None:
        """Take the lock, or raise LibraryBusyError at once (``wait=False``) naming the holder."""
        while not self._file.acquire(wait=False):
            if not wait:
                raise LibraryBusyError(
                    f"library is busy: {self.holder()}; try again later or pass --wait"
                )
            time.sleep(poll_s)
        fd = self._file.fd
        assert fd is not None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.purpose} running (pid {os.getpid()})\n".encode(), 0)
        except BaseException:
            self._file.release()
            raise

    def release(self) -> None:
        if self._file.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fd, 0)
        self._file.release()

    @property
    def held(self) -> bool:
        return self._file.held


# Advisory locks are per database: one fixed key ("organize" in ASCII) is the writer lock.
ADVISORY_KEY = 0x6F7267616E697A65
_HOLDER = text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low"
)


class AdvisoryLock(_Lock):
    """The writer lock of a library on PostgreSQL; the same interface as :class:`WriterLock`."""

    def __init__(self, engine: Engine, purpose: str):
        self.engine = engine
        self.purpose = purpose
        self._conn: Connection | None = None

    def holder(self) -> str:
        """Who holds the lock ('ingest running (pid 123 on host)')."""
        key = ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF
        params = {"high": key >> 32, "low": key & 0xFFFFFFFF}
        try:
            with self.engine.connect() as conn:
                names = conn.execute(_HOLDER, params).scalars().all()
        except Exception:  # only for a message: never mask the busy library itself
            names = []
        for name in names:
            if name and name.startswith("organizer "):
                return name.removeprefix("organizer ")
        return "another organizer process"

    def taken(self) -> bool:
        """Whether some session holds the lock now, asked without trying to take it (a try,
        even for an instant, could turn a starting ingest away as busy)."""
        key = ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF
        params = {"high": key >> 32, "low": key & 0xFFFFFFFF}
        with self.engine.connect() as conn:
            return bool(conn.execute(_HOLDER, params).first())

    def acquire(self, wait: bool = False, poll_s: float = 0.2) -> None:
        """Take the lock, or raise LibraryBusyError at once (``wait=False``) naming the holder."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            label = (
                f"organizer {self.purpose} running (pid {os.getpid()} on {socket.gethostname()})"
            )
            conn.execute(text("SELECT set_config('application_name', :v, false)"), {"v": label})
            while not conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}
            ).scalar():
                if not wait:
                    raise LibraryBusyError(
                        f"library is busy: {self.holder()}; try again later or pass --wait"
                    )
                time.sleep(poll_s)
        except BaseException:
            conn.invalidate()  # a connection that may hold the lock never goes back to the pool
            conn.close()
            raise
        self._conn = conn

    def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        # Unlock first: a closed session's locks go only when its server process has exited,
        # a moment after the client hangs up, and a writer starting at once would find the
        # library busy. Closing the session still releases the lock for sure, whatever state
        # the connection is in.
        with contextlib.suppress(Exception):
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
        conn.invalidate()
        conn.close()

    @property
    def held(self) -> bool:
        return self._conn is not None
