"""The closed sets of values users choose from, for options and settings alike.

Standard library only: the command line imports these to check its options before it
loads anything heavy (`organizer --help` stays quick).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

# A cluster count: a whole number, or "auto" to choose it by silhouette.
KSpec = int | Literal["auto"]


class Device(StrEnum):
    AUTO = "auto"  # CUDA when there is a GPU, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


class JpegDecode(StrEnum):
    """Where ingest decodes JPEGs."""

    AUTO = "auto"  # on the model's device when that is a GPU, else in the decode processes
    DEVICE = "device"  # on the model's device (torchvision: nvJPEG on CUDA), even a CPU
    WORKERS = "workers"  # in the decode processes, with Pillow


class Engine(StrEnum):
    LOCAL = "local"  # this machine: decode processes beside the model
    RAY = "ray"  # a Ray cluster: decode tasks and embedding actors on every machine


class IndexKind(StrEnum):
    """Vector index kinds users choose (organizer.vectors.kinds says what each is)."""

    AUTO = "auto"  # from the count and the memory budget
    FLAT = "flat"  # exact
    IVF_FP16 = "ivf-fp16"  # inverted lists of half-precision vectors
    IVF_PQ = "ivf-pq"  # compressed codes, re-ranked exactly from vectors on disk


class Precision(StrEnum):
    AUTO = "auto"  # the fastest that keeps the vectors right on this machine
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"  # CPU, ONNX Runtime, int8 weights: opt-in, never chosen by auto


class Runtime(StrEnum):
    """What runs the model on a CPU (a GPU always runs torch)."""

    AUTO = "auto"  # OpenVINO bf16 on CPUs with bf16 units, else ONNX Runtime fp32
    TORCH = "torch"
    ONNX = "onnx"  # ONNX Runtime for both towers, in fp32
    OPENVINO = "openvino"  # OpenVINO for both towers: bf16 where the CPU has bf16 units


class Algorithm(StrEnum):
    """K-means implementations."""

    FAISS = "faiss"  # spherical K-means, fast
    SKLEARN = "sklearn"  # scikit-learn's KMeans on unit vectors


class ExportMode(StrEnum):
    SYMLINK = "symlink"
    COPY = "copy"


class LabelSource(StrEnum):
    """Where ``evaluate`` takes true labels from."""

    FOLDERS = "folders"  # each image's folder, relative to its root


def is_url(value: object) -> bool:
    """Whether a --library value is a database URL rather than a folder."""
    return isinstance(value, str) and "://" in value


class Sort(StrEnum):
    """The order of search results."""

    SCORE = "score"  # most similar first
    DATE = "date"  # oldest taken first, undated last (each keeps its rank by score)


class DuplicateKind(StrEnum):
    """What makes two files the same photo (organizer.duplicates.kinds decides)."""

    EXACT = "exact"  # the same bytes, in several places
    NEAR = "near"  # the same picture re-encoded, resized, lightly cropped or stripped
    BURST = "burst"  # different shots of one moment: same camera, seconds apart


class Decision(StrEnum):
    """What a user decided about a duplicate group (``organizer duplicates mark``)."""

    NOT_DUPLICATES = "not-duplicates"  # they are different photos: never group them again
    KEEP_ALL = "keep-all"  # duplicates, but every copy stays: never list or plan the group
    KEEPER = "keeper"  # this one is the keeper of any group it is in
