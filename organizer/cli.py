"""The `organizer` command: parse options -> Settings -> one library call -> print.

Data goes to stdout (a table, or one JSON document with --json); progress, warnings and
errors go to stderr. Exit codes: 0 done, 1 failed, 2 usage error.
"""

from __future__ import annotations

import functools
import os
import traceback
import warnings
from pathlib import Path
from typing import Annotated

import typer

from organizer import console as out
from organizer.errors import Interrupted, OrganizerError

app = typer.Typer(
    help="Organise large photo folders with CLIP: ingest, search, cluster, report.\n\n"
    "Example: organizer ingest ~/Photos && organizer status",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

LibraryOpt = Annotated[
    Path | None,
    typer.Option(
        "--library",
        "-L",
        help="Library folder [env ORGANIZER_LIBRARY; default: per-user data dir].",
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
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu or cuda [env ORGANIZER_DEVICE].")]
PrecisionOpt = Annotated[
    str | None, typer.Option(help="auto, fp32, bf16 or fp16 [env ORGANIZER_PRECISION].")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
AbsoluteOpt = Annotated[bool, typer.Option("--absolute", help="Show absolute paths.")]


def _version(value: bool) -> None:
    if value:
        from organizer import __version__

        print(f"organizer {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Organise large photo folders with CLIP: ingest, search, cluster, report.

    Example: organizer ingest ~/Photos && organizer status
    """


def command(fn):
    """Register a command that maps OrganizerError (and anything unexpected) to one line, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = out.show_warning
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Interrupted as exc:
            out.err(f"interrupted: {exc}")
            raise typer.Exit(130) from None
        except OrganizerError as exc:
            out.err(f"error: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            out.err("interrupted: work committed so far is kept; run the command again to finish")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("ORGANIZER_DEBUG"):
                traceback.print_exc()
            message = str(exc).splitlines()[0] if str(exc) else ""
            out.err(
                f"error: unexpected {type(exc).__name__}: {message} "
                "(set ORGANIZER_DEBUG=1 for details)"
            )
            raise typer.Exit(1) from None

    return app.command()(wrapper)


def _settings(**cli):
    from organizer.config import resolve_settings

    return resolve_settings(**cli)


def _open(settings, create: bool = False):
    from organizer.library import Library

    return Library.open(settings, create=create)


@command
def ingest(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Folders to ingest; none = every known root.")
    ] = None,
    library: LibraryOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per model batch [env ORGANIZER_BATCH_SIZE].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes [env ORGANIZER_WORKERS].")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for a busy library instead of failing.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Try failed files again even if unchanged.")
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
    from organizer.ingest import IngestOptions

    settings = _settings(
        library=library,
        model=model,
        pretrained=pretrained,
        device=device,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
    )
    options = IngestOptions(retry_failed=retry_failed, follow_symlinks=follow_symlinks)
    with (
        _open(settings, create=True) as lib,
        out.IngestProgress(enabled=not (quiet or as_json)) as progress,
        out.StopRequest() as stop,
    ):
        summary = lib.ingest(
            paths or [], options=options, wait=wait, progress=progress, cancel=stop
        )
    if as_json:
        out.print_json(summary.to_dict())
        return
    s = summary
    print(
        f"ingested in {s.elapsed_s:.1f} s: {s.new} new, {s.changed} changed, {s.moved} moved, "
        f"{s.unchanged} unchanged, {s.missing} missing, {s.failed} failed"
    )
    if s.embedded:
        print(
            f"embedded {s.embedded} images ({s.precision} on {s.device}, "
            f"{s.images_per_s:.1f} images/s after {s.model_load_s:.1f} s loading the model)"
        )
    if s.reused:
        print(f"reused {s.reused} vectors of identical files")
    for problem in s.problems:
        out.err(f"warning: {problem}")
    if s.failed:
        print(f"{s.failed} files could not be read: see `organizer status --failed`")


@command
def status(
    library: LibraryOpt = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="List the files that could not be read, and why.")
    ] = False,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """What is in the library: roots, model, images by status, index health, last ingest.

    Example: organizer status --failed
    """
    settings = _settings(library=library)
    with _open(settings) as lib:
        if failed:
            out.print_failures(lib.failures(), absolute, as_json)
            return
        st = lib.status()
    if as_json:
        from dataclasses import asdict

        out.print_json(asdict(st))
        return
    out.print_status(st)


KOpt = Annotated[int, typer.Option("-k", "--top", help="How many results.")]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Only results at least this similar (cosine).")
]


@command
def similar(
    photo: Annotated[Path, typer.Argument(help="An image: one in the library, or any other file.")],
    k: KOpt = 12,
    threshold: ThresholdOpt = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Images most like PHOTO, best first (the photo itself is left out).

    A photo the library holds answers from its stored vector, without loading the model.

    Example: organizer similar ~/Photos/dog.jpg -k 5
    """
    with _open(_settings(library=library)) as lib:
        res = lib.similar(photo, k=k, threshold=threshold)
    out.print_results(res, absolute, as_json)


@command
def search(
    query: Annotated[
        str | None, typer.Argument(help="What to look for, in words (or an image path).")
    ] = None,
    plus: Annotated[
        list[str] | None,
        typer.Option("--plus", help="Add a text or image to the query (repeatable)."),
    ] = None,
    minus: Annotated[
        list[str] | None, typer.Option("--minus", help="Subtract a text or image (repeatable).")
    ] = None,
    k: KOpt = 12,
    threshold: ThresholdOpt = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find images by description; combine terms with --plus and --minus.

    Example: organizer search "beach" --minus "people" --plus ~/Photos/sunset.jpg
    """
    with _open(_settings(library=library)) as lib:
        res = lib.search(query, plus or [], minus or [], k=k, threshold=threshold)
    out.print_results(res, absolute, as_json)


@command
def duplicates(
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity from which two images count as the same photo.")
    ] = 0.96,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Groups of the same photo: identical files, re-encodes, resizes, small crops, bursts.

    Each group marks the suggested keeper (largest resolution, then oldest). Nothing is deleted.

    Example: organizer duplicates --threshold 0.97
    """
    with _open(_settings(library=library)) as lib:
        groups = lib.duplicates(threshold)
    if as_json:
        out.print_json({"groups": [out.group_json(g, absolute) for g in groups]})
        return
    if not groups:
        print("no duplicates")
    for n, g in enumerate(groups, start=1):
        print(f"group {n} ({len(g.members)} images)")
        for m in g.members:
            mark = "keep" if m.image_id == g.keep else ("same" if m.identical_to_keeper else "    ")
            size = f"{m.width}x{m.height}" if m.width else "?"
            print(
                f"  {mark}  {size:>11}  {m.size / 1e6:7.2f} MB  {out.shown(m.root, m.relpath, absolute)}"
            )


RunOpt = Annotated[int | None, typer.Option("--run", help="Cluster run id (default: the latest).")]


@command
def cluster(
    k: Annotated[
        str, typer.Option("-k", help="Number of clusters, or 'auto' to sweep k-min..k-max.")
    ] = "auto",
    algorithm: Annotated[str, typer.Option(help="faiss (spherical, fast) or sklearn.")] = "faiss",
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed and data give the same clusters.")
    ] = 0,
    k_min: Annotated[int, typer.Option(help="Smallest k tried by -k auto.")] = 2,
    k_max: Annotated[int, typer.Option(help="Largest k tried by -k auto.")] = 40,
    vocabulary: Annotated[
        Path | None, typer.Option(help="Concepts for naming clusters (one a line).")
    ] = None,
    names: Annotated[
        bool, typer.Option("--names/--no-names", help="Name clusters with the model's text tower.")
    ] = True,
    assign_new: Annotated[
        bool,
        typer.Option(
            "--assign-new", help="Add images ingested since --run to its nearest clusters."
        ),
    ] = False,
    run: RunOpt = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Group the library's images with K-means and name the groups.

    -k auto picks the k with the best silhouette (cosine, in embedding space).

    Example: organizer cluster -k auto --k-max 30
    """
    with _open(_settings(library=library)) as lib:
        if assign_new:
            summary = lib.clustering.assign_new(run)
        else:
            k_value: int | str = k if k == "auto" else _int_k(k)
            summary = lib.cluster(
                k_value,
                algorithm=algorithm,
                seed=seed,
                k_min=k_min,
                k_max=k_max,
                vocabulary=vocabulary,
                names=names,
            )
    if as_json:
        data = summary.to_dict()
        if assign_new:
            data["assigned"] = summary.assigned
        out.print_json(data)
        return
    if assign_new:
        print(f"assigned {summary.assigned} new images to run {summary.run_id}")
    out.print_run(summary)


def _int_k(k: str) -> int:
    try:
        return int(k)
    except ValueError:
        raise typer.BadParameter(f"-k takes a whole number or 'auto', not {k!r}") from None


@command
def clusters(
    run: RunOpt = None,
    top: Annotated[int, typer.Option(help="Representative images shown per cluster.")] = 3,
    runs: Annotated[bool, typer.Option("--runs", help="List the stored runs instead.")] = False,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The clusters of a run: number, label, size, silhouette, most representative images.

    Example: organizer clusters --top 5
    """
    with _open(_settings(library=library)) as lib:
        if runs:
            listing = lib.clustering.runs()
            if as_json:
                out.print_json({"runs": listing})
            for r in [] if as_json else listing:
                print(
                    f"run {r['run_id']}: {r['created_at']}  k={r['k']}  {r['algorithm']}  {r['n_images']} images"
                )
            return
        summary = lib.clusters(run, representatives=top)
    if as_json:
        data = summary.to_dict()
        for c, entry in zip(summary.clusters, data["clusters"], strict=True):
            entry["representatives"] = [out.shown(r, p, absolute) for r, p in c.representatives]
        out.print_json(data)
        return
    out.print_run(summary, absolute, top)


@command
def export(
    to: Annotated[
        Path, typer.Option("--to", help="An empty folder to create the cluster folders in.")
    ],
    run: RunOpt = None,
    mode: Annotated[str, typer.Option(help="symlink (default) or copy.")] = "symlink",
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
    with _open(_settings(library=library)) as lib:
        result = lib.clustering.export(run, to, mode, force)
    if as_json:
        from dataclasses import asdict

        out.print_json(asdict(result))
        return
    done = result.linked or result.copied
    how = "linked" if mode == "symlink" else "copied"
    print(
        f"{result.folders} folders in {result.target}: {done} images {how}, {result.skipped} skipped"
    )


@command
def evaluate(
    labels: Annotated[
        str, typer.Option(help="Where true labels come from: 'folders' (parent folder name).")
    ] = "folders",
    run: RunOpt = None,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a cluster run against true labels: NMI, ARI, purity, silhouette, label spread.

    Example: organizer evaluate --labels folders
    """
    with _open(_settings(library=library)) as lib:
        summary, ev = lib.clustering.evaluate(run, labels)
    if as_json:
        from dataclasses import asdict

        out.print_json(
            {
                "run_id": summary.run_id,
                "k": summary.k,
                "silhouette": summary.silhouette,
                "nmi": ev.nmi,
                "ari": ev.ari,
                "purity": ev.purity,
                "labels": [asdict(s) for s in ev.spread],
            }
        )
        return
    sil = f"{summary.silhouette:.3f}" if summary.silhouette is not None else "n/a"
    print(
        f"run {summary.run_id} (k={summary.k}): NMI {ev.nmi:.3f}  ARI {ev.ari:.3f}  "
        f"purity {ev.purity:.3f}  silhouette {sil}"
    )
    print(f"  {'label':<24} {'images':>6} {'clusters':>8}  main cluster (share)  entropy")
    for s in ev.spread:
        print(
            f"  {s.label[:24]:<24} {s.size:>6} {s.clusters:>8}  {s.main_cluster:>4} ({s.main_share:.0%})"
            f"{'':>9}{s.entropy_bits:.2f} bits"
        )


@command
def report(
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    run: RunOpt = None,
    png: Annotated[
        Path | None, typer.Option(help="Also write the static map as a PNG file.")
    ] = None,
    max_points: Annotated[
        int | None, typer.Option(help="Points on the map; a seeded sample beyond (default 5000).")
    ] = None,
    library: LibraryOpt = None,
    absolute: AbsoluteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a self-contained HTML report: t-SNE map, clusters, thumbnails. Opens offline.

    Example: organizer report -o report.html --png map.png
    """
    with (
        _open(_settings(library=library)) as lib,
        out.ReportProgress(not (quiet or as_json)) as progress,
    ):
        s = lib.report(
            output, run, png=png, max_points=max_points, absolute=absolute, progress=progress
        )
    if as_json:
        out.print_json(s.to_dict())
        return
    run_text = (
        f"cluster run {s.run_id} (k={s.k})"
        if s.run_id
        else "no cluster run yet: organizer cluster -k auto"
    )
    print(f"wrote {s.path} ({s.size_bytes / 1e6:.1f} MB): {s.n_images:,} images, {run_text}")
    if s.sampled:
        print(
            f"  map: a seeded sample of {s.n_points:,} of {s.n_images:,} images "
            f"(--max-points {s.n_images} shows all)"
        )
    print(
        f"  t-SNE {s.tsne_s:.1f} s ({s.backend}), thumbnails {s.thumbnails_s:.1f} s, total {s.total_s:.1f} s"
    )
    if s.png:
        print(f"  map image: {s.png}")
    if s.placeholders:
        print(f"  {s.placeholders} images could not be shown (placeholders)")


def main() -> None:
    app()
