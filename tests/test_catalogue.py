"""A library on PostgreSQL: what only a shared catalogue has (the rest of the suite runs the
same tests on a folder library and on PostgreSQL: see the both_backends marker)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from organizer.config import Settings
from organizer.errors import LibraryError, SchemaError
from organizer.library import Library
from organizer.redact import WITHHELD
from organizer.store import queries as q
from tests.fakes import TINY_CONFIG, FakeEmbedder, make_folder
from tests.pg import PASSWORD, PASSWORD_USER, PgServer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(pg_server):
    return pg_server


def test_status_and_errors_never_show_the_password(server, cli, photos, tmp_path):
    url = server.new_database(owner=PASSWORD_USER)
    assert PASSWORD in url
    ingested = cli("ingest", photos, "--json", "--library", url)
    assert ingested.exit_code == 0, ingested.output
    status = cli("status", "--json", "--library", url)
    assert status.exit_code == 0 and PASSWORD not in status.output
    assert json.loads(status.stdout)["library"].startswith(
        f"postgresql+psycopg://{PASSWORD_USER}:***@"
    )
    text = cli("status", "--library", url)
    assert PASSWORD not in text.output and "***" in text.stdout
    wrong = url.replace(PASSWORD, "not-" + PASSWORD)
    result = cli("status", "--library", wrong)
    assert result.exit_code == 1 and PASSWORD not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "password authentication failed" in lines[0]
    assert lines[0].startswith("error: cannot use the library database lib")
    assert str(server.socket_dir) in lines[0]  # names the host (here a socket folder)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda url: url.replace("@/lib", "@/nosuch"), 'database "nosuch'),
        (lambda url: url.split("?")[0] + "?host=/nonexistent", "No such file or directory"),
    ],
    ids=["missing database", "no server"],
)
def test_unusable_server_is_one_line_exit_1(server, cli, change, reason):
    url = change(server.new_database())
    result = cli("status", "--library", url)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and reason in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize(
    "url", ["mysql://bob:hunter2@db.example/photos", "postgresql://bob:hunter2@db.example/"]
)
def test_unusable_url_is_a_usage_error(cli, url):
    for result in (cli("status", "--library", url), cli("status", ORGANIZER_LIBRARY=url)):
        assert result.exit_code == 2
        assert "hunter2" not in result.output and len(result.stderr.splitlines()) == 1


def test_an_empty_database_is_not_a_library_until_ingest(server, cli, photos):
    url = server.new_database()
    result = cli("status", "--library", url)
    assert result.exit_code == 1 and "no library in the database" in result.stderr
    assert cli("ingest", photos, "--library", url).exit_code == 0
    assert cli("status", "--library", url).exit_code == 0


def test_a_newer_schema_is_refused(server):
    url = server.new_database()
    with Library.open(Settings(library=url), create=True) as lib, lib.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaError, match="newer organizer"):
        Library.open(Settings(library=url))


def test_each_machine_keeps_its_own_index_cache(server, tmp_path, monkeypatch, photos):
    """Two machines (two cache folders) on one catalogue never invalidate each other's file."""
    url = server.new_database()
    fake = FakeEmbedder()
    caches = {}
    for machine in ("a", "b"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / machine))
        with Library.open(
            Settings(library=url), create=True, embedder_loader=lambda s, t: fake
        ) as lib:
            if machine == "a":
                lib.ingest([photos])
            assert len(lib.vectors()) == 6 and lib.status().index.in_sync
            caches[machine] = lib.index_path
            uuid = lib.home.cache_dir.name
    assert caches["a"] != caches["b"] and caches["a"].parent.name.startswith(uuid)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    with Library.open(Settings(library=url)) as lib:
        assert lib.status().index.in_sync  # b's build did not make a's file stale


def test_a_writer_and_readers_see_consistent_snapshots(server, tmp_path):
    """While one process ingests in batches, readers in another always see whole batches:
    every ok image has its vector, and the index never holds what the database does not."""
    url = server.new_database()
    root = tmp_path / "photos"
    make_folder(root, 48)
    script = [sys.executable, "-m", "tests.reliability.crash_ingest", url, str(root)]
    writer = subprocess.Popen(
        [*script, "--slow", "0.1", "--batch-size", "4"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, reads = set(), 0
    try:
        deadline = time.time() + 120
        while writer.poll() is None and time.time() < deadline:
            try:
                lib = Library.open(Settings(library=url))
            except LibraryError:
                time.sleep(0.05)  # the writer has not made the schema yet
                continue
            with lib:
                with lib.engine.connect() as conn, conn.begin():
                    counts = q.status_counts(conn)
                    model = q.library_model(conn)
                    ids = q.ok_vectors(conn, model.id, model.dim)[0] if model else []
                assert counts["ok"] == len(ids) and counts["ok"] % 4 == 0, counts
                if model is not None:
                    index = lib.vectors()
                    with lib.engine.connect() as conn:
                        now_ok = set(q.ok_ids(conn, model.id).tolist())
                    assert set(index.ids().tolist()) <= now_ok
                seen.add(counts["ok"])
                reads += 1
    finally:
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert "embedded 48" in out
    assert reads >= 3 and len(seen) >= 2, (reads, seen)  # the reads overlapped the writes


@pytest.mark.both_backends
def test_bulk_insert_gives_ids_in_order_and_bumps_the_generation(library):
    """The store's bulk path (COPY on PostgreSQL) writes what row-by-row writes would."""
    import numpy as np

    from organizer.embed import ModelSpec
    from organizer.store.db import write_transaction

    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    with Library.open(Settings(library=library), create=True) as lib:
        with write_transaction(lib.engine) as conn:
            model_id = q.insert_model(conn, ModelSpec("bulk", "none"), 8)
            root_id = q.add_root(conn, "/photos")
            before = q.index_generation(conn)
        rows = [
            {"root_id": root_id, "relpath": f"{i}.jpg".encode(), "size": i, "mtime_ns": i}
            for i in range(300)
        ]
        with write_transaction(lib.engine) as conn:
            ids = q.insert_embedded(conn, model_id, rows, vectors)
        with lib.engine.connect() as conn:
            assert q.index_generation(conn) > before
            got_ids, got = q.ok_vectors(conn, model_id, 8)
            known = q.known_images(conn, root_id)
        assert got_ids.tolist() == sorted(ids) and np.array_equal(got[np.argsort(ids)], vectors)
        assert [known[f"{i}.jpg".encode()].id for i in range(300)] == ids
        assert len(lib.vectors()) == 300
        # Looked up by id, in the order asked, repeats included; the ok ids as streamed.
        with lib.engine.connect() as conn:
            asked = [ids[5], ids[0], ids[5], ids[299]]
            np.testing.assert_array_equal(
                q.vectors_of(conn, model_id, 8, asked), vectors[[5, 0, 5, 299]]
            )
            assert q.ok_ids(conn, model_id).tolist() == sorted(ids)
            with pytest.raises(KeyError):
                q.vectors_of(conn, model_id, 8, [ids[0], max(ids) + 1])


@pytest.mark.both_backends
def test_bulk_insert_stores_each_value_as_a_row_by_row_insert_does(library, monkeypatch):
    """The same columns, the same stored form (times at a whole second included: SQLite keeps
    SQLAlchemy's text, which its comparisons with bound times rely on)."""
    from datetime import datetime

    import numpy as np
    from sqlalchemy import select

    from organizer.embed import ModelSpec
    from organizer.store.db import write_transaction

    stamp = datetime(2026, 12, 8, 1, 2, 3)
    monkeypatch.setattr(q, "now", lambda: stamp)
    with Library.open(Settings(library=library), create=True) as lib:
        with write_transaction(lib.engine) as conn:
            model_id = q.insert_model(conn, ModelSpec("bulk", "none"), 4)
            root_id = q.add_root(conn, "/photos")
            row = {"root_id": root_id, "size": 7, "mtime_ns": 9, "etag": '"e"'}
            row |= {"content_hash": "h", "width": 3, "height": 2, "format": "JPEG"}
            (bulk,) = q.insert_embedded(
                conn, model_id, [{**row, "relpath": b"a.jpg"}], np.ones((1, 4), np.float32)
            )
            single = q.insert_image(conn, **row, relpath=b"b.jpg", status="ok")
            q.put_vector(conn, single, model_id, np.ones(4, np.float32))
        with lib.engine.connect() as conn:
            images, vectors = q.images, q.embeddings
            got = {
                r.id: tuple(v for k, v in r._mapping.items() if k not in ("id", "relpath"))
                for r in conn.execute(select(images))
            }
            assert got[bulk] == got[single]
            later = conn.execute(select(images.c.id).where(images.c.created_at >= stamp))
            assert sorted(r.id for r in later) == sorted([bulk, single])
            stored = conn.execute(select(vectors.c.created_at, vectors.c.vector)).all()
            assert stored[0] == stored[1]
            if lib.engine.dialect.name == "sqlite":
                raw = conn.exec_driver_sql("SELECT created_at, updated_at FROM images").all()
                assert raw[0] == raw[1]


def test_a_new_catalogue_opened_by_three_processes_at_once(server, tmp_path):
    """Migrations take an advisory lock; those that waited see the finished schema."""
    url = server.new_database()
    code = (
        "import sys, time\n"
        "from organizer.store.db import create_engine_for, migrate\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "migrate(create_engine_for(sys.argv[1]))\n"
        "print('ok')\n"
    )
    start = str(time.time() + 2.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, start],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outcomes


def test_a_copied_catalogue_does_not_share_the_cache(server, photos):
    """CREATE DATABASE ... TEMPLATE (or a restored backup) keeps the catalogue's UUID."""
    url = server.new_database()
    fake = FakeEmbedder()
    with Library.open(Settings(library=url), create=True, embedder_loader=lambda s, t: fake) as a:
        a.ingest([photos])
        a.vectors()
        first = a.index_path
    name = make_url(url).database
    server.admin(f"CREATE DATABASE copied TEMPLATE {name}")
    copy = url.replace(f"/{name}?", "/copied?")
    with Library.open(Settings(library=copy)) as b:
        assert b.home.cache_dir.name.split("-")[:5] == first.parent.name.split("-")[:5]
        assert b.index_path != first


def test_a_password_in_the_query_is_never_shown(server, cli, photos):
    url = server.new_database(owner=PASSWORD_USER).replace(f":{PASSWORD}@", "@")
    url += f"&password={PASSWORD}"
    assert cli("ingest", photos, "--library", url).exit_code == 0
    for args in (["status"], ["status", "--json"]):
        result = cli(*args, "--library", url)
        assert result.exit_code == 0 and PASSWORD not in result.output
    bad = cli("status", "--library", f"postgresql://u@h?password={PASSWORD}")
    assert bad.exit_code == 2 and PASSWORD not in bad.output


def _serve_pages(url: str, log: Path, paths: list[str]) -> tuple[list[bytes], str]:
    """Start `organizer serve` on the catalogue, fetch ``paths``, stop it: (bodies, its log)."""
    env = {**os.environ, "ORGANIZER_MODEL": str(TINY_CONFIG), "ORGANIZER_PRETRAINED": "none"}
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "organizer", "-L", url, "serve", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 60
        while "serving " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        port = int(log.read_text().split(" at http://127.0.0.1:", 1)[1].split("/")[0])
        bodies = []
        for path in paths:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}"})
            bodies.append(conn.getresponse().read())
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return bodies, log.read_text()


@pytest.mark.parametrize("password", ["p@ssw0rd-TAIL", "pa:ss/w%rd#x?y z@TAIL p"])
def test_a_password_with_odd_characters_is_never_shown(server, cli, photos, tmp_path, password):
    """Unencoded, as people paste them: split at the last "@", hidden on every path that
    prints (errors, status, --json, the report, the web app's pages and log)."""
    role = f"odd{zlib.crc32(password.encode())}"
    server.password_role(role, password)
    name = make_url(server.new_database(owner=role)).database
    url = f"postgresql://{role}:{password}@/{name}?host={server.socket_dir}"
    shown: list[str] = []

    def run(*args: str):
        result = cli(*args, "--library", url)
        shown.append(result.output)
        return result

    assert run("ingest", photos, "--json").exit_code == 0, shown[-1]
    assert run("status").exit_code == 0
    assert json.loads(run("status", "--json").stdout)["library"].startswith(
        f"postgresql+psycopg://{role}:***@/{name}"
    )
    assert run("cluster", "-k", "2", "--json").exit_code == 0
    report = tmp_path / "report.html"
    assert run("report", "-o", report, "--json").exit_code == 0
    shown.append(report.read_text())
    bodies, log = _serve_pages(url, tmp_path / "serve.log", ["/", "/status", "/api/status"])
    shown += [body.decode() for body in bodies] + [log]
    assert f"serving postgresql+psycopg://{role}:***@/{name}" in log

    wrong = cli("status", "--library", url.replace("TAIL", "TALE"))
    assert wrong.exit_code == 1
    (line,) = wrong.stderr.splitlines()
    assert line.startswith(f"error: cannot use the library database {name} on {server.socket_dir}")
    assert line.endswith(f'password authentication failed for user "{role}"')
    shown.append(wrong.output)
    for text in shown:
        for piece in {password, password.replace("TAIL", "TALE"), *password.split("@")}:
            assert len(piece) < 4 or piece not in text, (piece, text)


@pytest.mark.parametrize("password", ["library", "password"])
def test_a_password_that_is_a_word_is_not_spelled_out_by_masking(server, cli, password):
    """Masking `library` in organizer's sentence, or `password` in the server's, would show
    the password by the hole it leaves."""
    role = f"word{zlib.crc32(password.encode())}"
    server.password_role(role, "the-real-one")
    name = make_url(server.new_database(owner=role)).database
    wrong = cli(
        "status", "--library", f"postgresql://{role}:{password}@/{name}?host={server.socket_dir}"
    )
    assert wrong.exit_code == 1
    (line,) = wrong.stderr.splitlines()
    head = f"error: cannot use the library database {name} on {server.socket_dir}: "
    assert line.startswith(head) and "***" not in line
    if password == "password":  # the server's own message quotes it: withheld whole
        assert line == head + WITHHELD
    else:
        assert line == head + f'password authentication failed for user "{role}"'


def _slow_ingest(url: str, root: Path) -> subprocess.Popen:
    """An ingest of 40 photos, 2 a batch, in a process of its own, once it has committed
    a batch (it takes seconds more to finish)."""
    make_folder(root, 40)
    script = [sys.executable, "-m", "tests.reliability.crash_ingest", url, str(root)]
    writer = subprocess.Popen(
        [*script, "--slow", "0.2", "--batch-size", "2"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with Library.open(Settings(library=url)) as lib, lib.engine.connect() as conn:
                last = q.last_run(conn)
        except LibraryError:
            last = None  # the writer has not made the schema yet
        if last is not None and last.status == "running" and last.summary.get("done"):
            return writer
        time.sleep(0.1)
    writer.kill()
    pytest.fail(f"the ingest never got going: {writer.communicate()[1]}")


def test_an_ingest_that_loses_its_connection_records_why(server, cli, tmp_path):
    url = server.new_database()
    writer = _slow_ingest(url, tmp_path / "photos")
    try:
        server.admin(  # as a failover or a network cut does: its sessions end
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{make_url(url).database}'"
        )
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 1, err
    last = json.loads(cli("status", "--json", "--library", url).stdout)["last_ingest"]
    assert (last["status"], last["error"]) == ("failed", "the database connection was lost")
    text = cli("status", "--library", url).stdout
    assert "(failed, fp32 on cpu): the database connection was lost" in text


def test_status_after_a_server_restart_says_the_connection_was_lost(server, cli, tmp_path):
    """The writer fails while the server is down, so it cannot record why: status tells
    from the server's start time, not "the process was stopped"."""
    own = PgServer().start()  # the session's server keeps the other tests' connections
    try:
        url = own.new_database()
        writer = _slow_ingest(url, tmp_path / "photos")
        try:
            own.pause()
        finally:
            _, err = writer.communicate(timeout=120)
        own.resume()
        assert writer.returncode == 1, err
        last = json.loads(cli("status", "--json", "--library", url).stdout)["last_ingest"]
        assert last["status"] == "interrupted" and last["finished_at"] is None
        assert last["error"].startswith("the database connection was lost: the server restarted")
        text = cli("status", "--library", url).stdout
        assert "the database connection was lost" in text and "process was stopped" not in text
    finally:
        own.stop()
