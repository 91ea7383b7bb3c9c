"""``organizer report``: one self-contained HTML file about a library and a cluster run.

The steps: read the database (:mod:`.data`), sample and project the vectors
(:mod:`.projection`), make thumbnails (:mod:`.thumbs`), draw the static map (:mod:`.figure`),
render the page and write it atomically (:mod:`.render`).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from organizer.background import Background
from organizer.errors import ReportError
from organizer.filters import PhotoFilter
from organizer.photo_words import caption
from organizer.report import data as report_data
from organizer.report import figure, projection, render, thumbs
from organizer.report.data import ReportData
from organizer.scan import shown_path
from organizer.sources import Storage
from organizer.store import queries as q
from organizer.store.records import ClusterRecord, ImageStatus, OfflineImages, iso_utc

# Thumbnails average about 3.3 kB in the page (112 px JPEG, base64) for real photos and at
# most about 5.5 kB, so 5,000 points keep a report near 17 MB and under 30 MB at worst.
DEFAULT_MAX_POINTS = 5_000
CLOSEST, FARTHEST = 10, 5
BACKEND_NAMES = {"opentsne": "openTSNE", "sklearn": "scikit-learn", "none": "too few points"}


@dataclass(frozen=True)
class ShownImage:
    """An image as the page shows it: thumbnail, path, and place and day when known
    ("Arezzo, Tuscany, Italy · 22 Oct 2008"; never coordinates)."""

    uri: str
    path: str
    about: str


@dataclass(frozen=True)
class ReportProgress:
    """Where report generation is: stage is "map", "thumbnails" or "writing"."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class ReportSummary:
    """What ``organizer report`` made."""

    path: Path
    size_bytes: int
    n_images: int  # images with a vector (status ok)
    n_points: int  # points on the map
    sampled: bool  # n_points < n_images: the map shows a seeded sample
    run_id: int | None
    k: int | None
    backend: str  # the t-SNE implementation: "opentsne", "sklearn", or "none" (< 5 points)
    tsne_s: float
    thumbnails_s: float
    total_s: float
    placeholders: int  # images whose thumbnail could not be made (unreadable files)
    png: Path | None = None
    offline: OfflineImages = field(default_factory=OfflineImages)  # left out: roots absent

    def to_dict(self) -> dict:
        return {
            **{k: v for k, v in self.__dict__.items() if k not in ("path", "png", "offline")},
            "path": str(self.path),
            "png": str(self.png) if self.png else None,
            "offline": self.offline.to_dict(),
        }


def write_report(
    engine: Engine,
    output: Path,
    run_id: int | None = None,
    png: Path | None = None,
    max_points: int | None = None,
    absolute: bool = False,
    progress: Callable[[ReportProgress], None] | None = None,
    tsne: str = "auto",
    roots: Sequence[int] | None = None,
    offline: OfflineImages | None = None,
    where: PhotoFilter | None = None,
    storage: Storage | None = None,
) -> ReportSummary:
    """Write the HTML report of a library: overview, t-SNE map, one section per cluster.

    Args:
        engine: the library database's engine.
        output: the HTML file to write (replaced atomically if it exists).
        run_id: the cluster run to show (default: the latest; without any run the report
            has the map and says how to cluster).
        png: also write the static map to this PNG file.
        max_points: the most points the map shows; beyond, a seeded sample (default 5,000).
        absolute: show absolute paths instead of paths relative to their roots.
        progress: called with a :class:`ReportProgress` as work advances.
        tsne: "auto" (openTSNE when installed, else scikit-learn), "opentsne" or "sklearn".
        roots: show only the images under these roots (None: all).
        offline: what leaving out the other roots (absent ones) left out, for the page to
            say so.
        where: show only the images this filter keeps (by date, place, camera, folder).
        storage: how the images of bucket roots (and shards in buckets) are reached.

    Returns:
        A :class:`ReportSummary`.

    Raises:
        ReportError: an empty library, an unknown run, a bad --max-points, or an output that
            cannot be written (then no file is left half-written).
    """
    started = time.perf_counter()
    tell = progress or (lambda p: None)
    output, png = Path(output).expanduser(), Path(png).expanduser() if png else None
    max_points = DEFAULT_MAX_POINTS if max_points is None else max_points
    _check_request(output, png, max_points, tsne)
    data = report_data.load(engine, run_id, roots, where)
    seed = data.run.run.seed if data.run else 0
    rows = projection.sample_rows(len(data.ids), max_points, seed)
    tell(ReportProgress("map", 0, len(rows)))
    # t-SNE runs on one thread (see projection.py); the thumbnails take the other cores.
    tsne_result = Background(
        lambda _: projection.project(data.vectors[rows], seed, tsne), "organizer-tsne"
    )
    thumbs_started = time.perf_counter()
    shown = _shown_images(engine, data, rows, absolute, tell, storage)
    thumbnails_s = time.perf_counter() - thumbs_started
    proj = tsne_result.result()
    tell(ReportProgress("map", len(rows), len(rows)))
    tell(ReportProgress("writing", 0, 1))
    legend = _legend(data)
    png_bytes = figure.map_png(
        proj.xy,
        data.numbers[rows],
        [(n, name, c) for n, name, c, _ in legend],
        _map_title(len(rows), len(data.ids)),
    )
    offline = offline or OfflineImages()
    context = _context(data, rows, proj, shown, legend, png_bytes, absolute)
    context["overview"]["offline"] = _offline_context(offline, absolute)
    context["overview"]["filter"] = where.describe() if where is not None else ""
    html = render.render(context).encode("utf-8")
    render.write_atomic(output, html)
    if png is not None:
        render.write_atomic(png, png_bytes)
    tell(ReportProgress("writing", 1, 1))
    return ReportSummary(
        output,
        len(html),
        len(data.ids),
        len(rows),
        len(rows) < len(data.ids),
        data.run.run.id if data.run else None,
        data.run.run.k if data.run else None,
        proj.backend,
        proj.seconds,
        thumbnails_s,
        time.perf_counter() - started,
        sum(1 for image in shown.values() if image.uri == thumbs.PLACEHOLDER),
        png,
        offline,
    )


def _check_request(output: Path, png: Path | None, max_points: int, tsne: str) -> None:
    if max_points < 1:
        raise ReportError(f"--max-points must be at least 1, not {max_points}")
    if tsne not in projection.BACKENDS:
        raise ReportError(
            f"unknown t-SNE backend {tsne!r}: choose {', '.join(projection.BACKENDS)}"
        )
    render.check_target(output, "report")
    if png is not None:
        render.check_target(png, "map image")


def _shown_images(
    engine: Engine,
    data: ReportData,
    rows: np.ndarray,
    absolute: bool,
    tell: Callable[[ReportProgress], None],
    storage: Storage | None,
) -> dict[int, ShownImage]:
    """Every image the page shows, by id."""
    wanted = [int(i) for i in data.ids[rows]]
    if data.run:
        for c in data.run.clusters:
            wanted.extend(_closest(c) + _farthest(c))
    wanted = list(dict.fromkeys(wanted))
    with engine.connect() as conn:
        info = q.describe_images(conn, wanted)
    files = []
    for image_id in wanted:
        record = info[image_id]
        min_side = thumbs.draft_side(thumbs.SIDE, record.width, record.height)
        files.append((record.root, record.relpath, min_side))
    uris = thumbs.data_uris(
        files,
        workers=max(1, (os.cpu_count() or 1) - 1),
        progress=lambda d, t: tell(ReportProgress("thumbnails", d, t)),
        storage=storage,
    )
    shown = {}
    for image_id, uri in zip(wanted, uris, strict=True):
        record = info[image_id]
        path = shown_path(record.root, record.relpath, absolute)
        shown[image_id] = ShownImage(uri, path, caption(record.meta, record.place))
    return shown


def _closest(c: ClusterRecord) -> list[int]:
    """The cluster's most representative images: closest to the centroid first."""
    return [m.image_id for m in c.members[:CLOSEST]]


def _farthest(c: ClusterRecord) -> list[int]:
    """Its outliers, farthest first; never one of the representatives (small clusters)."""
    rest = c.members[len(_closest(c)) :]
    return [m.image_id for m in reversed(rest)][:FARTHEST]


def _legend(data: ReportData) -> list[tuple[int, str, str, int]]:
    """(number, name, colour, size) of each cluster; number 0 = images outside the run."""
    clusters = data.run.clusters if data.run else []
    colours = figure.palette(len(clusters))
    legend = [
        (c.number, f"{c.number} · {c.label}" if c.label else f"cluster {c.number}", colour, c.size)
        for c, colour in zip(clusters, colours, strict=True)
    ]
    outside = int((data.numbers == 0).sum())
    if outside:
        name = "not clustered" if data.run is None else "added after this run"
        legend.append((0, name, figure.UNCLUSTERED, outside))
    return legend


def _map_title(points: int, total: int) -> str:
    if points < total:
        return f"t-SNE map of a sample of {points:,} of {total:,} images"
    return f"t-SNE map of {total:,} images"


def _context(
    data: ReportData,
    rows: np.ndarray,
    proj: projection.Projection,
    shown: dict[int, ShownImage],
    legend: list[tuple[int, str, str, int]],
    png_bytes: bytes,
    absolute: bool,
) -> dict:
    """Everything the template shows; map data goes into one escaped JSON block."""
    point_ids = [int(i) for i in data.ids[rows]]
    map_data = {
        "x": np.round(proj.xy[:, 0], 4).tolist(),
        "y": np.round(proj.xy[:, 1], 4).tolist(),
        "c": data.numbers[rows].tolist(),
        "p": [shown[i].path for i in point_ids],
        "t": [shown[i].uri for i in point_ids],
        "a": [shown[i].about for i in point_ids],
        "clusters": [{"id": n, "name": name, "color": colour} for n, name, colour, _ in legend],
    }
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "overview": _overview(data, absolute),
        "run": _run_context(data),
        "sweep_range": _sweep_range(data.run.run.sweep if data.run else None),
        "map": {
            "points": len(rows),
            "total": len(data.ids),
            "sampled": len(rows) < len(data.ids),
            "backend": BACKEND_NAMES.get(proj.backend, proj.backend),
            "seconds": proj.seconds,
            "seed": data.run.run.seed if data.run else 0,
            "added_later": int((data.numbers == 0).sum()) if data.run else 0,
        },
        "legend": [
            {"number": n, "name": name, "colour": colour, "size": size}
            for n, name, colour, size in legend
        ],
        "figure": "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii"),
        "sections": _sections(data, legend, shown),
        "data": render.script_json(map_data),
    }


def _run_context(data: ReportData) -> dict | None:
    if data.run is None:
        return None
    run = data.run.run
    return {
        "id": run.id,
        "created_at": iso_utc(run.created_at, timespec="seconds"),
        "k": run.k,
        "algorithm": run.algorithm,
        "seed": run.seed,
        "n_images": run.n_images,
        "silhouette": run.silhouette,
        "sweep": run.sweep,
    }


def _sweep_range(sweep: tuple[dict, ...] | None) -> tuple[float, float]:
    """The scale of the k-sweep bars: from 0 (or the lowest score) to the best score."""
    scores = [p["silhouette"] for p in sweep or []] or [1.0]
    low, high = min(0.0, *scores), max(scores)
    return low, high if high > low else low + 1.0


def _overview(data: ReportData, absolute: bool) -> dict:
    spec = data.model.spec
    weights = spec.pretrained
    if os.sep in weights and not absolute:
        weights = os.path.basename(weights)  # a checkpoint path says where the user keeps files
    return {
        "images": len(data.ids),
        "failed": data.counts.get(ImageStatus.FAILED, 0),
        "missing": data.counts.get(ImageStatus.MISSING, 0),
        "model": spec.name,
        "weights": weights,
        "weights_sha256": spec.weights_sha256,
        "random_weights": spec.is_random,
        "dim": data.model.dim,
    }


def _offline_context(offline: OfflineImages, absolute: bool) -> dict | None:
    """What absent roots left out of the page; their paths only with ``absolute`` (a shared
    report shows no more of the owner's folders than they asked)."""
    if not offline.images:
        return None
    return {
        "images": offline.images,
        "roots": len(offline.roots),
        "paths": list(offline.roots) if absolute else [],
    }


def _sections(
    data: ReportData,
    legend: list[tuple[int, str, str, int]],
    shown: dict[int, ShownImage],
) -> list[dict]:
    if data.run is None:
        return []
    names = {n: (name, colour) for n, name, colour, _ in legend}
    return [
        {
            "number": c.number,
            "name": names[c.number][0],
            "labels": c.labels[:3],
            "size": c.size,
            "silhouette": c.silhouette,
            "closest": [shown[i] for i in _closest(c)],
            "farthest": [shown[i] for i in _farthest(c)],
        }
        for c in data.run.clusters
    ]
