"""Duplicates people can act on: kinds, keepers and their reasons, decisions, plans.

The fake embedder's vectors follow the pixels, so a re-encode or resize is ~1.0 alike, a
2-pixel crop ~0.99, a burst's 6-pixel shift ~0.94 and unrelated pictures far apart.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from organizer.choices import Decision, DuplicateKind
from organizer.duplicates.find import DuplicateOptions, parse_kinds
from organizer.duplicates.keeper import parse_prefer
from organizer.duplicates.plan import Plan
from organizer.errors import OptionsError, PlanError
from tests.fakes import photo_exif, picture

SIZE = (400, 300)


def shot(seed: int, shift: int = 0) -> Image.Image:
    image = picture(seed, SIZE)
    return Image.fromarray(np.roll(np.asarray(image), shift, axis=1)) if shift else image


def save(path: Path, image: Image.Image, exif: Image.Exif | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif is not None:
        options["exif"] = exif.tobytes()
    image.save(path, **options)
    return path


@pytest.fixture
def archive(tmp_path) -> Path:
    """Every kind of case, each named for what it is."""
    root = tmp_path / "photos"
    original = save(root / "originals/beach.jpg", shot(1), photo_exif(), quality=95)
    (root / "backup").mkdir()
    shutil.copy(original, root / "backup/beach.jpg")  # exact copy elsewhere
    save(root / "whatsapp/IMG-beach.jpg", shot(1), quality=40)  # re-encoded, stripped
    save(root / "small/beach-small.jpg", shot(1).resize((200, 150)), photo_exif(), quality=95)
    save(root / "crops/beach-crop.jpg", shot(1).crop((2, 2, 398, 298)), photo_exif(), quality=95)
    for n, (second, shift) in enumerate([(10, 0), (11, 6), (12, 12)]):
        save(
            root / f"burst/DSC_{n}.jpg",
            shot(7, shift),
            photo_exif(taken=f"2021:06:01 09:00:{second}", camera=("Nikon", "Z 6")),
            quality=92,
        )
    for seed in (20, 21, 22):
        save(root / f"other/unrelated-{seed}.jpg", shot(seed), quality=90)
    return root


def _names(group) -> list[str]:
    return sorted(os.fsdecode(f.record.relpath) for f in group.files)


def _kept(group) -> str:
    return os.fsdecode(group.keep.record.relpath)


def test_each_kind_is_its_own_list(fake_lib, archive):
    fake_lib.ingest([archive])
    found = fake_lib.duplicates()
    [exact] = found.of(DuplicateKind.EXACT)
    assert _names(exact) == ["backup/beach.jpg", "originals/beach.jpg"]
    assert all(f.identical for f in exact.files)
    [near] = found.of(DuplicateKind.NEAR)
    assert _names(near) == [
        "backup/beach.jpg",
        "crops/beach-crop.jpg",
        "originals/beach.jpg",
        "small/beach-small.jpg",
        "whatsapp/IMG-beach.jpg",
    ]
    [burst] = found.of(DuplicateKind.BURST)
    assert _names(burst) == ["burst/DSC_0.jpg", "burst/DSC_1.jpg", "burst/DSC_2.jpg"]
    assert sorted(f.shot for f in burst.files) == [1, 2, 3]  # in time order
    by_shot = {f.shot: os.fsdecode(f.record.relpath) for f in burst.files}
    assert by_shot == {1: "burst/DSC_0.jpg", 2: "burst/DSC_1.jpg", 3: "burst/DSC_2.jpg"}
    assert 0.9 <= burst.similarity < 0.96  # shots of one moment, less alike than copies
    assert not any("unrelated" in n for g in found.groups for n in _names(g))
    doc = found.to_dict()
    assert [len(doc[k]) for k in ("exact", "near", "burst")] == [1, 1, 1]
    assert doc["near"][0]["keep"]["path"] == _kept(near)
    assert doc["near"][0]["id"] == near.id and len(near.id) == 12


def test_default_keeper_is_the_original_and_says_why(fake_lib, archive):
    fake_lib.ingest([archive])
    [near] = fake_lib.duplicates().of(DuplicateKind.NEAR)
    # Same pixels as its backup copy, larger than the crop and the small copy; the
    # WhatsApp copy has the same pixels but a smaller file: the shortest path decides.
    assert _kept(near) == "backup/beach.jpg"
    assert near.keeper.rule == "path"
    roles = {os.fsdecode(f.record.relpath): str(f.role) for f in near.files}
    assert roles["whatsapp/IMG-beach.jpg"] == "move"
    [exact] = fake_lib.duplicates(DuplicateOptions(kinds=(DuplicateKind.EXACT,))).groups
    assert exact.keeper.reason == "identical copies: the shortest path"


def test_rules_change_the_keeper(fake_lib, archive):
    fake_lib.ingest([archive])

    def kept(*prefer: str) -> tuple[str, str]:
        options = DuplicateOptions(kinds=(DuplicateKind.NEAR,), prefer=prefer)
        [near] = fake_lib.duplicates(options).groups
        return _kept(near), near.keeper.reason

    keep, why = kept(f"folder:{archive / 'originals'}")
    assert keep == "originals/beach.jpg" and "preferred folder" in why
    os.utime(archive / "whatsapp/IMG-beach.jpg", (2_000_000_000, 2_000_000_000))
    keep, why = kept("newest")  # the stripped copy has no date taken: its file's time
    assert keep == "whatsapp/IMG-beach.jpg" and why.startswith("the newest")
    save(archive / "png/beach.png", shot(1))
    fake_lib.ingest([archive])
    keep, why = kept("format:png,jpg", "largest")
    assert keep == "png/beach.png" and why.startswith("a preferred format (PNG before JPG")


def test_bad_rules_and_kinds_are_usage_errors():
    with pytest.raises(OptionsError, match="format:raw,heic,jpg"):
        parse_prefer(["biggest"])
    with pytest.raises(OptionsError, match="not a format"):
        parse_prefer(["format:raw,gif87"])
    with pytest.raises(OptionsError, match="exact, near, burst"):
        parse_kinds("exact,similar")
    assert parse_kinds("burst, EXACT") == (DuplicateKind.EXACT, DuplicateKind.BURST)


def test_two_cameras_or_two_times_are_never_near_copies(fake_lib, tmp_path):
    root = tmp_path / "p"
    save(root / "a.jpg", shot(3), photo_exif(camera=("Canon", "EOS R")), quality=95)
    save(root / "b.jpg", shot(3), photo_exif(camera=("Sony", "A7")), quality=95)
    later = photo_exif(taken="2008:10:22 14:09:00", camera=("Canon", "EOS R"))
    save(root / "c.jpg", shot(3), later, quality=94)
    fake_lib.ingest([root])
    assert fake_lib.duplicates().groups == []


def test_a_raw_file_and_its_jpeg_are_one_shot(fake_lib, tmp_path):
    from tests.test_formats import make_dng

    pytest.importorskip("rawpy")
    root = tmp_path / "p"
    (root / "card").mkdir(parents=True)
    (root / "card/IMG_1.DNG").write_bytes(make_dng())
    fake_lib.ingest([root])
    dng = fake_lib.duplicates().groups
    assert dng == []  # alone, nothing to group
    # Its JPEG beside it (what the camera wrote with it) and a copy of that JPEG elsewhere.
    [record] = [r for r in _records(fake_lib) if r.relpath.endswith(b".DNG")]
    preview = _decoded(record.path)
    save(root / "card/IMG_1.JPG", preview, quality=95)
    save(root / "phone/IMG_1-copy.jpg", preview, quality=80)
    fake_lib.ingest([root])
    for options in (DuplicateOptions(), DuplicateOptions(prefer=("format:jpg",))):
        # A RAW file first by default; asked for JPEG first, the pair's own JPEG still wins
        # over its copy, which has fewer bytes.
        [group] = fake_lib.duplicates(options).of(DuplicateKind.NEAR)
        roles = {os.fsdecode(f.record.relpath): str(f.role) for f in group.files}
        assert roles["phone/IMG_1-copy.jpg"] == "move", options
    group = fake_lib.duplicates().of(DuplicateKind.NEAR)[0]
    assert group.keeper.rule == "raw"
    roles = {os.fsdecode(f.record.relpath): str(f.role) for f in group.files}
    assert roles["card/IMG_1.DNG"] == "keep"
    assert roles["card/IMG_1.JPG"] == "with-keeper"  # stays with its RAW
    assert roles["phone/IMG_1-copy.jpg"] == "move"


def test_an_exact_group_is_its_copies_whatever_else_is_searched(fake_lib, tmp_path):
    """IMG_1.DNG + IMG_1.JPG, and a copy of the JPEG: when near copies were searched too,
    the exact group took in the RAW file (no copy of it anywhere), moved it with its JPEG
    when the copy was kept, and had another id than with --kind exact."""
    from tests.test_formats import make_dng

    pytest.importorskip("rawpy")
    root = tmp_path / "p"
    (root / "card").mkdir(parents=True)
    (root / "card/IMG_1.DNG").write_bytes(make_dng())
    fake_lib.ingest([root])
    [record] = _records(fake_lib)
    save(root / "card/IMG_1.JPG", _decoded(record.path), quality=95)
    (root / "backup").mkdir()
    shutil.copy2(root / "card/IMG_1.JPG", root / "backup/IMG_1.JPG")
    fake_lib.ingest([root])
    prefer = (f"folder:{root}/backup",)
    exact_only = fake_lib.duplicates(DuplicateOptions(kinds=(DuplicateKind.EXACT,), prefer=prefer))
    every_kind = fake_lib.duplicates(DuplicateOptions(prefer=prefer))
    [alone] = exact_only.groups
    [exact] = every_kind.of(DuplicateKind.EXACT)
    assert exact.id == alone.id
    roles = {os.fsdecode(f.record.relpath): str(f.role) for f in exact.files}
    assert roles == {"backup/IMG_1.JPG": "keep", "card/IMG_1.JPG": "move"}
    plan = every_kind.plan("test", [DuplicateKind.EXACT, DuplicateKind.BURST])
    assert [os.path.basename(f.path) for g in plan.groups for f in g.move] == [b"IMG_1.JPG"]


def test_a_plan_of_many_groups_keeps_their_order():
    """The plan put its groups in order with list.index, comparing whole groups: 12 s for
    10,000 groups of two, twenty minutes for 100,000 (figures, not asserted here)."""
    from organizer.duplicates.groups import DuplicateFile, DuplicateGroup, Duplicates, Role
    from organizer.duplicates.keeper import Keeper
    from organizer.store.records import ImageRecord, ImageStatus

    def record(i: int) -> ImageRecord:
        digest = f"{i // 2:064x}"
        path = f"a/{i}.jpg".encode()
        return ImageRecord(i, "/r", path, 10, 1, 10, 10, "JPEG", ImageStatus.OK, digest, None, None)

    groups = []
    for n in range(2_000):
        keep, other = record(2 * n), record(2 * n + 1)
        files = (DuplicateFile(keep, Role.KEEP, True), DuplicateFile(other, Role.MOVE, True))
        groups.append(
            DuplicateGroup(f"{n:012x}", DuplicateKind.EXACT, files, Keeper(keep.id, "path", ""), 1)
        )
    plan = Duplicates(groups).plan("test", [DuplicateKind.EXACT])
    assert [g.id for g in plan.groups] == [g.id for g in groups]


def _records(lib):
    from organizer.store import queries as q

    with lib.engine.connect() as conn:
        ids = [int(i) for i in q.ok_ids(conn, q.library_model(conn).id)]
        return list(q.describe_images(conn, ids).values())


def _decoded(path: bytes) -> Image.Image:
    from organizer.imaging import decode_raw

    with open(path, "rb") as fh:
        image = decode_raw(fh.read(), 16)
    return image[0] if isinstance(image, tuple) else image


@pytest.mark.both_backends
def test_decisions_stick_through_moves_and_re_ingest(fake_lib, archive):
    fake_lib.ingest([archive])
    [burst] = fake_lib.duplicates().of(DuplicateKind.BURST)
    decided = fake_lib.mark_duplicates(Decision.NOT_DUPLICATES, [burst.id])
    assert fake_lib.duplicates().of(DuplicateKind.BURST) == []
    # Moved and renamed, re-scanned: the decision is by content, it holds.
    (archive / "moved").mkdir()
    os.rename(archive / "burst/DSC_1.jpg", archive / "moved/renamed.jpg")
    fake_lib.ingest([archive])
    assert fake_lib.duplicates().of(DuplicateKind.BURST) == []
    listed = fake_lib.duplicates(DuplicateOptions(show_decided=True)).decided
    assert [d.id for d in listed] == [decided.id]
    assert b"moved/renamed.jpg" in [r.relpath for r in listed[0].records]
    fake_lib.unmark_duplicates(decided.id)
    [back] = fake_lib.duplicates().of(DuplicateKind.BURST)
    assert b"moved/renamed.jpg" in [f.record.relpath for f in back.files]
    with pytest.raises(OptionsError, match="no decision"):
        fake_lib.unmark_duplicates(decided.id)


def test_keep_all_hides_a_group_until_a_new_copy_joins(fake_lib, archive):
    fake_lib.ingest([archive])
    [exact] = fake_lib.duplicates().of(DuplicateKind.EXACT)
    fake_lib.mark_duplicates(Decision.KEEP_ALL, [exact.id])
    assert fake_lib.duplicates().of(DuplicateKind.EXACT) == []
    shutil.copy(archive / "backup/beach.jpg", archive / "backup/beach-2.jpg")
    fake_lib.ingest([archive])  # the same content again: still decided (by content)
    assert fake_lib.duplicates().of(DuplicateKind.EXACT) == []
    save(archive / "backup/beach-3.png", shot(1))  # a new content joins the near group
    fake_lib.ingest([archive])
    assert fake_lib.duplicates().of(DuplicateKind.NEAR)


def test_a_chosen_keeper_wins_and_says_so(fake_lib, archive):
    fake_lib.ingest([archive])
    fake_lib.mark_duplicates(Decision.KEEPER, [str(archive / "whatsapp/IMG-beach.jpg")])
    [near] = fake_lib.duplicates().of(DuplicateKind.NEAR)
    assert _kept(near) == "whatsapp/IMG-beach.jpg"
    assert near.keeper.rule == "chosen" and "you chose" in near.keeper.reason


def test_mark_refuses_what_cannot_work(fake_lib, archive, tmp_path):
    fake_lib.ingest([archive])
    with pytest.raises(OptionsError, match="no duplicate group"):
        fake_lib.mark_duplicates(Decision.KEEP_ALL, ["0123456789ab"])
    with pytest.raises(OptionsError, match="not an image of this library"):
        fake_lib.mark_duplicates(Decision.KEEP_ALL, [str(tmp_path / "nowhere.jpg")])
    both = [str(archive / "originals/beach.jpg"), str(archive / "small/beach-small.jpg")]
    with pytest.raises(OptionsError, match="keeper takes one file"):
        fake_lib.mark_duplicates(Decision.KEEPER, both)
    copies = [str(archive / "originals/beach.jpg"), str(archive / "backup/beach.jpg")]
    with pytest.raises(OptionsError, match="two different files"):
        fake_lib.mark_duplicates(Decision.NOT_DUPLICATES, copies)


def test_plan_names_every_file_by_content_and_leaves_bursts_out(fake_lib, archive):
    fake_lib.ingest([archive])
    found = fake_lib.duplicates()
    plan = found.plan("lib", (DuplicateKind.EXACT, DuplicateKind.NEAR))
    moved = [os.fsdecode(f.path) for g in plan.groups for f in g.move]
    assert not any("burst" in p for p in moved)
    assert len(moved) == len(set(moved)) == 4  # the near group took its exact copies in
    with_bursts = found.plan("lib", tuple(DuplicateKind))
    assert any("burst" in os.fsdecode(f.path) for g in with_bursts.groups for f in g.move)
    for g in plan.groups:
        for f in (g.keep, *g.move):
            assert f.sha256 == _sha256(f.path) and f.size == os.path.getsize(f.path)


def _sha256(path: bytes) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def test_cli_lists_kinds_writes_a_plan_and_marks(cli, fake_lib, archive, tmp_path):
    fake_lib.ingest([archive])  # the command line reads the library the fake model made
    text = cli("duplicates").stdout
    assert "exact: 1 group" in text and "near: 1 group" in text and "burst: 1 group" in text
    assert "keeps backup/beach.jpg: " in text
    plan_path = tmp_path / "plan.json"
    out = cli("duplicates", "--kind", "exact", "--plan", str(plan_path))
    assert "near:" not in out.stdout and "organizer clean" in out.stdout
    plan = Plan.read(plan_path)
    assert [g.kind for g in plan.groups] == [DuplicateKind.EXACT]
    doc = json.loads(cli("duplicates", "--json").stdout)
    gid = doc["burst"][0]["id"]
    marked = cli("duplicates", "mark", "keep-all", gid)
    assert "take it back with: organizer duplicates unmark" in marked.stdout
    assert json.loads(cli("duplicates", "--json").stdout)["burst"] == []
    decided = json.loads(cli("duplicates", "--json", "--show-decided").stdout)["decided"]
    assert decided[0]["kind"] == "keep-all" and len(decided[0]["images"]) == 3
    assert cli("duplicates", "unmark", str(decided[0]["decision"])).exit_code == 0
    bad = cli("duplicates", "--kind", "similar")
    assert bad.exit_code == 2 and "exact, near, burst" in bad.stderr
    bad = cli("duplicates", "--prefer", "bigger")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    bad = cli("duplicates", "mark", "keep-all", "0123456789ab")
    assert bad.exit_code == 2 and "no duplicate group" in bad.stderr
    for number in ("0", "-1", str(2**64)):  # past a 64-bit id: was an OverflowError
        bad = cli("duplicates", "unmark", "--", number)
        assert bad.exit_code == 2 and f"there is no decision {number}" in bad.stderr


def test_a_bad_plan_file_is_one_clear_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(PlanError, match="cannot read"):
        Plan.read(path)
    entry = {"path": "/a.jpg", "sha256": "0" * 64, "size": 1}
    doc = {
        "organizer_plan": 1,
        "groups": [
            {"id": "x", "kind": "near", "keep": entry, "move": []},
            {"id": "y", "kind": "near", "keep": {**entry, "path": "/b.jpg"}, "move": [entry]},
        ],
    }
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="both kept and moved"):
        Plan.read(path)
    doc["groups"][1]["move"] = [{**entry, "path": "relative.jpg"}]
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match="absolute"):
        Plan.read(path)


def test_frames_of_a_fast_burst_in_one_second_are_a_burst_not_copies(fake_lib, tmp_path):
    """Ten frames a second share their second: the fraction (SubSecTimeOriginal) tells them
    apart, so frames as alike as copies are still a burst and never planned away."""
    root = tmp_path / "p"
    for n, (fraction, shift) in enumerate([("100", 0), ("200", 4), ("300", 8)]):
        exif = photo_exif(taken="2021:06:01 09:00:10", camera=("Sony", "A1"), t37521=fraction)
        save(root / f"DSC_{n}.jpg", shot(9, shift), exif, quality=92)
    fake_lib.ingest([root])
    found = fake_lib.duplicates()
    assert found.of(DuplicateKind.NEAR) == []
    [burst] = found.of(DuplicateKind.BURST)
    assert sorted(f.shot for f in burst.files) == [1, 2, 3]
    assert found.plan("lib", (DuplicateKind.EXACT, DuplicateKind.NEAR)).groups == ()
