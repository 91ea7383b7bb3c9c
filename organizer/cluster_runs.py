"""Cluster runs of a library: make, name, store, list, extend, export and evaluate them.

The orchestration between :class:`~organizer.library.Library` (vectors, model, database) and
the pure algorithms of :mod:`organizer.cluster` and :mod:`organizer.naming`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organizer import cluster, naming
from organizer.errors import ClusterError
from organizer.scan import display_path
from organizer.store import cluster_queries as cq
from organizer.store import queries as q
from organizer.store.db import write_transaction


@dataclass
class ClusterSummary:
    number: int
    label: str | None
    labels: list[tuple[str, float]]
    size: int
    silhouette: float | None
    representatives: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass
class RunSummary:
    run_id: int
    k: int
    algorithm: str
    seed: int
    silhouette: float | None
    n_images: int
    created_at: str
    clusters: list[ClusterSummary]
    sweep: list[dict] | None = None
    assigned: int = 0

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "k": self.k,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "silhouette": self.silhouette,
            "n_images": self.n_images,
            "created_at": self.created_at,
            "sweep": self.sweep,
            "clusters": [
                {
                    "id": c.number,
                    "label": c.label,
                    "size": c.size,
                    "silhouette": c.silhouette,
                    "labels": [{"label": lab, "score": s} for lab, s in c.labels],
                }
                for c in self.clusters
            ],
        }


@dataclass
class ExportSummary:
    folders: int
    linked: int
    copied: int
    skipped: int
    target: str


class Clustering:
    """Cluster operations over an opened library."""

    def __init__(self, library):
        self.lib = library

    def _vectors(self) -> tuple[q.LibraryModel, np.ndarray, np.ndarray]:
        with self.lib.engine.connect() as conn:
            model = q.library_model(conn)
            if model is None:
                raise ClusterError(
                    "the library has no images yet: run `organizer ingest FOLDER` first"
                )
            ids, vectors = q.ok_vectors(conn, model.id, model.dim)
        return model, ids, vectors

    def run(
        self,
        k: int | str = "auto",
        algorithm: str = "faiss",
        seed: int = 0,
        k_min: int = 2,
        k_max: int = 40,
        vocabulary: Path | None = None,
        names: bool = True,
    ) -> RunSummary:
        """Cluster the library's vectors and store the run (see ``organizer cluster``)."""
        if algorithm not in cluster.ALGORITHMS:
            raise ClusterError(
                f"unknown algorithm {algorithm!r}: choose {' or '.join(cluster.ALGORITHMS)}"
            )
        vocab = naming.load_vocabulary(vocabulary) if names else None
        model, ids, x = self._vectors()
        points = None
        if k == "auto":
            cluster.check_k(2, len(x))
            points = cluster.sweep(x, k_min, k_max, algorithm, seed)
            k = cluster.best_k(points)
        k = int(k)
        part = cluster.kmeans(x, k, algorithm, seed)
        sil = cluster.silhouettes(x, part.labels, seed=seed)
        labels = self._names(part.centroids, vocab) if vocab else [[] for _ in range(part.k)]
        params = {
            "k_min": k_min,
            "k_max": k_max,
            "restarts": 5,
            "silhouette_sample": cluster.SILHOUETTE_SAMPLE,
        }
        with write_transaction(self.lib.engine) as conn:
            run_id = cq.insert_run(
                conn,
                model_id=model.id,
                algorithm=algorithm,
                k=part.k,
                seed=seed,
                auto=points is not None,
                params_json=json.dumps(params),
                silhouette=sil.mean,
                n_images=len(ids),
                sweep_json=json.dumps([p.__dict__ for p in points]) if points else None,
                vocabulary=f"{vocab.source} sha256:{vocab.sha256[:16]}" if vocab else None,
            )
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
            cq.insert_members(
                conn,
                run_id,
                [
                    {
                        "image_id": int(i),
                        "number": int(c) + 1,
                        "distance": float(d),
                        "silhouette": None if np.isnan(s) else float(s),
                        "assigned_later": False,
                    }
                    for i, c, d, s in zip(
                        ids, part.labels, part.distances, sil.per_image, strict=True
                    )
                ],
            )
        return self.summary(run_id)

    def _names(
        self, centroids: np.ndarray, vocab: naming.Vocabulary
    ) -> list[list[tuple[str, float]]]:
        model = self.lib.model()  # the cache is keyed by the recorded model: no load on a hit
        concepts = naming.concept_vectors(
            self.lib.embedder, model.spec, model.dim, vocab, self.lib.path
        )
        return naming.name(centroids, concepts, vocab)

    def _run(self, conn, run_id: int | None):
        found = cq.run(conn, run_id)
        if found is None:
            raise ClusterError(
                "no cluster runs yet: run `organizer cluster -k auto` first"
                if run_id is None
                else f"no cluster run {run_id}: `organizer clusters --runs` lists them"
            )
        return found

    def summary(self, run_id: int | None = None, representatives: int = 5) -> RunSummary:
        """A stored run with each cluster's most representative images (closest to centroid)."""
        with self.lib.engine.connect() as conn:
            found = self._run(conn, run_id)
            infos = cq.clusters(conn, found.id)
            members = cq.members(conn, found.id)
        by_number: dict[int, list] = {}
        for m in members:
            by_number.setdefault(m.number, []).append(m)
        clusters = [
            ClusterSummary(
                c.number,
                c.label,
                c.labels,
                len(by_number.get(c.number, [])),
                c.silhouette,
                [(m.root, m.relpath) for m in by_number.get(c.number, [])[:representatives]],
            )
            for c in infos
        ]
        return RunSummary(
            found.id,
            found.k,
            found.algorithm,
            found.seed,
            found.silhouette,
            found.n_images,
            found.created_at.isoformat() + "Z",
            clusters,
            json.loads(found.sweep_json) if found.sweep_json else None,
        )

    def runs(self) -> list[dict]:
        with self.lib.engine.connect() as conn:
            return [
                {
                    "run_id": r.id,
                    "created_at": r.created_at.isoformat() + "Z",
                    "k": r.k,
                    "algorithm": r.algorithm,
                    "auto": r.auto,
                    "silhouette": r.silhouette,
                    "n_images": r.n_images,
                }
                for r in cq.all_runs(conn)
            ]

    def assign_new(self, run_id: int | None = None) -> RunSummary:
        """Put images ingested after a run into its nearest clusters, without re-clustering."""
        _model, ids, x = self._vectors()
        with self.lib.engine.connect() as conn:
            found = self._run(conn, run_id)
            infos = cq.clusters(conn, found.id)
            known = cq.member_ids(conn, found.id)
        new = np.array([i not in known for i in ids.tolist()], dtype=bool)
        if new.any():
            centroids = np.stack([c.centroid for c in infos])
            labels, similarity = cluster.assign(x[new], centroids)
            with write_transaction(self.lib.engine) as conn:
                cq.insert_members(
                    conn,
                    found.id,
                    [
                        {
                            "image_id": int(i),
                            "number": infos[c].number,
                            "distance": float(1 - s),
                            "silhouette": None,
                            "assigned_later": True,
                        }
                        for i, c, s in zip(ids[new], labels, similarity, strict=True)
                    ],
                )
        summary = self.summary(found.id)
        summary.assigned = int(new.sum())
        return summary

    def export(
        self, run_id: int | None, target: Path, mode: str = "symlink", force: bool = False
    ) -> ExportSummary:
        """One folder per cluster ('03-beach') of links to (or copies of) its images.

        Never moves, changes or deletes a source file; refuses a non-empty target unless
        ``force`` (then existing entries are left as they are).
        """
        if mode not in ("symlink", "copy"):
            raise ClusterError(f"unknown export mode {mode!r}: choose symlink or copy")
        target = Path(target).expanduser()
        if target.exists() and not target.is_dir():
            raise ClusterError(f"{target} is a file: choose a folder to export into")
        if target.exists() and any(target.iterdir()) and not force:
            raise ClusterError(f"{target} is not empty: choose an empty folder, or pass --force")
        summary = self.summary(run_id, representatives=0)
        with self.lib.engine.connect() as conn:
            members = cq.members(conn, summary.run_id)
        width = max(2, len(str(summary.k)))
        folders = {
            c.number: target / f"{c.number:0{width}d}-{naming.slug(c.label or 'cluster')}"
            for c in summary.clusters
        }
        result = ExportSummary(0, 0, 0, 0, str(target))
        used: dict[int, set[bytes]] = {}
        try:
            for m in members:
                folder = os.fsencode(folders[m.number])
                os.makedirs(folder, exist_ok=True)
                dest = os.path.join(folder, _unique_name(m, used.setdefault(m.number, set())))
                source = os.path.join(os.fsencode(m.root), m.relpath)
                if os.path.lexists(dest) or not os.path.exists(source):
                    result.skipped += 1
                elif mode == "symlink":
                    os.symlink(source, dest)
                    result.linked += 1
                else:
                    shutil.copy2(source, dest)
                    result.copied += 1
        except OSError as exc:
            raise ClusterError(
                f"export to {target} stopped after {result.linked + result.copied} images: "
                f"{exc.strerror or exc} (your photos are untouched)"
            ) from None
        result.folders = len(used)
        return result

    def evaluate(
        self, run_id: int | None = None, labels: str = "folders"
    ) -> tuple[RunSummary, cluster.Evaluation]:
        """Compare a run with true labels: each image's folder, relative to its root
        (``2019/Beach`` and ``2020/Beach`` are different labels; files at the root are ".")."""
        if labels != "folders":
            raise ClusterError(f"unknown labels {labels!r}: only 'folders' is supported")
        summary = self.summary(run_id, representatives=0)
        with self.lib.engine.connect() as conn:
            members = cq.members(conn, summary.run_id)
        if not members:
            raise ClusterError(f"cluster run {summary.run_id} has no images left to evaluate")
        true = [display_path(os.path.dirname(m.relpath)) or "." for m in members]
        predicted = np.array([m.number for m in members])
        return summary, cluster.evaluate(true, predicted)


def _unique_name(member, used: set[bytes]) -> bytes:
    """The file's own name, or name-2.jpg, name-3.jpg... when the folder already has it."""
    name = os.path.basename(member.relpath)
    stem, ext = os.path.splitext(name)
    n = 1
    while name in used:
        n += 1
        name = stem + f"-{n}".encode() + ext
    used.add(name)
    return name
