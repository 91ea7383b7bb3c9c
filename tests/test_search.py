"""similar, search and duplicates: exact ranking, copies found, clean errors, JSON shapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from organizer.duplicates.find import DuplicateOptions
from organizer.errors import QueryError
from organizer.search import combine
from organizer.store import queries as q
from tests.fakes import make_folder, picture, write_picture

pytestmark = pytest.mark.both_backends


@pytest.fixture
def searchable(fake_lib, tmp_path):
    """A library of 12 distinct pictures plus a resized, re-encoded copy of img000."""
    root = tmp_path / "photos"
    make_folder(root, 12)
    picture(0).resize((72, 48)).save(root / "copy-of-0.jpg", quality=70)
    fake_lib.ingest([root])
    return fake_lib, root


def _stored(lib):
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        ids, vecs = q.ok_vectors(conn, model.id, model.dim)
        names = dict(conn.execute(q.select(q.images.c.id, q.images.c.relpath)).all())
    return ids, vecs, names


def test_similar_equals_brute_force_ranking(searchable):
    lib, root = searchable
    ids, vecs, names = _stored(lib)
    for query_row in (0, 5, 9):
        query_id = ids[query_row]
        res = lib.similar(root / os.fsdecode(names[query_id]), limit=5)
        scores = vecs @ vecs[query_row]
        order = [i for i in np.argsort(-scores, kind="stable") if ids[i] != query_id][:5]
        assert [r.image_id for r in res.results] == [int(ids[i]) for i in order]
        np.testing.assert_allclose([r.score for r in res.results], scores[order], atol=1e-5)
        assert query_id not in [r.image_id for r in res.results]


def test_copy_is_the_top_similar_result_and_a_duplicate(searchable):
    lib, root = searchable
    res = lib.similar(root / "img000.jpg", limit=3)
    assert res.results[0].relpath == b"copy-of-0.jpg" and res.results[0].score > 0.96
    groups = lib.duplicates(DuplicateOptions(threshold=0.96)).groups
    assert len(groups) == 1
    names = sorted(m.relpath for m in groups[0].files)
    assert names == [b"copy-of-0.jpg", b"img000.jpg"]
    keeper = next(m for m in groups[0].files if m.role == "keep")
    assert keeper.relpath == b"img000.jpg"  # the larger resolution is kept


def test_identical_files_are_grouped_and_marked(fake_lib, tmp_path):
    root = tmp_path / "p"
    make_folder(root, 4)
    shutil.copy(root / "img001.jpg", root / "again.jpg")
    os.utime(root / "img001.jpg", (1_000_000, 1_000_000))  # img001 is the older copy
    fake_lib.ingest([root])
    [group] = fake_lib.duplicates(DuplicateOptions(threshold=0.99)).groups
    keeper = next(m for m in group.files if m.role == "keep")
    assert keeper.relpath == b"img001.jpg"
    assert all(m.identical or m.role == "keep" for m in group.files)


def test_missing_files_never_appear(searchable):
    lib, root = searchable
    (root / "copy-of-0.jpg").unlink()
    lib.ingest([root])
    res = lib.similar(root / "img000.jpg", limit=20)
    assert b"copy-of-0.jpg" not in [r.relpath for r in res.results]
    assert lib.duplicates(DuplicateOptions(threshold=0.96)).groups == []


def test_external_image_is_embedded_not_added(searchable, tmp_path):
    lib, _ = searchable
    outside = tmp_path / "outside.jpg"
    picture(3).resize((80, 54)).save(outside)
    before = lib.status().images
    res = lib.similar(outside, limit=1)
    assert res.results[0].relpath == b"img003.jpg"
    assert lib.status().images == before


def test_text_search_combines_terms(searchable):
    lib, root = searchable
    res = lib.search("a red square", limit=4)
    assert len(res.results) == 4
    res = lib.search(None, plus=[str(root / "img000.jpg")], limit=2)
    assert {r.relpath for r in res.results} == {b"img000.jpg", b"copy-of-0.jpg"}


def test_combine_is_the_normalised_weighted_sum():
    a, b = np.array([1.0, 0, 0], np.float32), np.array([0, 1.0, 0], np.float32)
    np.testing.assert_allclose(combine([(a, 1.0), (b, 1.0)]), [2**-0.5, 2**-0.5, 0], atol=1e-6)
    np.testing.assert_allclose(combine([(a, 1.0), (b, -1.0)]), [2**-0.5, -(2**-0.5), 0], atol=1e-6)
    with pytest.raises(QueryError, match="cancel"):
        combine([(a, 1.0), (a, -1.0)])
    with pytest.raises(QueryError, match="empty query"):
        combine([])


@pytest.mark.parametrize(
    "args, message",
    [
        (["similar", "nowhere.jpg"], "image not found: nowhere.jpg"),
        (["search"], "empty query"),
        (
            ["search", "beach", "--plus", "nowhere/sunset.jpg"],
            "image not found: nowhere/sunset.jpg",
        ),
    ],
)
def test_bad_queries_are_one_line_errors(searchable, cli, tmp_path, args, message):
    lib, _ = searchable
    result = cli(
        *args, "--library", lib.settings.library, ORGANIZER_MODEL="", ORGANIZER_PRETRAINED=""
    )
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_blank_term_is_a_usage_error(searchable, cli):
    """An unset variable (`search "$Q"`) is refused before the library is opened."""
    lib, _ = searchable
    result = cli("search", " ", "--library", lib.settings.library)
    assert result.exit_code == 2 and "is empty" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_folder_is_no_image_and_no_text(searchable, cli, monkeypatch):
    """A path to a folder given where an image goes is refused, not searched as the text
    of its path; a bare word stays a text even where a folder has that name."""
    lib, root = searchable
    monkeypatch.chdir(root)
    for term in (str(root / "sub"), f"{root}/", "./sub"):
        with pytest.raises(QueryError, match="is a folder: give an image file, or a text"):
            lib.search("beach", minus=[term])
        with pytest.raises(QueryError, match="is a folder"):
            lib.search(term)
    assert lib.search("sub", limit=2).results  # a text
    result = cli("search", "beach", "--minus", root, "--library", lib.settings.library)
    assert (
        result.exit_code == 1
        and result.stderr == f"error: {root} is a folder: give an image file, or a text\n"
    )


def test_json_shapes(searchable, cli):
    lib, root = searchable
    out = json.loads(
        cli(
            "similar", root / "img000.jpg", "-k", "2", "--json", "--library", lib.settings.library
        ).stdout
    )
    assert out["query"] == str(root / "img000.jpg")
    facts = ["taken", "taken_zone_known", "place", "camera", "lens", "focal_mm", "exposure_s"]
    facts += ["f_number", "iso", "latitude", "longitude", "altitude"]  # --json carries them
    assert [sorted(r) for r in out["results"]] == [
        sorted(["image_id", "path", "rank", "root", "score", *facts])
    ] * 2
    assert (out["sort"], out["filter"]) == ("score", {})
    assert out["results"][0]["path"] == "copy-of-0.jpg"
    dup = json.loads(cli("duplicates", "--json", "--library", lib.settings.library).stdout)
    assert (dup["exact"], dup["burst"]) == ([], [])
    assert dup["near"][0]["keep"]["path"] == "img000.jpg"
    assert "pixels" in dup["near"][0]["keep"]["reason"]
    assert {i["path"] for i in dup["near"][0]["images"]} == {"img000.jpg", "copy-of-0.jpg"}
    text = cli(
        "similar", root / "img000.jpg", "-k", "1", "--absolute", "--library", lib.settings.library
    ).stdout
    assert os.path.join(os.path.realpath(root), "copy-of-0.jpg") in text


def test_similar_on_an_indexed_image_does_not_import_torch(searchable):
    lib, root = searchable
    code = (
        "import sys; from organizer.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    args = ["similar", str(root / "img000.jpg"), "--library", str(lib.settings.library)]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert "copy-of-0.jpg" in out.stdout and "TORCH False" in out.stdout, out.stdout + out.stderr


def test_search_with_the_real_tiny_model(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    out = json.loads(cli("search", "kids on a beach", "-k", "3", "--json").stdout)
    assert out["query"] == "kids on a beach" and len(out["results"]) == 3
    out = json.loads(
        cli(
            "search", "beach", "--minus", "people", "--plus", photos / "img000.jpg", "--json"
        ).stdout
    )
    assert len(out["results"]) == 6


def test_approximate_index_for_large_libraries(fake_lib, tmp_path, monkeypatch):
    """Past FLAT_MAX vectors an IVF index is built, its recall measured and recorded."""
    monkeypatch.setattr("organizer.vectors.kinds.FLAT_MAX", 50)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((8, 16))
    root = tmp_path / "many"
    make_folder(root, 4)
    fake_lib.ingest([root])
    with fake_lib.engine.begin() as conn:  # 600 extra clustered vectors, as ingest would store
        model = q.library_model(conn)
        for i in range(600):
            image_id = q.insert_image(
                conn,
                root_id=1,
                relpath=f"v{i}.jpg".encode(),
                size=1,
                mtime_ns=1,
                status="ok",
                content_hash=f"h{i}",
            )
            v = centers[i % 8] + 0.3 * rng.standard_normal(16)
            q.put_vector(conn, image_id, model.id, v / np.linalg.norm(v))
    index = fake_lib.vectors()
    assert index.kind == "ivf-fp16" and index.recall >= 0.95
    st = fake_lib.status()
    assert (
        st.index.type == "ivf-fp16"
        and st.index.recall_at_10 >= 0.95
        and "nprobe" in st.index.description
    )
    ids, vecs, _ = _stored(fake_lib)
    hits = index.search(vecs[:50], 10)
    exact = np.argsort(-(vecs[:50] @ vecs.T), axis=1)[:, :10]
    recall = np.mean([len(set(h.ids) & set(ids[e])) / 10 for h, e in zip(hits, exact, strict=True)])
    assert recall >= 0.9


def test_index_is_updated_in_place_after_an_incremental_ingest(fake_lib, photos, monkeypatch):
    fake_lib.ingest([photos])
    rebuilt = []
    import organizer.vectors.cache as vectors_mod

    real = vectors_mod.IndexCache._rebuild
    monkeypatch.setattr(
        vectors_mod.IndexCache, "_rebuild", lambda self: rebuilt.append(1) or real(self)
    )
    write_picture(photos / "new.jpg", 77)
    write_picture(photos / "img000.jpg", 78)  # changed content: its vector is replaced
    (photos / "img001.jpg").unlink()
    fake_lib.ingest([photos])
    assert rebuilt == []  # the delta was applied to the existing file
    ids, vecs, _ = _stored(fake_lib)
    index = fake_lib.vectors()
    assert sorted(index.ids().tolist()) == ids.tolist()
    hits = index.search(vecs, 1)
    assert [h.ids[0] for h in hits] == ids.tolist()
    assert fake_lib.status().index.in_sync
