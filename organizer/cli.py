"""The `organizer` command: parse options -> Settings -> one library call -> print.

Data goes to stdout (a table, or one JSON document with --json); progress, warnings and
errors go to stderr. Exit codes: 0 done; 1 failed; 2 usage error (checked while the
options are parsed, before anything runs); 130 interrupted (what was committed is kept).
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from organizer import __version__
from organizer import console as out
from organizer import filter_options as fo
from organizer.choices import (
    Algorithm,
    Decision,
    Device,
    DuplicateKind,
    Engine,
    ExportMode,
    IndexKind,
    KSpec,
    LabelSource,
    Precision,
    Runtime,
    Sort,
)
from organizer.config import resolve_settings
from organizer.errors import Interrupted, OptionsError, OrganizerError
from organizer.redact import screen
from organizer.sources.remote import is_remote

# The library (SQLAlchemy, numpy, Pillow: 0.4 s of imports) is loaded by the commands that
# open one, not for --help, --version or a usage error (0.09 s instead of 0.5 s).
if TYPE_CHECKING:
    from organizer.library import Library

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


@dataclass
class Invocation:
    """What one run of the command line shares beyond a command's own options: typer's
    context object (``ctx.obj``), made afresh for every run.

    ``library`` and ``as_json`` are the options given to a group before its command
    (``organizer -L LIB cluster --json assign``); ``command`` is the command that runs, for
    the hint of a usage error it raises.
    """

    library: Path | str | None = None
    as_json: bool = False
    command: str | None = None

    def hand_down(self, library: Path | str | None, as_json: bool) -> None:
        """Keep a group's options for the command after it (the nearer group wins)."""
        if library is not None:
            self.library = library
        self.as_json = self.as_json or as_json


class _OneLineErrors(typer.core.TyperGroup):
    """Errors as one line on stderr; every usage error, however raised, exits 2 here."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        invocation = Invocation()
        try:
            code = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                obj=invocation,
                **extra,
            )
        except typer.Abort:
            out.err("interrupted")
            code = EXIT_INTERRUPTED
        except typer.TyperException as exc:  # typer's click errors: usage and parameters
            code = _report_click_error(exc)
        except OptionsError as exc:  # from a command: checked with the library, or together
            code = _usage_error(str(exc), invocation.command)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _report_click_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        return EXIT_USAGE  # typer has shown the help already
    code = getattr(exc, "exit_code", EXIT_FAILED)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    if code == EXIT_USAGE:
        return _usage_error(message, ctx.command_path if ctx is not None else None)
    out.err(f"error: {message}")
    return code


def _usage_error(message: str, command: str | None) -> int:
    """The one way a usage error ends: one line, the command's help named, exit 2."""
    hint = f" (see '{command} --help')" if command else ""
    out.err(f"error: {message}{hint}")
    return EXIT_USAGE


T = TypeVar("T")  # what an option's parser makes of its text

app = typer.Typer(
    cls=_OneLineErrors,
    help="Organise large photo folders with CLIP: ingest, search, cluster, report.\n\n"
    "Exit codes: 0 done, 1 failed, 2 usage error, 130 interrupted (work done so far is kept).\n\n"
    "Example: organizer ingest ~/Photos && organizer status",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _group(**options: Any) -> typer.Typer:
    """A command group with -h as --help, as the top level has."""
    return typer.Typer(
        cls=typer.core.TyperGroup,
        context_settings={"help_option_names": ["-h", "--help"]},
        **options,
    )


cluster_app = _group()
app.add_typer(cluster_app, name="cluster")
duplicates_app = _group()
app.add_typer(duplicates_app, name="duplicates")
roots_app = _group()
app.add_typer(roots_app, name="roots")
index_app = _group(
    no_args_is_help=True,
    help="The vector index: a cache of the database's vectors, rebuilt when needed.",
)
app.add_typer(index_app, name="index")
shards_app = _group(
    no_args_is_help=True,
    help="Build the index on several machines: train once, fill a shard on each, merge.",
)
index_app.add_typer(shards_app, name="shards")


def _parses(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """An option's parser, raising OptionsError as every usage check does.

    typer reports a parser's own ValueError with its validator's prefix ("Value error,"):
    this hands the message to typer as a parameter error, which names the option.
    """

    @functools.wraps(fn)
    def parse(value: Any) -> T:
        try:
            return fn(value)
        except OptionsError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parse


@_parses
def _path(value: str) -> Path:
    """A file or folder argument; an empty one is refused before anything runs.

    ``organizer ingest "$PHOTOS"`` with the variable unset passes "", which Path() reads as
    the working folder: the whole home folder would be embedded and kept as a root.
    """
    if value == "":
        raise OptionsError(
            "'' is an empty path: give a file or folder (is a shell variable unset, as in "
            '"$PHOTOS"?)'
        )
    return Path(value)


@_parses
def _ingest_path(value: str) -> str:
    """A root to ingest (a folder, a bucket URL, a .tar shard): not empty, and not the
    whole filesystem ("$PHOTOS/" unset). Kept as text: a URL is no path."""
    path = _path(value)
    if is_remote(value):
        return value
    if os.path.realpath(path.expanduser()) == os.path.realpath(os.sep):
        raise OptionsError(
            f"{value} is the whole filesystem: give your photo folders (an unset shell "
            'variable, as in "$PHOTOS/"?)'
        )
    return value


@_parses
def _image_path(value: str) -> str:
    """An image: a file, a member of a tar shard, or an object's URL in a bucket; not empty.
    Kept as text: Path() would make 's3://b/a.jpg' 's3:/b/a.jpg'."""
    _path(value)
    return value


@_parses
def _folder(value: str) -> Path:
    """A folder that may not exist yet (a shard folder): not empty, not a file."""
    path = _path(value)
    if path.is_file():
        raise OptionsError(f"{value} is a file: give a folder")
    return path


@_parses
def _term(value: str) -> str:
    """A search term: words or an image path; an empty one (an unset variable) is refused."""
    if not value.strip():
        raise OptionsError(
            f"{value!r} is empty: give words, or an image path (is a shell variable unset?)"
        )
    return value


@_parses
def _named_root(value: str) -> str:
    """A root as the library lists it, kept as text; never empty."""
    _path(value)
    return value


# -- shared options ---------------------------------------------------------------------------
# The options of Settings are taken as the text typed and checked by Settings, as their
# ORGANIZER_* variables are: a bad value reads the same from either.

LibraryOpt = Annotated[
    str | None,
    typer.Option(
        "--library",
        "-L",
        metavar="FOLDER|URL",
        help="Library folder, or a PostgreSQL URL (postgresql://USER@HOST/DB) for a shared "
        "catalogue (env ORGANIZER_LIBRARY; default: per-user data dir).",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="open_clip model name or model-config JSON path (env ORGANIZER_MODEL; default ViT-B-32-256)."
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        help="Weights: tag, checkpoint path, or 'none' (env ORGANIZER_PRETRAINED; default datacomp_s34b_b86k)."
    ),
]


def _choices(kind: type[StrEnum]) -> str:
    return "|".join(kind)


DeviceOpt = Annotated[
    str | None,
    typer.Option(metavar=_choices(Device), help="Where the model runs (env ORGANIZER_DEVICE)."),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(metavar=_choices(Precision), help="Model precision (env ORGANIZER_PRECISION)."),
]
RuntimeOpt = Annotated[
    str | None,
    typer.Option(
        metavar=_choices(Runtime),
        help="What runs the model on a CPU: auto = OpenVINO bf16 where the CPU has bf16 "
        "units, else ONNX Runtime fp32 (env ORGANIZER_RUNTIME).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        help="The endpoint of an S3-compatible service that is not AWS (MinIO, Ceph, R2...), "
        "kept with the bucket roots (env ORGANIZER_ENDPOINT_URL; AWS_ENDPOINT_URL and a "
        "profile's endpoint_url work too).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
AbsoluteOpt = Annotated[bool, typer.Option("--absolute", help="Show absolute paths.")]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        "--include-offline", help="Also show images under roots that are absent now (unplugged)."
    ),
]
LimitOpt = Annotated[int, typer.Option("-n", "--limit", min=1, help="How many results.")]
# The spellings of an earlier organizer, kept working but no longer shown.
OldLimitOpt = Annotated[int | None, typer.Option("-k", "--top", min=1, hidden=True)]
RunOpt = Annotated[int | None, typer.Option("--run", help="Cluster run id (default: the latest).")]


@_parses
def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise OptionsError(f"{value!r} is not a number") from None


# How events are split (organizer.events.EventRules checks the values and says why).
GapOpt = Annotated[
    float,
    typer.Option(
        "--gap",
        metavar="HOURS",
        parser=_number,
        help="A photo taken more than this many hours after the one before starts a new event.",
    ),
]
DistanceOpt = Annotated[
    float,
    typer.Option(
        "--distance",
        metavar="KM",
        parser=_number,
        help="A photo taken more than this many km from the event's last located photo starts "
        "a new one ('inf': never by place).",
    ),
]
MinSizeOpt = Annotated[
    int, typer.Option("--min-size", help="Leave out events of fewer photos (they are counted).")
]
LabelsOpt = Annotated[
    bool,
    typer.Option(
        "--labels/--no-labels",
        help="Name events by the vocabulary too (the first time may load the model).",
    ),
]


@_parses
def _cosine(value: str) -> float:
    """A score threshold for results: a cosine similarity, in [-1, 1]."""
    number = _number(value)
    if not -1 <= number <= 1:
        raise OptionsError(f"{value} is not a cosine similarity, in [-1, 1]")
    return number


@_parses
def _similarity(value: str) -> float:
    """The similarity from which two images are the same photo: in (0, 1]."""
    number = _number(value)
    if not 0 < number <= 1:
        raise OptionsError(f"{value} is not in (0, 1]: 1 means identical")
    return number


@_parses
def _k(value: str) -> KSpec:
    """A cluster count: a whole number of at least 2, or 'auto'."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise OptionsError(f"takes a whole number or 'auto', not {value!r}") from None
    if k < 2:
        raise OptionsError(f"{k} clusters make no grouping: give 2 or more, or 'auto'")
    return k


def _handled(fn: Callable[..., None]) -> Callable[..., None]:
    """Run a command (or a group's callback, which takes ``ctx: typer.Context`` first).

    Options given to a group before the command reach it here, through ``ctx.obj``: a
    command's own ``library`` and ``as_json`` fall back to them. A usage error
    (OptionsError) goes on to the one place that reports it; any other OrganizerError, and
    anything unexpected, becomes one line on stderr and exit 1.
    """

    @functools.wraps(fn)
    def wrapper(ctx: typer.Context, **kwargs: Any) -> None:
        invocation = ctx.ensure_object(Invocation)
        invocation.hand_down(kwargs.get("library"), kwargs.get("as_json", False))
        invocation.command = ctx.command_path
        if "library" in kwargs:
            kwargs["library"] = invocation.library
        if "as_json" in kwargs:
            kwargs["as_json"] = invocation.as_json
        warnings.showwarning = out.show_warning
        try:
            return fn(ctx, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, OptionsError):
            raise
        except Interrupted as exc:
            out.err(f"interrupted: {exc}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OrganizerError as exc:
            out.err(f"error: {exc}")
            raise typer.Exit(EXIT_FAILED) from None
        except KeyboardInterrupt:
            out.err("interrupted: work committed so far is kept; run the command again to finish")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            # `organizer ... | head`: the reader has gone; stop quietly, as cat does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("ORGANIZER_DEBUG"):
                traceback.print_exc()
            message = screen(str(exc).splitlines()[0]) if str(exc) else ""
            out.err(
                f"error: unexpected {type(exc).__name__}: {message} "
                "(set ORGANIZER_DEBUG=1 for details)"
            )
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def command(fn: Callable[..., None]) -> Callable[..., None]:
    """Register a top-level command with organizer's error handling."""
    return app.command()(_handled(fn))


def _open(library: str | None, create: bool = False, **settings: Any) -> Library:
    from organizer.library import Library

    return Library.open(resolve_settings(library=library, **settings), create=create)


def _version(value: bool) -> None:
    if value:
        print(f"organizer {__version__}")
        raise typer.Exit()


@app.callback()
@_handled
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
    library: LibraryOpt = None,
) -> None:
    """Organise large photo folders with CLIP: ingest, search, cluster, report.

    Exit codes: 0 done, 1 failed, 2 usage error, 130 interrupted (work done so far is kept).

    Example: organizer ingest ~/Photos && organizer status
    """


# -- ingest and status ------------------------------------------------------------------------


@command
def ingest(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            parser=_ingest_path,
            metavar="[ROOTS]...",
            help="Folders, bucket URLs (s3://BUCKET/PREFIX, pip install 'organizer[s3]') or "
            ".tar shards (a brace pattern such as 'shards/{000000..000099}.tar' names many); "
            "none = every known root.",
        ),
    ] = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    runtime: RuntimeOpt = None,
    batch_size: Annotated[
        str | None,
        typer.Option(
            metavar="N", help="Images per model batch, at least 1 (env ORGANIZER_BATCH_SIZE)."
        ),
    ] = None,
    workers: Annotated[
        str | None,
        typer.Option(
            metavar="N",
            help="Decode worker processes, 0 to decode in this one; with --engine ray, "
            "embedding actors (default: one per GPU, else one per machine) "
            "(env ORGANIZER_WORKERS).",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            help="Where to decode and embed: this machine, or a Ray cluster "
            "(pip install 'organizer[ray]')."
        ),
    ] = Engine.LOCAL,
    ray_address: Annotated[
        str | None,
        typer.Option(
            metavar="auto|ray://HOST:10001",
            help="The Ray cluster to join (default: RAY_ADDRESS, else a local one for this run).",
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0, help="GPUs per embedding actor with --engine ray (e.g. 1).")
    ] = 0.0,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a busy library instead of failing.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Try failed files again even if unchanged.")
    ] = False,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash",
            help="Read every file again, even with its size and time unchanged (slow: "
            "catches an edit that kept both).",
        ),
    ] = False,
    follow_symlinks: Annotated[
        bool,
        typer.Option("--follow-symlinks", help="Follow file links that point outside the root."),
    ] = False,
    endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed every image under the roots, incrementally: unchanged files are only stat'ed
    (unchanged objects only listed, unchanged shards not opened).

    Example: organizer ingest ~/Photos ~/Phone s3://archive/photos
    """
    from organizer.ingest import IngestOptions, RayOptions
    from organizer.library import Library

    settings = resolve_settings(
        library=library,
        model=model,
        pretrained=pretrained,
        device=device,
        precision=precision,
        runtime=runtime,
        batch_size=batch_size,
        workers=workers,
        endpoint_url=endpoint_url,
    )
    ray = None
    if engine == Engine.RAY:
        # the flag's count of actors; ORGANIZER_WORKERS counts them only when it is not 0
        actors = settings.workers if workers is not None else None
        if actors == 0:
            raise OptionsError(
                "--workers 0 means no embedding actor: give 1 or more with --engine ray"
            )
        ray = RayOptions(address=ray_address, workers=actors, gpus_per_worker=gpus_per_worker)
    elif ray_address or gpus_per_worker:
        raise OptionsError("--ray-address and --gpus-per-worker go with --engine ray")
    options = IngestOptions(
        retry_failed=retry_failed, rehash=rehash, follow_symlinks=follow_symlinks, ray=ray
    )
    Library.check_ingest(paths or [], options)  # a refused ingest makes no library either
    with (
        Library.open(settings, create=True) as lib,
        out.IngestProgressBar(enabled=not (quiet or as_json)) as progress,
        out.StopRequest() as stop,
    ):
        summary = lib.ingest(
            paths or [], options=options, wait=wait, progress=progress, cancel=stop
        )
    out.show(summary, as_json, out.print_ingest)


@command
def status(
    ctx: typer.Context,
    library: LibraryOpt = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="List the files that could not be read, and why.")
    ] = False,
    skipped: Annotated[
        bool,
        typer.Option("--skipped", help="List the files ingest leaves out (not images, exports)."),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check the index files in full (checksum, re-rank vectors against the "
            "database) instead of by their sizes and sampled blocks.",
        ),
    ] = False,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """What is in the library: roots, model, images by status, index health, last ingest.

    Example: organizer status --failed
    """
    if failed or skipped:
        with _open(library) as lib:
            failures = lib.failures() if failed else None
            left_out = lib.skipped() if skipped else None
        out.show(
            (failures, left_out),
            as_json,
            lambda lists: out.print_left_out(*lists, absolute),
            lambda lists: out.left_out_dict(*lists, absolute),
        )
        return
    with _open(library) as lib:
        st = lib.status(verify=verify)
    out.show(st, as_json, out.print_status)
    if st.index.damaged:
        raise typer.Exit(EXIT_FAILED)


@_parses
def _memory(value: str | None) -> int | None:
    from organizer.vectors.kinds import parse_memory

    return None if value is None else parse_memory(value)  # IndexPlanError: not a size


WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Wait for a running ingest instead of failing.")
]


def _group_options(
    ctx: typer.Context, library: LibraryOpt = None, as_json: JsonOpt = False
) -> None:
    """-L and --json given to a group, for the command after it (handed down by _handled)."""


index_app.callback()(_handled(_group_options))
shards_app.callback()(_handled(_group_options))


@index_app.command("build")
@_handled
def index_build(
    ctx: typer.Context,
    kind: Annotated[
        IndexKind,
        typer.Option(
            "--kind",
            help="auto: exact while small, lists of fp16 vectors up to ~1M, then compressed "
            "codes re-ranked exactly from vectors on disk. Kept for later rebuilds.",
        ),
    ] = IndexKind.AUTO,
    memory: Annotated[
        int | None,
        typer.Option(
            "--memory",
            parser=_memory,
            metavar="SIZE",
            help="Memory the index may hold, e.g. 4G (default: a quarter of RAM, at most 4G; "
            "the memory-mapped re-rank vectors aside). Kept for later rebuilds.",
        ),
    ] = None,
    wait: WaitOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rebuild the vector index now, of the kind and size asked; measure its recall@10.

    Ingest keeps the index up to date by itself; use this to pick another kind or budget.
    Example: organizer index build --kind ivf-pq --memory 2G
    """
    with _open(library) as lib, out.StatusLine("index build", not (quiet or as_json)):
        built = lib.build_index(kind.value, memory, wait=wait)
    out.show(built, as_json, out.print_index_build)


ShardDir = Annotated[
    Path,
    typer.Argument(
        parser=_folder,
        help="A folder every machine reaches (shared storage) for the plan and the shards.",
    ),
]


@shards_app.command("train")
@_handled
def shards_train(
    ctx: typer.Context,
    folder: ShardDir,
    parts: Annotated[
        int, typer.Option("--parts", min=1, help="How many shards (machines) to split into.")
    ],
    kind: Annotated[
        IndexKind, typer.Option("--kind", help="As for `organizer index build`.")
    ] = IndexKind.AUTO,
    memory: Annotated[
        int | None,
        typer.Option(
            "--memory", parser=_memory, metavar="SIZE", help="As for `organizer index build`."
        ),
    ] = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Plan the shards (equal id ranges of the catalogue) and train the index they share.

    Example: organizer index shards train /shared/idx --parts 4 -L postgresql://...
    """
    started = time.perf_counter()
    with _open(library) as lib, out.StatusLine("shards train", not (quiet or as_json)):
        made = lib.shards.train(folder, parts, kind.value, memory)
    took = time.perf_counter() - started
    out.show(
        made,
        as_json,
        lambda made: out.print_shards_trained(made, folder, took),
        lambda made: {
            "parts": made.parts,
            "kind": made.kind,
            "count": sum(made.counts),
            "build_s": round(took, 3),
        },
    )


@shards_app.command("fill")
@_handled
def shards_fill(
    ctx: typer.Context,
    folder: ShardDir,
    part: Annotated[int, typer.Option("--part", min=1, help="Which shard, from 1.")],
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill one shard from the catalogue: its share of the vectors, in the shared folder."""
    started = time.perf_counter()
    with _open(library) as lib, out.StatusLine("shards fill", not (quiet or as_json)):
        filled = lib.shards.fill(folder, part)
    took = time.perf_counter() - started
    out.show(
        filled,
        as_json,
        lambda filled: print(
            f"filled shard {filled.part} with {filled.count:,} vectors in {took:.1f} s"
        ),
        lambda filled: {"part": filled.part, "count": filled.count, "build_s": round(took, 3)},
    )


@shards_app.command("merge")
@_handled
def shards_merge(
    ctx: typer.Context,
    folder: ShardDir,
    wait: WaitOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Merge every filled shard into the library's index (its lists in a file on disk).

    The shards stay in the folder; remove it once the merge is done.
    """
    with _open(library) as lib, out.StatusLine("shards merge", not (quiet or as_json)):
        built = lib.shards.merge(folder, wait=wait)
    out.show(built, as_json, out.print_index_build)


# -- search -----------------------------------------------------------------------------------

ThresholdOpt = Annotated[
    float | None,
    typer.Option(parser=_cosine, help="Only results at least this similar (cosine, -1 to 1)."),
]


@command
def similar(
    ctx: typer.Context,
    photo: Annotated[
        str,
        typer.Argument(
            parser=_image_path,
            help="An image: one in the library (a file, s3://BUCKET/KEY, or SHARD.tar/MEMBER), "
            "or any other file.",
        ),
    ],
    limit: LimitOpt = 12,
    old_limit: OldLimitOpt = None,
    threshold: ThresholdOpt = None,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    sort: fo.SortOpt = Sort.SCORE,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Images most like PHOTO, best first (the photo itself is left out).

    A photo the library holds answers from its stored vector, without loading the model.

    Example: organizer similar ~/Photos/dog.jpg -n 5
    """
    with _open(library) as lib:
        res = lib.similar(
            photo,
            limit=old_limit or limit,
            threshold=threshold,
            include_offline=include_offline,
            where=fo.where(after, before, camera, place, near, under),
            sort=sort,
        )
    out.print_offline(res.offline)
    out.show(
        res,
        as_json,
        lambda res: out.print_results(res, absolute),
        lambda res: res.to_dict(absolute, coordinates=True),
    )


@command
def search(
    ctx: typer.Context,
    query: Annotated[
        str | None,
        typer.Argument(parser=_term, help="What to look for, in words (or an image path)."),
    ] = None,
    plus: Annotated[
        list[str] | None,
        typer.Option("--plus", parser=_term, help="Add a text or image to the query (repeatable)."),
    ] = None,
    minus: Annotated[
        list[str] | None,
        typer.Option("--minus", parser=_term, help="Subtract a text or image (repeatable)."),
    ] = None,
    limit: LimitOpt = 12,
    old_limit: OldLimitOpt = None,
    threshold: ThresholdOpt = None,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    sort: fo.SortOpt = Sort.SCORE,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find images by description; combine terms with --plus and --minus.

    Example: organizer search "beach" --minus "people" --plus ~/Photos/sunset.jpg
    """
    with _open(library) as lib:
        res = lib.search(
            query,
            plus or [],
            minus or [],
            limit=old_limit or limit,
            threshold=threshold,
            include_offline=include_offline,
            where=fo.where(after, before, camera, place, near, under),
            sort=sort,
        )
    out.print_offline(res.offline)
    out.show(
        res,
        as_json,
        lambda res: out.print_results(res, absolute),
        lambda res: res.to_dict(absolute, coordinates=True),
    )


@duplicates_app.callback(invoke_without_command=True)
@_handled
def duplicates(
    ctx: typer.Context,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            metavar="exact,near,burst",
            help="Which kinds to list (default all): exact copies, near copies (re-encoded, "
            "resized, cropped), bursts (one camera, seconds apart).",
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            parser=_similarity,
            help="Cosine similarity from which two images are near copies, (0, 1].",
        ),
    ] = 0.96,
    prefer: Annotated[
        list[str] | None,
        typer.Option(
            "--prefer",
            metavar="RULE",
            help="Keeper rule, before the default order (repeat for more): "
            "format:raw,heic,jpg | folder:PATH | largest | oldest | newest.",
        ),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            parser=_path,
            metavar="PLAN.json",
            help="Write a clean-up plan for organizer clean (exact and near groups; bursts "
            "only when --kind names them).",
        ),
    ] = None,
    show_decided: Annotated[
        bool, typer.Option("--show-decided", help="Also list the decisions made with mark.")
    ] = False,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Groups of the same photo (exact copies, near copies, bursts), each with its keeper.

    Each group says which file it keeps and why. Nothing is deleted: --plan writes a plan
    that organizer clean carries out, and that can be undone.

    Keeper order: camera RAW, more pixels, larger file, camera metadata, earliest taken,
    shortest path.
    `organizer duplicates mark` records decisions (not duplicates, keep all, keeper).

    Example: organizer duplicates --prefer format:raw,heic,jpg --plan plan.json
    """
    if ctx.invoked_subcommand is not None:
        return
    from organizer.duplicates.find import DuplicateOptions, parse_kinds

    kinds = parse_kinds(kind)
    options = DuplicateOptions(kinds, threshold, tuple(prefer or ()), show_decided)
    with _open(library) as lib, out.StatusLine("duplicates", not (quiet or as_json)):
        found = lib.duplicates(
            options,
            include_offline=include_offline,
            where=fo.where(after, before, camera, place, near, under),
        )
    if plan is not None:
        planned = kinds if kind is not None else (DuplicateKind.EXACT, DuplicateKind.NEAR)
        made = found.plan(lib.home.name, planned)
        try:
            made.write(plan)
        except OSError as exc:
            raise OrganizerError(f"cannot write the plan {plan}: {exc.strerror or exc}") from None
    out.print_offline(found.offline)
    out.show(
        found,
        as_json,
        lambda found: out.print_duplicates(found, absolute),
        lambda found: found.to_dict(absolute),
    )
    if plan is not None and not as_json:
        out.print_plan_written(made, plan)


@duplicates_app.command("mark")
@_handled
def duplicates_mark(
    ctx: typer.Context,
    decision: Annotated[
        Decision,
        typer.Argument(
            help="not-duplicates: different photos; keep-all: keep every copy; "
            "keeper: keep this file in any group it is in."
        ),
    ],
    targets: Annotated[
        list[str],
        typer.Argument(metavar="GROUP|PATH...", help="A group id from the listing, or paths."),
    ],
    threshold: Annotated[
        float,
        typer.Option(parser=_similarity, help="The --threshold the group ids were listed with."),
    ] = 0.96,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Record a decision about a group or files: not-duplicates, keep-all or keeper.

    A decision is kept by content, so it survives moves, renames, re-scans and a new model,
    and the group does not come back.

    Example: organizer duplicates mark not-duplicates 3f2a9c1b20de
    """
    with _open(library) as lib:
        made = lib.mark_duplicates(decision, targets, threshold)
    out.show(
        made,
        as_json,
        lambda made: out.print_decision(made, absolute),
        lambda d: d.to_dict(absolute),
    )


@duplicates_app.command("unmark")
@_handled
def duplicates_unmark(
    ctx: typer.Context,
    decision: Annotated[int, typer.Argument(help="The decision's number (--show-decided).")],
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Take a decision back: its groups are listed again.

    Example: organizer duplicates unmark 3
    """
    with _open(library) as lib:
        lib.unmark_duplicates(decision)
    if as_json:
        out.print_json({"decision": decision, "taken_back": True})
    else:
        print(f"took decision {decision} back: its groups are listed again")


@command
def clean(
    ctx: typer.Context,
    plan: Annotated[
        Path | None,
        typer.Argument(
            parser=_path,
            metavar="PLAN.json",
            help="A clean-up plan, as `organizer duplicates --plan` writes.",
        ),
    ] = None,
    undo: Annotated[
        Path | None,
        typer.Option(
            "--undo",
            metavar="JOURNAL|last",
            parser=_path,
            help="Put back what a clean-up moved: its journal (the path it printed), or 'last'.",
        ),
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option(
            "--to",
            parser=_path,
            help="The trash folder (default: .organizer-trash in each root); each file goes "
            "to DIR/<its root's path>/<its path>.",
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move the copies a plan names into a trash folder; --undo puts them back.

    Each file must still have the content the plan names (else it is skipped, and a group
    whose keeper changed is left alone); sidecars (.xmp, .aae, a Live Photo's .mov) go with
    their photo. The moves are journalled first: a re-run finishes an interrupted clean-up.
    Trashed images leave every result. Nothing is deleted: emptying the trash is yours to do.

    Example: organizer clean plan.json --dry-run && organizer clean plan.json
    """
    if (plan is None) == (undo is None):
        raise OptionsError("give a plan (organizer clean PLAN.json) or --undo JOURNAL|last")
    if undo is not None and (to is not None or dry_run):
        raise OptionsError("--undo puts files back where they were: it takes no --to or --dry-run")
    with _open(library) as lib:
        if undo is not None:
            undone = lib.undo_clean("last" if str(undo) == "last" else undo)
            out.show(
                undone,
                as_json,
                lambda u: out.print_undo(u, absolute),
                lambda u: u.to_dict(absolute),
            )
            return
        assert plan is not None
        done = lib.clean(plan, to, dry_run)
    out.show(done, as_json, lambda s: out.print_clean(s, absolute), lambda s: s.to_dict(absolute))


# -- clusters ---------------------------------------------------------------------------------


@cluster_app.callback(invoke_without_command=True)
@_handled
def cluster(
    ctx: typer.Context,
    k: Annotated[
        str,
        typer.Option(
            "-k",
            parser=_k,
            metavar="K|auto",
            help="Number of clusters (2 or more), or 'auto' to sweep k-min..k-max.",
        ),
    ] = "auto",
    algorithm: Annotated[Algorithm, typer.Option(help="K-means implementation.")] = (
        Algorithm.FAISS
    ),
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed and data give the same clusters.")
    ] = 0,
    k_min: Annotated[int, typer.Option(min=2, help="Smallest k tried by -k auto.")] = 2,
    k_max: Annotated[
        int | None,
        typer.Option(
            min=2, help="Largest k tried by -k auto (default 40, or fewer on a small library)."
        ),
    ] = None,
    vocabulary: Annotated[
        Path | None, typer.Option(parser=_path, help="Concepts for naming clusters (one a line).")
    ] = None,
    names: Annotated[
        bool, typer.Option("--names/--no-names", help="Name clusters with the model's text tower.")
    ] = True,
    assign_new: Annotated[bool, typer.Option("--assign-new", hidden=True)] = False,
    run: Annotated[int | None, typer.Option("--run", hidden=True)] = None,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Group the library's images with K-means and name the groups.

    -k auto picks the k with the best silhouette (cosine, in embedding space).
    `organizer cluster assign` adds images ingested later to a run's nearest clusters.

    Example: organizer cluster -k auto --k-max 30
    """
    if ctx.invoked_subcommand is not None:
        return  # `organizer cluster -L LIB assign` means LIB: handed down by _handled
    if assign_new:  # the spelling of an earlier organizer
        _assign(run, library, as_json)
        return
    if k_max is not None and k_min > k_max:
        raise OptionsError(f"--k-max {k_max} is below --k-min {k_min}")
    with (
        _open(library) as lib,
        out.StatusLine("cluster", not (quiet or as_json)) as progress,
    ):
        summary = lib.cluster(
            cast(KSpec, k),  # what _k made of the text
            algorithm=algorithm,
            seed=seed,
            k_min=k_min,
            k_max=k_max,
            vocabulary=vocabulary,
            names=names,
            include_offline=include_offline,
            where=fo.where(after, before, camera, place, near, under),
            progress=progress,
        )
    out.print_offline(summary.offline)
    if summary.note:
        out.err(f"note: {summary.note}")
    out.show(summary, as_json, out.print_run)


@cluster_app.command("assign")
@_handled
def cluster_assign(
    ctx: typer.Context, run: RunOpt = None, library: LibraryOpt = None, as_json: JsonOpt = False
) -> None:
    """Add images ingested since a run to its nearest clusters, without re-clustering.

    Example: organizer cluster assign --run 3
    """
    _assign(run, library, as_json)


def _assign(run: int | None, library: str | None, as_json: bool) -> None:
    with _open(library) as lib:
        result = lib.assign_new(run)
    out.show(result, as_json, out.print_assigned)


@command
def clusters(
    ctx: typer.Context,
    run: RunOpt = None,
    limit: Annotated[
        int, typer.Option("-n", "--limit", min=0, help="Representative images per cluster.")
    ] = 3,
    old_limit: Annotated[int | None, typer.Option("--top", min=0, hidden=True)] = None,
    list_runs: Annotated[bool, typer.Option("--runs", hidden=True)] = False,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The clusters of a run: number, label, size, silhouette, most representative images.

    Example: organizer clusters -n 5
    """
    if list_runs:  # the spelling of an earlier organizer
        _runs(library, as_json)
        return
    limit = limit if old_limit is None else old_limit
    with _open(library) as lib:
        summary = lib.clusters(run)
    out.show(
        summary,
        as_json,
        lambda summary: out.print_run(summary, absolute, limit),
        lambda summary: summary.to_dict(representatives=limit, absolute=absolute),
    )


@command
def runs(ctx: typer.Context, library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """The stored cluster runs, oldest first.

    Example: organizer runs
    """
    _runs(library, as_json)


def _runs(library: str | None, as_json: bool) -> None:
    with _open(library) as lib:
        listing = lib.runs()
    out.show(listing, as_json, out.print_runs, lambda runs: {"runs": [r.to_dict() for r in runs]})


@command
def events(
    ctx: typer.Context,
    gap: GapOpt = 8.0,
    distance: DistanceOpt = 50.0,
    min_size: MinSizeOpt = 1,
    labels: LabelsOpt = True,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The photos split into events by gaps in time and changes of place, each named from
    its place, dates and content ("Arezzo, Italy · 22 Oct 2008 · old town").

    Photos without a time taken are in no event: the last line counts them.

    Example: organizer events --gap 12 --after 2008 --before 2008
    """
    from organizer.events import EventRules

    rules = EventRules(gap, distance, min_size, labels)
    where = fo.where(after, before, camera, place, near, under)
    with _open(library) as lib, out.StatusLine("events", not (quiet or as_json)):
        found = lib.events(rules, where, include_offline)
    out.print_offline(found.offline)
    out.show(
        found,
        as_json,
        lambda found: out.print_events(found, absolute),
        lambda found: found.to_dict(absolute),
    )


@command
def export(
    ctx: typer.Context,
    to: Annotated[
        Path,
        typer.Option("--to", parser=_path, help="An empty folder to create the folders in."),
    ],
    run: RunOpt = None,
    by_event: Annotated[
        bool,
        typer.Option("--events", help="One folder per event (see `organizer events`) instead."),
    ] = False,
    gap: GapOpt = 8.0,
    distance: DistanceOpt = 50.0,
    min_size: MinSizeOpt = 1,
    labels: LabelsOpt = True,
    mode: Annotated[
        ExportMode | None,
        typer.Option(
            help="Link to the images, or copy them. Default: link to files on this machine "
            "and copy images in buckets and tar shards (nothing can link to those, so "
            "symlink is refused for them)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Write into a non-empty folder (nothing there is removed)."),
    ] = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """One folder per cluster (like 03-beach), or with --events per event (like
    "2008-10-22 Arezzo, Italy - old town"), with links to, or copies of, its images.

    Your photos are never moved, changed or deleted. --gap, --distance, --min-size and
    --no-labels split and name events as `organizer events` does.

    Example: organizer export --to ~/Pictures/by-cluster
    """
    rules = None
    if by_event:
        from organizer.events import EventRules

        if run is not None:
            raise OptionsError("--run picks a cluster run: it does not go with --events")
        rules = EventRules(gap, distance, min_size, labels)
    where = fo.where(after, before, camera, place, near, under)
    with _open(library) as lib, out.StatusLine("export", not (quiet or as_json)):
        if rules is not None:
            result = lib.export_events(to, mode, force, rules, where)
        else:
            result = lib.export(run, to, mode, force, where=where)
    for warning in result.warnings:
        out.err(f"warning: {warning}")
    out.show(result, as_json, lambda result: out.print_export(result, mode))


@command
def evaluate(
    ctx: typer.Context,
    labels: Annotated[
        LabelSource,
        typer.Option(help="Where true labels come from: each image's folder below its root."),
    ] = LabelSource.FOLDERS,
    run: RunOpt = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a cluster run against true labels: NMI, ARI, purity, silhouette, label spread.

    Example: organizer evaluate --labels folders
    """
    with _open(library) as lib:
        result = lib.clustering.evaluate(run, labels)
    out.show(result, as_json, out.print_evaluation)


@command
def report(
    ctx: typer.Context,
    output: Annotated[
        Path, typer.Option("-o", "--output", parser=_path, help="The HTML file to write.")
    ] = Path("report.html"),
    run: RunOpt = None,
    png: Annotated[
        Path | None, typer.Option(parser=_path, help="Also write the static map as a PNG file.")
    ] = None,
    max_points: Annotated[
        int | None,
        typer.Option(min=1, help="Points on the map; a seeded sample beyond (default 5000)."),
    ] = None,
    include_offline: OfflineOpt = False,
    after: fo.AfterOpt = None,
    before: fo.BeforeOpt = None,
    camera: fo.CameraOpt = None,
    place: fo.PlaceOpt = None,
    near: fo.NearOpt = None,
    under: fo.UnderOpt = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a self-contained HTML report: t-SNE map, clusters, thumbnails. Opens offline.

    Example: organizer report -o report.html --png map.png
    """
    with (
        _open(library) as lib,
        out.StatusLine("report", not (quiet or as_json)) as progress,
    ):
        summary = lib.report(
            output,
            run,
            png=png,
            max_points=max_points,
            absolute=absolute,
            progress=progress,
            include_offline=include_offline,
            where=fo.where(after, before, camera, place, near, under),
        )
    out.print_offline(summary.offline)
    out.show(summary, as_json, out.print_report)


# -- roots ------------------------------------------------------------------------------------


@roots_app.callback(invoke_without_command=True)
@_handled
def roots(ctx: typer.Context, library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """The folders the library holds: present or absent (unplugged, renamed), image counts.

    `organizer roots move OLD NEW` follows a renamed or remounted folder;
    `organizer roots remove PATH` forgets one. Neither touches your files.

    Example: organizer roots
    """
    if ctx.invoked_subcommand is not None:
        return  # `organizer roots -L LIB move ...` means LIB: handed down by _handled
    with _open(library) as lib:
        listing = lib.roots()
    out.show(
        listing, as_json, out.print_roots, lambda roots: {"roots": [r.to_dict() for r in roots]}
    )


DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would change; change nothing.")
]


@roots_app.command("remove")
@_handled
def roots_remove(
    ctx: typer.Context,
    path: Annotated[
        str, typer.Argument(parser=_named_root, help="A root, as `organizer roots` lists it.")
    ],
    dry_run: DryRunOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget a root and every image, vector and cluster membership recorded under it.

    Your files are never touched. Example: organizer roots remove /media/old-drive/photos
    """
    with _open(library) as lib:
        change = lib.remove_root(path, dry_run=dry_run)
    out.show(change, as_json, out.print_root_change)


@roots_app.command("move")
@_handled
def roots_move(
    ctx: typer.Context,
    old: Annotated[
        str, typer.Argument(parser=_named_root, help="The root as the library knows it.")
    ],
    new: Annotated[
        str,
        typer.Argument(
            parser=_named_root,
            help="The folder (or bucket prefix, or shard) its files are in now.",
        ),
    ],
    dry_run: DryRunOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point a root at the folder its files moved to; ids, vectors and clusters are kept.

    A sample of the files is checked first (sizes, and the content of a few).
    Example: organizer roots move ~/photos ~/photos-2024
    """
    with _open(library) as lib:
        change = lib.move_root(old, new, dry_run=dry_run)
    out.show(change, as_json, out.print_root_change)


@_parses
def _token(value: str | None) -> str | None:
    from organizer.serve import MIN_TOKEN, TOKEN_CHARACTERS

    if value is not None and (len(value) < MIN_TOKEN or not set(value) <= TOKEN_CHARACTERS):
        raise OptionsError(
            f"use at least {MIN_TOKEN} letters, digits, '-', '_', '.' or '~', e.g. the output "
            "of `python -c 'import secrets; print(secrets.token_urlsafe())'`"
        )
    return value


@command
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to listen on; other than loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            parser=_token,
            envvar="ORGANIZER_TOKEN",
            show_envvar=True,
            help="Every request must carry it (Bearer header, or the cookie the printed "
            "link sets).",
        ),
    ] = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the app in the default browser.")
    ] = False,
    allow_changes: Annotated[
        bool,
        typer.Option(
            "--allow-changes",
            help="Let the duplicates page change the library: choose keepers, mark groups, "
            "move the others to the trash, undo (else the app is read-only).",
        ),
    ] = False,
    library: LibraryOpt = None,
) -> None:
    """Browse, search and review the library in a local web app (read-only unless
    --allow-changes).

    Example: organizer serve --open
    """
    from organizer.serve import serve as run_server
    from organizer.serve.guard import is_loopback

    if not is_loopback(host) and token is None:
        raise OptionsError(
            f"--host {host} lets other machines in: give --token too (or ORGANIZER_TOKEN), or "
            "keep the default 127.0.0.1"
        )
    with _open(library) as lib:
        run_server(lib, host, port, token, open_browser, out.err, allow_changes)


def main() -> None:
    try:
        app()
    finally:
        # The interpreter's last garbage collections walk every object torch, sklearn and
        # faiss made: about a second after each command. Frozen objects are not walked;
        # exit handlers and finalizers (temporary files) still run.
        gc.freeze()
