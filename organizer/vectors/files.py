"""The index on disk: written atomically, checked before FAISS reads it.

Two checks, both recorded when the files are written:

- a full SHA-256 of the index file (and of its on-disk lists, if any), which
  ``status --verify`` recomputes;
- a quick fingerprint (:mod:`organizer.vectors.fingerprint`): every file's size, and its
  whole content up to 64 MiB, else 64 blocks of 64 KiB spread over it. Opening the index checks only this,
  so opening costs milliseconds at any size (a 10M-image index is about 700 MB, its re-rank
  vectors 10 GB). Truncation, a foreign or half-written file is caught (a stale one by the
  generation counter beside it); a bit flipped deep inside a large file between the sampled
  blocks is left to ``--verify``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from organizer.atomic import (
    fsync_file,
    fsync_folder,
    move_over,
    replacing,
    write_text_atomic,
)
from organizer.lock import pid_alive
from organizer.store.records import IndexFileRecord, IndexGrowthRecord
from organizer.vectors.calibration import Calibration
from organizer.vectors.fingerprint import quick_fingerprint
from organizer.vectors.grown import open_grown
from organizer.vectors.index import VectorIndex
from organizer.vectors.rerank import RerankStore, rerank_paths


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (temp file, fsync, rename): a reader sees the
    whole file or the one before."""
    write_text_atomic(path, json.dumps(data), prefix=".record-")


def lists_path(index_path: Path) -> Path:
    """Where an index whose inverted lists live on disk (merged shards) keeps them: beside
    its file, which holds the rest (centroids, rotation, codebooks, list sizes)."""
    stem = index_path.with_suffix("")
    return stem.with_name(stem.name + ".ivfdata")


_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what faiss prints to the process's stdout meanwhile (its on-disk lists report
    each resize and each relocation with printf), which would corrupt ``--json`` output.
    One thread at a time (fd 1 is the process's); without a stdout, nothing to protect."""
    with _STDOUT_LOCK:
        try:
            saved = os.dup(1)
        except OSError:  # stdout closed (a daemon, `>&-`)
            yield
            return
        with contextlib.suppress(ValueError, OSError, AttributeError):
            sys.stdout.flush()
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 1)
            yield
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)


def file_sha256(path: Path) -> str | None:
    """SHA-256 of the index file (chained with its on-disk lists', if any), or None when one
    does not exist or cannot be read."""
    try:
        if not lists_path(path).exists():
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        for part in (path, lists_path(path)):
            with open(part, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        return digest.hexdigest()
    except OSError:
        return None


def calibration_path(index_path: Path) -> Path:
    """Where a build keeps its calibration queries and their exact answers."""
    return index_path.with_suffix(".calib")


def index_files(path: Path, reranked: bool) -> list[Path]:
    """Every file the build of an index at ``path`` wrote (updates write more: see
    :func:`growth_files`)."""
    files = [path, *rerank_paths(path)] if reranked else [path]
    extra = [p for p in (calibration_path(path), lists_path(path)) if p.exists()]
    return [*files, *extra]


def growth_files(path: Path, growth: IndexGrowthRecord | None) -> list[Path]:
    """The files of the updates ``growth`` names, beside the index at ``path``."""
    return [] if growth is None else [path.with_name(name) for name in sorted(growth.files)]


def matches(path: Path, file: IndexFileRecord) -> bool:
    """Whether the files at ``path`` are those ``file`` records: by the quick fingerprint
    when one was recorded, else (files written before there was one) the full checksum;
    and the files of later updates by theirs."""
    if file.quick is None:
        built = file_sha256(path) == file.sha256
    else:
        built = quick_fingerprint(index_files(path, file.kind == "ivf-pq")) == file.quick
    if not built or file.growth is None or not file.growth.files:
        return built
    return quick_fingerprint(growth_files(path, file.growth)) == file.growth.quick


def growth_whole(path: Path, growth: IndexGrowthRecord | None) -> bool:
    """Whether every update file has the SHA-256 recorded for it (a full read)."""
    for part in growth_files(path, growth):
        assert growth is not None
        try:
            with open(part, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != growth.files[part.name]:
                    return False
        except OSError:
            return False
    return True


def read_index(path: Path, file: IndexFileRecord, mmap: bool = False) -> VectorIndex | None:
    """Load the index only if its files are those ``file`` records (never hand FAISS a
    damaged or foreign file); else None.

    With ``mmap`` the file is mapped read-only (a one-off query then reads only what it
    probes); such an index cannot be changed. Lists on disk are always mapped (read-only
    with ``mmap``), from beside the file wherever the folder has moved.
    """
    import faiss

    if not matches(path, file):
        return None
    on_disk = lists_path(path).exists()
    if on_disk:  # faiss crashes reading such an index with IO_FLAG_MMAP
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (faiss.IO_FLAG_READ_ONLY if mmap else 0)
    else:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        with quiet_stdout() if on_disk else contextlib.nullcontext():
            raw = faiss.read_index(str(path), flags)
    except RuntimeError:
        return None
    if mmap and not on_disk:
        _no_prefetch_threads(raw)
    reranked = VectorIndex.kind_of(raw) == "ivf-pq"
    rerank = RerankStore.open(path, raw.d) if reranked else None
    if reranked != (file.kind == "ivf-pq") or (reranked and rerank is None):
        return None
    index = VectorIndex(raw, file.recall_at_10, rerank)
    index.calibration = Calibration.load(calibration_path(path))
    whole: VectorIndex | None = index
    if file.growth is not None and file.growth.files:
        whole = open_grown(path, index, file.growth)
    return whole if whole is not None and len(whole) == file.count else None


def _no_prefetch_threads(raw: Any) -> None:
    """A mapped index's lists read from the page cache: faiss would start 32 threads on each
    search to prefetch the lists it probes. A filtered search probes every list: 33 ms at a
    million images with them, 4 ms without (bench/filtered_search.py --library)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(raw)
    if ivf is not None:
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if hasattr(lists, "prefetch_nthread"):
            lists.prefetch_nthread = 0


def write_index(path: Path, index: VectorIndex) -> tuple[str, str]:
    """Write the index atomically (temp file, fsync, rename, fsync folder), moving its
    re-rank files and on-disk lists (if any) beside it; return (SHA-256 of the index files,
    quick fingerprint).

    Raises:
        OSError: the folder is not writable or the disk is full; the old file is untouched.
    """
    import faiss

    on_disk = index.lists_file
    if index.calibration is not None:
        index.calibration.save(calibration_path(path))
    else:
        calibration_path(path).unlink(missing_ok=True)
    with replacing(path, fsync=False, prefix=".vectors-") as tmp:
        if on_disk is not None:
            index.lists_file = lists_path(path)  # the name the file records, moved below
        try:
            faiss.write_index(index.faiss, str(tmp))
        except RuntimeError as exc:  # faiss reports a full disk as a RuntimeError
            raise OSError(f"cannot write the vector index: {str(exc).splitlines()[0]}") from None
        finally:
            if on_disk is not None:
                index.lists_file = on_disk
        fsync_file(tmp)
        if on_disk is not None:
            fsync_file(on_disk)
        # Everything is written: move the parts into place, the index file last (as this
        # block ends; a crash between the renames leaves files whose fingerprint no longer
        # matches: rebuilt).
        if on_disk is not None and on_disk != lists_path(path):
            move_over(on_disk, lists_path(path))  # the lists stay mapped through it
            index.lists_file = lists_path(path)
        rerank = index.rerank
        assert rerank is None or isinstance(rerank, RerankStore)  # a build has one store
        if rerank is not None and (rerank.ids_path, rerank.vectors_path) != rerank_paths(path):
            rerank.adopt(*rerank_paths(path))
    if rerank is None:  # another kind replaced a re-ranked index: 10 GB at 10M images
        for part in rerank_paths(path):
            part.unlink(missing_ok=True)
    if on_disk is None:  # an index in memory replaced merged shards' lists
        lists_path(path).unlink(missing_ok=True)
    fsync_folder(path.parent)
    quick = quick_fingerprint(index_files(path, index.rerank is not None))
    sha = file_sha256(path)
    if quick is None or sha is None:
        raise OSError("the vector index just written cannot be read back")
    return sha, quick


LEFTOVER_AGE_S = 15 * 60


def remove_leftovers(folder: Path) -> None:
    """Remove temporary index files that a killed build left behind (they can be gigabytes).
    Only files untouched for 15 minutes: a build in progress writes its files all along,
    and a finished one that still maps them keeps its data after the unlink. A merge's work
    folder goes only when the process that made it has gone (a merge may take hours)."""
    now = time.time()
    for pattern in (".rerank-*.tmp", ".vectors-*.tmp", ".grown-*.tmp", ".calibration-*.tmp"):
        for leftover in folder.glob(pattern):
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > LEFTOVER_AGE_S:
                    leftover.unlink()
    for work in folder.glob(f"{WORK_PREFIX}*"):
        pid = work.name.removeprefix(WORK_PREFIX)
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


WORK_PREFIX = ".merging-"


def work_folder(folder: Path) -> Path:
    """A folder for this process's temporary files of a long job (a merge of shards), which
    :func:`remove_leftovers` leaves alone while the process lives."""
    work = folder / f"{WORK_PREFIX}{os.getpid()}"
    work.mkdir(exist_ok=True)
    return work


def files_size(path: Path, reranked: bool) -> int:
    """Bytes on disk of the index at ``path`` and its re-rank files."""
    return sum(p.stat().st_size for p in index_files(path, reranked) if p.exists())
