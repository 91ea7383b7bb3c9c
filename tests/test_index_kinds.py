"""Index kinds for large libraries: the plan, the re-ranked PQ index, its files, shards."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from organizer.errors import IndexPlanError
from organizer.store import queries as q
from organizer.store.records import IndexFileRecord
from organizer.vectors import VectorIndex, parse_memory, plan
from organizer.vectors import shards as sh
from organizer.vectors.files import read_index, write_index
from organizer.vectors.rerank import rerank_paths
from tests.fakes import make_folder

DIM = 32
N = 12_000


def _clustered(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    v = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    vectors = _clustered(N)
    vectors[1] = vectors[0] + 0.01 * np.random.default_rng(5).standard_normal(DIM)
    vectors[1] /= np.linalg.norm(vectors[1])  # a planted near-duplicate of row 0
    ids = np.arange(N, dtype=np.int64) * 2 + 1  # ids are not row numbers
    return ids, vectors


@pytest.fixture(scope="module")
def pq(data, tmp_path_factory):
    ids, vectors = data
    work = tmp_path_factory.mktemp("pq")
    return VectorIndex.build(ids, vectors, DIM, "ivf-pq", work), work


def _exact_top(vectors, ids, queries, k=10):
    return ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]


# -- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "kind"),
    [(10, "flat"), (50_000, "flat"), (50_001, "ivf-fp16"), (10**6, "ivf-fp16"), (10**7, "ivf-pq")],
)
def test_auto_picks_by_count(count, kind):
    assert plan(count, 512, "auto", 8 << 30).kind == kind


def test_auto_compresses_to_fit_the_memory_budget():
    assert plan(500_000, 512, "auto", 256 << 20).kind == "ivf-pq"  # fp16 would need 520 MB
    assert plan(10**7, 512, "auto", 8 << 30).code_bytes == 64
    assert plan(10**7, 512, "auto", 500 << 20).code_bytes == 32  # 64-byte codes need 720 MB
    with pytest.raises(IndexPlanError, match="raise --memory"):
        plan(10**9, 512, "auto", 1 << 30)


def test_named_kinds_and_small_counts():
    assert plan(10**6, 512, "ivf-pq").kind == "ivf-pq"
    assert plan(5_000, 512, "ivf-pq").kind == "ivf-fp16"  # too few to train 256 codewords
    assert plan(60, 512, "ivf-fp16").kind == "flat"  # too few for lists
    with pytest.raises(IndexPlanError, match="raise --memory"):
        plan(10**7, 512, "ivf-fp16", 1 << 30)
    with pytest.raises(IndexPlanError, match="unknown index kind"):
        plan(10, 512, "hnsw")


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 << 30), ("512m", 512 << 20), ("1.5GiB", 3 << 29), ("2048", 2048)]
)
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "4X"])
def test_parse_memory_rejects(text):
    with pytest.raises(IndexPlanError):
        parse_memory(text)


# -- the re-ranked PQ index -------------------------------------------------------------------


def test_pq_index_finds_the_true_neighbours_with_exact_scores(data, pq):
    ids, vectors = data
    index, _ = pq
    assert index.kind == "ivf-pq" and index.rerank is not None and len(index) == N
    assert index.recall >= 0.95 and "re-ranked" in index.describe()
    queries = vectors[100:150]
    truth = _exact_top(vectors, ids, queries)
    hits = index.search(queries, 10)
    recall = np.mean([len(set(h.ids) & set(t)) / 10 for h, t in zip(hits, truth, strict=True)])
    assert recall >= 0.9
    for h, query in zip(hits, queries, strict=True):  # scores are the fp16 vectors' own
        rows = np.searchsorted(ids, h.ids)
        expected = vectors[rows].astype(np.float16).astype(np.float32) @ query
        np.testing.assert_allclose(h.scores, expected, atol=1e-5)
        assert np.all(np.diff(h.scores) <= 1e-6)


def test_pq_index_codes_alone_are_worse(data, pq):
    """The re-rank is what makes it work (a guard against it silently not running)."""
    ids, vectors = data
    index, _ = pq
    queries = vectors[200:260]
    truth = _exact_top(vectors, ids, queries)
    codes = VectorIndex(index.faiss)
    exact_recall = np.mean(
        [len(set(h.ids) & set(t)) for h, t in zip(index.search(queries, 10), truth, strict=True)]
    )
    codes_recall = np.mean(
        [len(set(h.ids) & set(t)) for h, t in zip(codes.search(queries, 10), truth, strict=True)]
    )
    assert exact_recall > codes_recall


def test_pq_duplicates_are_decided_on_exact_scores(data, pq):
    ids, vectors = data
    index, _ = pq
    (found, scores), _ = index.within(vectors[:2], 0.95)
    exact = float(vectors[1].astype(np.float16).astype(np.float32) @ vectors[0])
    assert ids[1] in found.tolist()
    assert scores[found.tolist().index(ids[1])] == pytest.approx(exact, abs=1e-5)
    assert np.all(scores >= 0.95)


def test_pq_files_round_trip_and_are_checked(data, tmp_path):
    ids, vectors = data
    copy = VectorIndex.build(ids[:N], vectors[:N], DIM, plan(N, DIM, "ivf-pq"), tmp_path)
    path = tmp_path / "vectors.faiss"
    sha, quick = write_index(path, copy)
    assert all(p.exists() for p in rerank_paths(path))
    assert not list(tmp_path.glob(".rerank-*"))  # the temporary files were moved, not copied
    record = IndexFileRecord(1, sha, len(copy), "ivf-pq", copy.describe(), copy.recall, quick)
    again = read_index(path, record, mmap=True)
    assert again is not None and again.rerank is not None
    assert (
        again.search(vectors[:3], 5)[0].ids.tolist() == copy.search(vectors[:3], 5)[0].ids.tolist()
    )
    _, vectors_file = rerank_paths(path)
    vectors_file.write_bytes(vectors_file.read_bytes()[:-64])  # a truncated re-rank file
    assert read_index(path, record) is None
    assert read_index(path, IndexFileRecord(1, sha, len(copy), "ivf-pq", "", None, None)) is None


def test_pq_index_takes_new_and_changed_vectors_in_place(data, tmp_path):
    ids, vectors = data
    index = VectorIndex.build(ids[:-100], vectors[:-100], DIM, "ivf-pq", tmp_path)
    write_index(tmp_path / "vectors.faiss", index)
    changed = _clustered(1, seed=9)
    assert index.add(ids[-100:], vectors[-100:])  # beyond the last id: appended
    index.remove([ids[5]])
    assert index.add(ids[5:6], changed)  # a re-embedded image: overwritten in place
    assert len(index) == N and len(index.rerank) == N
    hit = index.search(changed, 1)[0]
    assert hit.ids[0] == ids[5] and hit.scores[0] == pytest.approx(1.0, abs=2e-3)
    # An id below the last (an image that failed before, or came back): merged in by id.
    back = _clustered(1, seed=10)
    assert index.add(np.array([ids[7] - 1]), back)
    assert len(index) == N + 1 and len(index.rerank) == N + 1
    assert np.all(np.diff(np.asarray(index.rerank.ids)) > 0)
    assert index.search(back, 1)[0].ids[0] == ids[7] - 1
    assert index.search(changed, 1)[0].ids[0] == ids[5]  # earlier rows kept their vectors
    assert not list(tmp_path.glob(".rerank-*"))


# -- shards -----------------------------------------------------------------------------------


def test_shards_filled_apart_give_the_same_top10(data, tmp_path):
    ids, vectors = data
    chosen = plan(N, DIM, "ivf-pq")
    rng = np.random.default_rng(3)
    template = sh.train(vectors[rng.choice(N, 4000, replace=False)], chosen)

    def stream(lo, hi):
        return lambda: iter([(ids[lo:hi], vectors[lo:hi])])

    whole = sh.fill(template, stream(0, N), tmp_path)
    half = N // 2
    a = sh.fill(template, stream(0, half), tmp_path)
    b = sh.fill(template, stream(half, N), tmp_path)
    merged = sh.merge([b, a], tmp_path)  # in any order
    side_by_side = sh.together([a, b])
    queries = _clustered(40, seed=11)
    expected = [h.ids.tolist() for h in whole.search(queries, 10)]
    assert len(merged) == N and len(merged.rerank) == N
    assert [h.ids.tolist() for h in merged.search(queries, 10)] == expected
    assert [h.ids.tolist() for h in side_by_side.search(queries, 10)] == expected
    assert sorted(side_by_side.ids().tolist()) == ids.tolist()
    assert side_by_side.kind == "ivf-pq" and "ivf-pq" in side_by_side.describe()
    (found, _), _ = side_by_side.within(vectors[:2], 0.95)
    assert ids[1] in found.tolist()
    with pytest.raises(ValueError, match="read-only"):
        side_by_side.add(ids[:1], vectors[:1])
    with pytest.raises(ValueError, match="same image id"):
        sh.merge([a, a], tmp_path)


def test_shards_merged_on_disk_from_mapped_files(data, tmp_path):
    """Shards written, mapped back, merged into lists on disk: the same top-10 as one index;
    its files written beside the library's, checked, relocatable, and free of stdout noise."""
    import shutil
    import subprocess
    import sys

    ids, vectors = data
    rng = np.random.default_rng(3)
    template = sh.train(vectors[rng.choice(N, 4000, replace=False)], plan(N, DIM, "ivf-pq"))
    whole = sh.fill(template, lambda: iter([(ids, vectors)]), tmp_path)
    thirds = [0, N // 3, 2 * N // 3, N]
    mapped = []
    for n, (lo, hi) in enumerate(itertools.pairwise(thirds)):
        part = sh.fill(
            template, lambda lo=lo, hi=hi: iter([(ids[lo:hi], vectors[lo:hi])]), tmp_path
        )
        path = tmp_path / f"part-{n}.faiss"
        sha, quick = write_index(path, part)
        record = IndexFileRecord(0, sha, len(part), "ivf-pq", "", None, quick)
        mapped.append(read_index(path, record, mmap=True))
    assert mapped[0].lists_file is None and "on disk" not in mapped[0].describe()  # mapped
    out = tmp_path / "lib"
    out.mkdir()
    merged = sh.merge(mapped[::-1], out, on_disk=True)
    queries = _clustered(40, seed=11)
    expected = [h.ids.tolist() for h in whole.search(queries, 10)]
    assert merged.lists_file is not None and len(merged) == N
    assert [h.ids.tolist() for h in merged.search(queries, 10)] == expected
    assert np.array_equal(np.sort(merged.ids()), ids)
    assert merged.fits(N, plan(N, DIM, "ivf-pq"))  # grows in place like any other

    sha, quick = write_index(out / "vectors.faiss", merged)
    assert (out / "vectors.ivfdata").exists() and not list(out.glob(".lists-*"))
    moved = shutil.move(out, tmp_path / "moved")  # the lists are found beside the file
    record = IndexFileRecord(0, sha, N, "ivf-pq", "", merged.recall, quick)
    script = (
        "import sys, json, numpy as np; from pathlib import Path\n"
        "from organizer.store.records import IndexFileRecord\n"
        "from organizer.vectors.files import read_index, file_sha256\n"
        f"r = IndexFileRecord(**json.loads({json.dumps(json.dumps(record.to_dict()))}))\n"
        f"p = Path({str(moved)!r}) / 'vectors.faiss'\n"
        "index = read_index(p, r, mmap=True)\n"
        f"q = np.load({str(tmp_path / 'q.npy')!r})\n"
        "print(json.dumps([h.ids.tolist() for h in index.search(q, 10)]))\n"
        "print(json.dumps(file_sha256(p) == r.sha256))\n"
    )
    np.save(tmp_path / "q.npy", queries)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()  # nothing but what the script printed
    assert len(lines) == 2 and json.loads(lines[0]) == expected and json.loads(lines[1])

    (moved / "vectors.ivfdata").write_bytes(b"\0" * 100)  # damaged lists: not opened
    assert read_index(moved / "vectors.faiss", record, mmap=True) is None


# -- a library on a PQ index ------------------------------------------------------------------


def _add_vectors(lib, root, vectors):
    """Vectors as an ingest of ``root`` (a folder no test ingest rescans) would store."""
    root.mkdir()
    with lib.engine.begin() as conn:
        model = q.library_model(conn)
        root_id = q.add_root(conn, str(root))
        for i, v in enumerate(vectors):
            image_id = q.insert_image(
                conn,
                root_id=root_id,
                relpath=f"v{i}.jpg".encode(),
                size=1,
                mtime_ns=1,
                status="ok",
                content_hash=f"h{i}",
            )
            q.put_vector(conn, image_id, model.id, v)


@pytest.mark.both_backends
def test_library_on_a_pq_index(fake_lib, tmp_path, photos, monkeypatch):
    monkeypatch.setattr("organizer.vectors.fingerprint.WHOLE_MAX", 64 << 10)  # sample, as at 10M
    monkeypatch.setattr("organizer.vectors.fingerprint.BLOCK", 1 << 10)
    fake_lib.ingest([photos])
    _add_vectors(fake_lib, tmp_path / "archive", _clustered(N, dim=16))
    built = fake_lib.build_index("ivf-pq")
    assert built.kind == "ivf-pq" and built.count == N + 6 and built.recall_at_10 >= 0.9
    assert built.file_mb > built.ram_mb
    st = fake_lib.status()
    assert st.index.type == "ivf-pq" and st.index.in_sync
    assert fake_lib.status(verify=True).index.in_sync
    first = fake_lib.similar(photos / "img000.jpg", limit=3)
    assert len(first.results) == 3
    # A later ingest applies its changes in place and keeps the kind asked for.
    make_folder(photos, 2, start_seed=70)
    fake_lib.ingest([photos])
    st = fake_lib.status()
    assert st.index.type == "ivf-pq" and st.index.in_sync and st.index.count == N + 8
    # A bit flipped deep in the re-rank vectors escapes the quick check, not --verify.
    _, vectors_file = rerank_paths(fake_lib.index_path)
    with open(vectors_file, "r+b") as fh:
        fh.seek(vectors_file.stat().st_size // 2 + 1000)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x40]))
    assert fake_lib.status().index.in_sync  # the quick check samples: it cannot see it
    verified = fake_lib.status(verify=True).index
    assert verified.damaged
    assert fake_lib.similar(photos / "img000.jpg", limit=3).results  # rebuilt, answers
    st = fake_lib.status(verify=True).index
    assert st.in_sync and not st.damaged and st.type == "ivf-pq"
    # Another kind removes the re-rank files (10 GB at 10M images).
    assert fake_lib.build_index("ivf-fp16").kind == "ivf-fp16"
    assert not any(p.exists() for p in rerank_paths(fake_lib.index_path))


def test_index_build_command(cli, photos):
    assert cli("ingest", photos).exit_code == 0
    done = cli("index", "build", "--kind", "flat", "--json")
    out = json.loads(done.stdout)
    assert set(out) >= {"kind", "count", "recall_at_10", "build_s", "ram_mb", "file_mb"}
    assert out["kind"] == "flat" and out["count"] == 6
    text = cli("index", "build")
    assert text.exit_code == 0 and "flat index of 6 vectors" in text.stdout
    pq = cli("index", "build", "--kind", "ivf-pq")  # 6 images: built flat, and says why
    assert pq.exit_code == 0 and "flat index of 6 vectors" in pq.stdout
    assert "too few for ivf-pq" in pq.stdout
    assert json.loads(cli("index", "build", "--kind", "auto", "--json").stdout)["note"] is None
    bad = cli("index", "build", "--memory", "lots")
    assert bad.exit_code == 2 and "not a memory size" in bad.stderr
    assert cli("index", "build", "--kind", "hnsw").exit_code == 2
    small = cli("index", "build", "--kind", "flat", "--memory", "100")
    assert small.exit_code == 2 and "raise --memory" in small.stderr
    assert small.exception is None or isinstance(small.exception, SystemExit)


def test_pq_library_survives_a_full_disk_and_leftovers(fake_lib, tmp_path, photos, monkeypatch):
    import os
    import time

    fake_lib.ingest([photos])
    _add_vectors(fake_lib, tmp_path / "archive", _clustered(N, dim=16))
    fake_lib.build_index("ivf-pq")
    leftover = fake_lib.index_path.parent / ".rerank-dead.f16.tmp"
    leftover.write_bytes(b"x" * 100)  # what a killed build leaves
    old = time.time() - 3600
    os.utime(leftover, (old, old))

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("organizer.vectors.grown._segments", full)
    make_folder(photos, 2, start_seed=80)
    summary = fake_lib.ingest([photos])  # the in-place update fails: rebuilt, not failed
    assert summary.embedded == 2
    st = fake_lib.status()
    assert st.last_ingest.status == "finished" and st.index.in_sync and st.index.count == N + 8
    assert not leftover.exists()


def test_index_build_that_cannot_save_fails(fake_lib, photos, monkeypatch):
    from organizer.errors import LibraryError

    fake_lib.ingest([photos])

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("organizer.vectors.cache.write_index", full)
    with pytest.raises(LibraryError, match="No space left"):
        fake_lib.build_index("flat")


def test_a_merge_work_folder_outlives_the_sweep_while_its_process_lives(tmp_path):
    import os
    import subprocess
    import time

    from organizer.vectors.files import LEFTOVER_AGE_S, remove_leftovers, work_folder

    mine = work_folder(tmp_path)
    (mine / ".lists-x.tmp").write_bytes(b"x")
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f".merging-{dead.pid}"
    gone.mkdir()
    old = time.time() - LEFTOVER_AGE_S - 60
    os.utime(mine / ".lists-x.tmp", (old, old))
    remove_leftovers(tmp_path)
    assert (mine / ".lists-x.tmp").exists() and not gone.exists()


# -- a library's index built in shards ---------------------------------------------------------


@pytest.mark.both_backends
def test_library_index_built_in_shards(fake_lib, tmp_path, photos):
    from organizer.errors import IndexPlanError, LibraryError, OptionsError
    from organizer.vectors.files import lists_path

    fake_lib.ingest([photos])
    shared = tmp_path / "shared"
    with pytest.raises(IndexPlanError, match="needs no shards"):
        fake_lib.shards.train(shared, 2)  # 6 images: one exact index
    with pytest.raises(LibraryError, match="no shard plan"):
        fake_lib.shards.fill(shared, 1)
    vectors = _clustered(N, dim=16)
    _add_vectors(fake_lib, tmp_path / "archive", vectors)
    made = fake_lib.shards.train(shared, 3, "ivf-pq")
    assert made.parts == 3 and sum(made.counts) == N + 6 and made.kind == "ivf-pq"
    with pytest.raises(OptionsError, match="1 to 3"):
        fake_lib.shards.fill(shared, 4)
    for part in (3, 1):  # any order, any machine
        assert fake_lib.shards.fill(shared, part).count == made.counts[part - 1]
    with pytest.raises(LibraryError, match="shard 2 of 3 is not filled yet"):
        fake_lib.shards.merge(shared)
    fake_lib.shards.fill(shared, 2)
    built = fake_lib.shards.merge(shared)
    assert built.kind == "ivf-pq" and built.count == N + 6 and built.recall_at_10 >= 0.9
    assert "lists on disk" in built.description and lists_path(fake_lib.index_path).exists()
    st = fake_lib.status(verify=True).index
    assert st.in_sync and not st.damaged and st.type == "ivf-pq"
    index = fake_lib.vectors()
    assert index.lists_file == lists_path(fake_lib.index_path)  # the installed files
    hits = index.search(vectors[:20], 10)
    exact = np.argsort(-(vectors[:20] @ vectors.T), axis=1)[:, :10]
    found = [len(set(h.ids.tolist()) & set((exact[i] + 7).tolist())) for i, h in enumerate(hits)]
    assert np.mean(found) >= 9  # ids of the added vectors start after the 6 photos
    assert len(fake_lib.similar(photos / "img000.jpg", limit=3).results) == 3

    # The library changes: the plan is stale, and the merged index grows in place (its
    # lists on disk untouched: the new vectors go beside them).
    lists = lists_path(fake_lib.index_path).read_bytes()
    make_folder(photos, 2, start_seed=70)
    fake_lib.ingest([photos])
    with pytest.raises(LibraryError, match="changed since the shards were trained"):
        fake_lib.shards.fill(shared, 1)
    with pytest.raises(LibraryError, match="changed since the shards were trained"):
        fake_lib.shards.merge(shared)
    st = fake_lib.status(verify=True).index
    assert st.in_sync and st.count == N + 8 and st.growth.updates == 1 and st.growth.added == 2
    assert lists_path(fake_lib.index_path).read_bytes() == lists
    assert "lists on disk" in st.description


def test_index_shards_commands(cli, photos, tmp_path, library):
    from organizer.config import Settings
    from organizer.library import Library

    shared = tmp_path / "shared"
    assert cli("ingest", photos).exit_code == 0
    small = cli("index", "shards", "train", str(shared), "--parts", "2")
    assert small.exit_code == 2 and "needs no shards" in small.stderr
    missing = cli("index", "shards", "fill", str(shared), "--part", "1")
    assert missing.exit_code == 1 and "no shard plan" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert cli("index", "shards", "fill", str(shared), "--part", "0").exit_code == 2
    with Library.open(Settings(library=library), create=False) as lib:
        with lib.engine.connect() as conn:
            dim = q.library_model(conn).dim
        _add_vectors(lib, tmp_path / "archive", _clustered(400, dim=dim))
    planned = cli("index", "shards", "train", str(shared), "--parts", "2", "--kind", "ivf-fp16")
    assert planned.exit_code == 0 and "planned 2 shards" in planned.stdout
    for part in ("1", "2"):
        filled = cli("index", "shards", "fill", str(shared), "--part", part, "--json")
        assert filled.exit_code == 0 and json.loads(filled.stdout)["count"] == 203
    merged = cli("index", "shards", "merge", str(shared), "--json")
    assert merged.exit_code == 0, merged.stderr
    out = json.loads(merged.stdout)
    assert out["kind"] == "ivf-fp16" and out["count"] == 406
    assert json.loads(cli("status", "--json").stdout)["index"]["in_sync"]
