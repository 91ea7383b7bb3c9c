"""Roots that move or go away, exports that stay out, files that are not images: end to end
through the CLI, as a user meets them."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.fakes import make_folder, write_picture

pytestmark = pytest.mark.both_backends


def js(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_renamed_root_is_followed_not_doubled(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 6)
    assert cli("ingest", photos).exit_code == 0
    before = js(cli("similar", photos / "img001.jpg", "-n", "5", "--json"))
    moved = tmp_path / "photos2"
    photos.rename(moved)

    again = cli("ingest", moved)
    assert again.exit_code == 1
    assert f"organizer roots move {photos} {moved}" in again.stderr
    roots = js(cli("roots", "--json"))["roots"]
    assert [(r["path"], r["present"]) for r in roots] == [(str(photos), False)]
    assert js(cli("status", "--json"))["absent_roots"] == [str(photos)]
    assert "(absent)" in cli("status").stdout

    assert cli("roots", "move", photos, tmp_path / "elsewhere").exit_code == 1  # no folder
    dry = js(cli("roots", "move", photos, moved, "--dry-run", "--json"))
    assert dry["dry_run"] and dry["checked"]["same_size"] == dry["checked"]["files"] == 6
    assert js(cli("roots", "--json"))["roots"][0]["path"] == str(photos)
    done = js(cli("roots", "move", photos, moved, "--json"))
    assert done["new_path"] == str(moved) and done["images"] == 6

    after = js(cli("similar", moved / "img001.jpg", "-n", "5", "--json"))
    assert [r["image_id"] for r in after["results"]] == [r["image_id"] for r in before["results"]]
    assert all(r["root"] == str(moved) for r in after["results"])
    summary = js(cli("ingest", "--json"))
    assert (summary["new"], summary["unchanged"], summary["embedded"]) == (0, 6, 0)
    assert _groups(js(cli("duplicates", "--json", "--threshold", "0.9999"))) == []


def test_moving_a_root_onto_itself_is_a_usage_error(cli, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    make_folder(photos, 2)
    assert cli("ingest", photos).exit_code == 0
    (tmp_path / "link").symlink_to(photos)
    monkeypatch.chdir(tmp_path)
    for new in (photos, f"{photos}/", "./photos", "link"):
        result = cli("roots", "move", photos, new)
        assert result.exit_code == 2, (new, result.output)
        assert result.stdout == "" and len(result.stderr.splitlines()) == 1
        assert "nothing to move" in result.stderr
    assert js(cli("roots", "--json"))["roots"][0]["path"] == str(photos)


def test_roots_move_refuses_a_folder_with_other_files(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 6)
    assert cli("ingest", photos).exit_code == 0
    other = tmp_path / "other"
    make_folder(other, 6, start_seed=50)  # same names, other pictures
    photos.rename(tmp_path / "gone")
    result = cli("roots", "move", photos, other)
    assert result.exit_code == 1 and "does not hold the files of" in result.stderr
    assert js(cli("roots", "--json"))["roots"][0]["path"] == str(photos)


def test_an_unplugged_root_is_left_out_until_asked(cli, tmp_path):
    kept, drive = tmp_path / "kept", tmp_path / "drive"
    make_folder(kept, 4)
    make_folder(drive, 4, start_seed=20)
    shutil.copy(kept / "img000.jpg", drive / "copy.jpg")
    assert cli("ingest", kept, drive).exit_code == 0
    drive.rename(tmp_path / "unplugged")

    def roots_of(result: dict) -> set[str]:
        return {r["root"] for r in result["results"]}

    assert roots_of(js(cli("search", "a dog", "-n", "20", "--json"))) == {str(kept)}
    everything = js(cli("search", "a dog", "-n", "20", "--json", "--include-offline"))
    assert roots_of(everything) == {str(kept), str(drive)}
    assert js(cli("similar", kept / "img001.jpg", "-n", "20", "--json"))["results"]
    assert _groups(js(cli("duplicates", "--json", "--threshold", "0.9999"))) == []
    with_offline = js(cli("duplicates", "--json", "--threshold", "0.9999", "--include-offline"))
    assert len(_groups(with_offline)) == 1
    assert js(cli("cluster", "-k", "2", "--no-names", "--json"))["n_images"] == 4
    assert (
        js(cli("cluster", "-k", "2", "--no-names", "--json", "--include-offline"))["n_images"] == 9
    )
    report = js(cli("report", "-o", tmp_path / "r.html", "--json", "--run", "1"))
    assert report["n_images"] == 4

    dry = js(cli("roots", "remove", drive, "--dry-run", "--json"))
    assert dry == {
        "action": "remove",
        "path": str(drive),
        "new_path": None,
        "images": 5,
        "dry_run": True,
    }
    assert len(js(cli("roots", "--json"))["roots"]) == 2
    assert js(cli("roots", "remove", drive, "--json"))["dry_run"] is False
    assert [r["path"] for r in js(cli("roots", "--json"))["roots"]] == [str(kept)]
    assert js(cli("status", "--json"))["images"]["ok"] == 4
    assert (tmp_path / "unplugged" / "copy.jpg").exists()  # nothing on disk was touched
    missing = cli("roots", "remove", drive)
    assert missing.exit_code == 1 and "not a root of this library" in missing.stderr


def test_what_an_unplugged_root_leaves_out_is_said(cli, tmp_path):
    kept, drive = tmp_path / "kept", tmp_path / "drive"
    make_folder(kept, 4)
    make_folder(drive, 3, start_seed=20)
    assert cli("ingest", kept, drive).exit_code == 0
    drive.rename(tmp_path / "unplugged")
    note = f"note: left out 3 images under 1 absent root ({drive}): --include-offline keeps them"
    commands = [
        ["similar", kept / "img001.jpg"],
        ["search", "a dog"],
        ["duplicates"],
        ["cluster", "-k", "2", "--no-names"],
        ["report", "-o", tmp_path / "r.html"],
    ]
    for args in commands:
        shown = cli(*args)
        assert shown.exit_code == 0 and note in shown.stderr.splitlines(), (args, shown.output)
        assert js(cli(*args, "--json"))["offline"] == {"roots": [str(drive)], "images": 3}
        everything = cli(*args, "--json", "--include-offline")
        assert js(everything)["offline"] == {"roots": [], "images": 0}
        assert "left out" not in everything.stderr
    cli("report", "-o", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "3 images under 1 absent root, not there" in page and str(drive) not in page
    cli("report", "-o", tmp_path / "r.html", "--absolute")
    assert f"3 images under 1 absent root (<bdi>{drive}</bdi>)" in (tmp_path / "r.html").read_text()


def test_the_same_relative_path_under_two_roots_shows_whole_paths(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_picture(a / "same.jpg", 1)
    write_picture(b / "same.jpg", 2)
    write_picture(a / "query.jpg", 3)
    assert cli("ingest", a, b).exit_code == 0
    text = cli("similar", a / "query.jpg", "-n", "2").stdout
    assert str(a / "same.jpg") in text and str(b / "same.jpg") in text


def test_duplicates_under_two_roots_with_one_name_show_whole_paths(cli, tmp_path):
    """As search does, and the listings of clusters and of skipped files: whichever shows
    two files that differ only in their root shows whole paths."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_picture(a / "same.jpg", 1)
    b.mkdir()
    shutil.copy(a / "same.jpg", b / "same.jpg")
    write_picture(a / "other.jpg", 2)
    for root in (a, b):
        (root / "notes.txt").write_text("x")
    assert cli("ingest", a, b).exit_code == 0
    assert cli("cluster", "-k", "2", "--no-names").exit_code == 0
    for args, name in (
        (["duplicates"], "same.jpg"),
        (["clusters", "-n", "3"], "same.jpg"),
        (["status", "--skipped"], "notes.txt"),
    ):
        text = cli(*args).stdout
        assert str(a / name) in text and str(b / name) in text, (args, text)


def test_an_export_inside_a_root_is_never_ingested(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 6)
    assert cli("ingest", photos).exit_code == 0
    assert cli("cluster", "-k", "2", "--no-names").exit_code == 0
    exported = cli("export", "--to", photos / "by-topic")
    assert exported.exit_code == 0 and "is inside the root" in exported.stderr
    assert (photos / "by-topic" / ".organizer-export").is_file()

    summary = js(cli("ingest", "--json"))
    assert (summary["new"], summary["unchanged"]) == (0, 6)
    assert summary["export_folders"] == [str(photos / "by-topic")]
    assert _groups(js(cli("duplicates", "--json", "--threshold", "0.9999"))) == []

    assert cli("export", "--to", photos / "by-topic").exit_code == 1  # not empty
    again = js(cli("export", "--to", photos / "by-topic", "--force", "--json"))
    assert again["replaced"] == 6 and again["linked"] == 6
    links = [p for p in (photos / "by-topic").rglob("*.jpg")]
    assert len(links) == 6
    for link in links:  # links to the photos, never to the previous export's links
        target = os.readlink(link)
        assert "by-topic" not in target and os.path.isfile(target)
    listed = js(cli("status", "--skipped", "--json"))
    assert listed["export_folders"] == [str(photos / "by-topic")]


def test_files_that_are_not_images_are_counted_and_listed(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 3)
    (photos / "notes.txt").write_text("x")
    (photos / "sub" / "clip.MP4").parent.mkdir(exist_ok=True)
    (photos / "sub" / "clip.MP4").write_bytes(b"x")
    (photos / "README").write_text("x")
    summary = js(cli("ingest", photos, "--json"))
    assert summary["skipped"] == {".txt": 1, ".mp4": 1, "(none)": 1}
    text = cli("ingest", photos).stdout
    assert "skipped 3 files that are not images" in text
    listed = js(cli("status", "--skipped", "--json"))
    assert listed["by_type"] == {"(none)": 1, ".mp4": 1, ".txt": 1}
    assert sorted(f["path"] for f in listed["files"]) == ["README", "notes.txt", "sub/clip.MP4"]


def test_options_given_to_the_roots_group_reach_its_commands(cli, tmp_path, library):
    photos = tmp_path / "photos"
    make_folder(photos, 2)
    assert cli("ingest", photos).exit_code == 0
    other = tmp_path / "other-lib"  # ORGANIZER_LIBRARY would name this one
    change = cli("roots", "-L", library, "--json", "remove", photos, ORGANIZER_LIBRARY=str(other))
    assert change.exit_code == 0, change.output
    assert json.loads(change.stdout)["path"] == str(photos)
    assert js(cli("roots", "--json"))["roots"] == [] and not other.exists()


def test_an_export_never_goes_into_a_folder_of_library_photos(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos / "2023", 3)
    make_folder(photos / "2024", 3, start_seed=10)
    assert cli("ingest", photos).exit_code == 0
    assert cli("cluster", "-k", "2", "--no-names").exit_code == 0
    for target in (photos / "2023", photos):
        refused = cli("export", "--to", target, "--force")
        assert (
            refused.exit_code == 1
            and "holds" in refused.stderr
            and "photos of this library" in refused.stderr
        )
        assert not (target / ".organizer-export").exists()
    assert js(cli("ingest", "--json"))["missing"] == 0


def test_a_subfolder_of_an_export_is_not_ingested_either(cli, tmp_path):
    photos = tmp_path / "photos"
    make_folder(photos, 4)
    assert cli("ingest", photos).exit_code == 0
    assert cli("cluster", "-k", "2", "--no-names").exit_code == 0
    assert cli("export", "--to", photos / "by-topic").exit_code == 0
    inner = next(p for p in (photos / "by-topic").iterdir() if p.is_dir())
    summary = js(cli("ingest", inner, "--json"))
    assert (summary["new"], summary["reused"]) == (0, 0)
    assert summary["export_folders"] == [str(inner)]
    assert js(cli("ingest", "--json"))["missing"] == 0


def test_root_and_export_folder_names_are_shown_escaped(cli, tmp_path):
    """Folder names come from whoever made the photo tree: an escape sequence, a bidi
    override or a newline in one must not reach the terminal or the JSON raw."""
    root = tmp_path / "r\u202egpj\x1b[31mred\nx"
    make_folder(root, 2)
    export = root / "ex\u202e\x1b[7mgpj"
    export.mkdir()
    (export / ".organizer-export").write_text("")
    assert cli("ingest", root).exit_code == 0
    shown = "r\\u202egpj\\x1b[31mred\\nx"
    outputs = [
        cli("ingest", root).stdout,
        cli("status").stdout,
        cli("roots").stdout,
        cli("status", "--skipped").stdout,
        cli("status", "--json").stdout,
        cli("status", "--skipped", "--json").stdout,
        cli("ingest", root, "--json").stdout,
    ]
    for text in outputs:
        assert not any(c in text for c in "\x1b\u202e"), text
    assert shown in outputs[1] and shown in outputs[2]
    assert json.loads(outputs[4])["roots"] == [str(tmp_path / shown)]
    folders = json.loads(outputs[5])["export_folders"]
    assert folders == [str(tmp_path / shown / "ex\\u202e\\x1b[7mgpj")]


def _groups(duplicates: dict) -> list[dict]:
    """Every group of a `duplicates --json` document, whatever its kind."""
    return [g for kind in ("exact", "near", "burst") for g in duplicates.get(kind, [])]
