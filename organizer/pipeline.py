"""The decode stage of ingest: read a file once, hash it, decode and resize it for the model.

:func:`prepare` is a pure function of its arguments so that it can run in worker processes;
it never raises for a bad file, it returns the reason instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

import numpy as np

from organizer.embed.runtime import usable_cores
from organizer.errors import ImageError, StorageError
from organizer.imaging import (
    HEADER_BYTES,
    ImageInfo,
    PreprocessSpec,
    decode,
    device_jpeg,
    file_meta,
    header_is_enough,
    to_model_input,
)
from organizer.photo_meta import PhotoMeta
from organizer.resize import use_one_thread
from organizer.scan import is_raw_name
from organizer.sources import (
    Storage,
    fetch,
    is_local_folder,
    is_remote,
    read_member,
    read_stored,
)

CHANGED_WHILE_READING = -1  # stored as mtime_ns so that the next run always retries the file


@dataclass(frozen=True)
class Job:
    """One file to read: where it is and what the scan saw (size -1: no scan to compare).

    ``path`` is a path on this machine or an object's URL. A member of a tar shard has its
    shard's path or URL in ``shard``, where its bytes start in ``offset``, and the shard's
    fingerprint in ``version``. ``data`` holds the bytes when they were fetched ahead (a
    bucket's objects), or ``error`` why they could not be.
    """

    key: int
    path: bytes
    size: int
    mtime_ns: int
    shard: bytes | None = None
    offset: int = -1
    version: str | None = None
    storage: Storage | None = None
    data: bytes | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def remote(self) -> bool:
        """Whether the bytes come from a bucket (then they are best fetched ahead)."""
        return is_remote(self.shard if self.shard is not None else self.path)


@dataclass
class Prepared:
    """What the decode stage made of one file."""

    key: int
    size: int
    mtime_ns: int
    content_hash: str | None = None
    info: ImageInfo | None = None
    pixels: np.ndarray | None = None
    error: str | None = None
    vector: np.ndarray | None = None  # embedded already (by a Ray actor)
    # A JPEG left encoded for the model's device to decode (see prepare_encoded): its
    # header passed the same checks as a decoded file's, and ``info`` is filled.
    encoded: bytes | None = field(default=None, repr=False)

    @property
    def held_bytes(self) -> int:
        """What its pixels or encoded bytes hold in memory while it waits for the model."""
        if self.pixels is not None:
            return int(self.pixels.nbytes)
        return len(self.encoded or b"")


def read_file(path: bytes) -> tuple[bytes, int, int]:
    """Read a whole file; return its bytes and the size and mtime it had while being read.

    Raises:
        ImageError: the file cannot be opened or read, or changed while it was read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ImageError(f"cannot open file: {exc.strerror}") from None
    except OSError as exc:
        raise ImageError(f"cannot open file: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read()
        after = os.fstat(fd)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(
        data
    ) != after.st_size:
        raise ImageError("file changed while it was being read; it will be retried")
    return data, after.st_size, after.st_mtime_ns


def read_job(job: Job) -> tuple[bytes, int, int]:
    """A job's bytes, with the size and modification time they had when read.

    Raises:
        ImageError: the file, object or member cannot be read now, or changed.
        StorageError: a bucket's service failed (the run stops).
    """
    if job.error is not None:
        raise ImageError(job.error)
    if job.data is not None:  # fetched ahead, and checked against the listing then
        return job.data, job.size, job.mtime_ns
    storage = job.storage or Storage()
    if job.shard is not None:
        name = job.path[len(job.shard.rstrip(b"/")) + 1 :]
        data = read_member(job.shard, job.offset, job.size, storage, job.version, name)
        return data, job.size, job.mtime_ns
    if is_remote(job.path):
        return fetch(job.path, storage, size=job.size), job.size, job.mtime_ns
    return read_file(job.path)


def prepare(
    job: Job,
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
    draft: bool = True,
    encoded: bool = False,
) -> Prepared:
    """Read, hash and (unless the hash is in ``skip_decode``) decode one file for the model.

    With ``spec`` None only the hash and image info are produced (no pixels). With
    ``encoded``, a JPEG that a GPU decoder can take (see :func:`~organizer.imaging.device_jpeg`)
    is checked and its info read, but it is left encoded, in ``Prepared.encoded``.
    """
    try:
        data, size, mtime_ns = read_job(job)
    except (ImageError, StorageError) as exc:  # unreadable now; cheap to try again next run
        return Prepared(job.key, job.size, CHANGED_WHILE_READING, error=str(exc))
    if job.size >= 0 and (size, mtime_ns) != (job.size, job.mtime_ns):
        # Replaced or still being written since the scan: record it, and look again next run.
        return Prepared(
            job.key,
            size,
            CHANGED_WHILE_READING,
            error="file changed since the scan; it will be retried",
        )
    result = Prepared(job.key, size, mtime_ns, content_hash=hashlib.sha256(data).hexdigest())
    if result.content_hash in skip_decode:
        return result
    raw = is_raw_name(job.path)
    try:
        if encoded and spec is not None and not raw:
            result.info = device_jpeg(data)
            if result.info is not None:
                result.encoded = data
                return result
        result.info, result.pixels = decode_for_model(data, spec, draft, raw)
    except ImageError as exc:
        result.error = str(exc)
    return result


def prepare_encoded(
    job: Job,
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
    draft: bool = True,
) -> Prepared:
    """:func:`prepare` leaving the JPEGs a GPU can decode encoded: the decode processes'
    function when the model's device decodes them (the local engine on CUDA)."""
    return prepare(job, spec, skip_decode, draft, encoded=True)


def decode_for_model(
    data: bytes, spec: PreprocessSpec | None, draft: bool = True, raw: bool = False
) -> tuple[ImageInfo, np.ndarray | None]:
    """A file's info and (with a ``spec``) its pixels for the model, decoded with Pillow.

    Raises:
        ImageError: the bytes cannot be decoded (not enough memory included).
    """
    try:
        # JPEGs are decoded at the smallest DCT scale that keeps the spec's decode_size.
        min_size = spec.decode_size if (spec is not None and draft) else None
        image, info = decode(data, min_size=min_size, raw=raw)
        return info, to_model_input(image, spec) if spec is not None else None
    except MemoryError:
        raise ImageError("not enough memory to decode this image") from None


def header_meta(path: bytes) -> PhotoMeta | None:
    """A file's photo metadata, reading no more of it than its header holds (a JPEG's first
    HEADER_BYTES; all of other formats). None when the file cannot be read now (worth trying
    again later); empty when it can but its header says nothing usable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(HEADER_BYTES)
            whole = len(data) < HEADER_BYTES
            if not whole and not header_is_enough(data):
                data, whole = data + fh.read(), True
            meta = file_meta(data, raw=is_raw_name(path))
            if meta is None and not whole:  # a JPEG whose segments run past the prefix
                meta = file_meta(data + fh.read(), raw=False)
    except OSError:
        return None
    return meta or PhotoMeta()


def stored_header_meta(
    image: tuple[str, bytes], storage: Storage | None = None
) -> PhotoMeta | None:
    """:func:`header_meta` of an image (root, relpath) under any root: a folder's file (its
    header only), an object in a bucket or a shard's member (read whole).

    Raises:
        StorageError: a bucket's service fails (one image's failure is None, as for a file).
    """
    root, relpath = image
    if is_local_folder(root):
        return header_meta(os.path.join(os.fsencode(root), relpath))
    try:
        data = read_stored(root, relpath, storage)
    except ImageError:
        return None
    return file_meta(data, raw=is_raw_name(relpath)) or PhotoMeta()


# -- reading ahead from buckets ----------------------------------------------------------------

# Objects fetched at once: enough that round trips overlap the decoding and the model
# (at 30 ms a request and ~100 images/s, a few dozen), within the connection pool's size.
FETCH_DEPTH = 32
# ...and at most this many bytes fetched but not yet handed on (large objects stream less).
FETCH_BYTES = 256 * 1024 * 1024


def _fetched(job: Job) -> Job:
    try:
        data, _size, _mtime_ns = read_job(job)
    except ImageError as exc:
        return replace(job, error=str(exc))
    return replace(job, data=data)


def fetch_ahead(
    jobs: Iterable[Job], depth: int = FETCH_DEPTH, budget: int = FETCH_BYTES
) -> Iterator[Job]:
    """The jobs, those in buckets with their bytes fetched ``depth`` at a time on threads (in
    the order they arrive); files on this machine pass through as they are.

    Raises:
        StorageError: the service failed; fetches still in flight are dropped.
    """
    pool: ThreadPoolExecutor | None = None
    pending: dict[Future[Job], int] = {}
    try:
        for job in jobs:
            if not job.remote or job.data is not None or job.error is not None:
                yield job
                continue
            if pool is None:
                pool = ThreadPoolExecutor(depth, thread_name_prefix="organizer-fetch")
            while pending and (
                len(pending) >= depth or sum(pending.values()) + max(job.size, 0) > budget
            ):
                yield from _finished(pending, FIRST_COMPLETED)
            pending[pool.submit(_fetched, job)] = max(job.size, 0)
        while pending:
            yield from _finished(pending, FIRST_COMPLETED)
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _finished(pending: dict[Future[Job], int], when: str) -> Iterator[Job]:
    done, _ = wait_for(list(pending), return_when=when)
    for future in done:
        del pending[future]
    for future in done:
        yield future.result()  # a StorageError stops the run here


def prepare_all(
    jobs: Iterable[Job],
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
    prepare_fn: PrepareFn = prepare,
) -> Generator[Prepared]:
    """Prepare files one after another in this process (the reference path); objects in
    buckets are fetched ahead all the same."""
    skip = frozenset(skip_decode)
    for job in fetch_ahead(jobs):
        yield prepare_fn(job, spec, skip, True)


# -- the parallel decode stage -------------------------------------------------------------

# prepare() or a test's stand-in: (job, spec, skip_decode, draft) -> Prepared
PrepareFn = Callable[[Job, PreprocessSpec | None, frozenset[str], bool], Prepared]


def _worker_main(
    conn: Connection,
    prepare_fn: PrepareFn,
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str],
    draft: bool,
) -> None:
    """A decode worker: prepare each job it is sent until it receives None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        if spec is not None:  # it resizes pictures: torch on one thread, once imported
            use_one_thread(now=False)
        conn.send(_READY)  # imports done: from now on a crash is the file's doing
        while True:
            job = conn.recv()
            if job is None:
                return
            conn.send(prepare_fn(job, spec, skip_decode, draft))
    except (EOFError, OSError, KeyboardInterrupt):
        return


_READY = "ready"
_START_TIMEOUT_S = 120.0


class PoolUnavailable(RuntimeError):
    """Decode processes cannot be started here (no permission to run the interpreter, no
    memory, ...): the caller decodes in its own process instead."""


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    job: Job | None = None
    started: float = 0.0


def _has_result(worker: _Worker) -> bool:
    try:
        return bool(worker.conn.poll())
    except (EOFError, OSError):
        return False


class DecodePool:
    """Decode worker processes fed by a thread of the main process.

    Results come out of :meth:`results` as they are ready (any order), through a bounded
    queue, so memory stays flat however many files there are. A worker that crashes or
    takes longer than ``timeout_s`` on a file is replaced and the file is reported as failed;
    the run goes on. :meth:`close` (also on Ctrl-C) stops every worker.
    """

    def __init__(
        self,
        workers: int,
        spec: PreprocessSpec | None,
        skip_decode: frozenset[str] = frozenset(),
        timeout_s: float = 120.0,
        buffer: int = 64,
        draft: bool = True,
        prepare_fn: PrepareFn = prepare,
    ) -> None:

        self._ctx = mp.get_context("spawn")  # never fork a process that may hold torch threads
        self._args = (prepare_fn, spec, frozenset(skip_decode), draft)
        self._timeout_s = timeout_s
        self._buffer = buffer
        self._thread: threading.Thread | None = None
        self._stop = False
        self._workers = [self._start() for _ in range(max(1, workers))]
        try:
            for worker in self._workers:
                self._await_ready(worker)
        except PoolUnavailable:
            self.close()
            raise

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child, *self._args), daemon=True, name="organizer-decode"
        )
        # Started with SIGINT blocked, so that a Ctrl-C during the worker's start-up cannot
        # interrupt its imports; the worker ignores SIGINT, then unblocks it.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        except OSError as exc:
            raise PoolUnavailable(f"cannot start a decode process: {exc}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child.close()
        return _Worker(process, parent)

    @staticmethod
    def _await_ready(worker: _Worker) -> None:
        try:
            if worker.conn.poll(_START_TIMEOUT_S) and worker.conn.recv() == _READY:
                return
        except (EOFError, OSError):
            pass
        raise PoolUnavailable("a decode process exited while starting")

    def _spawn(self) -> _Worker:
        worker = self._start()
        self._await_ready(worker)
        return worker

    def results(self, jobs: Iterable[Job]) -> Iterator[Prepared]:
        """Prepare every job; yields each result once, in completion order."""

        out: queue.Queue[object] = queue.Queue(maxsize=self._buffer)
        done = object()
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                self._run(iter(jobs), out)
            except BaseException as exc:  # surfaced in the consumer below
                errors.append(exc)
            finally:
                self._put(out, done)

        self._thread = threading.Thread(target=feed, name="organizer-decode-feed", daemon=True)
        self._thread.start()
        while True:
            item = out.get()
            if item is done:
                break
            assert isinstance(item, Prepared)
            yield item
        if errors:
            raise errors[0]

    def _run(self, jobs: Iterator[Job], out: queue.Queue[object]) -> None:

        exhausted = False
        while not self._stop:
            for worker in self._workers:
                if worker.job is None and not exhausted:
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                        break
                    try:
                        worker.conn.send(job)
                    except OSError:  # it died while idle (e.g. killed): a fresh one takes the job
                        self._respawn(worker)
                        worker.conn.send(job)
                    worker.job, worker.started = job, time.monotonic()
            busy = [w for w in self._workers if w.job is not None]
            if not busy and exhausted:
                return
            handles: dict[Connection | int, _Worker] = {w.conn: w for w in busy}
            handles |= {w.process.sentinel: w for w in busy}
            for handle in wait(list(handles), timeout=1.0):
                worker = handles[handle]  # type: ignore[index]  # wait() returns what it was given
                if worker.job is not None:
                    self._collect(worker, out)
            now = time.monotonic()
            for worker in self._workers:
                if worker.job is not None and now - worker.started > self._timeout_s:
                    if _has_result(worker):  # done while the consumer was busy (a model load)
                        continue
                    self._fail(worker, f"decoding took longer than {self._timeout_s:.0f} s", out)

    def _collect(self, worker: _Worker, out: queue.Queue[object]) -> None:
        try:
            if worker.conn.poll():
                result = worker.conn.recv()
                worker.job = None
                self._put(out, result)
                return
        except (EOFError, OSError):
            pass
        if not worker.process.is_alive():
            self._fail(worker, "the decoder crashed on this file", out)

    def _put(self, out: queue.Queue[object], item: object) -> None:
        """Hand a result to the consumer, waiting while it is behind (back-pressure)."""

        while not self._stop:
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _fail(self, worker: _Worker, reason: str, out: queue.Queue[object]) -> None:
        """Report the file of a crashed or stuck worker as failed (with its scanned size and
        mtime, so it is retried only once it changes), then replace the worker."""
        job = worker.job
        assert job is not None  # only a busy worker fails
        self._put(out, Prepared(job.key, job.size, job.mtime_ns, error=reason))
        self._respawn(worker)

    def _respawn(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        fresh = self._spawn()
        worker.process, worker.conn, worker.job = fresh.process, fresh.conn, None

    def close(self) -> None:
        """Stop the feeding thread and every worker (idempotent)."""
        self._stop = True
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(timeout=1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers(device: str) -> int:
    """Decode processes beside the model: half the cores on CPU (the model takes them all, and
    decoding with draft costs a fraction of a forward pass), all but one beside a GPU."""
    cores = usable_cores()
    if device == "cuda":
        return max(1, cores - 1)
    return max(1, cores // 2)


def prepare_parallel(
    jobs: Iterable[Job],
    spec: PreprocessSpec | None,
    skip_decode: frozenset[str] | set[str] = frozenset(),
    workers: int = 1,
    prepare_fn: PrepareFn = prepare,
) -> Generator[Prepared]:
    """Prepare files in ``workers`` decode processes (each file with ``prepare_fn``); results
    in completion order.

    Where decode processes cannot run, files are prepared in this process instead.
    """
    jobs = list(jobs)
    done: set[int] = set()
    try:
        with DecodePool(workers, spec, frozenset(skip_decode), prepare_fn=prepare_fn) as pool:
            for prepared in pool.results(fetch_ahead(jobs)):
                done.add(prepared.key)
                yield prepared
    except PoolUnavailable as exc:
        warnings.warn(f"decoding in the main process instead ({exc})", stacklevel=2)
        left = (j for j in jobs if j.key not in done)
        yield from prepare_all(left, spec, skip_decode, prepare_fn)
