"""The --json document of every command, pinned whole.

Each test compares the entire document a command prints, so a key that appears, vanishes or
changes type is a failure. The CLI runs in-process with the numpy FakeEmbedder (injected as
the library's model loader) so that rankings and clusters are the same on every machine;
only values that cannot be (timings, timestamps, float scores, JPEG file sizes) are matched
by type.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import organizer.library
from organizer.cli import app
from tests.fakes import FakeEmbedder, make_folder, write_picture

pytestmark = pytest.mark.both_backends


class Matches:
    """Equal to any value of ``kind`` (and, for strings, matching ``pattern``)."""

    def __init__(self, kind: type, pattern: str | None = None):
        self.kind, self.pattern = kind, pattern

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.kind) or isinstance(other, bool):
            return False
        return self.pattern is None or re.fullmatch(self.pattern, other) is not None

    def __repr__(self) -> str:
        return f"<any {self.kind.__name__}{' ' + self.pattern if self.pattern else ''}>"


FLOAT = Matches(float)
SIZE = Matches(int)
TIMESTAMP = Matches(str, r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@pytest.fixture
def library(tmp_path, monkeypatch):
    """A library of 6 generated photos, an identical copy and a broken file, ingested."""
    monkeypatch.setattr(organizer.library, "load_open_clip", lambda spec, s: FakeEmbedder(spec))
    photos = tmp_path / "photos"
    make_folder(photos, 6)
    shutil.copy(photos / "img000.jpg", photos / "copy.jpg")
    os.utime(photos / "img000.jpg", (1_500_000_000, 1_500_000_000))  # the older copy
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    return photos


@pytest.fixture
def run_json(tmp_path):
    env = {"ORGANIZER_LIBRARY": str(tmp_path / "lib"), "ORGANIZER_WORKERS": "0"}

    def run(*args: object) -> dict:
        result = CliRunner().invoke(app, [str(a) for a in args], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return run


def summary(**counts: int) -> dict:
    base = dict.fromkeys(
        ("new", "changed", "moved", "unchanged", "missing", "failed", "embedded", "reused"), 0
    )
    base["metadata_filled"] = 0
    return {
        **base,
        **counts,
        "elapsed_s": FLOAT,
        "model_load_s": FLOAT,
        "model_wait_s": FLOAT,
        "problems": [],
        "skipped": {},
        "export_folders": [],
        "device": "cpu" if counts.get("embedded") else None,
        "precision": "fp32" if counts.get("embedded") else None,
        "runtime": "torch" if counts.get("embedded") else None,
        "engine": "local",
    }


NOTHING_OFFLINE = {"roots": [], "images": 0}


# What the test pictures' headers say: nothing (they are made without EXIF).
NO_FACTS = {
    "taken": None,
    "taken_zone_known": None,
    "place": None,
    "camera": None,
    "lens": None,
    "focal_mm": None,
    "exposure_s": None,
    "f_number": None,
    "iso": None,
    "latitude": None,
    "longitude": None,
    "altitude": None,
}


def result(rank: int, path: str, root: Path, image_id: int) -> dict:
    return {
        "rank": rank,
        "path": path,
        "root": str(root),
        "score": FLOAT,
        "image_id": image_id,
        **NO_FACTS,
    }


def test_ingest_and_status(library, run_json, tmp_path):
    first = run_json("ingest", library, "--json")
    assert first == summary(new=7, failed=1, embedded=6, reused=1)
    again = run_json("ingest", "--json")
    assert again == summary(unchanged=8)
    assert run_json("status", "--json") == {
        "library": str(tmp_path / "lib"),
        "roots": [str(library)],
        "absent_roots": [],
        "model": {
            "name": "ViT-B-32-256",
            "pretrained": "datacomp_s34b_b86k",
            "weights_sha256": None,
            "dim": 16,
            "random_weights": False,
        },
        "images": {"ok": 7, "failed": 1, "missing": 0},
        "metadata": {
            "read": 7,
            "with_time": 0,
            "with_coordinates": 0,
            "with_camera": 0,
            "with_place": 0,
            "unread": 0,
        },
        "index": {
            "type": "flat",
            "description": "flat (exact)",
            "recall_at_10": 1.0,
            "count": 7,
            "in_sync": True,
            "path": str(tmp_path / "lib" / "vectors.faiss"),
            "damaged": False,
            "updates_in_place": 0,
            "added_in_place": 0,
            "removed_in_place": 0,
            "rebuilt_because": None,
        },
        "last_ingest": {
            "started_at": TIMESTAMP,
            "finished_at": TIMESTAMP,
            "status": "finished",
            "pid": SIZE,
            "device": None,
            "precision": None,
            "summary": summary(unchanged=8),
            "error": None,
        },
    }
    assert run_json("status", "--failed", "--json") == {
        "failed": [
            {
                "root": str(library),
                "path": "broken.jpg",
                "path_bytes_hex": None,
                "reason": "cannot read image header: Truncated File Read",
            }
        ]
    }


def test_similar_search_duplicates(library, run_json):
    run_json("ingest", library, "--json")
    assert run_json("similar", library / "img001.jpg", "-n", "3", "--json") == {
        "query": str(library / "img001.jpg"),
        "sort": "score",
        "filter": {},
        "results": [
            result(1, "img004.jpg", library, 6),
            result(2, "img003.jpg", library, 5),
            result(3, "img000.jpg", library, 3),
        ],
        "offline": NOTHING_OFFLINE,
    }
    assert run_json("search", "a dog", "-n", "2", "--json") == {
        "query": "a dog",
        "sort": "score",
        "filter": {},
        "results": [result(1, "sub/img002.jpg", library, 7), result(2, "img004.jpg", library, 6)],
        "offline": NOTHING_OFFLINE,
    }
    image = {
        "root": str(library),
        "size": SIZE,
        "width": 96,
        "height": 64,
        "sha256": Matches(str, r"[0-9a-f]{64}"),
        "identical": True,
        **{fact: None for fact in ("taken", "place", "camera", "lens", "focal_mm")},
        **{fact: None for fact in ("exposure_s", "f_number", "iso", "taken_zone_known")},
    }
    assert run_json("duplicates", "--json") == {
        "exact": [
            {
                "id": Matches(str, r"[0-9a-f]{12}"),
                "kind": "exact",
                "similarity": 1.0,
                "keep": {
                    "path": "img000.jpg",
                    "image_id": 3,
                    "rule": "oldest",
                    "reason": Matches(str, r"the earliest \(modified 2017-07-1[34] .*"),
                },
                "images": [
                    {"path": "img000.jpg", "image_id": 3, "role": "keep", **image},
                    {"path": "copy.jpg", "image_id": 2, "role": "move", **image},
                ],
            }
        ],
        "near": [],
        "burst": [],
        "offline": NOTHING_OFFLINE,
    }


RUN_1 = {
    "run_id": 1,
    "k": 2,
    "algorithm": "faiss",
    "seed": 0,
    "silhouette": FLOAT,
    "n_images": 7,
    "created_at": TIMESTAMP,
    "sweep": None,
    "clusters": [
        {"id": 1, "label": None, "size": 4, "silhouette": FLOAT, "labels": []},
        {"id": 2, "label": None, "size": 3, "silhouette": FLOAT, "labels": []},
    ],
}


NEW_RUN_1 = {**RUN_1, "offline": NOTHING_OFFLINE, "note": None}  # as `cluster` prints it


def named(number: int, size: int, *labels: str) -> dict:
    return {
        "id": number,
        "label": labels[0],
        "size": size,
        "silhouette": FLOAT,
        "labels": [{"label": label, "score": FLOAT} for label in labels],
    }


def test_cluster_runs_and_clusters(library, run_json):
    run_json("ingest", library, "--json")
    assert run_json("cluster", "-k", "2", "--no-names", "--json") == NEW_RUN_1
    assert run_json("cluster", "-k", "auto", "--k-max", "3", "--json") == {
        **NEW_RUN_1,
        "run_id": 2,
        "sweep": [{"k": 2, "silhouette": FLOAT}, {"k": 3, "silhouette": FLOAT}],
        "clusters": [
            named(1, 4, "receipt", "mirror", "noodles"),
            named(2, 3, "salad", "shop window", "field of flowers"),
        ],
    }
    clusters = run_json("clusters", "--run", "1", "-n", "1", "--json")
    assert clusters == {
        **RUN_1,
        "clusters": [
            {**RUN_1["clusters"][0], "representatives": ["copy.jpg"]},
            {**RUN_1["clusters"][1], "representatives": ["img004.jpg"]},
        ],
    }
    listed = {
        "run_id": 1,
        "created_at": TIMESTAMP,
        "k": 2,
        "algorithm": "faiss",
        "auto": False,
        "silhouette": FLOAT,
        "n_images": 7,
    }
    assert run_json("runs", "--json") == {"runs": [listed, {**listed, "run_id": 2, "auto": True}]}


def test_cluster_assign(library, run_json):
    run_json("ingest", library, "--json")
    run_json("cluster", "-k", "2", "--no-names", "--json")
    write_picture(library / "later.jpg", 40)
    run_json("ingest", "--json")
    assigned = run_json("cluster", "assign", "--json")
    sizes = [c["size"] for c in assigned["clusters"]]
    assert sum(sizes) == 8 and sorted(sizes) in ([3, 5], [4, 4])
    assert assigned == {
        **RUN_1,
        "clusters": [{**c, "size": s} for c, s in zip(RUN_1["clusters"], sizes, strict=True)],
        "assigned": 1,
    }


def test_export_evaluate_report(library, run_json, tmp_path):
    run_json("ingest", library, "--json")
    run_json("cluster", "-k", "2", "--no-names", "--json")
    assert run_json("export", "--to", tmp_path / "out", "--json") == {
        "folders": 2,
        "linked": 7,
        "copied": 0,
        "skipped": 0,
        "target": str(tmp_path / "out"),
        "replaced": 0,
        "warnings": [],
    }
    assert run_json("evaluate", "--json") == {
        "run_id": 1,
        "k": 2,
        "silhouette": FLOAT,
        "nmi": FLOAT,
        "ari": FLOAT,
        "purity": FLOAT,
        "labels": [
            {
                "label": ".",
                "size": 5,
                "clusters": 2,
                "main_cluster": 2,
                "main_share": 0.6,
                "entropy_bits": FLOAT,
            },
            {
                "label": "sub",
                "size": 2,
                "clusters": 1,
                "main_cluster": 1,
                "main_share": 1.0,
                "entropy_bits": FLOAT,
            },
        ],
    }
    assert run_json("report", "-o", tmp_path / "r.html", "--json") == {
        "size_bytes": SIZE,
        "n_images": 7,
        "n_points": 7,
        "sampled": False,
        "run_id": 1,
        "k": 2,
        "backend": "opentsne",
        "tsne_s": FLOAT,
        "thumbnails_s": FLOAT,
        "total_s": FLOAT,
        "placeholders": 0,
        "path": str(tmp_path / "r.html"),
        "png": None,
        "offline": NOTHING_OFFLINE,
    }
