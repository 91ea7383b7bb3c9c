"""Cluster runs of a library: make, name, store, list, extend, export and evaluate them.

The orchestration between the store, the model (for naming) and the pure algorithms of
:mod:`organizer.cluster` and :mod:`organizer.naming`. Every read of a run goes through one
record, :class:`~organizer.store.records.ClusterRunSummary`, read once per call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine

from organizer import cluster, naming
from organizer.background import Background
from organizer.choices import Algorithm, KSpec, LabelSource
from organizer.embed import Embedder
from organizer.errors import ClusterError
from organizer.export import ExportSummary, export_run
from organizer.filters import PhotoFilter, parse_filter
from organizer.scan import display_path
from organizer.sources import Storage
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.filter_queries import kept_ids
from organizer.store.records import (
    ClusterRecord,
    ClusterRunRecord,
    ClusterRunSummary,
    LibraryModel,
    MemberRecord,
    OfflineImages,
)

EmbedderProvider = Callable[[], Embedder]


@dataclass(frozen=True)
class ClusterProgress:
    """Where a clustering is: the step, and how far into it (``done`` of ``total``)."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class AssignResult:
    """A run after images ingested since were put in their nearest clusters."""

    summary: ClusterRunSummary
    assigned: int

    def to_dict(self) -> dict:
        return {**self.summary.to_dict(), "assigned": self.assigned}


@dataclass(frozen=True)
class RunEvaluation:
    """A run scored against true labels."""

    run: ClusterRunRecord
    evaluation: cluster.Evaluation

    def to_dict(self) -> dict:
        ev = self.evaluation
        return {
            "run_id": self.run.id,
            "k": self.run.k,
            "silhouette": self.run.silhouette,
            "nmi": ev.nmi,
            "ari": ev.ari,
            "purity": ev.purity,
            "labels": [s.to_dict() for s in ev.spread],
        }


class Clustering:
    """Cluster operations over a library's store and model."""

    def __init__(
        self,
        engine: Engine,
        embedder: EmbedderProvider,
        cache_dir: Path | None,
        roots: Sequence[int] | None = None,
        where: PhotoFilter | None = None,
    ):
        """``embedder()`` loads the model, only when cluster names are not cached yet;
        ``cache_dir`` keeps the cached concept vectors (None: no cache); new runs cluster
        the images under ``roots`` only, when given (the present ones), and of those the
        ones ``where`` keeps (a subset by date, place, camera or folder)."""
        self.engine = engine
        self.embedder = embedder
        self.cache_dir = cache_dir
        self.roots = roots
        self.where = where or PhotoFilter()

    def _vectors(self) -> tuple[LibraryModel, np.ndarray, np.ndarray]:
        with self.engine.connect() as conn, conn.begin():
            model = q.library_model(conn)
            if model is None:
                raise ClusterError(
                    "the library has no images yet: run `organizer ingest FOLDER` first"
                )
            ids, vectors = q.ok_vectors(conn, model.id, model.dim, self.roots)
            if not self.where.empty:
                keep = np.isin(ids, kept_ids(conn, self.where))
                ids, vectors = ids[keep], vectors[keep]
                if len(ids) < 2:
                    raise ClusterError(
                        f"the filter ({self.where.describe()}) keeps {len(ids)} image"
                        f"{'' if len(ids) == 1 else 's'}: too few to cluster"
                    )
        return model, ids, vectors

    def run(
        self,
        k: KSpec = "auto",
        algorithm: str = Algorithm.FAISS,
        seed: int = 0,
        k_min: int = 2,
        k_max: int | None = None,
        vocabulary: Path | None = None,
        names: bool = True,
        progress: Callable[[ClusterProgress], None] | None = None,
    ) -> ClusterRunSummary:
        """Cluster the library's vectors and store the run (see ``organizer cluster``);
        ``progress`` hears of each step (sweep, K-means, silhouettes, naming). The summary's
        note says when -k auto could not try k up to the ``k_max`` asked (a k needs more
        images); without one it tries up to cluster.DEFAULT_K_MAX, or as many as there are."""
        tell = progress or (lambda p: None)
        if algorithm not in cluster.ALGORITHMS:
            raise ClusterError(
                f"unknown algorithm {algorithm!r}: choose {' or '.join(cluster.ALGORITHMS)}"
            )
        vocab = naming.load_vocabulary(vocabulary) if names else None
        model, ids, x = self._vectors()
        # The concept vectors do not depend on the clusters: on a first run, embed the
        # vocabulary while the K-means sweep runs. Its libraries import first, alone:
        # importing torch and open_clip beside scikit-learn and the sweep (all holding the
        # GIL) made the first `cluster -k auto` on 100 photos 2 s slower than this order.
        concepts = (
            Background(lambda ready: self._concepts(model, vocab, ready), "organizer-concepts")
            if vocab
            else None
        )
        if concepts is not None:
            # An embedder that loads eagerly (a GPU, --runtime torch) is loaded by then
            # too: the sweep then waits for a model load from the cache, seconds.
            if not concepts.ready():
                tell(ClusterProgress("naming: loading the model", 0, 1))
            concepts.wait_ready()
            if concepts.done():
                concepts.result()  # a failure (weights offline) now, not after the sweep
        note = cluster.sweep_note(k_max, len(x)) if k == "auto" and k_max is not None else None
        k_max = k_max or cluster.DEFAULT_K_MAX
        points = None
        if k == "auto":
            cluster.check_k(2, len(x))
            points = cluster.sweep(
                x,
                k_min,
                k_max,
                algorithm,
                seed,
                progress=lambda d, t: tell(ClusterProgress("trying k", d, t)),
            )
            k = cluster.best_k(points)
        tell(ClusterProgress(f"K-means, k={k}", 0, 1))
        part = cluster.kmeans(x, int(k), algorithm, seed)
        tell(ClusterProgress("silhouettes", 0, 1))
        sil = cluster.silhouettes(x, part.labels, seed=seed)
        labels: list[list[tuple[str, float]]] = [[]] * part.k
        if concepts is not None and vocab is not None:
            waiting = not concepts.done()
            tell(ClusterProgress("naming: embedding the vocabulary" if waiting else "naming", 0, 1))
            labels = naming.name(part.centroids, concepts.result(), vocab)
        run = ClusterRunRecord(
            id=0,  # given by the database below
            created_at=q.now(),
            algorithm=str(algorithm),
            k=part.k,
            seed=seed,
            auto=points is not None,
            silhouette=_float_or_none(sil.mean),
            n_images=len(ids),
            sweep=tuple({"k": p.k, "silhouette": p.silhouette} for p in points) if points else None,
        )
        params = {
            "k_min": k_min,
            "k_max": k_max,
            "restarts": 5,
            "silhouette_sample": cluster.SILHOUETTE_SAMPLE,
            **(
                {"filter": self.where.to_dict(), "where": self.where.options}
                if not self.where.empty
                else {}
            ),
        }
        with write_transaction(self.engine) as conn:
            run_id = self._insert(conn, model, run, params, vocab)
            self._insert_clusters(conn, run_id, part, sil, labels)
            cq.insert_members(conn, run_id, _member_rows(ids, part, sil))
            # The new run's clusters are known here; only the members' paths are read.
            members = cq.members(conn, run_id)
        clusters = tuple(
            ClusterRecord(
                c + 1,
                labels[c][0][0] if labels[c] else None,
                tuple(labels[c]),
                _float_or_none(sil.per_cluster.get(c)),
                part.centroids[c],
                tuple(members.get(c + 1, ())),
            )
            for c in range(part.k)
        )
        return ClusterRunSummary(replace(run, id=run_id), clusters, OfflineImages(), note)

    @staticmethod
    def _insert(
        conn: Connection,
        model: LibraryModel,
        run: ClusterRunRecord,
        params: dict,
        vocab: naming.Vocabulary | None,
    ) -> int:
        return cq.insert_run(
            conn,
            run.created_at,
            model_id=model.id,
            algorithm=run.algorithm,
            k=run.k,
            seed=run.seed,
            auto=run.auto,
            params_json=json.dumps(params),
            silhouette=run.silhouette,
            n_images=run.n_images,
            sweep_json=json.dumps(list(run.sweep)) if run.sweep else None,
            vocabulary=f"{vocab.source} sha256:{vocab.sha256[:16]}" if vocab else None,
        )

    @staticmethod
    def _insert_clusters(
        conn: Connection,
        run_id: int,
        part: cluster.Partition,
        sil: cluster.Silhouettes,
        labels: list[list[tuple[str, float]]],
    ) -> None:
        cq.insert_clusters(
            conn,
            run_id,
            [
                {
                    "number": c + 1,
                    "size": int((part.labels == c).sum()),
                    "silhouette": sil.per_cluster.get(c),
                    "centroid": part.centroids[c].tobytes(),
                    "label": labels[c][0][0] if labels[c] else None,
                    "labels_json": json.dumps(labels[c]),
                }
                for c in range(part.k)
            ],
        )

    def _concepts(
        self,
        model: LibraryModel,
        vocab: naming.Vocabulary,
        ready: Callable[[], None] | None = None,
    ) -> np.ndarray:
        # The cache is keyed by the recorded model: no model is loaded on a hit.
        return naming.concept_vectors(
            self.embedder, model.spec, model.dim, vocab, self.cache_dir, ready=ready
        )

    def summary(self, run_id: int | None = None) -> ClusterRunSummary:
        """A stored run (default: the latest) with its clusters and their members."""
        with self.engine.connect() as conn, conn.begin():
            return cq.summary(conn, _find_run(conn, run_id))

    def runs(self) -> list[ClusterRunRecord]:
        """Every stored run, oldest first."""
        with self.engine.connect() as conn:
            return cq.all_runs(conn)

    def cluster_of(self, image_id: int) -> tuple[int, int, str | None] | None:
        """(run id, cluster number, label) of an image in the latest run that holds it."""
        with self.engine.connect() as conn:
            return cq.cluster_of(conn, image_id)

    def assign_new(self, run_id: int | None = None) -> AssignResult:
        """Put images ingested after a run into its nearest clusters, without re-clustering;
        a run made of a filtered subset takes only new images that its filter keeps."""
        _model, ids, x = self._vectors()
        with self.engine.connect() as conn, conn.begin():
            found = _find_run(conn, run_id)
            numbers, centroids = cq.centroids(conn, found.id)
            known = cq.member_ids(conn, found.id)
            options = cq.run_params(conn, found.id).get("where")
            kept = kept_ids(conn, parse_filter(**options)) if options else None
        new = np.array([i not in known for i in ids.tolist()], dtype=bool)
        if kept is not None:
            new &= np.isin(ids, kept)
        labels, similarity = cluster.assign(x[new], centroids)
        with write_transaction(self.engine) as conn:
            cq.insert_members(
                conn,
                found.id,
                [
                    {
                        "image_id": int(i),
                        "number": numbers[c],
                        "distance": float(1 - s),
                        "silhouette": None,
                        "assigned_later": True,
                    }
                    for i, c, s in zip(ids[new], labels, similarity, strict=True)
                ],
            )
            after = cq.summary(conn, found)
        return AssignResult(after, int(new.sum()))

    def export(
        self,
        run_id: int | None,
        target: Path,
        mode: str | None = None,
        force: bool = False,
        storage: Storage | None = None,
    ) -> ExportSummary:
        """One folder per cluster of links to (or copies of) its images (see export_run); of
        those the filter ``where`` keeps, when this clustering has one."""
        return export_run(self.filtered(self.summary(run_id)), target, mode, force, storage)

    def filtered(self, summary: ClusterRunSummary) -> ClusterRunSummary:
        """A run with only the members the filter keeps (clusters left empty stay, empty)."""
        if self.where.empty:
            return summary
        with self.engine.connect() as conn:
            return summary.only(set(kept_ids(conn, self.where).tolist()))

    def evaluate(
        self, run_id: int | None = None, labels: str = LabelSource.FOLDERS
    ) -> RunEvaluation:
        """Compare a run with true labels: each image's folder, relative to its root
        (``2019/Beach`` and ``2020/Beach`` are different labels; files at the root are "."),
        or its whole path when the run holds images of several roots."""
        if labels != LabelSource.FOLDERS:
            raise ClusterError(f"unknown labels {labels!r}: only 'folders' is supported")
        run = self.summary(run_id)
        members = run.members
        if not members:
            raise ClusterError(f"cluster run {run.run.id} has no images left to evaluate")
        true = _folder_labels([m for _, m in members])
        predicted = np.array([number for number, _ in members])
        return RunEvaluation(run.run, cluster.evaluate(true, predicted))


def _find_run(conn: Connection, run_id: int | None) -> ClusterRunRecord:
    found = cq.run(conn, run_id)
    if found is None:
        raise ClusterError(
            "no cluster runs yet: run `organizer cluster -k auto` first"
            if run_id is None
            else f"no cluster run {run_id}: `organizer runs` lists them"
        )
    return found


def _folder_labels(members: Sequence[MemberRecord]) -> list[str]:
    """Each image's folder below its root ("." for the root itself); with several roots, the
    folder's whole path: two roots' top folders, or their "2019", are not one label."""
    several = len({m.root for m in members}) > 1
    labels = []
    for m in members:
        folder = os.path.dirname(m.relpath)
        if several:
            root = os.fsencode(m.root)
            labels.append(display_path(os.path.join(root, folder) if folder else root))
        else:
            labels.append(display_path(folder) or ".")
    return labels


def _float_or_none(value: float | np.floating | None) -> float | None:
    return None if value is None else float(value)


def _member_rows(ids: np.ndarray, part: cluster.Partition, sil: cluster.Silhouettes) -> list[dict]:
    return [
        {
            "image_id": int(i),
            "number": int(c) + 1,
            "distance": float(d),
            "silhouette": None if np.isnan(s) else float(s),
            "assigned_later": False,
        }
        for i, c, d, s in zip(ids, part.labels, part.distances, sil.per_image, strict=True)
    ]
