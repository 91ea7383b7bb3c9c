"""The Ray engine of ingest: files are decoded in Ray tasks and embedded by a pool of Ray
actors (the model loaded once per actor), on every machine of a Ray cluster.

Only the files the plan says need reading travel: the scan, the plan and the one writer stay
in this process (:mod:`.run`), so hash reuse, moves, copies and failures behave exactly as
with the local engine. Results stream back as they are made. The functions that run on the
workers are organizer's own: :func:`organizer.pipeline.prepare`, and the embedder built from
the one :class:`~organizer.embed.runtime.Plan` the driver settles for the whole cluster (the
runtime, device and precision the local engine would choose on those machines), so that both
engines make the same vectors.

Faults: Ray retries a task or an actor that dies. A block whose task keeps dying (a file
that crashes the decoder) is given up by Ray Data; its files are then prepared here, in the
local engine's crash-isolating decode pool, so such a file is recorded as failed, as locally.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from organizer.choices import Device, JpegDecode, Runtime
from organizer.embed import Embedder, ModelSpec, loader, sha256_file
from organizer.embed.runtime import Capabilities, Plan, plan
from organizer.errors import LibraryError, ModelError, OrganizerError
from organizer.imaging import ImageInfo, PreprocessSpec
from organizer.photo_meta import PhotoMeta
from organizer.pipeline import (
    DecodePool,
    Job,
    PoolUnavailable,
    Prepared,
    fetch_ahead,
    prepare,
    prepare_encoded,
    read_job,
)
from organizer.resize import use_one_thread
from organizer.sources import Storage, is_local_folder, probe

# The Ray minor version the tests run; `organizer[ray]` pins it.
RAY_VERSION = "2.60"
# What decodes a file on the workers (a module attribute, so tests can hand in a decoder that
# crashes on purpose; it travels to the workers by reference).
DECODE: Callable[..., Prepared] = prepare
# Files per block of Ray's dataset, each decoded by one task and embedded by one actor call:
# Ray Data's bookkeeping costs the driver about the same per block whatever its size, so
# blocks of 256 files cost it an eighth of blocks of 32 (0.6 -> 0.2 ms of CPU per file,
# measured). Smaller when there are few files, so that every CPU gets blocks to decode; a
# file that crashes its task costs a local re-run of its block.
BLOCK_FILES = 256
MIN_BLOCK_FILES = 32
BLOCKS_PER_CPU = 4
EMBED_BATCH = 32  # images per forward pass, unless the run says (RayOptions.batch_size)
DECODE_RETRIES = 2


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None  # "auto", "ray://host:10001"; None: RAY_ADDRESS or a local one
    workers: int | None = None  # embedding actors; None: one per GPU, else one per machine
    gpus_per_worker: float = 0.0
    device: str = "auto"
    precision: str = "auto"
    runtime: str = "auto"
    offline: bool = False
    plan: Plan | None = None  # how every actor runs the model, once settled (settle_model)
    batch_size: int = EMBED_BATCH  # images per forward pass in an actor
    jpeg_decode: str = "auto"  # JpegDecode: auto decodes JPEGs on the actors' GPUs


NEEDS_RAY = "--engine ray needs its extra: pip install 'organizer[ray]'"


def preflight(address: str | None) -> None:
    """Refuse, in seconds and without importing Ray, a run that cannot start: Ray is not
    installed, or the cluster's address is malformed or does not answer.

    Raises:
        LibraryError: what is wrong, in one line.
    """
    if importlib.util.find_spec("ray") is None:
        raise LibraryError(NEEDS_RAY)
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (or start a local one), quietly.

    Raises:
        LibraryError: Ray is not installed, or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise LibraryError(NEEDS_RAY) from None
    if ray.is_initialized():
        return
    if not os.environ.get("ORGANIZER_DEBUG"):
        # Ray's own chatter (INFO lines, notices about its defaults) is not the user's news;
        # organizer reports what matters as one line. ORGANIZER_DEBUG=1 shows it all.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        logging.getLogger("ray").setLevel(logging.ERROR)
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    kwargs: dict = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False  # a local cluster for this run only
    try:
        with warnings.catch_warnings(), _quiet_stderr():
            warnings.simplefilter("ignore")
            ray.init(address=address, **kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError, grpc errors...
        where = address or os.environ.get("RAY_ADDRESS") or "a local cluster"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraryError(f"cannot start or reach Ray ({where}): {first[:200]}") from None


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a connection within seconds:
    Ray's own connect retries in silence for minutes and ignores Ctrl-C."""
    if not address or address in ("auto", "local"):
        return
    where = address.removeprefix("ray://")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise LibraryError(f"--ray-address {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LibraryError(f"cannot reach the Ray cluster at {address}: {reason}") from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's core prints a line to the process's stderr (file descriptor 2) as it starts,
    whatever its log level; hide it unless ORGANIZER_DEBUG is set."""
    if os.environ.get("ORGANIZER_DEBUG"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_nodes(
    roots: Sequence[str], samples: Sequence[Job] = (), storage: Storage | None = None
) -> Capabilities:
    """Every live machine of the cluster must see every root, and a sample of the files to
    read, at the same path with the same size and time (a bucket: list it, and read the
    sampled objects whole, as listed); returns what every machine has
    (bf16 units, runtimes installed), so that the whole cluster embeds one way. GPUs are
    Ray's to count: the capabilities say none.

    Raises:
        LibraryError: naming the first machine and path that fail.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    wanted = [replace(j, data=None, error=None) for j in samples]
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(list(roots), wanted, storage or Storage())
        for n in nodes
    ]
    shared = Capabilities(cpu_bf16=True, cuda=False, onnxruntime=True, openvino=True)
    for node, ref in zip(nodes, refs, strict=True):
        problem, has = ray.get(ref, timeout=120)
        if problem:
            raise LibraryError(
                f"Ray worker {node.get('NodeManagerAddress', node['NodeID'])} cannot read "
                f"{problem}: every worker must see the photos at the same path (a bucket "
                "with the same credentials)"
            )
        assert has is not None  # a node that can read the files says what it has
        shared = shared.shared_with(has)
    return shared


def check_paths(roots: Sequence[str]) -> None:
    """:func:`check_nodes` for the roots alone."""
    check_nodes(roots)


def _probe_node(
    roots: list[str], samples: list[Job], storage: Storage
) -> tuple[str | None, Capabilities | None]:
    for root in roots:
        problem = _unlisted(root, storage)
        if problem:
            return problem, None
    for job in samples:
        if job.remote or job.shard is not None:
            try:
                read_job(job)
            except OrganizerError as exc:
                return f"{os.fsdecode(job.path)} ({exc})", None
            continue
        try:
            st = os.stat(job.path)
        except OSError as exc:
            return f"{os.fsdecode(job.path)} ({exc.strerror})", None
        if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
            return f"{os.fsdecode(job.path)} (another file there: a different mount?)", None
    return None, Capabilities.probe(gpu=False)


def _unlisted(root: str, storage: Storage) -> str | None:
    """Why this machine cannot list a root (a folder, a bucket prefix, a shard), or None."""
    try:
        if is_local_folder(root):
            os.listdir(root)
        else:
            probe(root, storage)
    except OSError as exc:
        return f"{root} ({exc.strerror})"
    except OrganizerError as exc:
        return str(exc)
    return None


def settle_model(options: RayOptions, cluster: Capabilities) -> RayOptions:
    """One plan for every actor of the run (each machine choosing for itself could mix bf16
    and fp32 vectors in one library): CUDA when actors get GPUs, else the CPU, and then
    the precision and runtime :func:`~organizer.embed.runtime.plan` picks for machines
    that all have what ``cluster`` says, as the local engine does for one.

    Raises:
        ModelError: a device that the Ray options contradict.
        OptionsError: what the plan refuses (see :func:`~organizer.embed.runtime.plan`).
    """
    device = Device.CUDA if options.gpus_per_worker else Device.CPU
    if options.device not in ("auto", device):
        hint = (
            "give --gpus-per-worker" if options.device == "cuda" else "leave --gpus-per-worker out"
        )
        raise ModelError(f"--device {options.device} with --engine ray: {hint}")
    # Ray places the GPU actors (plan_workers counts its GPUs): a GPU is there if asked for.
    machines = replace(cluster, cuda=device == Device.CUDA)
    chosen = plan(device, options.precision, options.runtime, machines)
    if chosen.warning:
        warnings.warn(chosen.warning, stacklevel=2)
    return replace(options, device=str(chosen.device), precision=str(chosen.precision), plan=chosen)


def plan_workers(options: RayOptions) -> int:
    """How many embedding actors, checked against what the cluster has: Ray Data would wait
    forever for actors it cannot place.

    Raises:
        LibraryError: the actors (and one CPU for decoding) do not fit in the cluster.
    """
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    machines = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    per_gpu = options.gpus_per_worker
    if per_gpu:
        workers = options.workers or int(gpus // per_gpu)
        if workers < 1 or workers * per_gpu > gpus:
            raise LibraryError(
                f"the Ray cluster has {gpus:g} GPUs: not enough for "
                f"{max(workers, 1)} worker(s) of --gpus-per-worker {per_gpu:g}"
            )
        if cpus < 1:
            raise LibraryError("the Ray cluster has no CPU to decode on")
        return workers
    workers = options.workers or machines
    if workers + 1 > cpus:
        raise LibraryError(
            f"the Ray cluster has {cpus:g} CPUs: {workers} embedding worker(s) need one each "
            f"and decoding needs at least one more; use --workers {max(1, int(cpus) - 1)}"
        )
    return workers


def prepare_on_ray(
    jobs: Sequence[Job],
    spec: PreprocessSpec,
    skip_decode: frozenset[str],
    model: ModelSpec,
    options: RayOptions,
    prepare_fn: Callable[..., Prepared] = prepare,
    seen_model: dict | None = None,
) -> Generator[Prepared]:
    """Prepared files, each with its ``vector`` when it was embedded; completion order.

    Files whose decode task Ray gave up on are prepared here afterwards (no vector: the
    caller embeds them). ``seen_model`` is filled with the actors' device, precision and
    runtime (what ran the images).
    """
    import ray
    import ray.data

    jobs = list(jobs)
    if not jobs:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = -1  # a block that keeps failing is skipped: redone below
    workers = plan_workers(options)
    skip_ref = ray.put(frozenset(skip_decode))
    block = block_files(len(jobs), ray.cluster_resources().get("CPU", 1.0), options.batch_size)
    table = _table(jobs)
    encoded = on_device(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray's notices about its own deprecations
        # A block per ``block`` files, made column by column (from_items converts row by row).
        ds: Any = ray.data.from_arrow([table.slice(i, block) for i in range(0, len(jobs), block)])
        ds = ds.map_batches(
            _decode_batch,
            batch_size=block,
            batch_format="numpy",
            fn_kwargs={
                "spec": spec,
                "skip_ref": skip_ref,
                "prepare_fn": prepare_encoded if encoded and prepare_fn is prepare else prepare_fn,
            },
            num_cpus=1,
            # Ray Data retries a task forever by default. A task whose worker dies is retried
            # twice (a lost machine); a block that still fails holds a file that crashes the
            # decoder: it is given up and redone here. (This remote argument is deprecated for
            # Ray 2.64; the [ray] extra pins 2.60.)
            max_retries=DECODE_RETRIES,
        )
        ds = ds.map_batches(
            _Embedder,
            # Embedded options.batch_size at a time, as the local engine batches: dynamic int8
            # quantising scales each forward pass by the images in it.
            batch_size=block,
            batch_format="numpy",
            fn_constructor_kwargs={"model": model, "options": options, "spec": spec},
            compute=ray.data.ActorPoolStrategy(size=workers),  # restarted when one dies
            num_gpus=options.gpus_per_worker or None,
            num_cpus=0 if options.gpus_per_worker else 1,
        )
    seen: set[int] = set()
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except ray.exceptions.RayError as exc:
            raise worker_error(exc) from None
        if seen_model is not None and len(batch["key"]):
            seen_model.update(
                device=str(batch["device"][0]),
                precision=str(batch["precision"][0]),
                runtime=str(batch["runtime"][0]),
            )
        for row in _rows(batch):
            seen.add(row.key)
            yield row
    left = [j for j in jobs if j.key not in seen]
    if left:  # their decode task kept dying: the local pool isolates the file that does it
        rest = list(_locally(left, spec, skip_decode, prepare_fn))
        todo = [p for p in rest if p.pixels is not None]
        if todo:  # embedded on Ray too, with the actors' settings: one model, one precision
            task = ray.remote(
                num_cpus=0 if options.gpus_per_worker else 1,
                num_gpus=options.gpus_per_worker,
                max_retries=DECODE_RETRIES,
            )(_embed_pixels)
            try:
                pixels = cast(list[np.ndarray], [p.pixels for p in todo])  # all decoded
                vectors = ray.get(task.remote(model, options, np.stack(pixels)))
            except ray.exceptions.RayError as exc:
                raise worker_error(exc) from None
            for p, vector in zip(todo, vectors, strict=True):
                p.vector, p.pixels = vector, None
        yield from rest


def on_device(options: RayOptions) -> bool:
    """Whether the actors decode the JPEGs (on their GPUs; ``device``: wherever they run),
    the decode tasks only reading, hashing and checking them: only where torch runs the
    model (an exported tower has no device decoder: the actor would decode with Pillow)."""
    where = options.jpeg_decode
    torch = options.plan is not None and options.plan.runtime == Runtime.TORCH
    wanted = where == JpegDecode.DEVICE or (
        where == JpegDecode.AUTO and bool(options.gpus_per_worker)
    )
    return torch and wanted


def block_files(files: int, cpus: float, batch_size: int = EMBED_BATCH) -> int:
    """Files per block for a run of ``files`` on a cluster of ``cpus`` CPUs (see BLOCK_FILES),
    a whole number of model batches."""
    per_cpu = math.ceil(files / max(1.0, BLOCKS_PER_CPU * cpus))
    block = max(MIN_BLOCK_FILES, min(max(BLOCK_FILES, batch_size), per_cpu))
    return math.ceil(block / batch_size) * batch_size


def _table(jobs: Sequence[Job]) -> Any:
    """The jobs as Ray's dataset's rows, an Arrow table (plain values; the bytes are read by
    the tasks)."""
    import pyarrow as pa

    rows = [_item(j) for j in jobs]
    types = {
        "key": pa.int64(),
        "path": pa.binary(),
        "size": pa.int64(),
        "mtime_ns": pa.int64(),
        "shard": pa.binary(),
        "offset": pa.int64(),
        "version": pa.string(),
        "endpoint": pa.string(),
    }
    return pa.table({name: pa.array([r[name] for r in rows], kind) for name, kind in types.items()})


def _item(job: Job) -> dict[str, Any]:
    """A job as a row of Ray's dataset (plain values; the bytes are read by the task)."""
    storage = job.storage or Storage()
    return {
        "key": job.key,
        "path": job.path,
        "size": job.size,
        "mtime_ns": job.mtime_ns,
        "shard": job.shard or b"",
        "offset": job.offset,
        "version": job.version or "",
        "endpoint": storage.endpoint_for(os.fsdecode(job.shard or job.path)) or "",
    }


def _job(batch: dict, i: int) -> Job:
    endpoint = str(batch["endpoint"][i])
    return Job(
        int(batch["key"][i]),
        bytes(batch["path"][i]),
        int(batch["size"][i]),
        int(batch["mtime_ns"][i]),
        shard=bytes(batch["shard"][i]) or None,
        offset=int(batch["offset"][i]),
        version=str(batch["version"][i]) or None,
        storage=Storage(endpoint or None),
    )


def _locally(
    jobs: list[Job],
    spec: PreprocessSpec | None,
    skip: frozenset[str],
    prepare_fn: Callable[..., Prepared],
) -> Iterator[Prepared]:
    """Files prepared in a decode process of this machine, one at a time, so that a file
    that crashes the decoder is recorded as failed without taking the others along."""
    try:
        with DecodePool(1, spec, skip, prepare_fn=prepare_fn) as pool:
            yield from pool.results(fetch_ahead(jobs))
    except PoolUnavailable:
        for job in jobs:
            yield prepare_fn(job, spec, skip, True)


# -- what runs on the workers -------------------------------------------------------------------

_SKIP: dict[str, frozenset[str]] = {}  # per worker process: the known hashes, fetched once


def _decode_batch(
    batch: dict,
    spec: PreprocessSpec,
    skip_ref: Any,
    prepare_fn: Callable[..., Prepared],
) -> dict:
    import ray

    use_one_thread(now=False)  # one CPU per task: torch's resize too, whatever ran here before
    key = skip_ref.hex()
    if key not in _SKIP:
        _SKIP.clear()
        _SKIP[key] = ray.get(skip_ref)
    skip = _SKIP[key]
    n = len(batch["key"])
    h, w = spec.size
    out = {
        "key": np.asarray(batch["key"], dtype=np.int64),
        "size": np.zeros(n, dtype=np.int64),
        "mtime_ns": np.zeros(n, dtype=np.int64),
        "content_hash": np.empty(n, dtype=object),
        "width": np.zeros(n, dtype=np.int64),
        "height": np.zeros(n, dtype=np.int64),
        "format": np.empty(n, dtype=object),
        "meta": np.empty(n, dtype=object),
        "error": np.empty(n, dtype=object),
        "has_info": np.zeros(n, dtype=bool),
        "has_pixels": np.zeros(n, dtype=bool),
        "pixels": np.zeros((n, h, w, 3), dtype=np.uint8),
        "encoded": np.full(n, b"", dtype=object),  # a JPEG left to the actor's device
    }
    # Objects in buckets are read by the task itself, many at once (no shared mount needed).
    row = {int(k): i for i, k in enumerate(batch["key"])}
    for job in fetch_ahead(_job(batch, i) for i in range(n)):
        i = row[job.key]
        p = prepare_fn(job, spec, skip, True)
        out["size"][i], out["mtime_ns"][i] = p.size, p.mtime_ns
        out["content_hash"][i] = p.content_hash or ""
        out["error"][i] = p.error or ""
        if p.info is not None:
            out["has_info"][i] = True
            out["width"][i], out["height"][i] = p.info.width, p.info.height
            out["format"][i] = p.info.format
            out["meta"][i] = p.info.meta.to_json()
        else:
            out["format"][i] = out["meta"][i] = ""
        if p.pixels is not None:
            out["has_pixels"][i] = True
            out["pixels"][i] = p.pixels
        elif p.encoded is not None:
            out["encoded"][i] = p.encoded
    return out


class _Embedder:
    """A Ray actor holding the model, loaded as the run's plan says."""

    def __init__(self, model: ModelSpec, options: RayOptions, spec: PreprocessSpec):
        self.embedder = _load(model, options)
        self.batch_size = max(1, options.batch_size)
        self.spec = spec
        self.jpeg_decode = options.jpeg_decode
        self._decoder: Any = None  # the device's JPEG decoder, once a JPEG comes
        self._checked = False

    def __call__(self, batch: dict) -> dict:
        has = batch["has_pixels"]
        vectors = np.zeros((len(has), self.embedder.dim), dtype=np.float32)
        encoded = np.flatnonzero([len(e) > 0 for e in batch["encoded"]])
        rows = np.flatnonzero(has | np.isin(np.arange(len(has)), encoded))
        has = has.copy()
        errors = batch["error"].copy()
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            if not any(len(batch["encoded"][i]) for i in chunk):
                vectors[chunk] = self.embedder.embed_pixels(batch["pixels"][chunk])
                continue
            made, failed = self._decoded(batch, chunk)
            ok = [i for i, error in zip(chunk, failed, strict=True) if error is None]
            if ok:
                vectors[ok] = made
            for i, error in zip(chunk, failed, strict=True):
                has[i] = error is None
                if error is not None:
                    errors[i] = error
        out = {k: v for k, v in batch.items() if k not in ("pixels", "encoded")}
        out["has_pixels"], out["error"] = has, errors
        out["vector"] = vectors
        out["device"] = np.full(len(has), self.embedder.device, dtype=object)
        out["precision"] = np.full(len(has), self.embedder.precision, dtype=object)
        runtime = getattr(self.embedder, "runtime", "torch")
        out["runtime"] = np.full(len(has), runtime, dtype=object)
        return out

    def _decoded(self, batch: dict, chunk: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """The vectors of a chunk with JPEGs left encoded (decoded on this actor's device, or
        with Pillow where it has no decoder), and why each that failed did."""
        from organizer.embed.device_decode import EncodedJpeg, decoder_for, embed_items

        if not self._checked:
            self._decoder = decoder_for(self.embedder, self.jpeg_decode, self.spec)
            self._checked = True
        items: list[Any] = []
        for i in chunk:
            data = batch["encoded"][i]
            if not len(data):
                items.append(batch["pixels"][i])
                continue
            meta = PhotoMeta.from_json(str(batch["meta"][i]))
            width, height = int(batch["width"][i]), int(batch["height"][i])
            items.append(EncodedJpeg(bytes(data), meta.orientation or 1, width, height))
        return embed_items(self.embedder, self._decoder, items, self.spec)


def _load(model: ModelSpec, options: RayOptions) -> Embedder:
    """The model on a worker, as the run's plan says (see :func:`settle_model`), from the
    very checkpoint the library records. Exported towers come from this machine's model
    cache, exported here the first time (under the cache's lock: one actor exports, the
    others of the machine wait and open the files)."""
    if model.is_checkpoint_path and model.weights_sha256:
        try:
            same = sha256_file(Path(model.pretrained)) == model.weights_sha256
        except OSError as exc:
            raise ModelError(
                f"checkpoint {model.pretrained} cannot be read on this worker ({exc.strerror})"
            ) from None
        if not same:
            raise ModelError(
                f"checkpoint {model.pretrained} on this worker is not the one the library "
                "was built with"
            )
    chosen = options.plan
    if chosen is None:
        raise ModelError("internal error: the Ray engine's model was not settled")
    if chosen.device == Device.CPU and chosen.runtime == Runtime.TORCH:
        import torch

        # Ray pins a 1-CPU actor to one thread; the model, like the local engine's, shares
        # the machine's cores with the decode tasks beside it. (ONNX Runtime and OpenVINO
        # are given this process's cores when they open a tower.)
        torch.set_num_threads(os.cpu_count() or 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loader.build(model, chosen, options.offline)


def _embed_pixels(model: ModelSpec, options: RayOptions, pixels: np.ndarray) -> np.ndarray:
    """A one-off task: vectors of pixels prepared elsewhere, with the actors' settings."""
    embedder, step = _load(model, options), max(1, options.batch_size)
    return np.concatenate(
        [embedder.embed_pixels(pixels[i : i + step]) for i in range(0, len(pixels), step)]
    )


def worker_error(exc: BaseException) -> OrganizerError:
    """One line for what failed on a worker (the model would not load, a task kept dying)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, OrganizerError):
        return cause
    text = str(exc)
    for name in ("WeightsUnavailableError", "ModelMismatchError", "ModelError", "ImageError"):
        marker = f"{name}: "
        if marker in text:
            return ModelError(text.split(marker, 1)[1].strip().splitlines()[0][:300])
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return LibraryError(f"a Ray worker failed: {first[:300]}")


def _rows(batch: dict) -> Iterator[Prepared]:
    for i in range(len(batch["key"])):
        info = None
        if batch["has_info"][i]:
            info = ImageInfo(
                int(batch["width"][i]),
                int(batch["height"][i]),
                str(batch["format"][i]),
                PhotoMeta.from_json(str(batch["meta"][i])),
            )
        yield Prepared(
            int(batch["key"][i]),
            int(batch["size"][i]),
            int(batch["mtime_ns"][i]),
            content_hash=str(batch["content_hash"][i]) or None,
            info=info,
            error=str(batch["error"][i]) or None,
            vector=batch["vector"][i].copy() if batch["has_pixels"][i] else None,
        )
