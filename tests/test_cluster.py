"""Clustering: determinism, recovery of known clusters, choosing k, names, runs, export,
evaluation, assigning new images, and clean errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from organizer.cluster import kmeans
from organizer.errors import ClusterError
from tests.fakes import TINY_CONFIG, FakeEmbedder, clustered_vectors, make_folder, store_vectors

pytestmark = pytest.mark.both_backends


def _store_topics(lib) -> np.ndarray:
    """Store 8 well-separated clusters of 40 vectors, in folders topic0..topic7; returns the
    cluster centres."""
    vectors, labels, centres = clustered_vectors(8, 40)
    store_vectors(lib, vectors, [f"topic{t}/img{i:03d}.jpg" for i, t in enumerate(labels)])
    return centres


@pytest.fixture
def synthetic(fake_lib):
    """A library of 8 well-separated clusters of 40 vectors, in folders topic0..topic7."""
    _store_topics(fake_lib)
    return fake_lib


def _membership(lib, run_id):
    from organizer.store import cluster_queries as cq

    with lib.engine.connect() as conn:
        by_number = cq.members(conn, run_id)
    return {m.image_id: number for number, members in by_number.items() for m in members}


def test_same_seed_same_clusters(synthetic):
    a = synthetic.cluster(8, seed=3, names=False)
    b = synthetic.cluster(8, seed=3, names=False)
    assert a.run.id != b.run.id
    assert _membership(synthetic, a.run.id) == _membership(synthetic, b.run.id)


@pytest.mark.parametrize("algorithm", ["faiss", "sklearn"])
def test_known_clusters_are_recovered(synthetic, algorithm):
    summary = synthetic.cluster(8, algorithm=algorithm, names=False)
    ev = synthetic.clustering.evaluate(summary.run.id).evaluation
    assert ev.nmi >= 0.95 and ev.purity >= 0.95
    assert sorted(c.size for c in summary.clusters) == [40] * 8
    assert summary.run.silhouette > 0.5 and all(c.silhouette > 0.3 for c in summary.clusters)


def test_auto_k_finds_the_true_k(synthetic):
    summary = synthetic.cluster("auto", k_min=2, k_max=15, names=False)
    assert summary.run.k == 8
    assert [p["k"] for p in summary.run.sweep] == list(range(2, 16))
    assert max(summary.run.sweep, key=lambda p: p["silhouette"])["k"] == 8


def test_evaluate_is_perfect_when_clusters_equal_folders(synthetic):
    summary = synthetic.cluster(8, names=False)
    ev = synthetic.clustering.evaluate(summary.run.id).evaluation
    assert ev.nmi == pytest.approx(1.0) and ev.ari == pytest.approx(1.0) and ev.purity == 1.0
    assert all(s.clusters == 1 and s.main_share == 1.0 and s.entropy_bits == 0 for s in ev.spread)


def test_names_come_from_the_vocabulary_file(settings, tmp_path):
    from organizer.config import Settings
    from organizer.library import Library

    centres = clustered_vectors(8, 40)[2]  # the centres _store_topics will use

    class Aligned(FakeEmbedder):
        """Text 'concept N' points at centre N: the right name for cluster N is known."""

        def embed_texts(self, texts):
            out = []
            for text in texts:
                n = int(text.split("concept ")[1].split(".")[0]) if "concept " in text else None
                out.append(centres[n] if n is not None else super().embed_texts([text])[0])
            return np.asarray(out, dtype=np.float32)

    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "template: a photo of {}.\n" + "".join(f"concept {i}\n" for i in range(8)) + "a decoy\n"
    )
    aligned = Aligned()
    with Library.open(
        Settings(library=settings.library), create=True, embedder_loader=lambda spec, s: aligned
    ) as synthetic:
        assert np.array_equal(_store_topics(synthetic), centres)
        summary = synthetic.cluster(8, vocabulary=vocab)
        ev = synthetic.clustering.evaluate(summary.run.id).evaluation
        spread = {s.label: s.main_cluster for s in ev.spread}
        for c in summary.clusters:
            folder = next(label for label, number in spread.items() if number == c.number)
            assert c.label == f"concept {folder.removeprefix('topic')}"
            assert len(c.labels) == 3 and c.labels[0][1] >= c.labels[1][1]
        concepts = next(p.name for p in synthetic.home.cache_dir.glob("concepts-*.npy"))
        assert (synthetic.home.cache_dir / concepts).exists()


def test_runs_persist_and_list(synthetic, settings):
    from organizer.config import Settings
    from organizer.library import Library

    first = synthetic.cluster(4, names=False)
    second = synthetic.cluster(8, names=False)
    with Library.open(Settings(library=synthetic.settings.library)) as again:
        runs = again.clustering.runs()
        assert [r.id for r in runs] == [first.run.id, second.run.id]
        assert again.clusters().run.id == second.run.id  # the latest by default
        assert again.clusters(first.run.id).run.k == 4


def _export_fails_after(monkeypatch, entries: int) -> None:
    """The export's link or copy step fails (a full disk) once ``entries`` are made."""
    import errno

    from organizer import export

    real, made = export._export_one, []

    def export_one(member, dest, *how):
        if len(made) == entries:
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(dest)
        return real(member, dest, *how)

    monkeypatch.setattr(export, "_export_one", export_one)


@pytest.fixture
def clustered(fake_lib, tmp_path) -> int:
    """A run of 2 clusters of the 6 photos under tmp_path/photos; its id."""
    make_folder(tmp_path / "photos", 6)
    fake_lib.ingest([tmp_path / "photos"])
    return fake_lib.cluster(2, names=False).run.id


def test_a_failed_export_leaves_no_marker_where_it_wrote_nothing(
    fake_lib, clustered, tmp_path, monkeypatch
):
    """A marker left in the user's folder would make ingest skip their own files there."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    _export_fails_after(monkeypatch, 0)
    with pytest.raises(ClusterError, match="No space left on device"):
        fake_lib.export(clustered, mine, force=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ClusterError, match="No space left on device"):
        fake_lib.export(clustered, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_failed_export_keeps_the_folder_marked_with_what_it_made(
    fake_lib, clustered, tmp_path, monkeypatch
):
    from organizer import export
    from organizer.scan import EXPORT_MARKER

    real = export._export_one
    out = tmp_path / "out"
    assert fake_lib.export(clustered, out).linked == 6
    _export_fails_after(monkeypatch, 2)
    with pytest.raises(ClusterError, match="No space left on device"):
        fake_lib.export(clustered, out, force=True)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert len(marker["entries"]) == 2  # listed: the next --force removes them
    monkeypatch.setattr(export, "_export_one", real)
    again = fake_lib.export(clustered, out, force=True)
    assert (again.replaced, again.linked, again.skipped) == (2, 6, 0)


def test_export_links_and_copies_touch_no_source(fake_lib, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 6)
    fake_lib.ingest([root])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*.jpg")}
    summary = fake_lib.cluster(2, names=False)
    target = tmp_path / "out"
    result = fake_lib.clustering.export(summary.run.id, target)
    assert result.linked == 6 and result.folders == 2
    folders = sorted(p.name for p in target.iterdir())
    assert folders == [".organizer-export", "01-cluster", "02-cluster"]
    links = list(target.rglob("*.jpg"))
    assert len(links) == 6 and all(
        p.is_symlink() and p.resolve().parent in (root, root / "sub") for p in links
    )
    with pytest.raises(ClusterError, match="not empty"):
        fake_lib.clustering.export(summary.run.id, target)
    copies = fake_lib.clustering.export(summary.run.id, tmp_path / "copies", mode="copy")
    assert copies.copied == 6 and not any(
        p.is_symlink() for p in (tmp_path / "copies").rglob("*.jpg")
    )
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*.jpg")}
    (target / "mine.txt").write_text("the user's own file")
    again = fake_lib.clustering.export(summary.run.id, target, force=True)
    assert (again.replaced, again.linked, again.skipped) == (6, 6, 0)  # replaced, not doubled
    assert (target / "mine.txt").read_text() == "the user's own file"


def test_assign_new_puts_new_images_in_the_nearest_cluster(synthetic):
    summary = synthetic.cluster(8, names=False)
    extra, labels, _ = clustered_vectors(8, 2, seed=0)  # same centres, new points
    store_vectors(synthetic, extra, [f"topic{t}/new{i}.jpg" for i, t in enumerate(labels)])
    result = synthetic.clustering.assign_new(summary.run.id)
    assert result.assigned == 16
    ev = synthetic.clustering.evaluate(summary.run.id).evaluation
    assert ev.nmi >= 0.95
    assert synthetic.clustering.assign_new(summary.run.id).assigned == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["cluster", "-k", "500", "--no-names"], "smaller than the number of images"),
        (["cluster", "-k", "320", "--no-names"], "smaller than the number of images"),
        (["clusters", "--run", "99"], "no cluster run 99"),
        (["cluster", "-k", "3", "--vocabulary", "nowhere.txt"], "cannot read vocabulary"),
    ],
)
def test_bad_requests_are_one_line_errors(synthetic, cli, args, message):
    """Runtime failures: exit 1 (bad values of options are usage errors: see test_cli)."""
    result = cli(
        *args, "--library", synthetic.settings.library, ORGANIZER_MODEL="", ORGANIZER_PRETRAINED=""
    )
    assert result.exit_code == 1, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_empty_library_is_a_clear_error(cli, tmp_path):
    empty = tmp_path / "empty"
    assert cli("ingest", empty.mkdir() or empty).exit_code == 0
    result = cli("cluster", "-k", "2")
    assert result.exit_code == 1 and "no images yet" in result.stderr


def test_cli_cluster_json_and_listing(synthetic, cli, tmp_path):
    env = {"ORGANIZER_MODEL": "", "ORGANIZER_PRETRAINED": ""}
    result = cli(
        "cluster", "-k", "8", "--no-names", "--json", "--library", synthetic.settings.library, **env
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"run_id", "k", "silhouette", "clusters"} <= set(data) and data["k"] == 8
    assert set(data["clusters"][0]) >= {"id", "label", "size", "silhouette"}
    listing = json.loads(
        cli("clusters", "--json", "-n", "2", "--library", synthetic.settings.library, **env).stdout
    )
    assert (
        listing["run_id"] == data["run_id"] and len(listing["clusters"][0]["representatives"]) == 2
    )
    ev = json.loads(
        cli(
            "evaluate",
            "--labels",
            "folders",
            "--json",
            "--library",
            synthetic.settings.library,
            **env,
        ).stdout
    )
    assert ev["nmi"] >= 0.95
    text = cli("clusters", "--library", synthetic.settings.library, **env).stdout
    assert "run 1: k=8" in text


def test_evaluate_tells_roots_apart_and_prints_no_minus_zero(fake_lib, cli, tmp_path):
    """Files directly in two roots are two labels, not one "."; a label in one cluster has
    an entropy of 0.00 bits, not -0.00."""
    import os

    a, b = tmp_path / "a", tmp_path / "b"
    make_folder(a, 3)  # two files in the root, one in sub/
    make_folder(b, 3, start_seed=10)
    fake_lib.ingest([a, b])
    fake_lib.cluster(2, names=False)
    env = {"ORGANIZER_MODEL": "", "ORGANIZER_PRETRAINED": ""}
    ev = json.loads(cli("evaluate", "--json", **env).stdout)
    a, b = os.path.realpath(a), os.path.realpath(b)
    sizes = {s["label"]: s["size"] for s in ev["labels"]}
    assert sizes == {a: 2, f"{a}/sub": 1, b: 2, f"{b}/sub": 1}
    text = cli("evaluate", **env).stdout
    assert "-0.00" not in text and " 0.00 bits" in text and f"{b}/sub " in text


def test_real_cli_with_tiny_model_names_clusters(cli, tmp_path):
    root = tmp_path / "photos"
    make_folder(root / "a", 6, 0)
    make_folder(root / "b", 6, 100)
    assert cli("ingest", root).exit_code == 0
    result = cli("cluster", "-k", "auto", "--k-max", "5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 2 <= data["k"] <= 5 and all(c["label"] for c in data["clusters"])
    assert len(data["sweep"]) == 4
    out = tmp_path / "export"
    assert cli("export", "--to", out).exit_code == 0
    assert sum(1 for _ in out.rglob("*.jpg")) == 12


def test_a_k_max_beyond_what_can_be_tried_is_said(fake_lib, cli, tmp_path):
    make_folder(tmp_path / "photos", 6)
    fake_lib.ingest([tmp_path / "photos"])
    env = {"ORGANIZER_MODEL": "", "ORGANIZER_PRETRAINED": ""}
    result = cli("cluster", "-k", "auto", "--k-max", "100000", "--no-names", "--json", **env)
    assert result.exit_code == 0, result.output
    note = "-k auto tried k up to 5, not --k-max 100,000: 6 images make at most 5 clusters"
    assert json.loads(result.stdout)["note"] == note
    assert f"note: {note}" in result.stderr.splitlines()
    assert [p["k"] for p in json.loads(result.stdout)["sweep"]] == [2, 3, 4, 5]
    for asked in ([], ["--k-max", "5"]):  # the default, 40, is bounded by the library quietly
        quiet = cli("cluster", "-k", "auto", *asked, "--no-names", "--json", **env)
        assert json.loads(quiet.stdout)["note"] is None and "note:" not in quiet.stderr


def test_the_sweep_stops_at_what_its_sample_can_cluster():
    """A k as large as the sweep's sample failed after sweeping every k below it."""
    from organizer import cluster

    x, _, _ = clustered_vectors(2, 15)
    points = cluster.sweep(x, 2, 100, sample=6)
    assert [p.k for p in points] == [2, 3, 4, 5]
    assert "a sample of 6 images" in cluster.sweep_note(100, len(x), sample=6)
    assert cluster.sweep_note(5, len(x), sample=6) is None


def test_kmeans_rejects_bad_k():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ClusterError, match="smaller than"):
        kmeans(x, 5)
    with pytest.raises(ClusterError, match="smaller than"):
        kmeans(x, 4)
    with pytest.raises(ClusterError, match="no images"):
        kmeans(np.empty((0, 4), np.float32), 2)


def test_no_two_clusters_share_a_name():
    """Four clusters that all lean towards one concept still get four names."""
    from organizer.naming import Vocabulary, name

    rng = np.random.default_rng(0)
    concepts = rng.standard_normal((6, 16)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    centroids = concepts[0] + 0.3 * rng.standard_normal((4, 16)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vocab = Vocabulary(tuple(f"concept {i}" for i in range(6)), ("{}",), "test")
    naive = (centroids @ concepts.T).argmax(axis=1)
    assert len(set(naive.tolist())) < 4  # the case this is about
    labels = name(centroids, concepts, vocab)
    assert len({row[0][0] for row in labels}) == 4
    assert all(len(row) == 3 and len({label for label, _ in row}) == 3 for row in labels)


def test_long_steps_show_progress_on_a_terminal(cli, tmp_path, library):
    """On a terminal, stderr says what clustering is doing (sweep, K-means, naming)."""
    import os
    import pty
    import subprocess
    import sys

    root = tmp_path / "photos"
    make_folder(root, 10)
    assert cli("ingest", root).exit_code == 0
    main, child = pty.openpty()
    env = {**os.environ, "ORGANIZER_LIBRARY": str(library), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "organizer", "cluster", "-k", "auto", "--k-max", "4"],
        env={**env, "ORGANIZER_MODEL": str(TINY_CONFIG), "ORGANIZER_PRETRAINED": "none"},
        stdout=subprocess.PIPE,
        stderr=child,
    )
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(timeout=120)
    os.close(main)
    assert proc.returncode == 0
    text = shown.decode(errors="replace")
    assert "cluster: trying k" in text and "cluster: naming" in text
    assert b"run 1:" in proc.stdout.read()  # the result itself stays on stdout


def test_concepts_say_when_only_computing_is_left(tmp_path):
    """The vocabulary's embedder prepares (imports) before ``ready``; a cache hit is ready
    at once and loads nothing; the K-means sweep waits for ``ready``, not for the vectors."""
    from organizer.embed import ModelSpec
    from organizer.naming import Vocabulary, concept_vectors

    events = []

    class Lazy(FakeEmbedder):
        def prepare_texts(self, count):
            events.append(("prepare", count))

        def embed_texts(self, texts):
            events.append(("embed", len(texts)))
            return super().embed_texts(texts)

    vocab = Vocabulary(("dog", "cat", "tree"), ("a photo of a {}.", "{}"), "test")
    spec = ModelSpec("fake", "none")
    first = concept_vectors(
        lambda: Lazy(), spec, 16, vocab, tmp_path, ready=lambda: events.append(("ready",))
    )
    assert events[:2] == [("prepare", 6), ("ready",)] and events[2][0] == "embed"
    events.clear()
    again = concept_vectors(
        lambda: pytest.fail("a cache hit loads no model"),
        spec,
        16,
        vocab,
        tmp_path,
        ready=lambda: events.append(("ready",)),
    )
    assert events == [("ready",)] and np.array_equal(first, again)


def test_kmeans_gives_the_same_partition_on_one_thread_or_two():
    import faiss

    from organizer import cluster

    x, _, _ = clustered_vectors(8, 375, dim=32, seed=4)
    small = kmeans(x, 8, seed=0)  # 3000 x 8 pairs: one faiss thread
    before = faiss.omp_get_max_threads()
    old = cluster._ONE_THREAD_PAIRS
    cluster._ONE_THREAD_PAIRS = 0  # the machine's threads
    try:
        threaded = kmeans(x, 8, seed=0)
    finally:
        cluster._ONE_THREAD_PAIRS = old
    assert faiss.omp_get_max_threads() == before  # restored
    assert np.array_equal(small.labels, threaded.labels)
