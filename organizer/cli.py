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
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from organizer import __version__
from organizer import console as out
from organizer.choices import (
    Algorithm,
    Device,
    Engine,
    ExportMode,
    IndexKind,
    KSpec,
    LabelSource,
    Precision,
    Runtime,
    is_url,
)
from organizer.config import resolve_settings
from organizer.console import plural
from organizer.errors import Interrupted, LibraryURLError, OrganizerError
from organizer.redact import screen

# The library (SQLAlchemy, numpy, Pillow: 0.4 s of imports) is loaded by the commands that
# open one, not for --help, --version or a usage error (0.09 s instead of 0.5 s).
if TYPE_CHECKING:
    from organizer.library import Library

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class _OneLineErrors(typer.core.TyperGroup):
    """Usage errors as one line on stderr and exit 2 (typer would draw a framed panel)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _GLOBAL.update(library=None, json=False)
        try:
            code = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except typer.Abort:
            out.err("interrupted")
            code = EXIT_INTERRUPTED
        except typer.TyperException as exc:  # typer's click errors: usage and parameters
            code = _report_click_error(exc)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _report_click_error(exc: typer.TyperException) -> int:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        return EXIT_USAGE  # typer has shown the help already
    code = getattr(exc, "exit_code", EXIT_FAILED)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and code == EXIT_USAGE else ""
    out.err(f"error: {message}{hint}")
    return code


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


def _group(**options) -> typer.Typer:
    """A command group with -h as --help, as the top level has."""
    return typer.Typer(
        cls=typer.core.TyperGroup,
        context_settings={"help_option_names": ["-h", "--help"]},
        **options,
    )


cluster_app = _group()
app.add_typer(cluster_app, name="cluster")
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


def _library(value: str) -> Path | str:
    """A library folder, or a database URL checked now (its password is never echoed)."""
    if not is_url(value):
        return _path(value).expanduser()
    from organizer.store.db import library_url

    try:
        library_url(value)
    except LibraryURLError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _path(value: str) -> Path:
    """A file or folder argument; an empty one is refused before anything runs.

    ``organizer ingest "$PHOTOS"`` with the variable unset passes "", which Path() reads as
    the working folder: the whole home folder would be embedded and kept as a root.
    """
    if value == "":
        raise typer.BadParameter(
            "'' is an empty path: give a file or folder (is a shell variable unset, as in "
            '"$PHOTOS"?)'
        )
    return Path(value)


def _ingest_path(value: str) -> Path:
    """A folder to ingest: not empty, and not the whole filesystem ("$PHOTOS/" unset)."""
    path = _path(value)
    if os.path.realpath(path.expanduser()) == os.path.realpath(os.sep):
        raise typer.BadParameter(
            f"{value} is the whole filesystem: give your photo folders (an unset shell "
            'variable, as in "$PHOTOS/"?)'
        )
    return path


def _folder(value: str) -> Path:
    """A folder that may not exist yet (a shard folder): not empty, not a file."""
    path = _path(value)
    if path.is_file():
        raise typer.BadParameter(f"{value} is a file: give a folder")
    return path


def _term(value: str) -> str:
    """A search term: words or an image path; an empty one (an unset variable) is refused."""
    if not value.strip():
        raise typer.BadParameter(
            f"{value!r} is empty: give words, or an image path (is a shell variable unset?)"
        )
    return value


def _named_root(value: str) -> str:
    """A root as the library lists it, kept as text; never empty."""
    _path(value)
    return value


# -- shared options ---------------------------------------------------------------------------

LibraryOpt = Annotated[
    str | None,
    typer.Option(
        "--library",
        "-L",
        parser=_library,
        metavar="FOLDER|URL",
        help="Library folder, or a PostgreSQL URL (postgresql://USER@HOST/DB) for a shared "
        "catalogue [env ORGANIZER_LIBRARY; default: per-user data dir].",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="open_clip model name or model-config JSON path [env ORGANIZER_MODEL; default ViT-B-32-256]."
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        help="Weights: tag, checkpoint path, or 'none' [env ORGANIZER_PRETRAINED; default datacomp_s34b_b86k]."
    ),
]
DeviceOpt = Annotated[
    Device | None, typer.Option(help="Where the model runs [env ORGANIZER_DEVICE].")
]
PrecisionOpt = Annotated[
    Precision | None, typer.Option(help="Model precision [env ORGANIZER_PRECISION].")
]
RuntimeOpt = Annotated[
    Runtime | None,
    typer.Option(
        help="What runs the model on a CPU: auto = OpenVINO bf16 where the CPU has bf16 "
        "units, else ONNX Runtime fp32 [env ORGANIZER_RUNTIME]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
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


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number") from None


def _cosine(value: str) -> float:
    """A score threshold for results: a cosine similarity, in [-1, 1]."""
    number = _number(value)
    if not -1 <= number <= 1:
        raise typer.BadParameter(f"{value} is not a cosine similarity, in [-1, 1]")
    return number


def _similarity(value: str) -> float:
    """The similarity from which two images are the same photo: in (0, 1]."""
    number = _number(value)
    if not 0 < number <= 1:
        raise typer.BadParameter(f"{value} is not in (0, 1]: 1 means identical")
    return number


def _k(value: str) -> KSpec:
    """A cluster count: a whole number of at least 2, or 'auto'."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise typer.BadParameter(f"takes a whole number or 'auto', not {value!r}") from None
    if k < 2:
        raise typer.BadParameter(f"{k} clusters make no grouping: give 2 or more, or 'auto'")
    return k


def _handled(fn):
    """Map OrganizerError (and anything unexpected) to one line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = out.show_warning
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, typer.BadParameter):
            raise  # a BadParameter of options checked together: a usage error, as at parsing
        except Interrupted as exc:
            out.err(f"interrupted: {exc}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except LibraryURLError as exc:  # from ORGANIZER_LIBRARY: the option checks its own
            out.err(f"error: ORGANIZER_LIBRARY: {exc}")
            raise typer.Exit(EXIT_USAGE) from None
        except OrganizerError as exc:
            out.err(f"error: {exc}")
            raise typer.Exit(getattr(exc, "exit_code", EXIT_FAILED)) from None
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


def command(fn):
    """Register a top-level command with organizer's error handling."""
    return app.command()(_handled(fn))


def _open(library: Path | str | None, create: bool = False, **settings: object) -> Library:
    from organizer.library import Library

    library = library if library is not None else _GLOBAL["library"]
    return Library.open(resolve_settings(library=library, **settings), create=create)


def _version(value: bool) -> None:
    if value:
        print(f"organizer {__version__}")
        raise typer.Exit()


# `organizer -L LIB COMMAND ...` (or `organizer roots -L LIB move ...`): options given before
# the command, for it. Reset at every invocation.
_GLOBAL: dict[str, object] = {"library": None, "json": False}


def _hand_down(library: Path | str | None, as_json: bool) -> None:
    if library is not None:
        _GLOBAL["library"] = library
    _GLOBAL["json"] = _GLOBAL["json"] or as_json


@app.callback()
def _main(
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
    _hand_down(library, False)


# -- ingest and status ------------------------------------------------------------------------


@command
def ingest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(parser=_ingest_path, help="Folders to ingest; none = every known root."),
    ] = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    runtime: RuntimeOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Images per model batch [env ORGANIZER_BATCH_SIZE]."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Decode worker processes; with --engine ray, embedding actors (default: one "
            "per GPU, else one per machine) [env ORGANIZER_WORKERS].",
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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed every image under the folders, incrementally: unchanged files are only stat'ed.

    Example: organizer ingest ~/Photos ~/Phone
    """
    from organizer.ingest import IngestOptions, RayOptions

    if engine == Engine.LOCAL and (ray_address or gpus_per_worker):
        out.err("error: --ray-address and --gpus-per-worker go with --engine ray")
        raise typer.Exit(EXIT_USAGE)
    if engine == Engine.RAY and workers == 0:
        out.err("error: --workers 0 means no embedding actor: give 1 or more with --engine ray")
        raise typer.Exit(EXIT_USAGE)
    ray = None
    if engine == Engine.RAY:
        ray = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    options = IngestOptions(
        retry_failed=retry_failed, rehash=rehash, follow_symlinks=follow_symlinks, ray=ray
    )
    from organizer.library import Library

    Library.check_ingest(paths or [], options)  # a refused ingest makes no library either
    with (
        _open(
            library,
            create=True,
            model=model,
            pretrained=pretrained,
            device=device,
            precision=precision,
            runtime=runtime,
            batch_size=batch_size,
            workers=workers,
        ) as lib,
        out.IngestProgressBar(enabled=not (quiet or as_json)) as progress,
        out.StopRequest() as stop,
    ):
        summary = lib.ingest(
            paths or [], options=options, wait=wait, progress=progress, cancel=stop
        )
    if as_json:
        out.print_json(summary.to_dict())
        return
    out.print_ingest(summary)


@command
def status(
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
        out.print_left_out(failures, left_out, absolute, as_json)
        return
    with _open(library) as lib:
        st = lib.status(verify=verify)
    if as_json:
        out.print_json(st.to_dict())
    else:
        out.print_status(st)
    if st.index.damaged:
        raise typer.Exit(EXIT_FAILED)


def _memory(value: str | None) -> int | None:
    from organizer.errors import IndexPlanError
    from organizer.vectors.kinds import parse_memory

    if value is None:
        return None
    try:
        return parse_memory(value)
    except IndexPlanError as exc:
        raise typer.BadParameter(str(exc)) from None


WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Wait for a running ingest instead of failing.")
]


@index_app.command("build")
@_handled
def index_build(
    kind: Annotated[
        IndexKind,
        typer.Option(
            "--kind",
            help="auto: exact while small, lists of fp16 vectors up to ~1M, then compressed "
            "codes re-ranked exactly from vectors on disk. Kept for later rebuilds.",
        ),
    ] = IndexKind.AUTO,
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory",
            parser=_memory,
            help="Memory the index may hold, e.g. 4G (default: a quarter of RAM, at most 4G; "
            "the memory-mapped re-rank vectors aside). Kept for later rebuilds.",
        ),
    ] = None,
    wait: WaitOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the vector index now, of the kind and size asked; measure its recall@10.

    Ingest keeps the index up to date by itself; use this to pick another kind or budget.
    Example: organizer index build --kind ivf-pq --memory 2G
    """
    with _open(library) as lib:
        built = lib.build_index(kind.value, memory, wait=wait)
    if as_json or _GLOBAL["json"]:
        out.print_json(built.to_dict())
    else:
        out.print_index_build(built)


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
    folder: ShardDir,
    parts: Annotated[
        int, typer.Option("--parts", min=1, help="How many shards (machines) to split into.")
    ],
    kind: Annotated[
        IndexKind, typer.Option("--kind", help="As for `organizer index build`.")
    ] = IndexKind.AUTO,
    memory: Annotated[
        str | None,
        typer.Option("--memory", parser=_memory, help="As for `organizer index build`."),
    ] = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan the shards (equal id ranges of the catalogue) and train the index they share.

    Example: organizer index shards train /shared/idx --parts 4 -L postgresql://...
    """
    started = time.perf_counter()
    with _open(library) as lib:
        made = lib.train_shards(folder, parts, kind.value, memory)
    if as_json or _GLOBAL["json"]:
        out.print_json(
            {
                "parts": made.parts,
                "kind": made.kind,
                "count": sum(made.counts),
                "build_s": round(time.perf_counter() - started, 3),
            }
        )
        return
    print(
        f"trained the {made.kind} index for {sum(made.counts):,} vectors in "
        f"{time.perf_counter() - started:.1f} s and planned {made.parts} shards in {folder}"
    )
    print(
        f"next: `organizer index shards fill {folder} --part I` for each I from 1 to "
        f"{made.parts} (one per machine), then `organizer index shards merge {folder}`"
    )


@shards_app.command("fill")
@_handled
def shards_fill(
    folder: ShardDir,
    part: Annotated[int, typer.Option("--part", min=1, help="Which shard, from 1.")],
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fill one shard from the catalogue: its share of the vectors, in the shared folder."""
    started = time.perf_counter()
    with _open(library) as lib:
        filled = lib.fill_shard(folder, part)
    took = time.perf_counter() - started
    if as_json or _GLOBAL["json"]:
        out.print_json({"part": filled.part, "count": filled.count, "build_s": round(took, 3)})
        return
    print(f"filled shard {filled.part} with {filled.count:,} vectors in {took:.1f} s")


@shards_app.command("merge")
@_handled
def shards_merge(
    folder: ShardDir,
    wait: WaitOpt = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Merge every filled shard into the library's index (its lists in a file on disk).

    The shards stay in the folder; remove it once the merge is done.
    """
    with _open(library) as lib:
        built = lib.merge_shards(folder, wait=wait)
    if as_json or _GLOBAL["json"]:
        out.print_json(built.to_dict())
    else:
        out.print_index_build(built)


# -- search -----------------------------------------------------------------------------------

ThresholdOpt = Annotated[
    float | None,
    typer.Option(parser=_cosine, help="Only results at least this similar (cosine, -1 to 1)."),
]


@command
def similar(
    photo: Annotated[
        Path,
        typer.Argument(parser=_path, help="An image: one in the library, or any other file."),
    ],
    limit: LimitOpt = 12,
    old_limit: OldLimitOpt = None,
    threshold: ThresholdOpt = None,
    include_offline: OfflineOpt = False,
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
            photo, limit=old_limit or limit, threshold=threshold, include_offline=include_offline
        )
    out.print_offline(res.offline)
    out.print_results(res, absolute, as_json)


@command
def search(
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
        )
    out.print_offline(res.offline)
    out.print_results(res, absolute, as_json)


@command
def duplicates(
    threshold: Annotated[
        float,
        typer.Option(
            parser=_similarity,
            help="Cosine similarity from which two images count as the same photo, (0, 1].",
        ),
    ] = 0.96,
    include_offline: OfflineOpt = False,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Groups of the same photo: identical files, re-encodes, resizes, small crops, bursts.

    Each group marks the suggested keeper (largest resolution, then oldest). Nothing is deleted.

    Example: organizer duplicates --threshold 0.97
    """
    with _open(library) as lib:
        found = lib.duplicates(threshold, include_offline=include_offline)
    out.print_offline(found.offline)
    if as_json:
        out.print_json(found.to_dict(absolute))
    else:
        out.print_duplicates(found.groups, absolute)


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
            min=2, help="Largest k tried by -k auto [default: 40, or fewer on a small library]."
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
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Group the library's images with K-means and name the groups.

    -k auto picks the k with the best silhouette (cosine, in embedding space).
    `organizer cluster assign` adds images ingested later to a run's nearest clusters.

    Example: organizer cluster -k auto --k-max 30
    """
    if ctx.invoked_subcommand is not None:
        _hand_down(library, as_json)  # `organizer roots -L LIB move ...` means LIB
        return
    if assign_new:  # the spelling of an earlier organizer
        _assign(run, library, as_json)
        return
    if k_max is not None and k_min > k_max:
        raise typer.BadParameter(f"{k_max} is below --k-min {k_min}", ctx, param_hint="--k-max")
    with (
        _open(library) as lib,
        out.StatusLine("cluster", not as_json) as progress,
    ):
        summary = lib.cluster(
            k,
            algorithm=algorithm,
            seed=seed,
            k_min=k_min,
            k_max=k_max,
            vocabulary=vocabulary,
            names=names,
            include_offline=include_offline,
            progress=progress,
        )
    out.print_offline(summary.offline)
    if summary.note:
        out.err(f"note: {summary.note}")
    if as_json:
        out.print_json(summary.to_dict())
    else:
        out.print_run(summary)


@cluster_app.command("assign")
@_handled
def cluster_assign(
    run: RunOpt = None, library: LibraryOpt = None, as_json: JsonOpt = False
) -> None:
    """Add images ingested since a run to its nearest clusters, without re-clustering.

    Example: organizer cluster assign --run 3
    """
    _assign(run, library, as_json)


def _assign(run: int | None, library: Path | str | None, as_json: bool) -> None:
    as_json = as_json or bool(_GLOBAL["json"])
    with _open(library) as lib:
        result = lib.assign_new(run)
    if as_json:
        out.print_json(result.to_dict())
        return
    print(f"assigned {result.assigned} new images to run {result.summary.run.id}")
    out.print_run(result.summary)


@command
def clusters(
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
    if as_json:
        out.print_json(summary.to_dict(representatives=limit, absolute=absolute))
    else:
        out.print_run(summary, absolute, limit)


@command
def runs(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """The stored cluster runs, oldest first.

    Example: organizer runs
    """
    _runs(library, as_json)


def _runs(library: Path | str | None, as_json: bool) -> None:
    with _open(library) as lib:
        listing = lib.runs()
    if as_json:
        out.print_json({"runs": [r.to_dict() for r in listing]})
    else:
        out.print_runs(listing)


@command
def export(
    to: Annotated[
        Path,
        typer.Option(
            "--to", parser=_path, help="An empty folder to create the cluster folders in."
        ),
    ],
    run: RunOpt = None,
    mode: Annotated[ExportMode, typer.Option(help="Link to the images, or copy them.")] = (
        ExportMode.SYMLINK
    ),
    force: Annotated[
        bool,
        typer.Option("--force", help="Write into a non-empty folder (nothing there is removed)."),
    ] = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One folder per cluster (like 03-beach) with links to, or copies of, its images.

    Your photos are never moved, changed or deleted.

    Example: organizer export --to ~/Pictures/by-cluster
    """
    with _open(library) as lib:
        result = lib.export(run, to, mode, force)
    for warning in result.warnings:
        out.err(f"warning: {warning}")
    if as_json:
        out.print_json(result.to_dict())
        return
    if result.replaced:
        print(f"replaced the previous export there ({plural(result.replaced, 'entry', 'entries')})")
    done = result.linked or result.copied
    how = "linked" if mode == ExportMode.SYMLINK else "copied"
    print(
        f"{result.folders} folders in {result.target}: {done} images {how}, {result.skipped} skipped"
    )


@command
def evaluate(
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
    if as_json:
        out.print_json(result.to_dict())
    else:
        out.print_evaluation(result)


@command
def report(
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
        )
    out.print_offline(summary.offline)
    if as_json:
        out.print_json(summary.to_dict())
    else:
        out.print_report(summary)


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
        _hand_down(library, as_json)  # `organizer roots -L LIB move ...` means LIB
        return
    with _open(library) as lib:
        listing = lib.roots()
    if as_json:
        out.print_json({"roots": [r.to_dict() for r in listing]})
    else:
        out.print_roots(listing)


DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Say what would change; change nothing.")
]


@roots_app.command("remove")
@_handled
def roots_remove(
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
    if as_json or _GLOBAL["json"]:
        out.print_json(change.to_dict())
    else:
        out.print_root_change(change)


@roots_app.command("move")
@_handled
def roots_move(
    old: Annotated[
        str, typer.Argument(parser=_named_root, help="The root as the library knows it.")
    ],
    new: Annotated[Path, typer.Argument(parser=_path, help="The folder its files are in now.")],
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
    if as_json or _GLOBAL["json"]:
        out.print_json(change.to_dict())
    else:
        out.print_root_change(change)


def _token(value: str | None) -> str | None:
    from organizer.serve import MIN_TOKEN, TOKEN_CHARACTERS

    if value is not None and (len(value) < MIN_TOKEN or not set(value) <= TOKEN_CHARACTERS):
        raise typer.BadParameter(
            f"use at least {MIN_TOKEN} letters, digits, '-', '_', '.' or '~', e.g. the output "
            "of `python -c 'import secrets; print(secrets.token_urlsafe())'`"
        )
    return value


@command
def serve(
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
    library: LibraryOpt = None,
) -> None:
    """Browse, search and review the library in a local web app (read-only).

    Example: organizer serve --open
    """
    from organizer.serve import serve as run_server
    from organizer.serve.guard import is_loopback

    if not is_loopback(host) and token is None:
        out.err(
            f"error: --host {host} lets other machines in: give --token too (or "
            "ORGANIZER_TOKEN), or keep the default 127.0.0.1"
        )
        raise typer.Exit(EXIT_USAGE)
    with _open(library) as lib:
        run_server(lib, host, port, token, open_browser, announce=out.err)


def main() -> None:
    try:
        app()
    finally:
        # The interpreter's last garbage collections walk every object torch, sklearn and
        # faiss made: about a second after each command. Frozen objects are not walked;
        # exit handlers and finalizers (temporary files) still run.
        gc.freeze()
