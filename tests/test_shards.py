"""Tar shards (WebDataset's layout) as roots, on this machine: members are images, an
unchanged shard is not opened again, a damaged one is read as far as it goes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from organizer.sources import shard as shard_module
from tests.fakes import image_bytes, picture

pytestmark = pytest.mark.both_backends


def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    """A tar of ``members`` (name -> bytes), as webdataset writes one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(first: int, n: int) -> dict[str, bytes]:
    """WebDataset samples: an image and a caption under each key."""
    out = {}
    for i in range(first, first + n):
        out[f"{i:06d}.jpg"] = image_bytes(picture(i), "JPEG")
        out[f"{i:06d}.txt"] = f"caption {i}".encode()
    return out


def js(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_shard_is_a_root_and_an_unchanged_one_is_not_opened(cli, tmp_path, monkeypatch):
    shard = write_shard(tmp_path / "shards" / "000000.tar", samples(0, 5))
    first = js(cli("ingest", shard, "--json"))
    assert (first["new"], first["failed"]) == (5, 0)
    assert first["skipped"] == {".txt": 5}  # captions are counted, as files that are not images
    roots = js(cli("roots", "--json"))["roots"]
    assert [(r["path"], r["present"]) for r in roots] == [(str(shard), True)]

    opened = []
    real = shard_module._list_members
    monkeypatch.setattr(shard_module, "_list_members", lambda *a: opened.append(a[0]) or real(*a))
    again = js(cli("ingest", shard, "--json"))
    assert (again["new"], again["unchanged"]) == (0, 5)
    assert opened == []  # the fingerprint matched: the shard was not read at all
    again = js(cli("ingest", "--json"))  # every known root: the same
    assert again["unchanged"] == 5 and opened == []


def test_a_brace_pattern_names_many_shards(cli, tmp_path):
    folder = tmp_path / "shards"
    for n in range(3):
        write_shard(folder / f"{n:06d}.tar", samples(10 * n, 2))
    done = js(cli("ingest", f"{folder}/{{000000..000002}}.tar", "--json"))
    assert done["new"] == 6
    roots = [r["path"] for r in js(cli("roots", "--json"))["roots"]]
    assert roots == [str(folder / f"{n:06d}.tar") for n in range(3)]
    missing = cli("ingest", f"{folder}/{{000000..000003}}.tar")
    assert missing.exit_code == 1
    assert "shard not found" in missing.stderr and "000003.tar" in missing.stderr


def test_a_rewritten_shard_is_read_again_and_only_what_changed_is_embedded(cli, tmp_path):
    members = samples(0, 4)
    shard = write_shard(tmp_path / "a.tar", members)
    assert js(cli("ingest", shard, "--json"))["new"] == 4
    del members["000003.jpg"]
    members["000001.jpg"] = image_bytes(picture(99), "JPEG")  # new content, same name
    members["000004.jpg"] = image_bytes(picture(4), "JPEG")
    os.utime(write_shard(shard, members), ns=(10**18, 10**18))
    again = js(cli("ingest", shard, "--json"))
    assert (again["new"], again["unchanged"], again["missing"]) == (1, 2, 1)
    assert again["changed"] == 1  # mtimes of members are equal: the content hash decided


def test_a_damaged_shard_is_read_as_far_as_it_goes(cli, tmp_path):
    shard = write_shard(tmp_path / "cut.tar", samples(0, 6))
    data = shard.read_bytes()
    # Cut inside the fourth image's bytes: three whole members, one cut short.
    with tarfile.open(shard) as tar:
        info = tar.getmember("000003.jpg")
    shard.write_bytes(data[: info.offset_data + info.size // 2])
    result = cli("ingest", shard, "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["new"] == 3
    assert done["failed"] == 1
    failed = js(cli("status", "--failed", "--json"))
    reasons = [f["reason"] for f in failed["failed"]]
    assert reasons == ["the member is cut short (a truncated shard)"], reasons


def test_member_names_that_climb_out_are_refused_never_followed(cli, tmp_path):
    jpeg = image_bytes(picture(1), "JPEG")
    shard = write_shard(
        tmp_path / "odd.tar",
        {"../escape.jpg": jpeg, "/abs.jpg": jpeg, "./ok.jpg": jpeg, ".hidden.jpg": jpeg},
    )
    done = js(cli("ingest", shard, "--json"))
    assert done["new"] == 1  # ./ok.jpg, recorded as ok.jpg
    assert done["failed"] == 2
    assert not (tmp_path / "escape.jpg").exists()
    failed = js(cli("status", "--failed", "--json"))["failed"]
    assert sorted(f["path"] for f in failed) == ["../escape.jpg", "/abs.jpg"]


def test_a_missing_shard_is_an_absent_root(cli, tmp_path):
    shard = write_shard(tmp_path / "gone.tar", samples(0, 2))
    assert cli("ingest", shard).exit_code == 0
    shard.unlink()
    roots = js(cli("roots", "--json"))["roots"]
    assert roots[0]["present"] is False
    result = cli("ingest", shard)
    assert result.exit_code == 1 and "shard not found" in result.stderr
    plain = cli("ingest")  # every present root: none
    assert plain.exit_code == 0, plain.output


def test_retry_failed_opens_an_unchanged_shard_again(cli, tmp_path):
    members = samples(0, 3)
    members["000009.jpg"] = b"\xff\xd8\xff\xe0 not a picture"
    shard = write_shard(tmp_path / "a.tar", members)
    assert js(cli("ingest", shard, "--json"))["failed"] == 1
    assert js(cli("ingest", shard, "--json"))["unchanged"] == 4  # not opened
    again = js(cli("ingest", shard, "--retry-failed", "--json"))
    assert (again["failed"], again["unchanged"]) == (1, 3)  # listed, the failed one read


def test_a_member_removed_from_a_shard_stays_missing(cli, tmp_path):
    members = samples(0, 2)
    shard = write_shard(tmp_path / "s.tar", members)
    assert js(cli("ingest", shard, "--json"))["new"] == 2
    del members["000001.jpg"]
    os.utime(write_shard(shard, members), ns=(10**18, 10**18))
    assert js(cli("ingest", shard, "--json"))["missing"] == 1
    again = js(cli("ingest", shard, "--json"))  # unchanged: not opened, and b not back
    assert again["unchanged"] == 1
    status = js(cli("status", "--json"))["images"]
    assert (status["ok"], status["missing"]) == (1, 1)


def test_a_name_written_twice_in_a_shard_is_its_last_copy(cli, tmp_path):
    shard = tmp_path / "twice.tar"
    write_shard(shard, {"a.jpg": image_bytes(picture(1), "JPEG")})
    with tarfile.open(shard, "a") as tar:  # as `tar -r` appends
        data = image_bytes(picture(2), "JPEG")
        info = tarfile.TarInfo("a.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    done = js(cli("ingest", shard, "--json"))
    assert (done["new"], done["failed"]) == (1, 0)


def test_a_folder_whose_name_ends_in_tar_is_a_folder(cli, tmp_path):
    folder = tmp_path / "photos.tar"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(image_bytes(picture(3), "JPEG"))
    assert js(cli("ingest", folder, "--json"))["new"] == 1
    roots = js(cli("roots", "--json"))["roots"]
    assert roots[0]["present"] is True


def test_a_shard_rewritten_during_the_run_is_read_again_next_time(tmp_path, fake_lib):
    from organizer.ingest import IngestOptions

    members = samples(0, 4)
    shard = write_shard(tmp_path / "moving.tar", members)

    def rewrite(p):
        if p.done == 1:  # the others are read from the listing's offsets, now stale
            os.utime(write_shard(shard, dict(reversed(members.items()))), ns=(10**18,) * 2)

    options = IngestOptions(workers=0, batch_size=1)
    first = fake_lib.ingest([str(shard)], options=options, progress=rewrite)
    assert first.new >= 1 and first.failed >= 1
    reasons = {f.reason for f in fake_lib.failures()}
    assert reasons == {"the shard changed since it was listed; it will be retried"}
    second = fake_lib.ingest([str(shard)], options=options)
    assert second.failed == 0
    assert second.new + second.changed + second.unchanged == 4


def test_a_folder_named_like_a_brace_pattern_is_taken_as_it_is(cli, tmp_path):
    folder = tmp_path / "{a,b}"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(image_bytes(picture(4), "JPEG"))
    assert js(cli("ingest", folder, "--json"))["new"] == 1
    assert js(cli("ingest", f"file://{tmp_path}/{{a,b}}", "--json"))["unchanged"] == 1


def test_a_shard_root_moves_with_its_file(cli, tmp_path):
    shard = write_shard(tmp_path / "old" / "s.tar", samples(0, 3))
    assert cli("ingest", shard).exit_code == 0
    new = tmp_path / "new" / "s.tar"
    new.parent.mkdir()
    shard.rename(new)
    moved = js(cli("roots", "move", shard, new, "--json"))
    assert moved["checked"]["same_size"] == 3
    assert js(cli("ingest", new, "--json"))["unchanged"] == 3


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_non_ascii_member_names_are_read(cli, tmp_path, fmt):
    names = ["d/" + "x" * 150 + ".jpg", "ünïcödé.jpg", "dir/" * 30 + "deep.jpg"]
    shard = tmp_path / "names.tar"
    with tarfile.open(shard, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = image_bytes(picture(i), "JPEG")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    done = js(cli("ingest", shard, "--json"))
    assert (done["new"], done["failed"]) == (3, 0), done


def test_names_gnu_tar_cuts_to_fit_its_old_header_are_read(cli, tmp_path):
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    src.mkdir()
    for length in range(94, 101):  # "./" + name around the header's 100 bytes
        (src / ("n" * (length - 4) + ".jpg")).write_bytes(image_bytes(picture(length), "JPEG"))
    shard = tmp_path / "old.tar"
    subprocess.run(["tar", "--format=oldgnu", "-cf", shard, "-C", src, "."], check=True)
    done = js(cli("ingest", shard, "--json"))
    assert (done["new"], done["failed"]) == (7, 0), done


def test_a_key_with_double_colons_stays_whole():
    from organizer.sources import Storage
    from organizer.sources.remote import filesystem

    _, path = filesystem("memory://bucket/a::b.jpg", Storage())
    assert path == "bucket/a::b.jpg"
