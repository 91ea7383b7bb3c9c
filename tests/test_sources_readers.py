"""Everything that reads an ingested image back works for a tar shard root as for a folder:
the report's thumbnails, the web app's thumbnails and originals, export (copies; links are
refused), the photo metadata fill-in, `similar` by a member's path; a clean-up leaves a
shard's files where they are. Local shards only: no network (buckets are tested apart)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from organizer.choices import DuplicateKind
from organizer.duplicates.plan import Plan, PlannedFile, PlannedGroup
from organizer.ingest import metadata
from organizer.store import meta_queries as mq
from tests.fakes import make_folder, photo_exif, write_photo

NOT_HERE = "in a bucket or a tar shard: organizer only moves files on this machine"


def make_shard(shard: Path, files: list[Path]) -> Path:
    """A tar shard of ``files`` (members named as the files are), as WebDataset writes one."""
    shard.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(shard, "w") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    return shard


@pytest.fixture
def shard(tmp_path) -> Path:
    """A shard of 4 pictures (img000.jpg...), made from files outside any root."""
    return make_shard(tmp_path / "shards" / "000001.tar", make_folder(tmp_path / "src", 4))


def _member_bytes(shard: Path, name: str) -> bytes:
    with tarfile.open(shard) as tar:
        found = tar.extractfile(name)
        assert found is not None
        return found.read()


def _ids(lib) -> dict[str, int]:
    with lib.engine.connect() as conn:
        rows = conn.execute(mq.q.select(mq.q.images.c.relpath, mq.q.images.c.id)).all()
    return {os.fsdecode(relpath): image_id for relpath, image_id in rows}


# -- the report --------------------------------------------------------------------------------


def test_a_report_over_a_shard_has_every_thumbnail(fake_lib, shard, tmp_path):
    fake_lib.ingest([str(shard)])
    summary = fake_lib.report(tmp_path / "report.html")
    assert (summary.n_images, summary.placeholders) == (4, 0)
    assert (tmp_path / "report.html").read_text().count("data:image/jpeg;base64,") >= 4


# -- the web app -------------------------------------------------------------------------------


def _get(app, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI app, as a browser on the loopback sends it."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8765")],
        "scheme": "http",
        "server": ("127.0.0.1", 8765),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "http_version": "1.1",
    }
    sent: list[dict] = []
    asked: list[bool] = []

    async def receive() -> dict:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent):
            await asyncio.sleep(0.01)  # a response that listens for the client leaving
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def test_the_web_app_serves_a_shard_members_thumbnail_and_original(fake_lib, shard, tmp_path):
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    from PIL import Image

    from organizer.serve.app import create_app
    from organizer.serve.service import Service

    fake_lib.ingest([str(shard)])
    service = Service(fake_lib)
    app = create_app(service)
    image_id = _ids(fake_lib)["img002.jpg"]
    status, headers, data = _get(app, f"/image/{image_id}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert data == _member_bytes(shard, "img002.jpg")
    assert headers["x-content-type-options"] == "nosniff"  # as for a file's original
    assert "content-security-policy" in headers
    status, headers, data = _get(app, f"/thumb/{image_id}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(data)).size) <= 256
    assert service.unshown(fake_lib.image(image_id)) is None  # a picture, not a "gone" tile
    status, _, page = _get(app, f"/view/{image_id}")
    assert status == 200 and b"Not shown" not in page

    others = make_folder(tmp_path / "src2", 2, start_seed=10)
    make_shard(shard, others)  # rewritten without the member: a 404, not a 500
    gone = _ids(fake_lib)["img003.jpg"]
    assert _get(app, f"/image/{gone}")[0] == 404
    assert _get(app, f"/thumb/{gone}")[0] == 404


# -- export ------------------------------------------------------------------------------------


def test_export_copies_a_shards_images_and_refuses_links_to_them(fake_lib, cli, shard, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 2, start_seed=20)
    fake_lib.ingest([str(shard), photos])
    fake_lib.cluster(2, names=False)

    result = cli("export", "--to", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert (done["linked"], done["copied"], done["skipped"]) == (2, 4, 0)
    exported = {p.name: p for p in (tmp_path / "out").rglob("img*.jpg")}
    assert sorted(n for n, p in exported.items() if not p.is_symlink()) == [
        f"img00{i}.jpg" for i in range(4)
    ]
    assert exported["img001.jpg"].read_bytes() == _member_bytes(shard, "img001.jpg")
    assert not list((tmp_path / "out").rglob(".*.tmp"))  # no temporary file left behind

    copies = cli("export", "--to", tmp_path / "copies", "--mode", "copy")
    assert copies.exit_code == 0, copies.output
    assert "6 images copied" in copies.stdout

    refused = cli("export", "--to", tmp_path / "links", "--mode", "symlink")
    assert refused.exit_code == 2
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "bucket or a tar shard" in lines[0], refused.output
    assert "--mode copy" in lines[0]
    assert not (tmp_path / "links").exists()  # refused before anything was written


# -- photo metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_metadata_of_a_shards_photos_is_filled_in(fake_lib, cli, tmp_path, monkeypatch, parallel):
    if parallel:  # the reader processes, as for many images
        monkeypatch.setattr(metadata, "PARALLEL_FROM", 2)
    src = tmp_path / "src"
    files = [
        write_photo(src / f"p{i}.jpg", i, photo_exif(taken=f"2008:10:2{i} 14:03:00"))
        for i in range(3)
    ]
    files.append(write_photo(src / "undated.jpg", 9, photo_exif(taken=None)))
    shard = make_shard(tmp_path / "000001.tar", files)
    fake_lib.ingest([str(shard)])
    with fake_lib.engine.begin() as conn:  # as a library made before metadata was read
        conn.execute(mq.meta_t.delete())
    assert fake_lib.ingest([str(shard)]).metadata_filled == 4
    status = json.loads(cli("status", "--json").stdout)["metadata"]
    assert (status["read"], status["with_time"], status["unread"]) == (4, 3, 0)


def test_a_member_gone_from_its_shard_stays_unread(fake_lib, tmp_path):
    src = tmp_path / "src"
    files = [write_photo(src / f"p{i}.jpg", i) for i in range(2)]
    shard = make_shard(tmp_path / "000001.tar", files)
    fake_lib.ingest([str(shard)])
    with fake_lib.engine.begin() as conn:
        conn.execute(mq.meta_t.delete())
    make_shard(shard, files[:1])  # rewritten since: p1.jpg is no longer in it
    assert metadata.backfill(fake_lib.engine, None) == 1
    with fake_lib.engine.connect() as conn:
        assert mq.meta_counts(conn)["unread"] == 1


# -- similar, by a member's path ---------------------------------------------------------------


def test_similar_finds_a_shard_member_by_its_path(fake_lib, cli, shard):
    fake_lib.ingest([str(shard)])
    result = cli("similar", f"{shard}/img001.jpg", "--json")
    assert result.exit_code == 0, result.output
    found = [r["path"] for r in json.loads(result.stdout)["results"]]
    assert sorted(found) == ["img000.jpg", "img002.jpg", "img003.jpg"]  # itself left out
    missing = cli("similar", f"{shard}/img009.jpg")
    assert missing.exit_code != 0 and "image not found" in missing.output


def test_a_bucket_url_reaches_the_library_as_typed(fake_lib, cli, shard):
    fake_lib.ingest([str(shard)])
    result = cli("similar", "s3://bucket/prefix/a.jpg")
    assert result.exit_code != 0
    assert "s3://bucket/prefix/a.jpg" in result.output  # not s3:/bucket (a Path's)


# -- clean -------------------------------------------------------------------------------------


def _planned(path: bytes, data: bytes) -> PlannedFile:
    return PlannedFile(path, hashlib.sha256(data).hexdigest(), len(data))


def test_clean_leaves_a_shards_files_where_they_are(fake_lib, cli, shard, tmp_path):
    """A copy in the shard stays (with the reason); a copy on disk of a shard's keeper goes."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img000.jpg", "img001.jpg"):
        (photos / name).write_bytes(_member_bytes(shard, name))
    fake_lib.ingest([photos, str(shard)])
    member = os.fsencode(f"{shard}/img000.jpg")
    keeper = os.fsencode(f"{shard}/img001.jpg")
    a, b = (photos / "img000.jpg").read_bytes(), (photos / "img001.jpg").read_bytes()
    plan = Plan(
        "test",
        "2026-01-01T00:00:00Z",
        (
            PlannedGroup(
                "1",
                DuplicateKind.EXACT,
                _planned(os.fsencode(photos / "img000.jpg"), a),
                "oldest",
                (_planned(member, a),),
            ),
            PlannedGroup(
                "2",
                DuplicateKind.EXACT,
                _planned(keeper, b),
                "oldest",
                (_planned(os.fsencode(photos / "img001.jpg"), b),),
            ),
        ),
    )
    plan.write(tmp_path / "plan.json")
    result = cli("clean", tmp_path / "plan.json", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["skipped"] == [{"path": "img000.jpg", "group": "1", "reason": NOT_HERE}]
    assert [f["path"] for f in doc["moved"]] == ["img001.jpg"]
    assert not (photos / "img001.jpg").exists()
    assert _member_bytes(shard, "img000.jpg") == a  # the shard is as it was


def test_export_shortens_a_name_too_long_for_a_disk(fake_lib, cli, tmp_path):
    long_name = "x" * 300 + ".jpg"  # a bucket key may be 1,024 bytes long; a file name 255
    source = make_folder(tmp_path / "src", 3)
    shard = tmp_path / "long.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(source[0], arcname=long_name)
        tar.add(source[1], arcname="short.jpg")
        tar.add(source[2], arcname="third.jpg")
    fake_lib.ingest([str(shard)])
    fake_lib.cluster(2, names=False)
    result = cli("export", "--to", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").rglob("*.jpg"))
    assert names == ["short.jpg", "third.jpg", "x" * 196 + ".jpg"]


def test_a_shortened_name_never_cuts_a_character_in_half():
    from organizer.export import _unique_name

    member = type("M", (), {"relpath": ("a" + "é" * 150 + ".jpg").encode()})()
    name = _unique_name(member, set())
    assert name.decode("utf-8").endswith(".jpg") and len(name) <= 200
