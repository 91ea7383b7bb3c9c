"""The read model of a library: one frozen record type per concept, and the status enums.

Named queries (:mod:`.queries`, :mod:`.cluster_queries`) return these, never ORM objects or
SQLAlchemy rows, so that callers above the store see plain values. Records that commands
print have one ``to_dict()``: the shape of their ``--json`` document.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum

import numpy as np

from organizer.embed import ModelSpec
from organizer.photo_meta import PhotoMeta
from organizer.scan import display_path, exact_path, shown_path


class ImageStatus(StrEnum):
    """What became of a file under a root (a CHECK constraint keeps the column to these)."""

    OK = "ok"  # decoded and embedded: it has a vector and is searchable
    FAILED = "failed"  # could not be read or decoded; the reason is recorded
    MISSING = "missing"  # gone from a folder that was scanned; its vector is kept for a move


class RunStatus(StrEnum):
    """How an ingest run ended (``running`` while it goes on)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def iso_utc(when: datetime | None, timespec: str = "auto") -> str | None:
    """A naive UTC timestamp of the database as ISO 8601 with a Z."""
    return None if when is None else when.isoformat(timespec=timespec) + "Z"


# -- images and models ------------------------------------------------------------------------


@dataclass(frozen=True)
class LibraryModel:
    """The model a library's vectors were made with."""

    id: int
    spec: ModelSpec
    dim: int
    preprocess: dict | None = None  # the model's input: size, mean, std... (PreprocessSpec)

    def to_dict(self) -> dict:
        return {
            "name": self.spec.name,
            "pretrained": self.spec.pretrained,
            "weights_sha256": self.spec.weights_sha256,
            "dim": self.dim,
            "random_weights": self.spec.is_random,
        }


@dataclass(frozen=True)
class RootRecord:
    """A folder the user ingested, with its images counted by status."""

    id: int
    path: str
    added_at: datetime
    last_scan_at: datetime | None
    images: dict[str, int]


@dataclass(frozen=True)
class OfflineImages:
    """What a command left out because its roots are absent now (an unplugged drive): their
    images that it would have shown. Empty when every root is here, or with
    ``include_offline``."""

    roots: tuple[str, ...] = ()
    images: int = 0

    def to_dict(self) -> dict:
        return {"roots": list(self.roots), "images": self.images}


@dataclass(frozen=True)
class KnownImage:
    """The part of an image row that ingest compares against a scan."""

    id: int
    relpath: bytes
    size: int
    mtime_ns: int
    status: ImageStatus
    content_hash: str | None
    etag: str | None = None  # as a bucket listed the object; None for files on a disk


@dataclass(frozen=True)
class ImageRecord:
    """An image as results show it (any status), with what its file was found to be."""

    id: int
    root: str
    relpath: bytes
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    format: str | None
    status: ImageStatus
    content_hash: str | None
    meta: PhotoMeta | None = None  # None: the header was never read
    place: str | None = None  # the named place of its coordinates ("Arezzo, Tuscany, Italy")

    @property
    def path(self) -> bytes:
        """The absolute path, as the filesystem's bytes."""
        return os.path.join(os.fsencode(self.root), self.relpath)

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def taken(self) -> float:
        """When the photo was taken (EXIF), else its modification time, as a timestamp: for
        ordering only, never shown as the time taken."""
        when = self.taken_at or datetime.fromtimestamp(self.mtime_ns / 1e9)
        return when.timestamp()

    @property
    def taken_at(self) -> datetime | None:
        """The camera's wall-clock time of the shot, when the header gave a believable one."""
        return self.meta.taken_at if self.meta is not None else None

    def facts(self, coordinates: bool = True) -> dict:
        """When, where and with what, for ``--json`` (see :func:`facts_of`)."""
        return facts_of(self.meta, self.place, coordinates)


def facts_of(meta: PhotoMeta | None, place: str | None, coordinates: bool = True) -> dict:
    """When, where and with what an image was taken, as JSON: ``taken`` in ISO 8601 with its
    UTC offset when the file records one (else local time, ``taken_zone_known`` false);
    coordinates only when asked (they never leave through pages or the report)."""
    meta = meta or PhotoMeta()
    out: dict = {
        "taken": taken_text(meta),
        "taken_zone_known": meta.taken_offset is not None if meta.taken_at else None,
        "place": place,
        "camera": meta.camera,
        "lens": meta.lens,
        "focal_mm": meta.focal_mm,
        "exposure_s": meta.exposure_s,
        "f_number": meta.f_number,
        "iso": meta.iso,
    }
    if coordinates:
        out.update(latitude=meta.latitude, longitude=meta.longitude, altitude=meta.altitude)
    return out


@dataclass(frozen=True)
class DatedPhoto:
    """An ok image with a time taken: what events are made of (see organizer.events)."""

    image_id: int
    taken_at: datetime  # the camera's wall-clock time
    latitude: float | None
    longitude: float | None
    place: str | None  # its named place, short ("Arezzo, Italy")
    root: str
    relpath: bytes

    @property
    def has_position(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    def to_dict(self, absolute: bool = False) -> dict:
        """Which image, and when (its coordinates stay out: see ImageRecord.facts)."""
        return {
            "image_id": self.image_id,
            "path": shown_path(self.root, self.relpath, absolute),
            **exact_path(self.root, self.relpath),
            "root": self.root,
            "taken": self.taken_at.isoformat(),
        }


def taken_text(meta: PhotoMeta) -> str | None:
    """The time taken in ISO 8601, with its offset ("+02:00") when the file records one."""
    if meta.taken_at is None:
        return None
    text = meta.taken_at.isoformat()
    if meta.taken_offset is None:
        return text
    sign = "-" if meta.taken_offset < 0 else "+"
    hours, minutes = divmod(abs(meta.taken_offset), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


@dataclass(frozen=True)
class Failure:
    """A file recorded as failed, and why."""

    root: str
    relpath: bytes
    reason: str
    updated_at: datetime

    def to_dict(self, absolute: bool = False) -> dict:
        undecodable = display_path(self.relpath) != self.relpath.decode("utf-8", "replace")
        return {
            "root": self.root,
            "path": shown_path(self.root, self.relpath, absolute),
            **exact_path(self.root, self.relpath),
            "path_bytes_hex": self.relpath.hex() if undecodable else None,
            "reason": self.reason,
        }


# -- runs and the index -----------------------------------------------------------------------


@dataclass(frozen=True)
class IngestRunRecord:
    """One ``organizer ingest`` as the database remembers it."""

    id: int
    started_at: datetime
    finished_at: datetime | None
    pid: int
    status: RunStatus
    device: str | None
    precision: str | None
    summary: dict
    error: str | None = None  # why it failed or stopped, when known

    def to_dict(self) -> dict:
        return {
            "started_at": iso_utc(self.started_at),
            "finished_at": iso_utc(self.finished_at),
            "status": str(self.status),
            "pid": self.pid,
            "device": self.device,
            "precision": self.precision,
            "summary": self.summary,
            "error": self.error,
        }


@dataclass(frozen=True)
class IndexFileRecord:
    """What a written vector-index file holds: built from the vectors of ``generation`` (the
    database's counter of changes to the indexed set), with this checksum and count."""

    generation: int
    sha256: str
    count: int
    kind: str
    description: str
    recall_at_10: float | None
    quick: str | None = None  # sizes and sampled blocks of every file (None: older files)
    growth: IndexGrowthRecord | None = None  # what was changed in place since the build

    def to_dict(self) -> dict:
        return {
            "generation": self.generation,
            "sha256": self.sha256,
            "count": self.count,
            "kind": self.kind,
            "description": self.description,
            "recall_at_10": self.recall_at_10,
            "quick": self.quick,
            "growth": None if self.growth is None else self.growth.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> IndexFileRecord:
        growth = data.get("growth")
        fields = {k: v for k, v in data.items() if k != "growth"}
        return cls(**fields, growth=None if growth is None else IndexGrowthRecord(**growth))


@dataclass(frozen=True)
class IndexGrowthRecord:
    """What an index holds beyond the files its build wrote (see organizer.vectors.grown):
    small files beside them, written by later updates, and why the build itself was made.

    ``files`` names every file of the updates (the delta index, the masked ids, the
    calibration, the re-rank segments), each with its SHA-256; ``quick`` is their
    fingerprint. An index just built has none of them, only ``built_imbalance`` and, when a
    rebuild was decided by an update, ``rebuilt_because``.
    """

    files: dict[str, str] = field(default_factory=dict)  # name -> SHA-256
    segments: list[str] = field(default_factory=list)  # re-rank segment stems, oldest first
    quick: str | None = None
    updates: int = 0  # updates applied since the build
    added: int = 0  # vectors in the delta index
    removed: int = 0  # the build's vectors masked
    nprobe: int | None = None  # lists searched, when an update recalibrated it
    recall_at_10: float | None = None  # measured by the last update
    imbalance: float | None = None  # of the lists now (1: even)
    built_imbalance: float | None = None  # of the lists as built
    built_recall: float | None = None  # recall@10 as built (calibrated)
    rebuilt_because: str | None = None  # why an update retrained the index instead
    runs: int | None = None  # the latest ingest run when written (only ingests embed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IndexSettingsRecord:
    """The index a library asks for (``index build --kind/--memory``): None means auto and
    the default budget."""

    kind: str | None = None
    memory: int | None = None


# -- cluster runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberRecord:
    """An image of a cluster, with its cosine distance to the centroid."""

    image_id: int
    distance: float
    silhouette: float | None
    assigned_later: bool
    root: str
    relpath: bytes


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster of a run: its name, quality, centroid, and its images still in the library
    (closest to the centroid first)."""

    number: int
    label: str | None
    labels: tuple[tuple[str, float], ...]
    silhouette: float | None
    centroid: np.ndarray
    members: tuple[MemberRecord, ...]

    @property
    def size(self) -> int:
        return len(self.members)

    def to_dict(self) -> dict:
        return {
            "id": self.number,
            "label": self.label,
            "size": self.size,
            "silhouette": self.silhouette,
            "labels": [{"label": label, "score": score} for label, score in self.labels],
        }


@dataclass(frozen=True)
class ClusterRunRecord:
    """How a clustering was made and how good it is (without its clusters)."""

    id: int
    created_at: datetime
    algorithm: str
    k: int
    seed: int
    auto: bool
    silhouette: float | None
    n_images: int
    sweep: tuple[dict, ...] | None

    def to_dict(self) -> dict:
        return {
            "run_id": self.id,
            "created_at": iso_utc(self.created_at),
            "k": self.k,
            "algorithm": self.algorithm,
            "auto": self.auto,
            "silhouette": self.silhouette,
            "n_images": self.n_images,
        }


@dataclass(frozen=True)
class ClusterRunSummary:
    """A stored cluster run with its clusters and their members: what ``cluster``,
    ``clusters``, ``export``, ``evaluate`` and the report all read."""

    run: ClusterRunRecord
    clusters: tuple[ClusterRecord, ...]
    # Of a run just made (None for a stored one): what absent roots kept out of it, and how
    # -k auto's sweep was bounded when not as asked.
    offline: OfflineImages | None = None
    note: str | None = None

    @property
    def members(self) -> list[tuple[int, MemberRecord]]:
        """(cluster number, member) of every image in the run, cluster by cluster."""
        return [(c.number, m) for c in self.clusters for m in c.members]

    def only(self, image_ids: set[int]) -> ClusterRunSummary:
        """The run with only the members among ``image_ids`` (clusters left empty stay)."""
        clusters = tuple(
            replace(c, members=tuple(m for m in c.members if m.image_id in image_ids))
            for c in self.clusters
        )
        return replace(self, clusters=clusters)

    def to_dict(self, representatives: int | None = None, absolute: bool = False) -> dict:
        """The run's JSON document; with ``representatives``, each cluster lists that many of
        its images closest to the centroid."""
        run = self.run
        clusters = []
        for c in self.clusters:
            entry = c.to_dict()
            if representatives is not None:
                entry["representatives"] = [
                    shown_path(m.root, m.relpath, absolute) for m in c.members[:representatives]
                ]
            clusters.append(entry)
        return {
            "run_id": run.id,
            "k": run.k,
            "algorithm": run.algorithm,
            "seed": run.seed,
            "silhouette": run.silhouette,
            "n_images": run.n_images,
            "created_at": iso_utc(run.created_at),
            "sweep": list(run.sweep) if run.sweep is not None else None,
            "clusters": clusters,
            **(
                {"offline": self.offline.to_dict(), "note": self.note}
                if self.offline is not None
                else {}
            ),
        }
