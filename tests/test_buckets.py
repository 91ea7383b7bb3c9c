"""Buckets as roots, against a real S3 endpoint on this machine (moto's server, reached by
organizer's own client code): incremental scans, moves, and every bad case a user meets."""

from __future__ import annotations

import json
import time

import pytest

from organizer.config import Settings
from organizer.errors import StorageError
from organizer.ingest import IngestOptions
from organizer.ingest.plan import FileWork, Target
from organizer.library import Library
from organizer.pipeline import CHANGED_WHILE_READING, prepare_all
from organizer.sources import Storage, scan_source
from tests.fakes import FakeEmbedder, image_bytes, make_folder, picture

pytest.importorskip("s3fs")


def forget_clients() -> None:
    """Drop the S3 clients made so far (with the credentials of their time)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def js(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def bucket(s3, tmp_path):
    """A bucket holding 6 photos under photos/ (two in a sub-prefix) and a note."""
    make_folder(tmp_path / "upload", 6)
    s3.upload_folder(tmp_path / "upload", "photos")
    s3.put("photos/notes.txt", b"not an image")
    s3.put("photos/.hidden/x.jpg", image_bytes(picture(50), "JPEG"))
    return s3


@pytest.mark.both_backends
def test_a_bucket_is_a_root_and_a_rescan_reads_only_what_changed(cli, bucket):
    url = bucket.url("photos")
    first = js(cli("ingest", url, "--json"))
    assert (first["new"], first["failed"], first["skipped"]) == (6, 0, {".txt": 1})
    roots = js(cli("roots", "--json"))["roots"]
    assert [(r["path"], r["present"], r["images"]["ok"]) for r in roots] == [(url, True, 6)]

    again = js(cli("ingest", url, "--json"))
    assert (again["new"], again["unchanged"], again["embedded"]) == (0, 6, 0)

    bucket.put("photos/img000.jpg", image_bytes(picture(100), "JPEG"))  # replaced
    bucket.delete("photos/img001.jpg")  # deleted
    moved = bucket.client.get_object(Bucket=bucket.bucket, Key="photos/sub/img002.jpg")
    bucket.put("photos/renamed.jpg", moved["Body"].read())  # moved: copied, then deleted
    bucket.delete("photos/sub/img002.jpg")
    third = js(cli("ingest", "--json"))  # every known root, the bucket among them
    assert (third["changed"], third["missing"], third["moved"]) == (1, 1, 1)
    assert third["embedded"] == 1  # only the replaced object's new content

    status = js(cli("status", "--json"))
    assert status["images"]["ok"] == 5 and status["images"]["missing"] == 1


def test_an_object_rewritten_at_the_same_size_and_second_is_seen_by_its_etag(cli, bucket, tmp_path):
    url = bucket.url("photos")
    assert cli("ingest", url).exit_code == 0
    key = "photos/img003.jpg"
    old = bucket.client.head_object(Bucket=bucket.bucket, Key=key)
    data = bytearray(bucket.client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read())
    data[-3] ^= 0xFF  # the same size, other bytes
    bucket.put(key, bytes(data))
    new = bucket.client.head_object(Bucket=bucket.bucket, Key=key)
    assert new["ContentLength"] == old["ContentLength"]
    again = js(cli("ingest", url, "--json"))
    assert again["changed"] + again["failed"] == 1, again  # read again, whatever it decodes to


def test_a_sub_prefix_of_a_bucket_root_is_part_of_it(cli, bucket):
    assert cli("ingest", bucket.url("photos/sub")).exit_code == 0
    assert cli("ingest", bucket.url("photos")).exit_code == 0  # absorbs the sub-prefix root
    roots = js(cli("roots", "--json"))["roots"]
    assert [r["path"] for r in roots] == [bucket.url("photos")]
    part = js(cli("ingest", bucket.url("photos/sub"), "--json"))
    assert part["unchanged"] == 2 and part["missing"] == 0


def test_an_endpoint_given_once_is_kept_with_the_root(cli, bucket, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    url = bucket.url("photos")
    done = js(cli("ingest", url, "--endpoint-url", bucket.endpoint, "--json"))
    assert done["new"] == 6
    again = js(cli("ingest", "--json"))  # no flag, no variable: the recorded endpoint
    assert again["unchanged"] == 6
    bad = cli("ingest", url, "--endpoint-url", "ftp://nowhere")
    assert bad.exit_code == 2 and "http:// or https://" in bad.stderr
    secret = cli("ingest", url, "--endpoint-url", "http://me:hunter2@127.0.0.1:9")
    assert secret.exit_code == 2 and "hunter2" not in secret.output


def test_a_missing_bucket_is_one_line(cli, s3):
    result = cli("ingest", "s3://no-such-bucket-here/photos")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: s3://no-such-bucket-here/photos: the bucket does not exist (or the endpoint is "
        "wrong)"
    ]


def test_a_url_without_a_bucket_is_a_usage_error(cli, s3):
    result = cli("ingest", "s3://")
    assert result.exit_code == 2 and "names no bucket" in result.output


def test_wrong_credentials_are_refused_and_never_shown(cli, moto_server, s3, tmp_path, monkeypatch):
    make_folder(tmp_path / "up", 2)
    s3.upload_folder(tmp_path / "up", "p")
    key_id, secret = moto_server.make_user("reader")
    moto_server.set_auth_after(0)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "-wrong")
        result = cli("ingest", s3.url("p"))
        assert result.exit_code == 1
        assert "access denied (SignatureDoesNotMatch)" in result.stderr
        assert secret not in result.output and key_id not in result.output
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODY")
        forget_clients()  # each command is a process of its own; here they share one
        result = cli("ingest", s3.url("p"))
        assert result.exit_code == 1 and "InvalidAccessKeyId" in result.stderr
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        forget_clients()
        assert js(cli("ingest", s3.url("p"), "--json"))["new"] == 2
        status = cli("status")
        assert secret not in status.output
    finally:
        moto_server.set_auth_after(None)


def test_an_object_gone_or_replaced_after_the_listing_is_recorded_and_retried(bucket):
    url = bucket.url("photos")
    listed = scan_source(url, storage=Storage())
    by_name = {f.relpath: f for f in listed.files}
    bucket.delete("photos/img000.jpg")
    bucket.put("photos/img003.jpg", b"shorter now")

    target = Target(url, 1, scan=listed)
    jobs = [
        FileWork(target, name, f.size, f.mtime_ns, None, f.etag).job(i)
        for i, (name, f) in enumerate(sorted(by_name.items()))
    ]
    results = {jobs[p.key].path.rsplit(b"/", 1)[1]: p for p in prepare_all(jobs, None)}
    gone, changed = results[b"img000.jpg"], results[b"img003.jpg"]
    assert gone.error == "the object is gone since the listing; it will be retried"
    assert changed.error == "the object changed since the listing; it will be retried"
    assert gone.mtime_ns == changed.mtime_ns == CHANGED_WHILE_READING  # retried next run
    assert results[b"img004.jpg"].error is None and results[b"img004.jpg"].content_hash


def test_a_corrupt_object_is_recorded_and_the_run_goes_on(cli, bucket):
    bucket.put("photos/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    done = js(cli("ingest", bucket.url("photos"), "--json"))
    assert (done["new"], done["failed"]) == (6, 1)
    failed = js(cli("status", "--failed", "--json"))["failed"]
    assert [f["path"] for f in failed] == ["broken.jpg"]


def test_the_service_going_away_stops_the_run_and_the_same_command_finishes_it(
    cli, s3, s3_proxy, tmp_path, monkeypatch
):
    import organizer.pipeline as pipeline

    monkeypatch.setattr(pipeline, "FETCH_DEPTH", 2)  # few reads in flight: a stop mid-run
    make_folder(tmp_path / "up", 30)
    s3.upload_folder(tmp_path / "up", "p")
    fake = FakeEmbedder()
    settings = Settings(library=tmp_path / "lib")

    def progress(p):
        if p.done == 8:
            s3_proxy.pause()

    options = IngestOptions(batch_size=4, workers=0)
    with Library.open(settings, create=True, embedder_loader=lambda spec, s: fake) as lib:
        started = time.monotonic()
        with pytest.raises(StorageError) as stopped:
            lib.ingest([s3.url("p")], options=options, progress=progress)
        waited = time.monotonic() - started
        message = str(stopped.value)
        assert "connection failed" in message and "run the same command again" in message
        assert message.count("\n") == 0
        status = lib.status()
        kept = status.images["ok"]
        assert 8 <= kept < 30  # what was read before the outage is committed
        assert status.last_ingest is not None and status.last_ingest.status == "failed"
    print(f"the outage was reported after {waited:.1f} s")  # a figure, not an assertion
    s3_proxy.resume()
    with Library.open(settings, embedder_loader=lambda spec, s: fake) as lib:
        done = lib.ingest([s3.url("p")], options=options)
        assert done.failed == 0
        assert done.new + done.unchanged == 30
        assert done.unchanged == kept and done.new == 30 - kept  # nothing read twice


def test_a_bucket_root_moves_to_another_prefix_and_is_removed_by_its_url(cli, bucket):
    old, new = bucket.url("photos"), bucket.url("archive/2024")
    assert cli("ingest", old).exit_code == 0
    for key in bucket.keys("photos/"):
        data = bucket.client.get_object(Bucket=bucket.bucket, Key=key)["Body"].read()
        bucket.put("archive/2024/" + key.removeprefix("photos/"), data)
    refused = cli("roots", "move", old, bucket.url("elsewhere"))
    assert refused.exit_code == 1 and "does not hold the files" in refused.stderr
    kind = cli("roots", "move", old, "/tmp")
    assert kind.exit_code == 2 and "same kind of root" in kind.stderr
    moved = js(cli("roots", "move", old, new + "/", "--json"))
    assert moved["new_path"] == new and moved["checked"]["same_hash"] == moved["checked"]["hashed"]
    again = js(cli("ingest", new, "--json"))
    assert (again["new"], again["unchanged"]) == (0, 6)
    gone = js(cli("roots", "remove", new, "--json"))
    assert gone["images"] == 6
    assert js(cli("roots", "--json"))["roots"] == []


def test_a_throttled_service_is_retried_with_backoff(cli, s3, s3_proxy, tmp_path):
    make_folder(tmp_path / "up", 6)
    s3.upload_folder(tmp_path / "up", "p")
    s3_proxy.throttle(3)  # the first requests (the listing): "503 Slow Down"
    done = js(cli("ingest", s3.url("p"), "--json"))
    assert (done["new"], done["failed"]) == (6, 0)
    assert s3_proxy.throttled == 3


def shard_bytes(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_shard_in_a_bucket_rewritten_after_its_listing_is_not_misread(s3):
    from organizer.errors import ImageError
    from organizer.sources import read_member

    a, b = (image_bytes(picture(i), "BMP") for i in (1, 2))  # the same size
    s3.put("shards/s.tar", shard_bytes({"a.jpg": a, "b.jpg": b}))
    listed = scan_source(s3.url("shards/s.tar"), storage=Storage())
    first = next(f for f in listed.files if f.relpath == b"a.jpg")
    where = (s3.url("shards/s.tar"), first.offset, first.size, Storage())
    assert read_member(*where, name=b"a.jpg") == a
    s3.put("shards/s.tar", shard_bytes({"b.jpg": b, "a.jpg": a}))  # the order swapped
    with pytest.raises(ImageError, match="the shard changed since it was listed"):
        read_member(*where, name=b"a.jpg")


def test_a_shard_gone_from_its_bucket_goes_missing_and_the_rest_goes_on(cli, s3, tmp_path):
    s3.put("shards/000.tar", shard_bytes({"a.jpg": image_bytes(picture(1), "JPEG")}))
    s3.put("shards/001.tar", shard_bytes({"b.jpg": image_bytes(picture(2), "JPEG")}))
    make_folder(tmp_path / "local", 2)
    assert cli("ingest", s3.url("shards/{000..001}.tar"), tmp_path / "local").exit_code == 0
    s3.delete("shards/001.tar")
    make_folder(tmp_path / "local", 1, start_seed=10)
    done = js(cli("ingest", "--json"))
    assert (done["missing"], done["new"], done["unchanged"]) == (1, 1, 3)


def test_an_unreachable_bucket_is_skipped_by_a_plain_ingest(cli, s3, s3_proxy, tmp_path):
    make_folder(tmp_path / "up", 2)
    s3.upload_folder(tmp_path / "up", "p")
    make_folder(tmp_path / "local", 2)
    assert cli("ingest", s3.url("p"), tmp_path / "local").exit_code == 0
    s3_proxy.pause()
    make_folder(tmp_path / "local", 1, start_seed=10)
    done = js(cli("ingest", "--json"))  # every root: the bucket cannot be listed
    assert (done["new"], done["missing"]) == (1, 0)
    assert any("cannot be reached" in p and "(skipped)" in p for p in done["problems"])
    named = cli("ingest", s3.url("p"))  # named, it is an error
    assert named.exit_code == 1 and "cannot be reached" in named.stderr
    s3_proxy.resume()


def test_odd_keys_and_empty_members_are_skipped_or_recorded(cli, s3):
    jpeg = image_bytes(picture(5), "JPEG")
    s3.put("p/a.jpg", jpeg)
    s3.put("p//etc/b.jpg", jpeg)  # an empty part: never a path on this machine
    s3.put("p/s.tar", b"")  # not an image, counted
    done = js(cli("ingest", s3.url("p"), "--json"))
    assert (done["new"], done["failed"]) == (1, 0)
    assert done["skipped"] == {".jpg": 1, ".tar": 1}
    s3.put("shards/e.tar", shard_bytes({"e.jpg": b"", "f.jpg": jpeg}))
    shard = js(cli("ingest", s3.url("shards/e.tar"), "--json"))
    assert (shard["failed"], shard["reused"]) == (1, 1)
    failed = js(cli("status", "--failed", "--json"))["failed"]
    assert [f["reason"] for f in failed if f["path"] == "e.jpg"] == ["empty file"]


def test_a_gone_object_reads_as_an_image_error_and_other_protocols_are_one_line(cli, bucket):
    from organizer.errors import ImageError
    from organizer.sources import read_stored

    bucket.delete("photos/img000.jpg")
    with pytest.raises(ImageError):
        read_stored(bucket.url("photos"), b"img000.jpg", Storage(), limit=10**9)
    result = cli("ingest", "ftp://127.0.0.1:9/photos")
    assert result.exit_code in (1, 2) and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_similar_takes_an_objects_url_however_its_scheme_is_spelt(cli, bucket):
    assert cli("ingest", bucket.url("photos")).exit_code == 0
    url = bucket.url("photos/img004.jpg").replace("s3://", "S3://")
    hits = js(cli("similar", url, "-n", "2", "--json"))
    assert len(hits["results"]) == 2 and all(r["path"] != "img004.jpg" for r in hits["results"])
