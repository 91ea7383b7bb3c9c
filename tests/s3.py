"""A real S3 endpoint on 127.0.0.1 for tests and benchmarks: moto's server, and a proxy.

Why a server and not ``moto.mock_aws``: the in-process mock patches botocore, so it never
exercises what S3 code depends on in practice (aiobotocore/aiohttp under s3fs, connection
pools, retries, endpoint discovery from ``AWS_ENDPOINT_URL``). Moto's standalone server
speaks real HTTP on a local port, so every client library runs unchanged.

- :class:`MotoServer` runs ``python -m moto.server`` as a subprocess on a free local port,
  optionally with IAM authentication (``auth_after``, see :meth:`MotoServer.make_user`).
- :class:`Proxy` is a TCP proxy that can add latency (``delay_s``) and make the service go
  away and come back (:meth:`Proxy.pause`, :meth:`Proxy.resume`) on the same port.
- Fixtures: :func:`s3_env` (no developer AWS settings leak in, nothing reaches the network),
  :func:`moto_server` (one per session), :func:`s3` (a fresh bucket per test) and
  :func:`s3_proxy` (the test's S3 traffic through a :class:`Proxy`).

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

__all__ = [
    "FAKE_KEY_ID",
    "FAKE_REGION",
    "FAKE_SECRET",
    "S3_FULL_ACCESS",
    "MotoServer",
    "Proxy",
    "S3Bucket",
    "moto_server",
    "s3",
    "s3_env",
    "s3_proxy",
]

LOCALHOST = "127.0.0.1"
# Credentials every test signs with: moto accepts anything while authentication is off.
FAKE_KEY_ID, FAKE_SECRET, FAKE_REGION = "testing", "testing", "us-east-1"

# An IAM policy allowing every S3 action on every resource (MotoServer.make_user's default).
S3_FULL_ACCESS: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


def free_port(host: str = LOCALHOST) -> int:
    """A port nobody listens on right now (the kernel's pick for port 0). Another process may
    take it before the caller binds it; :meth:`MotoServer.start` retries if that happens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _local_opener() -> urllib.request.OpenerDirector:
    """urllib without the developer's HTTP(S)_PROXY: the server is on 127.0.0.1."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- moto's standalone server ---------------------------------------------------------------


class MotoServer:
    """``python -m moto.server`` in a subprocess on 127.0.0.1, a free port.

    Every service moto knows answers on :attr:`url` (S3, IAM, STS...). The server's output
    goes to :attr:`log_path` in a temporary folder, removed by :meth:`stop`.

    Authentication: without ``auth_after`` moto accepts any credentials, signed or not. With
    ``auth_after=N`` the subprocess gets ``INITIAL_NO_AUTH_ACTION_COUNT=N``: moto serves the
    first N AWS requests (S3, IAM... calls; not the ``/moto-api/`` control endpoints) without
    checking anything, then checks every request as AWS would: the access key must belong to
    an IAM user (else ``InvalidAccessKeyId``; IAM calls say ``InvalidClientTokenId``), the
    SigV4 signature must match that key's secret (else ``SignatureDoesNotMatch``), and the
    user's policies must allow the action (else ``AccessDenied``). The N free requests are
    for creating the bucket and the users (create_user, put_user_policy, create_access_key:
    three per user), or use :meth:`make_user`, which does not count against N.

    Unlike S3, the server (werkzeug's development server) closes every connection after one
    answer (``Connection: close``): each request opens a new connection, so keep-alive and
    connection reuse are not exercised against it. Some answers (listings) carry two
    ``Server`` headers, werkzeug's and moto's; aiohttp's strict parser, used when Python runs
    in development mode (``-X dev``, ``PYTHONDEVMODE=1``, ``PYTHONASYNCIODEBUG=1``), refuses
    them, so s3fs fails against moto in that mode.
    """

    def __init__(self, auth_after: int | None = None, start_timeout_s: float = 20.0) -> None:
        self.auth_after = auth_after
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.folder: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- life --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint URL, ``http://127.0.0.1:PORT``."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """(host, port), for a :class:`Proxy` in front of the server."""
        return (LOCALHOST, self.port)

    @property
    def log_path(self) -> Path:
        assert self.folder is not None, "the server was never started"
        return self.folder / "moto.log"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if self.auth_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.auth_after)
        # Moto builds some URLs (presigned ones, for instance) from MOTO_PORT.
        env["MOTO_PORT"] = str(self.port)
        return env

    def start(self) -> Self:
        """Start the server and wait until it answers HTTP. A port taken between choosing and
        binding it makes the subprocess exit; that is retried twice on a new port."""
        if self._proc is not None:
            raise RuntimeError("the moto server is already running")
        self.folder = Path(tempfile.mkdtemp(prefix="moto-server-"))
        for attempt in range(3):
            self.port = free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
            if self._wait_until_up():
                return self
            exited = self._proc.poll() is not None
            self._end_process()
            if not exited or attempt == 2:
                break
        raise RuntimeError(
            f"moto server did not answer on {self.url} within {self.start_timeout_s:.0f} s;"
            f" see its log {self.log_path}"
        )

    def _wait_until_up(self) -> bool:
        """Poll a moto control endpoint (which costs none of ``auth_after``'s free requests)
        until any HTTP answer comes; False if the process exits or time runs out."""
        assert self._proc is not None
        opener = _local_opener()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with opener.open(f"{self.url}/moto-api/config", timeout=0.5):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered
            except OSError:
                time.sleep(0.05)
        return False

    def _end_process(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers) and remove its folder and log."""
        self._end_process()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> Self:
        return self if self._proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------

    def _post(self, path: str, body: bytes = b"") -> bytes:
        # text/plain: a form body would be parsed away before moto reads it
        request = urllib.request.Request(
            f"{self.url}{path}", data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with _local_opener().open(request, timeout=10) as response:
            return response.read()

    def set_auth_after(self, count: int | None) -> None:
        """Check credentials after ``count`` more free requests (0: from now on); None: never.
        Moto's ``/moto-api/reset-auth``, which also restarts its count of free requests."""
        self._post("/moto-api/reset-auth", b"inf" if count is None else str(count).encode())

    def reset(self) -> None:
        """Forget every bucket, object and IAM user (moto's ``/moto-api/reset``)."""
        self._post("/moto-api/reset")

    def client(
        self,
        service: str = "s3",
        key_id: str = FAKE_KEY_ID,
        secret: str = FAKE_SECRET,
        **kwargs: Any,
    ) -> Any:
        """A boto3 client of this server signing with the given key (fake ones by default);
        ``kwargs`` go to ``Session.client`` (``config=``, for instance)."""
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=FAKE_REGION
        )
        return session.client(service, endpoint_url=self.url, **kwargs)

    def make_user(
        self, name: str, policy: dict[str, Any] | None = S3_FULL_ACCESS
    ) -> tuple[str, str]:
        """An IAM user with an access key: returns (access key id, secret access key).

        ``policy`` is attached inline (None: no policy, so every S3 call the user makes is
        refused with AccessDenied once authentication is on). The three IAM calls run with
        authentication switched off through ``/moto-api/reset-auth``; afterwards it is on
        from the next request if this server has ``auth_after`` (the free requests left are
        gone), else stays off.
        """
        self.set_auth_after(None)
        try:
            iam = self.client("iam")
            iam.create_user(UserName=name)
            if policy is not None:
                iam.put_user_policy(
                    UserName=name, PolicyName="policy", PolicyDocument=json.dumps(policy)
                )
            key = iam.create_access_key(UserName=name)["AccessKey"]
        finally:
            self.set_auth_after(None if self.auth_after is None else 0)
        return key["AccessKeyId"], key["SecretAccessKey"]


# -- a TCP proxy with latency and outages ---------------------------------------------------

_CHUNK = 64 * 1024
# Chunks a connection holds back while delaying them (at most 16 MiB): reading stops when
# the line is full, so an upload through a delaying proxy runs at most
# _IN_FLIGHT * _CHUNK bytes per delay_s, as TCP would with that window.
_IN_FLIGHT = 256
_NET_ERRORS = (OSError, asyncio.IncompleteReadError, EOFError)


_SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
    + f"Content-Length: {len(_SLOW_DOWN_BODY)}\r\nConnection: close\r\n\r\n".encode()
    + _SLOW_DOWN_BODY
)


class Proxy:
    """A TCP proxy on 127.0.0.1 (a free port) to ``target``, in a background thread.

    Its event loop runs in a thread of its own, so tests and benchmarks call it from plain
    synchronous code, and many connections (hundreds) cost one thread.

    Latency: every chunk read from a client is forwarded to the target ``delay_s`` after it
    was read (a delay line: chunks keep their order and overlap, so a request body of many
    chunks costs delay_s once, not once per chunk). Replies are not delayed. A request/reply
    exchange therefore costs at least delay_s more: one added one-way delay per HTTP request
    (two for a request that waits for ``100 Continue`` before sending its body). Connecting
    costs nothing more: the proxy accepts at once. ``delay_s`` may be changed at any time; it
    applies to chunks read after the change.

    Outages: :meth:`pause` closes the listening socket (new connects are refused) and resets
    every open connection; :meth:`resume` listens again on the same port.

    Counters: :attr:`connections` counts accepted client connections, :attr:`peak_connections`
    the most open at once; :attr:`requests` counts chunks read from clients, which is one per
    HTTP request for requests without a large body (a keep-alive connection carries many),
    and more for large uploads.
    """

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.port = 0
        self.connections = 0
        self.peak_connections = 0
        self.requests = 0
        self.throttled = 0  # connections answered "503 Slow Down" (see throttle)
        self._throttle = 0
        self._listener: socket.socket | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"proxy-to-{target[1]}", daemon=True
        )
        self._thread.start()
        try:
            self.resume()
        except BaseException:
            self._stop_loop()
            raise

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: an endpoint URL for clients of an HTTP target."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    @property
    def paused(self) -> bool:
        return self._listener is None

    def _call(self, function: Any, *args: Any) -> Any:
        """Run ``function(*args)`` (a coroutine function) on the proxy's loop; its result."""
        if not self._loop.is_running():
            raise RuntimeError("the proxy is closed")
        future = asyncio.run_coroutine_threadsafe(function(*args), self._loop)
        return future.result(timeout=30)

    # -- outages -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Listen (again) on the proxy's port; the first call picks a free port.

        SO_REUSEADDR lets the port be bound again while connections the proxy closed are in
        TIME_WAIT; it still fails (OSError) if another process has taken the port.
        """
        if self._listener is None:
            self._call(self._listen)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOCALHOST, self.port))
            sock.listen(512)
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept, sock)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _accept(self, sock: socket.socket) -> None:
        """Take every pending connection, each to a task of its own. Accepting in a plain
        callback (not asyncio's server) leaves no moment where a connection is accepted but
        out of :meth:`pause`'s reach."""
        while self._listener is sock:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: the client sees a reset
                return
            conn.setblocking(False)
            self.connections += 1
            task = self._loop.create_task(self._serve(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            self.peak_connections = max(self.peak_connections, len(self._handlers))

    def throttle(self, connections: int) -> None:
        """The next ``connections`` connections get S3's "503 Slow Down" to their first
        request, as a throttled bucket answers, instead of reaching the target."""
        self._throttle = connections

    async def _slow_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._throttle -= 1
        self.throttled += 1
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")  # the request's head
            writer.write(_SLOW_DOWN)
            await writer.drain()

    def pause(self) -> None:
        """The service goes away: new connects are refused (the listening socket is closed
        when this returns) and every open connection is reset (RST) at both ends."""
        self._call(self._pause)

    async def _pause(self) -> None:
        # No await here: no connection can slip in while the proxy shuts.
        sock, self._listener = self._listener, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()  # connections not yet accepted are reset by the kernel
        for writer in list(self._writers):
            _reset(writer)

    # -- forwarding --------------------------------------------------------------------------

    async def _serve(self, conn: socket.socket) -> None:
        """One client connection: connect to the target and copy both ways until both ends
        are done (a half-close is passed on); any error resets both connections. After each
        wait it checks whether :meth:`pause` came meanwhile."""
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=_CHUNK)
        except OSError:
            _reset_socket(conn)
            return
        self._writers.add(writer)
        try:
            if self._listener is None:
                _reset(writer)
                return
            if self._throttle > 0:
                await self._slow_down(reader, writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target, limit=_CHUNK)
            except OSError:  # the target is down: so is the service
                _reset(writer)
                return
            self._writers.add(up_writer)
            try:
                link = _Link(writer, up_writer)
                if self._listener is None:
                    link.fail()
                    return
                await asyncio.gather(
                    self._client_to_target(reader, up_writer, link), _pump(up_reader, writer, link)
                )
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _client_to_target(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Forward what the client sends, each chunk ``delay_s`` after it was read."""
        loop = asyncio.get_running_loop()
        line = link.line

        async def send() -> None:
            while True:
                due, data = await line.get()
                if not data:
                    break
                while (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not await _write(writer, data):
                    link.fail()
                    return
            _write_eof(writer)

        link.sender = loop.create_task(send())
        while not link.broken:
            try:
                data = await reader.read(_CHUNK)
            except _NET_ERRORS:
                link.fail()
                break
            if data:
                self.requests += 1
            if link.broken:
                break
            await line.put((loop.time() + self.delay_s, data))
            if not data:
                break
        await asyncio.wait([link.sender])

    # -- end ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Reset every connection, stop listening and end the proxy's thread."""
        if self._loop.is_running():
            self.pause()
            self._call(self._finish_handlers)
        self._stop_loop()

    async def _finish_handlers(self) -> None:
        """Wait for the connections' tasks to end after their resets (cancel stragglers), so
        the loop closes with no task pending."""
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Link:
    """The two connections of one proxied connection and its line of delayed chunks. The
    first failure resets both connections and stops the line, which wakes whatever waits on
    either: reads end, writes fail, the chunk waiting out its delay is dropped."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.ends = (client, target)
        self.line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=_IN_FLIGHT)
        self.sender: asyncio.Task[None] | None = None
        self.broken = False

    def fail(self) -> None:
        if self.broken:
            return
        self.broken = True
        for end in self.ends:
            _reset(end)
        if self.sender is not None and self.sender is not asyncio.current_task():
            self.sender.cancel()
        while not self.line.empty():  # frees a reader waiting for room
            self.line.get_nowait()


async def _write(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write and wait for the buffer to drain; False if the connection is gone."""
    if writer.is_closing():
        return False
    try:
        writer.write(data)
        await writer.drain()
    except _NET_ERRORS:
        return False
    return True


def _write_eof(writer: asyncio.StreamWriter) -> None:
    """Half-close: the peer reads the end of the stream, and may still answer."""
    if writer.can_write_eof() and not writer.is_closing():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link) -> None:
    """Copy reader to writer as it comes; pass the end of the stream on as a half-close."""
    while not link.broken:
        try:
            data = await reader.read(_CHUNK)
        except _NET_ERRORS:
            link.fail()
            return
        if not data:
            _write_eof(writer)
            return
        if not await _write(writer, data):
            link.fail()
            return


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset, as a vanished server would leave it: the peer's
    next read or write fails at once rather than seeing a clean end."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        _linger_zero(sock)
    writer.transport.abort()


def _reset_socket(sock: socket.socket) -> None:
    _linger_zero(sock)
    sock.close()


def _linger_zero(sock: Any) -> None:
    """SO_LINGER 0: closing sends RST instead of FIN."""
    if sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- fixtures -------------------------------------------------------------------------------


def _clear_filesystem_caches() -> None:
    """fsspec keeps every filesystem instance it made, keyed by its arguments: an
    ``S3FileSystem()`` of an earlier test (an earlier endpoint, earlier credentials, a
    listing cache) would be handed out again."""
    with contextlib.suppress(ImportError):
        import fsspec

        fsspec.AbstractFileSystem.clear_instance_cache()
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No AWS setting of the developer reaches the test, and botocore reaches nothing.

    Every ``AWS_*`` variable goes (a profile, a real key, an endpoint); fake credentials and
    region take their place; the config and credentials files are empty files of the test;
    the EC2 metadata address is never asked for credentials; the developer's HTTP proxies are
    bypassed for 127.0.0.1. fsspec's cached filesystems are dropped before and after.
    """
    for key in list(os.environ):
        if key.startswith("AWS_") or key.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(key)
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text("")
    credentials.write_text("")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", FAKE_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    _clear_filesystem_caches()
    yield
    _clear_filesystem_caches()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session (authentication off); each test its own bucket."""
    if importlib.util.find_spec("moto") is None:
        message = "moto is not installed (pip install 'moto[server]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the S3 tests")
        pytest.skip(message)
    with MotoServer() as server:
        yield server


class S3Bucket:
    """A test's bucket on the session's moto server, and helpers to fill it.

    ``client`` talks to moto directly (never through an ``s3_proxy``), so a test can set up
    and check its bucket while the proxy delays or is paused.
    """

    _numbers = itertools.count(1)

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        # Valid bucket names: 3-63 lowercase letters, digits and hyphens; unique per run.
        self.bucket = f"test-{next(self._numbers)}-{uuid.uuid4().hex[:12]}"
        self.client = _session().client("s3", endpoint_url=endpoint)
        self.client.create_bucket(Bucket=self.bucket)

    def url(self, prefix: str = "") -> str:
        """``s3://BUCKET/prefix`` (``s3://BUCKET`` for no prefix)."""
        prefix = prefix.lstrip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))

    def upload_folder(self, folder: Path, prefix: str = "") -> int:
        """Every file under ``folder`` as ``prefix/relative/path``; returns how many."""
        prefix = prefix.strip("/")
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                with path.open("rb") as data:  # streamed: benchmark folders may be large
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=f"{prefix}/{relative}" if prefix else relative,
                        Body=data,
                    )
                count += 1
        return count

    def remove(self) -> None:
        """Empty and delete the bucket, so a long session does not keep every test's data
        in the server's memory."""
        from botocore.exceptions import BotoCoreError, ClientError

        with contextlib.suppress(BotoCoreError, ClientError):
            for key in self.keys():
                self.delete(key)
            self.client.delete_bucket(Bucket=self.bucket)


def _session() -> Any:
    """A boto3 session with the fake credentials, whatever the environment says."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=FAKE_KEY_ID, aws_secret_access_key=FAKE_SECRET, region_name=FAKE_REGION
    )


@pytest.fixture
def s3(
    moto_server: MotoServer, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Bucket]:
    """A fresh bucket on the session's moto server; ``AWS_ENDPOINT_URL`` names the server, so
    boto3 clients and ``s3fs.S3FileSystem()`` made without arguments use it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    bucket = S3Bucket(moto_server.url)
    yield bucket
    bucket.remove()


@pytest.fixture
def s3_proxy(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of the moto server, and ``AWS_ENDPOINT_URL`` naming the
    proxy: the test's S3 clients made from the environment can be slowed down or cut off
    (``s3.client`` still talks to moto directly)."""
    host, port = s3.endpoint.removeprefix("http://").rsplit(":", 1)
    with Proxy((host, int(port))) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        _clear_filesystem_caches()
        yield proxy
