"""`organizer clean PLAN.json`: the others of each group go to the trash, checked against the
plan's content first, journalled, and `clean --undo` puts them back byte for byte."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from organizer.choices import DuplicateKind
from organizer.duplicates import trash
from organizer.duplicates.plan import Plan, PlannedFile, PlannedGroup
from organizer.store import queries as q
from tests.fakes import write_picture

pytestmark = pytest.mark.both_backends

TRASH = ".organizer-trash"


def planned(path: Path) -> PlannedFile:
    data = path.read_bytes()
    return PlannedFile(os.fsencode(path), hashlib.sha256(data).hexdigest(), len(data))


def write_plan(where: Path, *groups: tuple[Path, list[Path]]) -> Path:
    plan = Plan(
        "test",
        "2026-01-01T00:00:00Z",
        tuple(
            PlannedGroup(
                str(n), DuplicateKind.EXACT, planned(keep), "oldest", tuple(map(planned, move))
            )
            for n, (keep, move) in enumerate(groups, start=1)
        ),
    )
    path = where / "plan.json"
    plan.write(path)
    return path


def snapshot(root: Path, skip_trash: bool = True) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (but the trash): its bytes and modification time."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not (skip_trash and rel.parts[0] == TRASH):
            found[str(rel)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return found


@pytest.fixture
def dup(photos, fake_lib, tmp_path):
    """Photos with copies: img000 twice, img001 three times; ingested; and a plan that keeps
    the originals."""
    copies = photos / "copies"
    copies.mkdir()
    a, b = photos / "img000.jpg", photos / "img001.jpg"
    a2, b2, b3 = copies / "img000.jpg", copies / "img001 copy.jpg", photos / "sub" / "img001.jpg"
    for src, dst in ((a, a2), (b, b2), (b, b3)):
        shutil.copy2(src, dst)
    fake_lib.ingest([photos])

    class Dup:
        root = photos
        keep = (a, b)
        others = (a2, b2, b3)
        plan = write_plan(tmp_path, (a, [a2]), (b, [b2, b3]))

    return Dup


def ok_paths(lib) -> set[str]:
    with lib.engine.connect() as conn:
        rows = conn.execute(q.select(q.images.c.relpath).where(q.images.c.status == "ok")).scalars()
        return {os.fsdecode(r) for r in rows}


# -- moving ----------------------------------------------------------------------------------


def test_clean_moves_exactly_the_others_and_undo_puts_them_back(cli, dup):
    before = snapshot(dup.root)
    result = cli("clean", dup.plan)
    assert result.exit_code == 0, result.output
    assert "moved 3 files of 2 groups to the trash" in result.stdout
    assert "undo with: organizer clean --undo " in result.stdout
    after = snapshot(dup.root)
    gone = {str(p.relative_to(dup.root)) for p in dup.others}
    assert set(before) - set(after) == gone and all(after[k] == before[k] for k in after)
    trashed = snapshot(dup.root / TRASH, skip_trash=False)
    assert trashed == {k: before[k] for k in gone}  # same relative paths, bytes and times
    (dup.root / "copies").rmdir()  # emptied by the clean-up: the undo makes it again

    result = cli("clean", "--undo", "last")
    assert result.exit_code == 0, result.output
    assert "put back 3 files" in result.stdout
    assert snapshot(dup.root) == before
    assert not [p for p in (dup.root / TRASH).rglob("*") if p.is_file()]
    again = cli("clean", "--undo", "last")
    assert again.exit_code == 0 and "nothing left to undo" in again.stdout


def test_json_names_moved_skipped_and_the_journal(cli, dup):
    dup.others[0].write_bytes(b"edited after the plan")
    result = cli("clean", dup.plan, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sorted(f["path"] for f in doc["moved"]) == ["copies/img001 copy.jpg", "sub/img001.jpg"]
    assert doc["skipped"] == [
        {"path": "copies/img000.jpg", "group": "1", "reason": "changed since the plan"}
    ]
    assert doc["groups"] == 1 and Path(doc["journal"]).is_file()
    assert doc["moved"][0]["trash"].startswith(str(dup.root / TRASH))
    undo = json.loads(cli("clean", "--undo", doc["journal"], "--json").stdout)
    assert len(undo["restored"]) == 2 and undo["refused"] == []


def test_an_edited_file_is_skipped_with_its_reason(cli, dup):
    dup.others[1].write_bytes(dup.others[1].read_bytes() + b"\0")
    result = cli("clean", dup.plan)
    assert result.exit_code == 0, result.output
    assert "moved 2 files of 2 groups" in result.stdout and "skipped 1:" in result.stdout
    assert "copies/img001 copy.jpg: changed since the plan" in result.stdout
    assert dup.others[1].exists()


@pytest.mark.parametrize("how", ["deleted", "edited"])
def test_a_group_whose_keeper_is_gone_or_changed_is_left_alone(cli, dup, how):
    keeper = dup.keep[1]
    if how == "deleted":
        keeper.unlink()
    else:
        keeper.write_bytes(b"not the planned photo")
    result = cli("clean", dup.plan)
    assert result.exit_code == 0, result.output
    assert dup.others[1].exists() and dup.others[2].exists()  # its group stays
    assert not dup.others[0].exists()  # the other group is cleaned
    reason = "is missing" if how == "deleted" else "changed since the plan"
    assert f"its keeper img001.jpg {reason}: the group is left as it is" in result.stdout


def test_a_symbolic_link_and_a_file_under_no_root_are_skipped(cli, dup, tmp_path):
    link = dup.root / "copies" / "link.jpg"
    outside = tmp_path / "elsewhere" / "img000.jpg"
    outside.parent.mkdir()
    shutil.copy2(dup.keep[0], outside)
    plan = write_plan(tmp_path, (dup.keep[0], [dup.others[0], outside]))
    link.symlink_to(dup.keep[0])
    link_plan = Plan.read(plan)
    group = link_plan.groups[0]
    entry = PlannedFile(os.fsencode(link), group.move[0].sha256, group.move[0].size)
    Plan(
        "test", "now", (PlannedGroup("1", group.kind, group.keep, "", (*group.move, entry)),)
    ).write(plan)
    result = cli("clean", plan)
    assert result.exit_code == 0, result.output
    assert "copies/link.jpg: a symbolic link" in result.stdout
    assert f"{outside}: under no root of this library" in result.stdout
    assert link.is_symlink() and outside.exists() and not dup.others[0].exists()


def test_a_file_kept_by_one_group_under_another_name_is_never_moved_by_another(cli, dup, tmp_path):
    """Two groups whose keepers are each other's moved file, named through a folder link:
    without looking at every keeper, both copies went to the trash."""
    (dup.root / "alias").symlink_to(dup.root)
    original, copy = dup.keep[0], dup.others[0]
    alias = dup.root / "alias"
    plan = write_plan(
        tmp_path,
        (alias / "copies" / copy.name, [original]),
        (alias / original.name, [copy]),
    )
    result = cli("clean", plan)
    assert result.exit_code == 0, result.output
    assert original.exists() and copy.exists()
    assert result.stdout.count("the same file as a keeper (another name of it)") == 2


def test_a_taken_name_in_the_trash_gets_a_number(cli, dup, tmp_path):
    earlier = dup.root / TRASH / "copies" / "img000.jpg"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"trashed by an earlier clean-up")
    sidecar = dup.others[0].with_suffix(".xmp")
    sidecar.write_text("<xmp/>")
    plan = write_plan(tmp_path, (dup.keep[0], [dup.others[0]]))
    assert cli("clean", plan).exit_code == 0
    assert earlier.read_bytes() == b"trashed by an earlier clean-up"
    assert (earlier.parent / "img000 (2).jpg").read_bytes() == dup.keep[0].read_bytes()
    assert (earlier.parent / "img000 (2).xmp").read_text() == "<xmp/>"
    assert cli("clean", "--undo", "last").exit_code == 0
    assert sidecar.read_text() == "<xmp/>" and dup.others[0].exists()
    assert earlier.read_bytes() == b"trashed by an earlier clean-up"


def test_companions_travel_with_their_photo_and_come_back(cli, dup, tmp_path):
    folder = dup.root / "copies"
    companions = {
        "img000.xmp": b"<xmp/>",
        "IMG000.MOV": b"live photo video",
        "img000.jpg.json": b"{}",
    }
    for name, data in companions.items():
        (folder / name).write_bytes(data)
    (folder / "img000.txt").write_text("my notes")  # not a companion's extension
    raw_pair = folder / "img001 copy.dng"  # an image: stays, with its xmp
    raw_pair.write_bytes(b"raw sensor data")
    (folder / "img001 copy.xmp").write_text("the RAW's edits")
    before = snapshot(dup.root)
    assert cli("clean", dup.plan).exit_code == 0
    for name in companions:
        assert not (folder / name).exists()
        assert (dup.root / TRASH / "copies" / name).read_bytes() == companions[name]
    assert (folder / "img000.txt").exists() and raw_pair.exists()
    assert (folder / "img001 copy.xmp").exists()
    assert cli("clean", "--undo", "last").exit_code == 0
    assert snapshot(dup.root) == before


def test_a_copy_named_in_another_case_leaves_the_keepers_sidecar(cli, dup, tmp_path):
    """IMG.jpg kept, IMG.JPG moved, one folder (a case-sensitive filesystem): the keeper's
    IMG.jpg.xmp is its own, and stays; IMG.JPG.xmp goes with its photo."""
    folder = dup.root / "copies"
    keeper, copy = folder / "IMG.jpg", folder / "IMG.JPG"
    shutil.copy2(dup.keep[0], keeper)
    shutil.copy2(dup.keep[0], copy)
    (folder / "IMG.jpg.xmp").write_text("the keeper's edits")
    (folder / "IMG.JPG.xmp").write_text("the copy's edits")
    plan = write_plan(tmp_path, (keeper, [copy]))
    result = cli("clean", plan)
    assert result.exit_code == 0, result.output
    assert (folder / "IMG.jpg.xmp").read_text() == "the keeper's edits"
    assert (dup.root / TRASH / "copies" / "IMG.JPG.xmp").read_text() == "the copy's edits"


def test_companions_of_thousands_of_photos_in_one_folder_are_looked_up(tmp_path, monkeypatch):
    """A camera dump of 5,000 photos, half of them moving: each photo's companions were
    found by scanning the whole folder again (12 million name checks, about 20 s); the
    folder is read once now."""
    listed = []
    real = trash._listing
    monkeypatch.setattr(trash, "_listing", lambda folder: listed.append(folder) or real(folder))
    names = [f"IMG_{n:05d}.JPG" for n in range(5000)]
    for name in names:
        (tmp_path / name).touch()
    (tmp_path / "IMG_00002.xmp").touch()
    moving = {os.fsencode(tmp_path / n) for n in names[::2]}
    listings: dict = {}
    found = [trash.companions(path, moving, listings) for path in sorted(moving)]
    assert listed == [os.fsencode(tmp_path)]
    assert found[1] == [os.fsencode(tmp_path / "IMG_00002.xmp")]
    assert sum(map(len, found)) == 1


def test_to_a_folder_of_ones_choice(cli, dup, tmp_path):
    target = tmp_path / "trash"
    before = snapshot(dup.root)
    result = cli("clean", dup.plan, "--to", target)
    assert result.exit_code == 0, result.output
    inside = target / str(dup.root.resolve()).lstrip("/")
    assert (inside / "copies" / "img000.jpg").read_bytes() == before["copies/img000.jpg"][0]
    assert not (dup.root / TRASH).exists()
    assert cli("clean", "--undo", "last").exit_code == 0
    assert snapshot(dup.root) == before


def test_to_a_folder_ingest_would_walk_is_refused(cli, dup):
    result = cli("clean", dup.plan, "--to", dup.root / "trash")
    assert result.exit_code == 2
    assert "inside the root" in result.stderr and "Traceback" not in result.output
    assert all(p.exists() for p in dup.others)
    # A folder that holds a root: every file of it would be "already in a trash folder".
    above = cli("clean", dup.plan, "--to", dup.root.parent)
    assert above.exit_code == 2 and "holds the root" in above.stderr, above.output
    assert all(p.exists() for p in dup.others)
    hidden = cli("clean", dup.plan, "--to", dup.root / ".my-trash")
    assert hidden.exit_code == 0, hidden.output


def test_a_move_across_filesystems_copies_checks_then_removes(cli, dup, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to move to")
    target = Path(tempfile.mkdtemp(dir=shm))
    try:
        before = snapshot(dup.root)
        assert cli("clean", dup.plan, "--to", target).exit_code == 0
        moved = target / str(dup.root.resolve()).lstrip("/") / "copies" / "img000.jpg"
        assert moved.read_bytes() == before["copies/img000.jpg"][0]
        assert moved.stat().st_mtime_ns == before["copies/img000.jpg"][1]
        assert not list(moved.parent.glob(".*organizer-part"))
        assert cli("clean", "--undo", "last").exit_code == 0
        assert snapshot(dup.root) == before
    finally:
        shutil.rmtree(target)


def test_without_hard_links_a_move_is_a_checked_rename(cli, dup, monkeypatch):
    def no_links(src, dst, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    before = snapshot(dup.root)
    assert cli("clean", dup.plan).exit_code == 0
    assert not any(p.exists() for p in dup.others)
    blocker = dup.others[0]
    blocker.write_bytes(b"a new file at the old path")
    result = cli("clean", "--undo", "last")
    assert "copies/img000.jpg: a file has appeared at its old path" in result.stdout
    assert blocker.read_bytes() == b"a new file at the old path"
    blocker.unlink()
    assert cli("clean", "--undo", "last").exit_code == 0
    assert snapshot(dup.root) == before


def test_dry_run_changes_nothing(cli, dup, library, backend):
    before = snapshot(dup.root, skip_trash=False)
    result = cli("clean", dup.plan, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would move 3 files of 2 groups" in result.stdout
    assert "copies/img000.jpg -> .organizer-trash/copies/img000.jpg" in result.stdout
    assert snapshot(dup.root, skip_trash=False) == before
    if backend == "sqlite":
        assert not (Path(library) / "clean-ups").exists()


# -- undo --------------------------------------------------------------------------------------


def test_undo_refuses_a_taken_path_and_a_changed_trash_copy(cli, dup):
    assert cli("clean", dup.plan).exit_code == 0
    dup.others[0].write_bytes(b"a new photo with the old name")
    changed = dup.root / TRASH / "sub" / "img001.jpg"
    changed.write_bytes(b"edited in the trash")
    result = cli("clean", "--undo", "last")
    assert result.exit_code == 0, result.output
    assert "put back 1 file" in result.stdout and "refused 2:" in result.stdout
    assert "copies/img000.jpg: a file has appeared at its old path" in result.stdout
    assert "sub/img001.jpg: changed in the trash since the clean-up" in result.stdout
    assert dup.others[0].read_bytes() == b"a new photo with the old name"
    assert (dup.root / TRASH / "copies" / "img000.jpg").exists()
    assert dup.others[1].exists()


def test_undo_never_removes_a_trash_copy_identical_to_one_put_back_by_hand(cli, dup):
    assert cli("clean", dup.plan).exit_code == 0
    trashed = dup.root / TRASH / "copies" / "img000.jpg"
    shutil.copy2(trashed, dup.others[0])  # the user put a copy back themselves
    result = cli("clean", "--undo", "last")
    assert result.exit_code == 0, result.output
    assert "an identical file is back at its old path: its trash copy is left" in result.stdout
    assert trashed.read_bytes() == dup.others[0].read_bytes()  # both kept, nothing removed


def test_bad_plans_and_journals_are_one_line_errors(cli, dup, tmp_path):
    not_a_plan = tmp_path / "not-a-plan.json"
    not_a_plan.write_text("[1, 2")
    for args, code, words in [
        (["clean", not_a_plan], 2, "cannot read the plan"),
        (["clean", tmp_path / "nowhere.json"], 2, "no plan at"),
        (["clean"], 2, "give a plan"),
        (["clean", dup.plan, "--undo", "last"], 2, "give a plan"),
        (["clean", "--undo", "last"], 1, "no clean-up to undo"),
        (["clean", "--undo", not_a_plan], 1, "is not an organizer clean-up journal"),
        (["clean", "--undo", tmp_path / "nowhere.jsonl"], 1, "no journal at"),
    ]:
        result = cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert words in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_paths_no_file_can_have_are_one_line_errors(cli, dup, tmp_path):
    """A NUL or a stray surrogate in a plan's or a journal's path: before, an unexpected
    ValueError from the first call on it."""
    doc = json.loads(dup.plan.read_text())
    doc["groups"][0]["keep"]["path"] = f"{dup.root}/a\u0000b.jpg"
    (nul := tmp_path / "nul.json").write_text(json.dumps(doc))
    doc["groups"][0]["keep"]["path"] = f"{dup.root}/\ud800.jpg"
    (surrogate := tmp_path / "surrogate.json").write_text(json.dumps(doc))
    journal = Path(json.loads(cli("clean", dup.plan, "--json").stdout)["journal"])
    lines = journal.read_text().splitlines()
    intent = next(n for n, line in enumerate(lines) if '"intent"' in line)
    lines[intent] = lines[intent].replace('"src": "', '"src": "\\u0000', 1)
    (nul_journal := tmp_path / "nul.jsonl").write_text("\n".join(lines) + "\n")
    for args, code, words in [
        (["clean", nul], 2, "its keeper: 'path' is not a file name"),
        (["clean", surrogate], 2, "its keeper: 'path' is not a file name"),
        (["clean", "--undo", nul_journal], 1, "is damaged"),
    ]:
        result = cli(*args)
        assert result.exit_code == code, (args, result.output)
        assert words in result.stderr and "unexpected" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_plan_of_another_librarys_files_is_refused(cli, dup, tmp_path):
    other = tmp_path / "other"
    a, b = write_picture(other / "a.jpg", 1), other / "b.jpg"
    shutil.copy2(a, b)
    result = cli("clean", write_plan(tmp_path, (a, [b])))
    assert result.exit_code == 2 and "under a root of this library" in result.stderr
    assert b.exists()


def test_a_damaged_journal_is_refused_and_a_cut_last_line_is_not(cli, dup, fake_lib):
    assert cli("clean", dup.plan).exit_code == 0
    journal = fake_lib.last_clean()
    text = journal.read_text()
    journal.write_text(text + '{"record": "und')  # a kill -9 in the middle of a line
    damaged = journal.with_name("damaged.jsonl")
    lines = text.splitlines()
    damaged.write_text("\n".join([*lines[:2], "not a record", *lines[2:]]) + "\n")
    result = cli("clean", "--undo", damaged)
    assert result.exit_code == 1 and "is damaged" in result.stderr
    assert "Traceback" not in result.output
    assert cli("clean", "--undo", journal).exit_code == 0
    assert all(p.exists() for p in dup.others)


# -- the library -------------------------------------------------------------------------------


def test_trashed_images_leave_every_result_and_come_back(fake_lib, fake, dup):
    a, a2 = dup.keep[0], dup.others[0]
    assert any(len(g.files) >= 2 for g in fake_lib.duplicates().groups)
    assert str(a2.relative_to(dup.root)) in {
        r.relpath.decode() for r in fake_lib.similar(a).results
    }

    summary = fake_lib.clean(dup.plan)
    assert len(summary.moved) == 3 and summary.journal is not None
    assert ok_paths(fake_lib).isdisjoint({str(p.relative_to(dup.root)) for p in dup.others})
    found = {r.relpath.decode() for r in fake_lib.similar(a).results}
    assert str(a2.relative_to(dup.root)) not in found
    assert all(len(g.files) < 2 for g in fake_lib.duplicates().groups)

    embedded = fake.images_embedded
    again = fake_lib.ingest([dup.root])  # the trash is hidden; the trashed stay missing
    assert again.new == 0 and again.missing == 0 and fake.images_embedded == embedded
    assert not any(TRASH in p for p in ok_paths(fake_lib))

    fake_lib.undo_clean(summary.journal)
    assert {str(p.relative_to(dup.root)) for p in dup.others} <= ok_paths(fake_lib)
    assert str(a2.relative_to(dup.root)) in {
        r.relpath.decode() for r in fake_lib.similar(a).results
    }
    after_undo = fake_lib.ingest([dup.root])  # nothing to embed again: same size and time
    assert after_undo.new == 0 and after_undo.changed == 0 and fake.images_embedded == embedded
    with fake_lib.engine.connect() as conn:
        assert q.status_counts(conn)["missing"] == 0


def test_the_last_clean_up_is_named(fake_lib, dup):
    assert fake_lib.last_clean() is None
    summary = fake_lib.clean(dup.plan)
    assert fake_lib.last_clean() == summary.journal
    assert summary.journal.name.endswith(f"-{Plan.read(dup.plan).checksum[:12]}.jsonl")


def test_the_trash_is_never_ingested(fake_lib, dup):
    fake_lib.clean(dup.plan)
    assert (dup.root / TRASH / "copies" / "img000.jpg").exists()
    fake_lib.ingest([dup.root])
    with fake_lib.engine.connect() as conn:
        relpaths = conn.execute(q.select(q.images.c.relpath)).scalars().all()
    assert not [r for r in relpaths if TRASH.encode() in r]


def test_hard_link_fallback_is_refused_when_the_target_exists(tmp_path, monkeypatch):
    src, dst = tmp_path / "a", tmp_path / "b"
    src.write_bytes(b"a")
    dst.write_bytes(b"b")
    monkeypatch.setattr(
        os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no"))
    )
    with pytest.raises(FileExistsError):
        trash.place(os.fsencode(src), os.fsencode(dst))
    assert src.read_bytes() == b"a" and dst.read_bytes() == b"b"


@pytest.mark.parametrize("failing", ["copy", "place"])
def test_a_failed_copy_across_filesystems_leaves_no_part_behind(tmp_path, monkeypatch, failing):
    """A full disk mid-copy, or a name taken when the copy is placed: the original stays and
    so did, before, a half copy nothing would remove (its move is recorded as skipped)."""
    src, dst = tmp_path / "a.jpg", tmp_path / "trash" / "a.jpg"
    src.write_bytes(b"the photo")
    digest = hashlib.sha256(b"the photo").hexdigest()

    def other_filesystem(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(source, part, **k):
        Path(os.fsdecode(part)).write_bytes(b"the ph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", other_filesystem)
    if failing == "copy":
        monkeypatch.setattr(shutil, "copy2", disk_full)
    else:
        dst.parent.mkdir()
        monkeypatch.setattr(os.path, "lexists", lambda p: True)  # taken meanwhile
    with pytest.raises(OSError):
        trash.move(os.fsencode(src), os.fsencode(dst), digest)
    assert src.read_bytes() == b"the photo"
    assert not list(dst.parent.glob(".*organizer-part"))


def test_a_plan_from_duplicates_is_carried_out(cli, dup, tmp_path):
    plan = tmp_path / "written.json"
    made = cli("duplicates", "--plan", plan)
    assert made.exit_code == 0, made.output
    result = cli("clean", plan, "--json")
    assert result.exit_code == 0, result.output
    moved = {f["path"] for f in json.loads(result.stdout)["moved"]}
    kept = {str(p.relative_to(dup.root)) for p in dup.keep}
    assert len(moved) == 3 and not moved & kept
    assert all(p.exists() for p in dup.keep)


def test_a_file_that_cannot_be_moved_is_a_recorded_skip(cli, dup, monkeypatch):
    stuck = os.fsencode(dup.others[0])
    real_link, real_rename = os.link, os.rename

    def refuse(real):
        def move(src, dst, **kw):
            if src == stuck:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(src, dst, **kw)

        return move

    with monkeypatch.context() as patched:
        patched.setattr(os, "link", refuse(real_link))
        patched.setattr(os, "rename", refuse(real_rename))
        result = cli("clean", dup.plan)
    assert result.exit_code == 0, result.output
    assert "moved 2 files of 1 group" in result.stdout and "skipped 1:" in result.stdout
    assert "copies/img000.jpg: cannot be moved: Permission denied" in result.stdout
    assert dup.others[0].exists()
    assert cli("clean", "--undo", "last").exit_code == 0
    assert all(p.exists() for p in dup.others)
