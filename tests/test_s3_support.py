"""The S3 test support itself (tests/s3.py): moto's server, its authentication, the proxy."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.s3 import MotoServer, Proxy, S3Bucket

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")
ClientError = pytest.importorskip("botocore.exceptions").ClientError


def _error_code(call: Callable[[], object]) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["Error"]["Code"]


def test_s3fs_finds_the_server_from_the_environment(s3: S3Bucket, tmp_path: Path) -> None:
    """``S3FileSystem()`` without arguments reaches moto through AWS_ENDPOINT_URL alone:
    code under test needs no endpoint option."""
    (tmp_path / "photos" / "trip").mkdir(parents=True)
    (tmp_path / "photos" / "a.jpg").write_bytes(b"a")
    (tmp_path / "photos" / "trip" / "b.jpg").write_bytes(b"bb")
    assert s3.upload_folder(tmp_path / "photos", "in") == 2
    s3.put("other/c.jpg", b"ccc")

    fs = s3fs.S3FileSystem()
    assert sorted(fs.find(s3.url("in"))) == [f"{s3.bucket}/in/a.jpg", f"{s3.bucket}/in/trip/b.jpg"]
    assert fs.cat(f"{s3.url('in')}/trip/b.jpg") == b"bb"

    s3.delete("other/c.jpg")
    assert s3.keys() == ["in/a.jpg", "in/trip/b.jpg"]
    assert boto3.client("s3").list_buckets()["Buckets"]  # boto3 from the environment too


def test_proxy_forwards_and_delays(s3: S3Bucket, s3_proxy: Proxy) -> None:
    """boto3 made from the environment goes through the proxy; with delay_s set each request
    takes at least that much longer."""
    s3.put("k", b"v")
    client = boto3.client("s3")  # AWS_ENDPOINT_URL names the proxy
    assert client.meta.endpoint_url == s3_proxy.url
    for _ in range(3):
        assert client.get_object(Bucket=s3.bucket, Key="k")["Body"].read() == b"v"
    assert s3_proxy.requests >= 3

    s3_proxy.delay_s = 0.25
    started = time.monotonic()
    client.head_object(Bucket=s3.bucket, Key="k")
    assert time.monotonic() - started >= 0.25


class _KeepAlive(BaseHTTPRequestHandler):
    """Answers every GET with its path, keeping the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _KeepAliveServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connects made together (retried after 1 s)


@pytest.fixture
def keep_alive_server() -> Iterator[tuple[str, int]]:
    """An HTTP server that keeps connections alive, which moto's does not (werkzeug's
    development server closes each connection after one answer)."""
    server = _KeepAliveServer(("127.0.0.1", 0), _KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def test_proxy_keeps_connections_alive(keep_alive_server: tuple[str, int]) -> None:
    """Many requests on one kept-alive connection pass through one proxied connection, each
    delayed."""
    with Proxy(keep_alive_server, delay_s=0.05) as proxy:
        connection = http.client.HTTPConnection(*proxy.address, timeout=10)
        started = time.monotonic()
        for i in range(5):
            connection.request("GET", f"/{i}")
            assert connection.getresponse().read() == f"/{i}".encode()
        assert time.monotonic() - started >= 5 * 0.05
        connection.close()
        assert (proxy.connections, proxy.requests) == (1, 5)


def test_proxy_holds_many_connections_at_once(keep_alive_server: tuple[str, int]) -> None:
    """100 connections open together, each with requests in turn, all answered."""
    with Proxy(keep_alive_server, delay_s=0.01) as proxy:
        connections = [http.client.HTTPConnection(*proxy.address, timeout=10) for _ in range(100)]
        for round_ in range(2):
            for i, connection in enumerate(connections):
                connection.request("GET", f"/{round_}/{i}")
            for i, connection in enumerate(connections):
                assert connection.getresponse().read() == f"/{round_}/{i}".encode()
        assert proxy.peak_connections == proxy.connections == 100
        for connection in connections:
            connection.close()


def test_proxy_serves_parallel_s3_clients(s3: S3Bucket, s3_proxy: Proxy) -> None:
    """64 threads of one boto3 client through the proxy at once, all answered."""
    from botocore.config import Config

    for i in range(64):
        s3.put(f"k{i}", str(i).encode())
    client = boto3.client("s3", config=Config(max_pool_connections=64))
    s3_proxy.delay_s = 0.05

    def get(i: int) -> bytes:
        return client.get_object(Bucket=s3.bucket, Key=f"k{i}")["Body"].read()

    with ThreadPoolExecutor(64) as pool:
        assert list(pool.map(get, range(64))) == [str(i).encode() for i in range(64)]
    assert s3_proxy.connections >= 64  # one each at least: moto closes them after answering


def test_pause_refuses_then_resume_serves_again(s3: S3Bucket, s3_proxy: Proxy) -> None:
    """While paused nothing listens (connection refused) and open connections are reset;
    after resume the same URL serves the same bucket."""
    s3.put("kept", b"data")
    fs = s3fs.S3FileSystem()
    assert fs.cat(s3.url("kept")) == b"data"
    held = socket.create_connection(s3_proxy.address)

    s3_proxy.pause()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(s3_proxy.address, timeout=5)
    held.settimeout(5)
    with pytest.raises(ConnectionResetError):
        held.recv(1)
    held.close()

    s3_proxy.resume()
    fs.invalidate_cache()
    assert fs.cat(s3.url("kept")) == b"data"
    assert boto3.client("s3").get_object(Bucket=s3.bucket, Key="kept")["Body"].read() == b"data"


def test_wrong_credentials_are_refused(s3_env: None) -> None:
    """With auth_after, the free requests create a bucket and a user; then unknown keys,
    wrong secrets and users without a policy are refused as AWS would."""
    with MotoServer(auth_after=4) as server:
        server.client("s3").create_bucket(Bucket="private")
        iam = server.client("iam")
        iam.create_user(UserName="reader")
        iam.put_user_policy(
            UserName="reader",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",'
            ' "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]

        reader = server.client("s3", key_id, secret)
        reader.put_object(Bucket="private", Key="k", Body=b"v")
        assert reader.get_object(Bucket="private", Key="k")["Body"].read() == b"v"

        def listing(key_id: str, secret: str) -> Callable[[], dict[str, Any]]:
            return lambda: server.client("s3", key_id, secret).list_objects_v2(Bucket="private")

        assert _error_code(listing("testing", "testing")) == "InvalidAccessKeyId"
        assert _error_code(listing(key_id, secret + "x")) == "SignatureDoesNotMatch"
        assert _error_code(listing(*server.make_user("nobody", policy=None))) == "AccessDenied"
        assert listing(*server.make_user("writer"))()["KeyCount"] == 1

        # s3fs signs with the user's key as well
        fs = s3fs.S3FileSystem(key=key_id, secret=secret, endpoint_url=server.url)
        assert fs.cat("private/k") == b"v"
        fs_wrong = s3fs.S3FileSystem(key=key_id, secret="wrong", endpoint_url=server.url)
        with pytest.raises(PermissionError):
            fs_wrong.cat("private/k")
