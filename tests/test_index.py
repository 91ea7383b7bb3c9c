"""The FAISS file is a cache: damaged, stale or foreign files are detected and rebuilt."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from organizer.store import queries as q
from tests.fakes import make_folder

pytestmark = pytest.mark.both_backends


def _db_vectors(lib):
    with lib.engine.connect() as conn:
        model = q.library_model(conn)
        return q.ok_vectors(conn, model.id, model.dim)


def _assert_index_equals_db(lib):
    index = lib.vectors()
    ids, vecs = _db_vectors(lib)
    assert sorted(index.ids().tolist()) == ids.tolist()
    hits = index.search(vecs, 1)
    assert [h.ids[0] for h in hits] == ids.tolist()  # every vector finds itself first
    np.testing.assert_allclose([h.scores[0] for h in hits], 1.0, atol=1e-5)


def _damage(path, how, other):
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "bit-flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "foreign":
        shutil.copy(other, path)
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["deleted", "truncated", "bit-flipped", "foreign", "empty"])
def test_damaged_index_is_rebuilt_from_the_database(fake_lib, fake, photos, tmp_path, how):
    from organizer.config import Settings
    from organizer.library import Library
    from tests.fakes import FakeEmbedder

    fake_lib.ingest([photos])
    other_root = tmp_path / "other"
    make_folder(other_root, 3, start_seed=50)
    other_dir = tmp_path / "other-lib"
    other_fake = FakeEmbedder()
    with Library.open(
        Settings(library=other_dir), create=True, embedder_loader=lambda s, t: other_fake
    ) as other:
        other.ingest([other_root])
    assert fake_lib.status().index.in_sync

    from tests.battery import BATTERY

    with BATTERY.fault():
        _damage(fake_lib.index_path, how, other_dir / "vectors.faiss")
        assert not fake_lib.status().index.in_sync
        _assert_index_equals_db(fake_lib)  # rebuilt, never re-embedded
        assert fake.images_embedded == 6
        st = fake_lib.status()
        BATTERY.mismatch(st.index.in_sync and st.index.count == 6, "rebuilt index not in sync")


def test_stale_index_after_database_change_is_rebuilt(fake_lib, photos):
    fake_lib.ingest([photos])
    sha_before = fake_lib.status().index
    with fake_lib.engine.begin() as conn:  # a change behind the index's back
        conn.execute(q.update(q.images).where(q.images.c.id == 1).values(status="missing"))
    st = fake_lib.status()
    assert not st.index.in_sync and sha_before.in_sync
    assert 1 not in fake_lib.vectors().ids().tolist()


def test_read_only_index_folder_still_answers(fake_lib, photos, monkeypatch):
    fake_lib.ingest([photos])
    fake_lib.index_path.unlink()

    def no_write(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("organizer.vectors.cache.write_index", no_write)
    assert len(fake_lib.vectors()) == 6
