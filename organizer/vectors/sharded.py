"""A library's index built by several machines: trained once, filled in shards, merged.

    organizer index shards train DIR --parts 4   # one machine: the plan and trained template
    organizer index shards fill DIR --part 2     # each machine, its share of the catalogue
    organizer index shards merge DIR             # one machine: the shards become the index

``DIR`` is a folder every machine reaches (a shared file system); the catalogue is the
library's database (PostgreSQL when machines share it). Training draws its sample and
the calibration queries from the database and splits the images into id ranges of equal
count. Each fill streams only its range, adds it to a copy of the template (so a vector
gets the same list and code on any machine) and computes the exact top-10 of the
calibration queries among its own vectors. The merge writes the lists into one file on
disk (faiss's OnDiskInvertedLists, memory-mapped: no machine holds them all), combines
the shards' top-10s into the exact answer to calibrate nprobe against, and installs the
result as the library's index, checked like any other.

Everything is tied to the database generation that training saw: a shard filled, or a
merge run, after the library's vectors changed is refused (train again).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine

from organizer.errors import IndexPlanError, LibraryError, OptionsError
from organizer.store import queries as q
from organizer.store.db import write_transaction
from organizer.store.records import IndexFileRecord, IndexSettingsRecord
from organizer.vectors import shards
from organizer.vectors.build import TopK, calibration_rows, list_shares, regrouped, training_rows
from organizer.vectors.cache import IndexBuild, IndexCache
from organizer.vectors.calibration import Calibration
from organizer.vectors.files import (
    quick_fingerprint,
    read_index,
    remove_leftovers,
    work_folder,
    write_index,
    write_json,
)
from organizer.vectors.index import VectorIndex
from organizer.vectors.kinds import plan

PLAN_FILE = "plan.json"
TEMPLATE_FILE = "template.faiss"
FORMAT = 2
_TOP = 11  # each calibration query's own vector is among its top 11


@dataclass(frozen=True)
class ShardPlan:
    """What training decided (``plan.json``): the shards' id ranges and what they share."""

    token: str  # ties the shards to this plan
    generation: int  # the database's vectors as trained on
    model_id: int
    dim: int
    kind: str
    bounds: list[int]  # part i (from 1) holds bounds[i - 1] <= id < bounds[i]
    counts: list[int]  # how many vectors each part holds
    list_shares: list[float]  # each inverted list's share of the vectors, by the sample
    calibration_ids: list[int]
    template_quick: str  # the template's fingerprint, checked before each fill
    format: int = FORMAT
    asked_kind: str | None = None  # the kind asked for (None: auto), kept by the merge
    memory: int | None = None  # the memory budget asked for (None: the default), kept too

    @property
    def parts(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class ShardRecord:
    """One filled shard (``part-I.json``, written last: the shard is complete)."""

    token: str
    part: int
    count: int
    sha256: str
    quick: str
    top_ids: list[list[int]]  # exact top 11 of each calibration query among its vectors
    top_scores: list[list[float]]

    def file(self, plan_: ShardPlan) -> IndexFileRecord:
        return IndexFileRecord(
            plan_.generation, self.sha256, self.count, plan_.kind, "", None, self.quick
        )


@dataclass(frozen=True)
class Shards:
    """A library's index built by several machines, as its facade hands it out
    (``lib.shards``): the engine, the library's writer lock and its live index's merge."""

    engine: Engine
    writer: Callable[[str, bool], AbstractContextManager[None]]  # (purpose, wait)
    merged: Callable[[Path], IndexBuild]

    def train(
        self, folder: Path, parts: int, kind: str = "auto", memory: int | None = None
    ) -> ShardPlan:
        """Plan ``parts`` shards of the vectors and train their template in ``folder``."""
        settings = IndexSettingsRecord(None if kind == "auto" else kind, memory)
        return train(self.engine, folder, parts, settings)

    def fill(self, folder: Path, part: int) -> ShardRecord:
        """Fill shard ``part`` (from 1) of the plan in ``folder``: reads only, no lock."""
        return fill(self.engine, folder, part)

    def merge(self, folder: Path, wait: bool = False) -> IndexBuild:
        """Merge the filled shards in ``folder`` into the library's index (lists on disk).

        Raises:
            LibraryBusyError: an ingest is running (unless ``wait``).
        """
        with self.writer("index merge", wait):
            return self.merged(folder)


def part_path(folder: Path, part: int) -> Path:
    return folder / f"part-{part}.faiss"


def train(engine: Engine, folder: Path, parts: int, settings: IndexSettingsRecord) -> ShardPlan:
    """Plan ``parts`` shards of the library's vectors and train their template in ``folder``
    (created; an earlier plan's shards there are removed).

    Raises:
        IndexPlanError: the library is small enough for one exact index, or the kind asked
            cannot hold it;
        LibraryError: no vectors yet, or the folder cannot be written.
    """
    with engine.connect() as conn, conn.begin():
        generation = q.index_generation(conn)
        model = q.library_model(conn)
        ids = q.ok_ids(conn, model.id) if model is not None else np.empty(0, np.int64)
        if len(ids) == 0:
            raise LibraryError("the library has no vectors yet: ingest some images first")
        assert model is not None  # it made the ids
        chosen = plan(len(ids), model.dim, settings.kind or "auto", settings.memory)
        if chosen.kind == "flat":
            raise IndexPlanError(
                f"{len(ids):,} images fit one exact index, which needs no shards: "
                "run `organizer index build`"
            )
        if parts > len(ids):
            raise OptionsError(f"--parts {parts} is more than the {len(ids):,} images")
        sample = q.vectors_of(conn, model.id, model.dim, ids[training_rows(chosen, len(ids))])
        calibration = ids[calibration_rows(len(ids))]
    cuts = [len(ids) * i // parts for i in range(parts + 1)]
    bounds = [int(ids[c]) for c in cuts[:-1]] + [int(ids[-1]) + 1]
    template = shards.train(sample, chosen)
    shares = list_shares(template.faiss, sample)
    del sample
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers(folder)  # a killed fill's temporary files
        for old in [*folder.glob("part-*"), folder / PLAN_FILE]:
            old.unlink(missing_ok=True)
        _, quick = write_index(folder / TEMPLATE_FILE, template)
        made = ShardPlan(
            uuid.uuid4().hex,
            generation,
            model.id,
            model.dim,
            template.kind,
            bounds,
            [b - a for a, b in itertools.pairwise(cuts)],
            [round(float(x), 9) for x in shares],
            calibration.tolist(),
            quick,
            asked_kind=settings.kind,
            memory=settings.memory,
        )
        write_json(folder / PLAN_FILE, asdict(made))
    except OSError as exc:
        raise LibraryError(f"cannot write the shard plan in {folder}: {_why(exc)}") from None
    return made


def fill(engine: Engine, folder: Path, part: int) -> ShardRecord:
    """Fill shard ``part`` (from 1) of the plan in ``folder`` from the database.

    Raises:
        OptionsError: no such part in the plan;
        LibraryError: no plan there, the library changed since, or files cannot be written.
    """
    made = load_plan(folder)
    if not 1 <= part <= made.parts:
        raise OptionsError(f"--part must be 1 to {made.parts} for the plan in {folder}")
    template = _template(folder, made)
    remove_leftovers(folder)
    id_range = (made.bounds[part - 1], made.bounds[part])
    with engine.connect() as conn, conn.begin():
        _same_vectors(conn, made, folder)
        queries = q.vectors_of(conn, made.model_id, made.dim, made.calibration_ids)
        exact = TopK(queries, _TOP)
        seen = [0]

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            stream = q.iter_ok_vectors(conn, made.model_id, made.dim, 4096, id_range=id_range)
            for ids, vectors in regrouped(stream):
                exact.update(ids, vectors)
                seen[0] += len(ids)
                yield ids, vectors

        try:
            expected = (np.asarray(made.list_shares), made.counts[part - 1])
            filled = shards.fill(template, batches, folder, expected)
        except OSError as exc:
            raise LibraryError(f"cannot write shard {part} in {folder}: {_why(exc)}") from None
    if seen[0] != made.counts[part - 1]:
        raise LibraryError(_changed(folder))
    with engine.connect() as conn:  # an ingest meanwhile: say so now, not at the merge
        _same_vectors(conn, made, folder)
    try:
        sha, quick = write_index(part_path(folder, part), filled)
        top_ids, top_scores = exact.ranked()
        record = ShardRecord(
            made.token, part, len(filled), sha, quick, top_ids.tolist(), top_scores.tolist()
        )
        write_json(folder / f"part-{part}.json", asdict(record))
    except OSError as exc:
        raise LibraryError(f"cannot write shard {part} in {folder}: {_why(exc)}") from None
    return record


def merge(engine: Engine, folder: Path, cache: IndexCache) -> IndexBuild:
    """Merge every shard of the plan in ``folder`` into the library's index, its lists on
    disk beside the index file; the shards are left as they are (remove the folder after).

    Raises:
        LibraryError: a part is missing, damaged or from another plan; the library changed
            since training; the index cannot be written.
    """
    started = time.perf_counter()
    made = load_plan(folder)
    records = [_load_part(folder, made, part) for part in range(1, made.parts + 1)]
    parts = []
    for record in records:
        part = read_index(part_path(folder, record.part), record.file(made), mmap=True)
        if part is None:
            raise LibraryError(
                f"shard {record.part}'s files in {folder} are damaged: fill it again"
            )
        parts.append(part)
    with engine.connect() as conn, conn.begin():
        _same_vectors(conn, made, folder)
        queries = q.vectors_of(conn, made.model_id, made.dim, made.calibration_ids)
    try:
        work = work_folder(cache.path.parent)  # what is not installed goes with it
        try:
            index = shards.merge(parts, work, on_disk=True)
            query_ids = np.asarray(made.calibration_ids, np.int64)
            top_ids, top_scores = _exact_top(records)
            index.calibration = Calibration.of(queries, query_ids, top_ids, top_scores, _TOP)
            index.calibrate(queries, query_ids, top_ids)
            adopted = cache.adopt(index, made.generation)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        raise LibraryError(f"cannot write the merged index: {_why(exc)}") from None
    if not adopted:
        raise LibraryError(_changed(folder))
    with write_transaction(engine) as conn:  # later updates and rebuilds plan as trained
        q.set_index_settings(conn, IndexSettingsRecord(made.asked_kind, made.memory))
    return IndexBuild.of(index, cache.path, started)


def load_plan(folder: Path) -> ShardPlan:
    """The plan training wrote in ``folder``.

    Raises:
        LibraryError: there is none, or it is not one this version can read.
    """
    try:
        data = json.loads((folder / PLAN_FILE).read_text())
        made = ShardPlan(**data)
    except FileNotFoundError:
        raise LibraryError(
            f"no shard plan in {folder}: run `organizer index shards train {folder} "
            "--parts N` first"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise LibraryError(f"cannot read the shard plan in {folder}: {_why(exc)}") from None
    if made.format != FORMAT:
        raise LibraryError(f"the shard plan in {folder} is of another version: train again")
    return made


def _template(folder: Path, made: ShardPlan) -> VectorIndex:
    """The trained, empty index every shard starts from (no re-rank files of its own)."""
    import faiss

    path = folder / TEMPLATE_FILE
    try:
        if quick_fingerprint([path]) == made.template_quick:
            return VectorIndex(faiss.read_index(str(path)))
    except RuntimeError:
        pass
    raise LibraryError(f"the trained template in {folder} is damaged: train again")


def _load_part(folder: Path, made: ShardPlan, part: int) -> ShardRecord:
    try:
        record = ShardRecord(**json.loads((folder / f"part-{part}.json").read_text()))
    except FileNotFoundError:
        raise LibraryError(
            f"shard {part} of {made.parts} is not filled yet: run `organizer index shards "
            f"fill {folder} --part {part}`"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise LibraryError(f"cannot read shard {part} in {folder}: {_why(exc)}") from None
    if record.token != made.token or record.count != made.counts[part - 1]:
        raise LibraryError(f"shard {part} in {folder} belongs to another plan: fill it again")
    return record


def _exact_top(records: list[ShardRecord]) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ids (and scores) of each calibration query over every shard, from
    each shard's."""
    ids = np.concatenate([np.asarray(r.top_ids, np.int64) for r in records], axis=1)
    scores = np.concatenate([np.asarray(r.top_scores, np.float32) for r in records], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :_TOP]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _same_vectors(conn: Connection, made: ShardPlan, folder: Path) -> None:
    if q.index_generation(conn) != made.generation:
        raise LibraryError(_changed(folder))


def _changed(folder: Path) -> str:
    return (
        "the library's vectors changed since the shards were trained: run `organizer index "
        f"shards train {folder} --parts N` again"
    )


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]
