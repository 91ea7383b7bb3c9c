"""What an ingest run reports: progress as it goes, and a summary at the end."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from organizer.scan import display_text


@dataclass
class IngestSummary:
    """What a run did, by file. ``embedded`` counts model passes, ``reused`` copied vectors."""

    new: int = 0
    changed: int = 0
    moved: int = 0
    unchanged: int = 0
    missing: int = 0
    failed: int = 0
    embedded: int = 0
    reused: int = 0
    # images whose photo metadata was read from their headers alone (vectors kept): those of
    # a library made before organizer read it, and files whose vector was copied
    metadata_filled: int = 0
    elapsed_s: float = 0.0
    model_load_s: float = 0.0
    model_wait_s: float = 0.0  # of which the run waited: files are read while a model loads
    problems: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # files that are not images, by type
    export_folders: list[str] = field(default_factory=list)  # organizer exports, not walked
    device: str | None = None
    precision: str | None = None
    runtime: str | None = None  # what ran the images: "torch", "onnxruntime" or "openvino"
    engine: str = "local"  # or "ray"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["model_load_s"] = round(self.model_load_s, 3)
        data["model_wait_s"] = round(self.model_wait_s, 3)
        data["export_folders"] = [display_text(f) for f in self.export_folders]
        return data

    @property
    def images_per_s(self) -> float:
        """Embedding throughput, the wait for the model to load excluded."""
        busy = self.elapsed_s - self.model_wait_s
        return self.embedded / busy if self.embedded and busy > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    """Reported after every file read and every batch written: ``done`` of ``total`` files
    dealt with, ``embedded`` so far, ``read`` so far (ahead of ``done`` by the files that
    wait for a loading model)."""

    done: int
    total: int
    embedded: int
    read: int = 0
