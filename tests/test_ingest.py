"""Incremental ingest through the library API (numpy fake embedder, no torch)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict

import numpy as np
import pytest

from organizer.config import Settings
from organizer.duplicates.find import DuplicateOptions
from organizer.errors import LibraryError
from organizer.imaging import PreprocessSpec
from organizer.library import Library
from organizer.store import queries as q
from tests.fakes import picture, write_picture

pytestmark = pytest.mark.both_backends


def rows(lib):
    with lib.engine.connect() as conn:
        return {r.relpath.decode(): r for r in conn.execute(q.select(q.images)).all()}


def vectors(lib):
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
    return dict(zip(ids.tolist(), vecs, strict=True))


def test_first_ingest_embeds_everything(fake_lib, fake, photos):
    s = fake_lib.ingest([photos])
    assert (s.new, s.changed, s.moved, s.unchanged, s.missing, s.failed) == (6, 0, 0, 0, 0, 0)
    assert fake.images_embedded == 6
    r = rows(fake_lib)
    assert set(r) == {
        "img000.jpg",
        "img001.jpg",
        "sub/img002.jpg",
        "img003.jpg",
        "img004.jpg",
        "sub/img005.jpg",
    }
    assert all(x.status == "ok" and x.width == 96 and x.height == 64 for x in r.values())
    assert len(fake_lib.vectors()) == 6


def test_unchanged_reingest_embeds_nothing_and_loads_no_model(settings, photos):
    from tests.fakes import FakeEmbedder

    fake = FakeEmbedder()
    with Library.open(
        Settings(library=settings.library), create=True, embedder_loader=lambda s, t: fake
    ) as lib:
        lib.ingest([photos])

    def refuse(spec, s):
        raise AssertionError("the model must not be loaded for an unchanged re-ingest")

    with Library.open(Settings(library=settings.library), embedder_loader=refuse) as lib:
        s = lib.ingest([photos])
        assert (s.new, s.unchanged, s.embedded) == (0, 6, 0)
        s = lib.ingest([])  # no paths: every known root
        assert s.unchanged == 6


def test_edit_is_reembedded_touch_is_not(fake_lib, fake, photos):
    fake_lib.ingest([photos])
    before = rows(fake_lib)
    vec_before = vectors(fake_lib)
    write_picture(photos / "img000.jpg", 100)  # new content, same path
    os.utime(photos / "img001.jpg", ns=(1, 10**18))  # touched, same content
    calls = fake.images_embedded
    s = fake_lib.ingest([photos])
    assert (s.changed, s.unchanged, s.new) == (1, 5, 0)
    assert fake.images_embedded == calls + 1
    after = rows(fake_lib)
    assert after["img000.jpg"].id == before["img000.jpg"].id
    assert after["img000.jpg"].content_hash != before["img000.jpg"].content_hash
    assert not np.allclose(
        vectors(fake_lib)[after["img000.jpg"].id], vec_before[before["img000.jpg"].id]
    )
    assert after["img001.jpg"].mtime_ns == 10**18


def test_move_keeps_id_and_vector(fake_lib, fake, photos):
    fake_lib.ingest([photos])
    before = rows(fake_lib)
    vec = vectors(fake_lib)[before["img003.jpg"].id]
    (photos / "renamed").mkdir()
    os.rename(photos / "img003.jpg", photos / "renamed" / "holiday.jpg")
    calls = fake.images_embedded
    s = fake_lib.ingest([photos])
    assert (s.moved, s.new, s.missing, s.embedded) == (1, 0, 0, 0)
    assert fake.images_embedded == calls
    after = rows(fake_lib)
    assert "img003.jpg" not in after
    assert after["renamed/holiday.jpg"].id == before["img003.jpg"].id
    np.testing.assert_array_equal(vectors(fake_lib)[before["img003.jpg"].id], vec)


def test_identical_content_is_embedded_once(fake_lib, fake, tmp_path):
    root = tmp_path / "dups"
    write_picture(root / "a.jpg", 7)
    shutil.copy(root / "a.jpg", root / "b.jpg")
    shutil.copy(root / "a.jpg", root / "c.jpg")
    s = fake_lib.ingest([root])
    assert s.new == 3 and s.embedded == 1 and s.reused == 2
    assert fake.images_embedded == 1
    vecs = list(vectors(fake_lib).values())
    assert len(vecs) == 3 and np.array_equal(vecs[0], vecs[1]) and np.array_equal(vecs[0], vecs[2])
    shutil.copy(root / "a.jpg", root / "d.jpg")  # a later copy reuses the stored vector
    s = fake_lib.ingest([root])
    assert (s.new, s.reused, s.embedded) == (1, 1, 0)


def test_deleted_file_becomes_missing_and_leaves_the_index(fake_lib, photos):
    fake_lib.ingest([photos])
    gone = rows(fake_lib)["img004.jpg"].id
    (photos / "img004.jpg").unlink()
    s = fake_lib.ingest([photos])
    assert s.missing == 1
    assert rows(fake_lib)["img004.jpg"].status == "missing"
    index = fake_lib.vectors()
    assert gone not in index.ids().tolist() and len(index) == 5
    st = fake_lib.status()
    assert st.images == {"ok": 5, "failed": 0, "missing": 1}
    assert st.index.in_sync and st.index.count == 5
    # it comes back: ok again, nothing embedded
    write_picture(photos / "img004.jpg", 4)
    s = fake_lib.ingest([photos])
    assert rows(fake_lib)["img004.jpg"].status == "ok" and s.embedded == 0


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"hello, I am not a picture\n", "not a supported image"),
        (
            "random.jpg",
            bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)),
            "not a supported image",
        ),
        ("truncated.jpg", None, "cannot decode"),
    ],
)
def test_bad_files_are_recorded_and_the_run_goes_on(fake_lib, photos, name, content, reason):
    if content is None:
        data = (photos / "img000.jpg").read_bytes()
        content = data[: len(data) // 2]
    (photos / name).write_bytes(content)
    s = fake_lib.ingest([photos])
    assert (s.new, s.failed) == (6, 1)
    failures = fake_lib.failures()
    assert [f.relpath for f in failures] == [name.encode()]
    assert reason in failures[0].reason
    # unchanged failures are not retried; a changed file is
    s = fake_lib.ingest([photos])
    assert (s.failed, s.unchanged) == (0, 7)
    write_picture(photos / name, 50, fmt="PNG" if name.endswith(".png") else "JPEG")
    s = fake_lib.ingest([photos])
    assert (s.changed, s.failed) == (1, 0) and fake_lib.failures() == []


def test_exif_rotated_image_is_embedded_upright(fake_lib, tmp_path):
    from PIL import Image

    upright = picture(3, size=(96, 64))
    root = tmp_path / "rot"
    root.mkdir()
    upright.save(root / "upright.png")
    for orientation, stored in ((6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        upright.transpose(stored).save(root / f"o{orientation}.png", exif=exif)
    fake_lib.ingest([root])
    r = rows(fake_lib)
    v = vectors(fake_lib)
    for name in ("o6.png", "o8.png"):
        assert (r[name].width, r[name].height) == (96, 64)
        np.testing.assert_allclose(v[r[name].id], v[r["upright.png"].id], atol=1e-6)


def test_nested_and_overlapping_roots(fake_lib, photos):
    fake_lib.ingest([photos / "sub"])  # a subfolder first: becomes a root
    assert fake_lib.status().roots == [os.path.realpath(photos / "sub")]
    s = fake_lib.ingest([photos])  # then the parent: absorbs it, nothing re-embedded
    assert (s.new, s.unchanged) == (4, 2)
    assert fake_lib.status().roots == [os.path.realpath(photos)]
    assert {"sub/img002.jpg", "sub/img005.jpg"} <= set(rows(fake_lib))
    (photos / "sub" / "img002.jpg").unlink()
    s = fake_lib.ingest([photos / "sub"])  # a subfolder of a root: only it is looked at
    assert (s.missing, s.unchanged) == (1, 1)


def test_unmounted_root_is_not_marked_missing(fake_lib, tmp_path, photos):
    fake_lib.ingest([photos])
    shutil.move(photos, tmp_path / "elsewhere")
    with pytest.raises(LibraryError, match="folder not found"):
        fake_lib.ingest([photos])
    s = fake_lib.ingest([])  # every known root: the absent one is skipped, not emptied
    assert s.missing == 0
    assert fake_lib.status().images["ok"] == 6


def test_hidden_files_and_the_library_itself_are_skipped(settings, tmp_path):
    from tests.fakes import FakeEmbedder

    root = tmp_path / "root"
    write_picture(root / "a.jpg", 1)
    write_picture(root / ".hidden" / "b.jpg", 2)
    write_picture(root / ".c.jpg", 3)
    (root / "notes.txt").write_text("not an image")
    fake = FakeEmbedder()
    with Library.open(
        Settings(library=root / "lib"), create=True, embedder_loader=lambda s, t: fake
    ) as lib:
        write_picture(root / "lib" / "inside.jpg", 4)
        s = lib.ingest([root])
        assert s.new == 1 and set(rows(lib)) == {"a.jpg"}


def _vector_of(lib, relpath: str):
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        row = next(r for r in conn.execute(q.select(q.images)) if r.relpath == relpath.encode())
        return q.get_vector(conn, row.id, model.id)


def test_a_file_overwritten_with_another_photo_gets_its_vector_everywhere(fake_lib, photos):
    fake_lib.ingest([photos])
    shutil.copy(photos / "img004.jpg", photos / "img003.jpg")  # img003 now holds img004
    s = fake_lib.ingest([photos])
    assert (s.changed, s.embedded, s.reused) == (1, 0, 1)
    np.testing.assert_array_equal(
        _vector_of(fake_lib, "img003.jpg"), _vector_of(fake_lib, "img004.jpg")
    )
    assert fake_lib.status().index.in_sync
    index = fake_lib.vectors()  # the index file, not only the database, has the new vector
    hit = index.search(_vector_of(fake_lib, "img004.jpg")[None], 2)[0]
    assert sorted(hit.ids.tolist()) == sorted(
        [rows(fake_lib)["img003.jpg"].id, rows(fake_lib)["img004.jpg"].id]
    )
    [group] = fake_lib.duplicates(DuplicateOptions(threshold=0.999)).groups
    assert {m.relpath for m in group.files} == {b"img003.jpg", b"img004.jpg"}


@pytest.mark.parametrize("what", ["edited", "broken"])
def test_copy_of_a_photo_edited_in_the_same_run_keeps_the_original_vector(fake_lib, tmp_path, what):
    from organizer.ingest import IngestOptions

    root = tmp_path / "p"
    write_picture(root / "a.jpg", 1)
    write_picture(root / "c.jpg", 2)
    fake_lib.ingest([root])
    original = _vector_of(fake_lib, "a.jpg").copy()
    shutil.copy(root / "a.jpg", root / "b.jpg")  # a new copy of a's original content...
    if what == "edited":
        write_picture(root / "a.jpg", 3)  # ...while a itself is edited (processed first)
    else:
        (root / "a.jpg").write_bytes(b"\xff\xd8 broken now")
    s = fake_lib.ingest([root], options=IngestOptions(workers=0, batch_size=1))
    np.testing.assert_array_equal(_vector_of(fake_lib, "b.jpg"), original)
    assert s.new == 1 and s.reused == 1
    vectors_now = fake_lib.vectors()
    assert not np.isnan(vectors_now.search(original[None], 1)[0].scores).any()
    if what == "edited":
        assert not np.allclose(_vector_of(fake_lib, "a.jpg"), original)
    else:
        assert _vector_of(fake_lib, "a.jpg") is None and s.failed == 1


def test_an_unreadable_root_marks_nothing_missing(fake_lib, photos, monkeypatch):
    fake_lib.ingest([photos])
    real_scandir = os.scandir

    def deny_root(path):
        if os.fsencode(path).rstrip(b"/") == os.fsencode(os.path.realpath(photos)):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", deny_root)
    s = fake_lib.ingest([photos])
    assert s.missing == 0 and any("cannot be read" in p for p in s.problems)
    assert fake_lib.status().images == {"ok": 6, "failed": 0, "missing": 0}


def test_rehash_catches_an_edit_that_kept_size_and_time(fake_lib, fake, photos):
    from organizer.ingest import IngestOptions

    fake_lib.ingest([photos])
    target = photos / "img001.jpg"
    st = target.stat()
    # Another picture, smaller, padded after its end marker to the same size: a valid JPEG.
    other = write_picture(photos.parent / "other.jpg", 99, quality=30).read_bytes()
    assert len(other) < st.st_size
    target.write_bytes(other.ljust(st.st_size, b"\0"))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time
    assert fake_lib.ingest([photos]).changed == 0  # documented: not noticed by default
    calls = fake.images_embedded
    again = fake_lib.ingest([photos], options=IngestOptions(rehash=True))
    assert (again.changed, again.failed, again.unchanged) == (1, 0, 5)
    assert fake.images_embedded == calls + 1  # the edited file, and only it, re-embedded
    last = fake_lib.ingest([photos], options=IngestOptions(rehash=True))
    assert (last.changed, last.unchanged) == (0, 6)


def test_the_model_is_loaded_only_when_a_file_needs_embedding(settings, fake, photos, tmp_path):
    """A copy of an ingested folder reuses every vector: the model is never loaded."""
    import shutil

    from organizer.config import Settings
    from organizer.library import Library

    loads = []

    def loader(spec, s):
        loads.append(spec)
        return fake

    with Library.open(
        Settings(library=settings.library), create=True, embedder_loader=loader
    ) as lib:
        lib.ingest([photos])
    assert len(loads) == 1
    copy = tmp_path / "copy"
    shutil.copytree(photos, copy)
    with Library.open(Settings(library=settings.library), embedder_loader=loader) as lib:
        summary = lib.ingest([copy])
        assert (summary.new, summary.reused, summary.embedded) == (6, 6, 0)
        assert loads == [loads[0]] and summary.model_load_s == 0
        write_picture(copy / "new.jpg", 77)
        assert lib.ingest([copy]).embedded == 1 and len(loads) == 2


# -- reading files while the model loads ---------------------------------------------------


def _open(settings, loader):
    return Library.open(Settings(library=settings.library), create=True, embedder_loader=loader)


def _by_path(lib) -> dict[str, np.ndarray]:
    ids = {r.id: path for path, r in rows(lib).items()}
    return {ids[i]: v for i, v in vectors(lib).items()}


def test_a_new_library_reads_its_files_while_the_model_loads(settings, fake, photos):
    """With the model's input remembered from an earlier load, the model loads on a thread
    while the files are read and decoded; nothing is written before it has loaded."""
    import threading

    from organizer.embed import remembered

    all_read = threading.Event()
    seen, reports = {}, []

    def loader(spec, s):
        seen["thread"] = threading.current_thread().name
        seen["files read meanwhile"] = all_read.wait(30)
        seen["rows before the model"] = len(rows(lib))
        seen["done before the model"] = max(p.done for p in reports)
        return fake

    def progress(p):  # reported once per file read, then once per batch written
        reports.append(p)
        if len(reports) == p.total:
            all_read.set()

    with _open(settings, loader) as lib:
        remembered.remember(lib.requested_spec(), fake.preprocess)
        s = lib.ingest([photos], progress=progress)
        assert (s.new, s.embedded, s.failed) == (6, 6, 0)
        assert seen == {
            "thread": "organizer-model-load",
            "files read meanwhile": True,
            "rows before the model": 0,
            "done before the model": 0,  # files waiting for it are not counted done
        }
        assert reports[-1].done == reports[-1].total == 6
        assert max(p.read for p in reports) == 6 and all(p.read >= p.done for p in reports)
        assert PreprocessSpec.from_dict(lib.model().preprocess) == fake.preprocess


def test_a_stale_remembered_input_reads_the_files_again(settings, photos, tmp_path):
    """A remembered input that is not the loaded model's (a model file changed) costs a
    second decode, never a wrong vector nor a count twice."""
    from organizer.embed import remembered
    from tests.fakes import FakeEmbedder

    model = FakeEmbedder(size=32)
    reference_settings = Settings(library=tmp_path / "reference")
    with _open(reference_settings, lambda spec, s: model) as lib:
        lib.ingest([photos])
        expected = _by_path(lib)
    with _open(settings, lambda spec, s: model) as lib:
        stale = PreprocessSpec((48, 48), (0.1, 0.2, 0.3), (0.2, 0.2, 0.2))
        requested = lib.requested_spec()  # what a new library asks for: the key
        remembered.remember(requested, stale)
        s = lib.ingest([photos])
        assert (s.new, s.embedded, s.failed, s.reused) == (6, 6, 0, 0)
        assert PreprocessSpec.from_dict(lib.model().preprocess) == model.preprocess
        got = _by_path(lib)
        assert remembered.recall(requested) == model.preprocess
    assert got.keys() == expected.keys()
    for path, v in expected.items():
        assert np.allclose(got[path], v, atol=1e-6), path


def test_missing_weights_found_while_reading_leave_the_new_library_as_it_was(settings, photos):
    from organizer.embed import remembered
    from organizer.errors import WeightsUnavailableError
    from tests.fakes import FakeEmbedder

    def loader(spec, s):
        raise WeightsUnavailableError("weights for x are not cached and example.org is offline")

    with _open(settings, loader) as lib:
        remembered.remember(lib.requested_spec(), FakeEmbedder().preprocess)
        with pytest.raises(WeightsUnavailableError):
            lib.ingest([photos])
        assert lib.model() is None and rows(lib) == {}
        with lib.engine.connect() as conn:
            assert q.all_roots(conn) == {}


def test_files_read_while_the_model_loaded_are_written_a_batch_at_a_time(settings, fake, photos):
    """Ctrl-C while they are written stops after the current batch; the next run finishes."""
    import threading

    from organizer.embed import remembered
    from organizer.errors import Interrupted
    from organizer.ingest import IngestOptions

    writes, all_read = [], threading.Event()

    def progress(p):
        writes.append(p.embedded)
        if len(writes) == p.total:  # reported once per file read
            all_read.set()

    def loader(spec, s):
        all_read.wait(30)  # loaded once every file is read: they all wait for it
        return fake

    with _open(settings, loader) as lib:
        remembered.remember(lib.requested_spec(), fake.preprocess)
        options = IngestOptions(batch_size=2, workers=0)
        with pytest.raises(Interrupted):
            lib.ingest([photos], options=options, progress=progress, cancel=lambda: 2 in writes)
        assert len(rows(lib)) == 4  # the batch that made the cancel, and the current one
        s = lib.ingest([photos], options=options)
        assert (s.new, s.unchanged) == (2, 4) and len(vectors(lib)) == 6


def test_remembered_inputs_survive_a_damaged_or_unwritable_cache(tmp_path, monkeypatch):
    from organizer.embed import ModelSpec, remembered
    from tests.fakes import FakeEmbedder

    spec, preprocess = ModelSpec("fake", "none"), FakeEmbedder().preprocess
    cache = tmp_path / "cache"
    monkeypatch.setattr(remembered, "_file", remembered._cache_file)  # the real place
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(cache))
    assert remembered.recall(spec) is None
    remembered.remember(spec, preprocess)
    assert remembered.recall(spec) == preprocess
    assert remembered.recall(ModelSpec("fake", "other-tag")) is None
    (cache / "inputs.json").write_text("{not json")
    assert remembered.recall(spec) is None
    remembered.remember(spec, preprocess)  # a damaged file is replaced
    assert remembered.recall(spec) == preprocess
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(blocked / "cache"))
    remembered.remember(spec, preprocess)  # cannot be written: only slower next time
    assert remembered.recall(spec) is None
    monkeypatch.setenv("ORGANIZER_MODEL_CACHE", str(cache))
    for bad in ({"size": [0, 0]}, {"std": [0, 1, 1]}, {"resize_mode": "zoom"}, {"size": "x"}):
        (cache / "inputs.json").write_text(
            json.dumps({remembered._key(spec): {**asdict(preprocess), **bad}})
        )
        assert remembered.recall(spec) is None, bad
