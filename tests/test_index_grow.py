"""An index that grows in place: updates add and mask vectors beside the build's files, stay
exact where the build was, survive a reopen, and retrain when recall or balance says so."""

from __future__ import annotations

import numpy as np
import pytest

from organizer.store import queries as q
from organizer.store.records import IndexFileRecord, IndexGrowthRecord
from organizer.vectors import VectorIndex
from organizer.vectors.calibration import Calibration
from organizer.vectors.files import read_index, write_index
from organizer.vectors.grown import Change, GrownIndex, Rebuild, grow, imbalance, layer_files, sweep
from tests.test_index_kinds import DIM, N, _clustered

KINDS = ["flat", "ivf-fp16", "ivf-pq"]


def _built(tmp_path, kind, ids, vectors):
    path = tmp_path / "vectors.faiss"
    index = VectorIndex.build(ids, vectors, DIM, kind, tmp_path)
    sha, quick = write_index(path, index)
    growth = IndexGrowthRecord(built_imbalance=imbalance(index), built_recall=index.recall)
    record = IndexFileRecord(1, sha, len(index), index.kind, "", index.recall, quick, growth)
    return path, record


def _update(path, record, generation, change):
    index = read_index(path, record, mmap=True)
    assert index is not None
    made = grow(path, index, record.growth, generation, change)
    sweep(path, keep=made.growth.files)
    new = made.record(record, generation)
    return made.index, new


@pytest.fixture(scope="module")
def vectors():
    return _clustered(N + 400, seed=21)


@pytest.mark.parametrize("kind", KINDS)
def test_updates_add_mask_and_reembed_like_a_rebuild(kind, vectors, tmp_path):
    ids = np.arange(N, dtype=np.int64) * 3 + 7
    path, record = _built(tmp_path, kind, ids, vectors[:N])
    new_ids = np.arange(ids[-1] + 1, ids[-1] + 301, dtype=np.int64)
    new = vectors[N : N + 300]
    gone = ids[::97][:100]
    again = ids[5:50:5]  # re-embedded: masked in the build, their new vectors in the delta
    moved = _clustered(len(again), seed=33)
    removed = np.union1d(gone, again)
    added = np.concatenate([again, new_ids])
    order = np.argsort(added)
    change = Change(removed, added[order], np.concatenate([moved, new])[order])
    grown, record = _update(path, record, 2, change)
    assert isinstance(grown, GrownIndex)
    live = {int(i) for i in ids} - {int(i) for i in gone} | {int(i) for i in new_ids}
    assert len(grown) == len(live) == record.count
    assert set(grown.ids().tolist()) == live
    # Each added vector finds itself first, a re-embedded one under its new vector only.
    for query, own in [(new[0], new_ids[0]), (new[-1], new_ids[-1]), (moved[3], again[3])]:
        hit = grown.search(query[None], 1)[0]
        assert hit.ids[0] == own and hit.scores[0] == pytest.approx(1.0, abs=2e-3)
    everything = grown.search(vectors[:40], 50)
    shown = {int(i) for h in everything for i in h.ids}
    assert not shown & {int(i) for i in gone}
    among = grown.search_among(vectors[:5], 5, np.concatenate([gone, new_ids[:20]]))
    assert all(set(h.ids.tolist()) <= set(new_ids[:20].tolist()) for h in among)
    within = grown.within(new[:3], 0.99)
    assert all(
        int(own) in ids_.tolist() for (ids_, _), own in zip(within, new_ids[:3], strict=True)
    )
    assert not any(
        set(ids_.tolist()) & set(gone.tolist()) for ids_, _ in grown.within(vectors[:20], 0.5)
    )
    # The same answers as a rebuild of the same vectors (exact kinds: the same top 10).
    final_ids = np.array(sorted(live), dtype=np.int64)
    lookup = dict(zip(ids.tolist(), vectors[:N], strict=True))
    lookup.update(zip(new_ids.tolist(), new, strict=True))
    lookup.update(zip(again.tolist(), moved, strict=True))
    final = np.stack([lookup[i] for i in final_ids.tolist()])
    queries = vectors[N + 300 : N + 340]  # like the library's vectors, not among them
    exact = final_ids[np.argsort(-(queries @ final.T), axis=1)[:, :10]]

    def overlap(index):
        found = [h.ids.tolist() for h in index.search(queries, 10)]
        return np.mean(
            [len(set(f) & set(e)) / 10 for f, e in zip(found, exact.tolist(), strict=True)]
        )

    rebuilt = VectorIndex.build(final_ids, final, DIM, kind)
    assert overlap(grown) == 1.0 if kind == "flat" else overlap(grown) >= overlap(rebuilt) - 0.05
    found = [h.ids.tolist() for h in grown.search(queries, 10)]
    # Read back from its files: the same index.
    again_read = read_index(path, record, mmap=True)
    assert isinstance(again_read, GrownIndex) and len(again_read) == len(live)
    assert [h.ids.tolist() for h in again_read.search(queries, 10)] == found


@pytest.mark.parametrize("kind", ["ivf-fp16", "ivf-pq"])
def test_lists_read_back_leave_masked_vectors_out(kind, vectors, tmp_path):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, kind, ids, vectors[:N])
    gone = ids[:500]
    new_ids = np.arange(N, N + 200, dtype=np.int64)
    grown, record = _update(path, record, 2, Change(gone, new_ids, vectors[N : N + 200]))
    lists = grown.lists()
    seen = np.concatenate([lists.ids(i) for i in range(lists.nlist)])
    assert len(seen) == len(grown) and not np.isin(gone, seen).any()
    assert np.isin(new_ids, seen).all()
    for list_no in range(0, lists.nlist, 7):
        held = lists.ids(list_no)
        if len(held):
            rows = np.arange(len(held))
            stored = lists.vectors(list_no, rows)
            truth = np.concatenate([vectors[:N], vectors[N : N + 200]])[held]
            assert np.abs(stored - truth).max() < 0.02


def test_many_updates_keep_few_rerank_segments(vectors, tmp_path):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, "ivf-pq", ids, vectors[:N])
    next_id, every = N, set(ids.tolist())
    for generation in range(2, 10):
        new_ids = np.arange(next_id, next_id + 40, dtype=np.int64)
        next_id += 40
        gone = np.array(sorted(every)[generation * 3 : generation * 3 + 2], dtype=np.int64)
        grown, record = _update(
            path, record, generation, Change(gone, new_ids, _clustered(40, seed=generation))
        )
        every = (every - set(gone.tolist())) | set(new_ids.tolist())
    assert set(grown.ids().tolist()) == every
    assert len(record.growth.segments) <= 4  # 8 updates: merged like a binary counter
    named = {p.name for p in layer_files(path)}
    assert named == set(record.growth.files)  # the earlier updates' files are swept
    held = np.array(sorted(every), dtype=np.int64)
    found, _ = grown.stored(held)
    assert found.all()


def test_update_files_are_checked_on_open(vectors, tmp_path):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, "ivf-pq", ids, vectors[:N])
    _, record = _update(path, record, 2, Change(ids[:3], np.arange(N, N + 5), vectors[N : N + 5]))
    delta = next(p for p in layer_files(path) if p.name.endswith(".delta"))
    delta.write_bytes(delta.read_bytes()[:-100])
    assert read_index(path, record, mmap=True) is None  # the caller rebuilds


def test_calibration_answers_stay_exact():
    rng = np.random.default_rng(0)
    base = _clustered(2000, seed=1)
    ids = np.arange(2000, dtype=np.int64)
    queries = _clustered(20, seed=2)
    scores = queries @ base.T
    top = np.argsort(-scores, axis=1)[:, :32]
    calibration = Calibration.of(
        queries, np.full(20, -1), ids[top], np.take_along_axis(scores, top, 1)
    )
    removed = np.sort(rng.choice(2000, 300, replace=False))
    added = _clustered(500, seed=3)
    added_ids = np.arange(2000, 2500, dtype=np.int64)
    now = calibration.updated(removed, added_ids, added)
    keep = ~np.isin(ids, removed)
    every = np.concatenate([base[keep], added])
    every_ids = np.concatenate([ids[keep], added_ids])
    exact = every_ids[np.argsort(-(queries @ every.T), axis=1)]
    for row in range(20):
        depth = int(now.depth[row])
        assert depth == 32 - np.isin(ids[top[row]], removed).sum()
        assert now.top_ids[row, :depth].tolist() == exact[row, :depth].tolist()
        assert (now.top_ids[row, depth:] == -1).all()


def test_drift_into_new_kinds_of_photos_retrains(vectors, tmp_path):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, "ivf-fp16", ids, vectors[:N])
    rng = np.random.default_rng(8)
    centre = rng.standard_normal(DIM)  # a kind of photo the lists were not trained on
    drift = centre + 0.3 * rng.standard_normal((1500, DIM))
    drift = (drift / np.linalg.norm(drift, axis=1, keepdims=True)).astype(np.float32)
    index = read_index(path, record, mmap=True)
    with pytest.raises(Rebuild, match="uneven"):
        grow(
            path,
            index,
            record.growth,
            2,
            Change(np.empty(0, np.int64), np.arange(N, N + 1500), drift),
        )
    assert not layer_files(path) or {p.name for p in layer_files(path)} <= set()


def test_recall_below_the_target_retrains(vectors, tmp_path, monkeypatch):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, "ivf-fp16", ids, vectors[:N])
    index = read_index(path, record, mmap=True)
    monkeypatch.setattr(VectorIndex, "measure", lambda self, *a: 0.5)
    with pytest.raises(Rebuild, match=r"recall@10 fell to 0\.500"):
        grow(
            path,
            index,
            record.growth,
            2,
            Change(ids[:2], np.arange(N, N + 10), vectors[N : N + 10]),
        )


def test_too_many_changes_since_the_build_rebuild(vectors, tmp_path, monkeypatch):
    monkeypatch.setattr("organizer.vectors.grown.GROW_MIN", 100)
    ids = np.arange(2000, dtype=np.int64)
    path, record = _built(tmp_path, "flat", ids, vectors[:2000])
    index = read_index(path, record, mmap=True)
    with pytest.raises(Rebuild, match="more than 20%"):
        grow(
            path,
            index,
            record.growth,
            2,
            Change(ids[:500], np.empty(0, np.int64), np.empty((0, DIM))),
        )


# -- a library whose index grows ----------------------------------------------------------------


@pytest.mark.both_backends
def test_library_index_grows_in_place_and_is_checked(fake_lib, tmp_path, photos, monkeypatch):
    from tests.fakes import make_folder
    from tests.test_index_kinds import _add_vectors

    monkeypatch.setattr("organizer.vectors.fingerprint.WHOLE_MAX", 16 << 10)  # sample, as at 10M
    monkeypatch.setattr("organizer.vectors.fingerprint.BLOCK", 64)
    fake_lib.ingest([photos])
    _add_vectors(fake_lib, tmp_path / "archive", _clustered(N, dim=16))
    fake_lib.build_index("ivf-pq")
    built = fake_lib.status().index
    make_folder(photos, 3, start_seed=70)
    (photos / "img001.jpg").unlink()  # gone: masked from the index
    summary = fake_lib.ingest([photos])
    assert summary.embedded == 3
    st = fake_lib.status().index
    assert st.in_sync and st.count == N + 8 and st.type == "ivf-pq"
    assert st.growth.updates == 1 and st.growth.added == 3 and st.growth.removed == 1
    assert "3 added and 1 removed in place" in st.description
    assert st.to_dict()["updates_in_place"] == 1 and st.to_dict()["rebuilt_because"] is None
    assert {p.name for p in layer_files(fake_lib.index_path)} == set(st.growth.files)
    assert built.description[:-1] in st.description
    with fake_lib.engine.connect() as conn:
        ok = set(q.ok_ids(conn, q.library_model(conn).id).tolist())
    assert set(fake_lib.vectors().ids().tolist()) == ok
    hits = fake_lib.similar(photos / "img000.jpg", limit=50).results
    assert "img001.jpg" not in {h.relpath.decode() for h in hits}
    assert fake_lib.status(verify=True).index.in_sync
    # A bit flipped in an update's file between the sampled blocks escapes the quick
    # check, not --verify.
    delta = next(p for p in layer_files(fake_lib.index_path) if p.name.endswith(".delta"))
    data = bytearray(delta.read_bytes())
    assert len(data) > 16 << 10  # sampled, not hashed whole
    step = (len(data) - 64) / 63
    sampled = {b for i in range(64) for b in range(int(i * step), int(i * step) + 64)}
    data[next(b for b in range(len(data) // 2, len(data)) if b not in sampled)] ^= 0x10
    delta.write_bytes(bytes(data))
    assert fake_lib.status().index.in_sync
    verified = fake_lib.status(verify=True).index
    assert verified.damaged and not layer_files(fake_lib.index_path)
    fake_lib._index._live = None  # as the next command finds it: rebuilt from the database
    assert fake_lib.similar(photos / "img000.jpg", limit=3).results
    st = fake_lib.status(verify=True).index
    assert st.in_sync and not st.damaged and st.growth.updates == 0


def test_a_rebuild_decided_by_an_update_is_shown(cli, photos, tmp_path, monkeypatch):
    from tests.fakes import make_folder

    monkeypatch.setattr("organizer.vectors.grown.GROW_MIN", 0)  # as for a large library
    assert cli("ingest", photos).exit_code == 0
    make_folder(photos, 4, start_seed=90)  # 4 new of 10: past the share grown in place
    assert cli("ingest", photos).exit_code == 0
    shown = cli("status")
    assert "rebuilt in full, not grown in place, because 4 vectors added" in shown.output
    import json

    index = json.loads(cli("status", "--json").output)["index"]
    assert index["rebuilt_because"].startswith("4 vectors added or removed")
    assert index["updates_in_place"] == 0 and index["count"] == 10


# -- kill -9 during an update -------------------------------------------------------------------

MOMENTS = 20
SMALL = 3000  # vectors of the crash tests' library: ivf-pq from PQ_MIN_SMALL
PQ_MIN_SMALL = 1000


@pytest.fixture(scope="module")
def grown_library(tmp_path_factory):
    """A library on an ivf-pq index, and a folder of photos it has not seen yet."""
    top = tmp_path_factory.mktemp("grown")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("organizer.vectors.kinds.PQ_MIN", PQ_MIN_SMALL)
        _grown_library(top)
    return top, top / "more"


def _grown_library(top):
    from organizer.config import Settings
    from organizer.library import Library
    from tests.fakes import FakeEmbedder, make_folder
    from tests.test_index_kinds import _add_vectors

    photos, more = top / "photos", top / "more"
    make_folder(photos, 6)
    make_folder(more, 3, start_seed=50)
    fake = FakeEmbedder()
    with Library.open(
        Settings(library=top / "lib"), create=True, embedder_loader=lambda s, t: fake
    ) as lib:
        lib.ingest([photos])
        _add_vectors(lib, top / "archive", _clustered(SMALL, dim=16))
        assert lib.build_index("ivf-pq").kind == "ivf-pq"
        make_folder(photos, 2, start_seed=60)  # a first update: the next one has segments
        (photos / "img003.jpg").unlink()
        lib.ingest([photos])
        assert lib.status().index.growth.updates == 1


def _crash_run(lib_dir, more, die_at=0):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.crash_grow",
            str(lib_dir),
            str(more),
            f"--die-at={die_at}",
            f"--pq-min={PQ_MIN_SMALL}",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_kill_during_an_update_at_seeded_moments(grown_library, tmp_path, monkeypatch):
    """kill -9 at 20 seeded steps of an update (every rename, unlink, write, fsync and the
    commit are steps): the next command finds an index that matches the database, or
    rebuilds it, and every image ingested is there."""
    import shutil
    import signal

    from organizer.config import Settings
    from organizer.library import Library
    from tests.fakes import FakeEmbedder

    top, more = grown_library
    monkeypatch.setattr("organizer.vectors.kinds.PQ_MIN", PQ_MIN_SMALL)
    dry = tmp_path / "dry"
    shutil.copytree(top / "lib", dry)
    done = _crash_run(dry, more)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split("steps")[1])
    assert steps >= MOMENTS, done.stdout + done.stderr[-3000:]  # moments to die at
    moments = sorted(
        np.random.default_rng(32).choice(np.arange(1, steps + 1), MOMENTS, replace=False)
    )
    outcomes = set()
    for moment in moments:
        lib_dir = tmp_path / f"lib-{moment}"
        shutil.copytree(top / "lib", lib_dir)
        killed = _crash_run(lib_dir, more, int(moment))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        fake = FakeEmbedder()
        with Library.open(Settings(library=lib_dir), embedder_loader=lambda s, t, f=fake: f) as lib:
            st = lib.status()
            outcomes.add("grown" if st.index.in_sync else "rebuilt")
            assert st.images["ok"] == 6 + 2 - 1 + 3 + SMALL  # nothing ingested is lost
            assert st.index.type == "ivf-pq"
            with lib.engine.connect() as conn:
                ok = np.sort(q.ok_ids(conn, q.library_model(conn).id))
            assert np.array_equal(np.sort(lib.vectors().ids()), ok)
            verified = lib.status(verify=True).index
            assert verified.in_sync and not verified.damaged, moment
            assert lib.similar(more / "img050.jpg", limit=1).results
    assert outcomes == {"grown", "rebuilt"}  # both sides of the commit were hit


def test_removing_a_root_masks_its_images_unless_an_ingest_died_since(fake_lib, tmp_path, photos):
    from organizer.store.db import write_transaction
    from tests.test_index_kinds import _add_vectors

    fake_lib.ingest([photos])
    _add_vectors(fake_lib, tmp_path / "archive", _clustered(3000, dim=16))
    assert fake_lib.build_index("ivf-fp16").kind == "ivf-fp16"
    fake_lib.remove_root(photos)
    st = fake_lib.status().index
    assert st.in_sync and st.count == 3000 and st.growth.updates == 1 and st.growth.removed == 6
    # An ingest killed after writing vectors: what it rewrote is unknown, so the next
    # removal rebuilds instead of masking.
    with write_transaction(fake_lib.engine) as conn:
        q.start_run(conn, 999_999)
    fake_lib.remove_root(tmp_path / "archive")
    st = fake_lib.status().index
    assert st.in_sync and st.count == 0 and st.growth.updates == 0


def test_an_update_that_only_removes_from_a_pq_index_verifies(fake_lib, tmp_path, photos):
    from tests.test_index_kinds import _add_vectors

    fake_lib.ingest([photos])
    _add_vectors(fake_lib, tmp_path / "archive", _clustered(N, dim=16))
    assert fake_lib.build_index("ivf-pq").kind == "ivf-pq"
    fake_lib.remove_root(photos)  # no vectors added: no re-rank segment
    st = fake_lib.status(verify=True).index
    assert st.in_sync and not st.damaged and st.growth.removed == 6 and not st.growth.segments


def test_a_filter_of_new_images_searches_the_delta_alone(vectors, tmp_path, monkeypatch):
    ids = np.arange(N, dtype=np.int64)
    path, record = _built(tmp_path, "ivf-fp16", ids, vectors[:N])
    new_ids = np.arange(N, N + 300, dtype=np.int64)
    grown, _ = _update(path, record, 2, Change(ids[:5], new_ids, vectors[N : N + 300]))
    asked = []
    real = VectorIndex.search_among

    def spy(self, queries, k, among):
        asked.append((self is grown.base, len(among)))
        return real(self, queries, k, among)

    monkeypatch.setattr(VectorIndex, "search_among", spy)
    hits = grown.search_among(vectors[N : N + 3], 5, np.concatenate([ids[:5], new_ids[:50]]))
    assert asked == [(True, 5), (False, 50)]  # each part gets only the ids it may hold
    assert [h.ids[0] for h in hits] == new_ids[:3].tolist()


@pytest.mark.parametrize("options", [{}, {"yield_per": 2}, {"stream_results": True}])
def test_ids_read_straight_from_the_cursor_lose_none(fake_lib, photos, options):
    from sqlalchemy import select

    from organizer.store import dialect

    fake_lib.ingest([photos])
    with fake_lib.engine.connect() as conn, conn.begin():
        stmt = select(q.images.c.id).order_by(q.images.c.id).execution_options(**options)
        ids = dialect.int_column(conn, stmt)
        assert ids.tolist() == [
            r[0] for r in conn.execute(select(q.images.c.id).order_by(q.images.c.id))
        ]
        assert len(ids) == 6
