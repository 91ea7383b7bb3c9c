"""Console output of the CLI: tables, JSON, progress on stderr, Ctrl-C handling.

Data goes to stdout (a table, or one JSON document); progress, warnings and errors to stderr.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

from organizer.paths import is_within
from organizer.redact import hide_passwords
from organizer.scan import display_path, display_text, shown_path

if TYPE_CHECKING:
    from organizer.cluster_runs import AssignResult, ExportSummary, RunEvaluation
    from organizer.duplicates.checks import LeftFile
    from organizer.duplicates.clean import CleanFile, CleanSummary, UndoSummary
    from organizer.duplicates.groups import DecidedFiles, Duplicates
    from organizer.duplicates.plan import Plan
    from organizer.events import EventList
    from organizer.finder import Results
    from organizer.ingest import IngestSummary, Progress
    from organizer.photo_meta import PhotoMeta
    from organizer.report import ReportSummary
    from organizer.roots import RootChange, RootStatus
    from organizer.status import LibraryStatus, SkippedFiles
    from organizer.store.records import (
        ClusterRunRecord,
        ClusterRunSummary,
        Failure,
        IngestRunRecord,
        OfflineImages,
    )
    from organizer.vectors import IndexBuild
    from organizer.vectors.sharded import ShardPlan


class StageProgress(Protocol):
    """A long step's progress: its stage, and how far it is (cluster, report, index)."""

    @property
    def stage(self) -> str: ...
    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...


def err(message: str) -> None:
    """A line on stderr. Organizer's own messages never hold a password, but an unexpected
    error's text might quote the URL it was given: passwords in URLs are never shown."""
    print(hide_passwords(message), file=sys.stderr)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    err(f"warning: {message}")


def print_json(data: object) -> None:
    """One JSON document: the ``to_dict()`` of a result (anything else is a bug, not a str)."""
    print(json.dumps(data, indent=2, ensure_ascii=False))


R = TypeVar("R")


def show(
    result: R,
    as_json: bool,
    table: Callable[[R], None],
    data: Callable[[R], object] | None = None,
) -> None:
    """Print a command's result: one JSON document with ``--json``, else lines for people.

    Args:
        result: what the library returned.
        as_json: print ``result.to_dict()`` (or ``data(result)``) as JSON.
        table: prints the result for people (``print_status``, ``print_run``...).
        data: the JSON document, for a result without ``to_dict()`` or that takes arguments.
    """
    if as_json:
        print_json(data(result) if data is not None else result.to_dict())  # type: ignore[attr-defined]
    else:
        table(result)


class StopRequest:
    """First Ctrl-C: finish the current batch, commit, stop. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handler(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err("stopping after the current batch (Ctrl-C again to stop at once)")

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> StopRequest:
        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


class IngestProgressBar:
    """A rich progress bar on stderr when it is a terminal; a no-op callback otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> Callable[[Progress], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("ingest", total=None, rate="")
        return self._update

    def _update(self, p: Progress) -> None:
        elapsed = time.perf_counter() - self._started
        rate = f"{p.embedded / elapsed:.1f} img/s" if elapsed > 0 and p.embedded else ""
        if p.read > p.done and not p.embedded:
            rate = f"{p.read} read while the model loads"
        self._bar.update(self._task, completed=p.done, total=p.total, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


_RUNTIME_NAMES = {"onnxruntime": " with ONNX Runtime", "openvino": " with OpenVINO"}


def print_ingest(s: IngestSummary) -> None:
    print(
        f"ingested in {s.elapsed_s:.1f} s: {s.new:,} new, {s.changed:,} changed, "
        f"{s.moved:,} moved, {s.unchanged:,} unchanged, {s.missing:,} missing, "
        f"{s.failed:,} failed"
    )
    if s.embedded and s.engine == "ray":
        print(
            f"embedded {plural(s.embedded, 'image')} on Ray ({s.precision} on {s.device}, "
            f"{s.embedded / max(s.elapsed_s, 1e-9):.1f} images/s overall)"
        )
    elif s.embedded:
        print(
            f"embedded {plural(s.embedded, 'image')} ({s.precision} on {s.device}"
            f"{_RUNTIME_NAMES.get(s.runtime or '', '')}, "
            + (
                f"{s.images_per_s:.1f} images/s; the model loaded in {s.model_load_s:.1f} s "
                "while files were read)"
                if s.model_load_s > s.model_wait_s + 0.05
                else f"{s.images_per_s:.1f} images/s after {s.model_load_s:.1f} s loading the model)"
            )
        )
    if s.reused:
        print(f"reused {plural(s.reused, 'vector')} of identical files")
    if s.metadata_filled:
        print(
            f"read the date, place and camera of {plural(s.metadata_filled, 'image')} from their "
            "headers (their vectors kept)"
        )
    if s.skipped:
        kinds = ", ".join(
            f"{ext} {n:,}" for ext, n in sorted(s.skipped.items(), key=lambda x: -x[1])
        )
        n = sum(s.skipped.values())
        what = "is not an image" if n == 1 else "are not images"
        print(
            f"skipped {plural(n, 'file')} that {what} ({kinds}): see `organizer status --skipped`"
        )
    for folder in s.export_folders:
        print(f"skipped {display_text(folder)}: an organizer export (links to images already here)")
    for problem in s.problems:
        err(f"warning: {problem}")
    if s.failed:
        print(f"{plural(s.failed, 'file')} could not be read: see `organizer status --failed`")


def left_out_dict(
    failures: list[Failure] | None, left_out: SkippedFiles | None, absolute: bool
) -> dict:
    """``status --failed`` and/or ``--skipped`` as one JSON document with the keys of both
    (``failed``; ``by_type``, ``files``, ``export_folders``)."""
    data = {} if failures is None else {"failed": [f.to_dict(absolute) for f in failures]}
    return {**data, **(left_out.to_dict(absolute) if left_out is not None else {})}


def print_left_out(
    failures: list[Failure] | None, left_out: SkippedFiles | None, absolute: bool
) -> None:
    """``status --failed`` and/or ``--skipped``: each list, one after the other."""
    if failures is not None:
        print_failures(failures, absolute)
    if failures is not None and left_out is not None:
        print()
    if left_out is not None:
        print_skipped(left_out, absolute)


def print_skipped(left_out: SkippedFiles, absolute: bool) -> None:
    if not left_out.files and not left_out.export_folders:
        print("ingest leaves nothing out")
    for kind, n in left_out.by_type().items():
        print(f"{plural(n, kind + ' file')}")
    absolute = absolute or _same_name_under_two_roots(left_out.files)
    for root, relpath in left_out.files:
        print(f"  {shown_path(root, relpath, absolute)}")
    for folder in left_out.export_folders:
        print(f"export folder (skipped): {display_text(folder)}")


def print_failures(failures: list[Failure], absolute: bool) -> None:
    if not failures:
        print("no failed files")
        return
    current_root = None
    for f in failures:
        if f.root != current_root and not absolute:
            print(f"{display_text(f.root)}:")
            current_root = f.root
        indent = "" if absolute else "  "
        print(f"{indent}{shown_path(f.root, f.relpath, absolute)}: {f.reason}")


def print_status(st: LibraryStatus) -> None:
    model = st.model
    rows = [("library", st.library)]
    if model:
        random = "  (random weights)" if model.spec.is_random else ""
        rows.append(
            ("model", f"{model.spec.name} / {model.spec.pretrained}, {model.dim}-d{random}")
        )
    else:
        rows.append(("model", "none yet (chosen at the first ingest)"))
    shown = [display_text(r) + ("  (absent)" if r in st.absent_roots else "") for r in st.roots]
    rows.append(("roots", "\n        ".join(shown) if shown else "none"))
    images = st.images
    rows.append(
        ("images", f"{images['ok']} ok, {images['failed']} failed, {images['missing']} missing")
    )
    details = st.metadata_summary()
    if details:
        rows.append(("details", details))
    index = st.index
    health = "in sync" if index.in_sync else "stale: rebuilt from the database on next use"
    if index.damaged:
        health = "damaged (the full check failed): removed, rebuilt from the database on next use"
    rows.append(("index", f"{index.description or 'none'}, {index.count or 0} vectors, {health}"))
    if index.growth is not None and index.growth.rebuilt_because:
        rows.append(
            ("", f"rebuilt in full, not grown in place, because {index.growth.rebuilt_because}")
        )
    if st.last_ingest:
        rows.append(("ingest", _last_ingest(st.last_ingest)))
    for key, value in rows:
        print(f"{key:<7} {value}")


def print_index_build(built: IndexBuild) -> None:
    """One line: what was built, how good, how big, how long (and why not as asked)."""
    from organizer.vectors.kinds import format_bytes

    recall = f", recall@10 {built.recall_at_10:.3f}" if built.recall_at_10 is not None else ""
    files = (
        f", {format_bytes(int(built.file_mb * 1e6))} on disk"
        if built.file_mb > built.ram_mb * 1.01
        else ""
    )
    print(
        f"built {built.description.split(' (')[0]} index of {plural(built.count, 'vector')}"
        f"{recall}: {format_bytes(int(built.ram_mb * 1e6))} in memory{files}, "
        f"in {built.build_s:.1f} s"
    )
    if built.note:
        print(f"note: {built.note}")


def _last_ingest(run: IngestRunRecord) -> str:
    """How the latest ingest went, in words."""
    data, summary = run.to_dict(), run.summary
    if run.status == "running":
        done, total = summary.get("done"), summary.get("total")
        progress = f": {done:,} of {total:,} files read" if total else ""
        embedded = summary.get("embedded")
        embedded = f", {plural(embedded, 'image')} embedded" if embedded else ""
        return f"running since {data['started_at']} (pid {run.pid}){progress}{embedded}"
    if run.status == "interrupted" and run.finished_at is None:
        return (
            f"interrupted: started {data['started_at']} (pid {run.pid}), "
            f"{run.error or 'the process was stopped'}; what it committed is kept: run "
            "`organizer ingest` to finish"
        )
    how = f"{run.precision} on {run.device}" if run.device else "nothing to embed"
    why = f": {run.error}" if run.error else ""
    return f"{data['finished_at']} ({run.status}, {how}){why}"


def print_offline(offline: OfflineImages | None) -> None:
    """One line on stderr when absent roots kept images out of a command's answer."""
    if not offline or not offline.images:
        return
    roots = plural(len(offline.roots), "absent root")
    err(
        f"note: left out {plural(offline.images, 'image')} under {roots} "
        f"({', '.join(map(display_text, offline.roots))}): --include-offline keeps them"
    )


def print_results(res: Results, absolute: bool) -> None:
    """One line per result: rank by score, score, path, then when, where and with what it
    was taken, as far as known (rank order is score order even with --sort date)."""
    if not res.where.empty:
        print(f"filter: {display_text(res.where.describe())}")
    if not res.results:
        print("no results")
    absolute = absolute or _same_name_under_two_roots((r.root, r.relpath) for r in res.results)
    for r in res.results:
        facts = _facts(r.meta, r.place)
        path = shown_path(r.root, r.relpath, absolute)
        print(f"{r.rank:>3}  {r.score:.4f}  {path}" + (f"  ({facts})" if facts else ""))


def _facts(meta: PhotoMeta | None, place: str | None) -> str:
    """ "22 Oct 2008 14:03 · Arezzo, Tuscany, Italy · Canon EOS 5D", of what is known."""
    parts = []
    if meta is not None and meta.taken_at is not None:
        parts.append(f"{meta.taken_at:%-d %b %Y %H:%M}")
    if place:
        parts.append(place)
    if meta is not None and meta.camera:
        parts.append(meta.camera)
    return display_text(" · ".join(parts))


def _same_name_under_two_roots(paths: Iterable[tuple[str, bytes]]) -> bool:
    """Whether two of these (root, relative path) differ only in their root: shown relative
    to their roots they would read as one file twice, so a listing shows whole paths."""
    roots_of: dict[bytes, set[str]] = {}
    for root, relpath in paths:
        roots_of.setdefault(relpath, set()).add(root)
    return any(len(roots) > 1 for roots in roots_of.values())


def print_duplicates(found: Duplicates, absolute: bool) -> None:
    """Each kind's groups: the file kept and why, then the others (``move``: a clean-up would
    move it; ``with``: the same shot as the keeper, its RAW or JPEG, kept with it)."""
    files = [f.record for g in found.groups for f in g.files]
    absolute = absolute or _same_name_under_two_roots((r.root, r.relpath) for r in files)
    for kind in found.kinds:
        groups = found.of(kind)
        print(f"{kind}: {plural(len(groups), 'group')}" + (":" if groups else ""))
        for n, g in enumerate(groups, start=1):
            kept = shown_path(g.keep.record.root, g.keep.record.relpath, absolute)
            print(
                f"  {n}. group {g.id}: {plural(len(g.files), 'file')}, "
                f"similarity {g.similarity:.3f}"
            )
            print(f"     keeps {kept}: {g.keeper.reason}")
            for f in g.files:
                r = f.record
                mark = {"keep": "keep", "with-keeper": "with", "move": "move"}[f.role]
                shot = f"shot {f.shot:<2} " if f.shot else ""
                same = " (identical)" if f.identical and f.role != "keep" else ""
                size = f"{r.width}x{r.height}" if r.width else "?"
                path = shown_path(r.root, r.relpath, absolute)
                print(f"     {mark}  {shot}{size:>11}  {r.size / 1e6:7.2f} MB  {path}{same}")
    if found.decided is not None:
        print(f"decided: {plural(len(found.decided), 'decision')}")
        for d in found.decided:
            print_decision(d, absolute, indent="  ")


def print_decision(d: DecidedFiles, absolute: bool, indent: str = "") -> None:
    when = d.created_at.strftime("%Y-%m-%d %H:%M")
    print(f"{indent}decision {d.id}: {d.decision} ({when}, {plural(d.hashes, 'content')})")
    for r in d.records:
        print(f"{indent}  {shown_path(r.root, r.relpath, absolute)}")
    if not indent:
        print(f"take it back with: organizer duplicates unmark {d.id}")


def print_plan_written(plan: Plan, path: Path) -> None:
    moved = sum(len(g.move) for g in plan.groups)
    print(
        f"wrote the plan {path}: {plural(len(plan.groups), 'group')}, "
        f"{plural(moved, 'file')} to move to the trash; check it, edit it if you like, "
        f"then: organizer clean {path}"
    )


def print_run(summary: ClusterRunSummary, absolute: bool = False, top: int = 0) -> None:
    run = summary.run
    sil = f"{run.silhouette:.3f}" if run.silhouette is not None else "n/a"
    print(
        f"run {run.id}: k={run.k} ({run.algorithm}, seed {run.seed}), "
        f"{run.n_images} images, silhouette {sil}"
    )
    if run.sweep:
        print("  k sweep (silhouette, cosine):")
        for p in run.sweep:
            chosen = "  <- chosen" if p["k"] == run.k else ""
            print(f"    k={p['k']:<4} {p['silhouette']:.4f}{chosen}")
    print(f"  {'#':>3}  {'label':<24} {'size':>6}  silhouette")
    shown = ((m.root, m.relpath) for c in summary.clusters for m in c.members[:top])
    absolute = absolute or _same_name_under_two_roots(shown)
    for c in summary.clusters:
        csil = f"{c.silhouette:.3f}" if c.silhouette is not None else "n/a"
        print(f"  {c.number:>3}  {(c.label or '-')[:24]:<24} {c.size:>6}  {csil}")
        for m in c.members[:top]:
            print(f"         {shown_path(m.root, m.relpath, absolute)}")


def print_assigned(result: AssignResult) -> None:
    print(f"assigned {result.assigned} new images to run {result.summary.run.id}")
    print_run(result.summary)


def print_export(result: ExportSummary, mode: str | None) -> None:
    if result.replaced:
        print(f"replaced the previous export there ({plural(result.replaced, 'entry', 'entries')})")
    if result.linked and result.copied:  # the default mode: links here, copies of the others
        done = f"{result.linked} images linked, {result.copied} copied (bucket or tar shard)"
    elif result.copied or mode == "copy":
        done = f"{result.copied} images copied"
    else:
        done = f"{result.linked} images linked"
    print(f"{result.folders} folders in {result.target}: {done}, {result.skipped} skipped")


def print_events(found: EventList, absolute: bool = False) -> None:
    """One line an event (number, photos, name, cover), then what is in none."""
    if found.events:
        print(f"{'#':>4}  {'photos':>6}  event  (cover)")
    for e in found.events:
        cover = shown_path(e.cover.root, e.cover.relpath, absolute)
        print(f"{e.number:>4}  {e.count:>6}  {display_text(e.name)}  ({cover})")
    summary = f"{plural(len(found.events), 'event')} of {plural(found.photos, 'photo')}"
    if found.smaller:
        summary += (
            f"; {plural(found.smaller, 'smaller event')} ({plural(found.smaller_photos, 'photo')})"
            f" left out by --min-size {found.rules.min_size}"
        )
    print(f"{summary}; undated: {found.undated} (no time taken, in no event)")


def print_shards_trained(made: ShardPlan, folder: Path, took_s: float) -> None:
    print(
        f"trained the {made.kind} index for {sum(made.counts):,} vectors in "
        f"{took_s:.1f} s and planned {made.parts} shards in {folder}"
    )
    print(
        f"next: `organizer index shards fill {folder} --part I` for each I from 1 to "
        f"{made.parts} (one per machine), then `organizer index shards merge {folder}`"
    )


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files'."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def print_roots(roots: Sequence[RootStatus]) -> None:
    if not roots:
        print("no roots yet: organizer ingest FOLDER")
    for r in roots:
        images = r.record.images
        state = "present" if r.present else "ABSENT "
        print(
            f"{state}  {display_text(r.record.path)}  ({plural(images['ok'], 'image')}, "
            f"{images['failed']} failed, {images['missing']} missing)"
        )
    absent = [display_text(r.record.path) for r in roots if not r.present]
    if absent:
        print(
            "absent roots are left out of similar, search, duplicates, cluster and report "
            "(--include-offline keeps them); `organizer roots move OLD NEW` follows a moved one"
        )


def print_root_change(change: RootChange) -> None:
    would = "would " if change.dry_run else ""
    if change.action == "remove":
        print(
            f"{would}forget {display_text(change.path)} and its {plural(change.images, 'image')} "
            "(no file is touched)"
        )
    else:
        checked = change.check
        assert checked is not None  # a move checks its sample of files
        print(
            f"{would}move {display_text(change.path)} -> {display_text(change.new_path or '')} ({plural(change.images, 'image')}"
            f" kept; {checked.same_size} of {checked.checked} sampled files found)"
        )


def print_clean(s: CleanSummary, absolute: bool = False) -> None:
    """What ``organizer clean`` did: a summary line, every skipped file with its reason,
    and how to undo it; with ``--dry-run`` every move it would make."""
    if s.resumed:
        print(
            f"{'would finish' if s.dry_run else 'finished'} the interrupted clean-up of this plan"
        )
    verb, skip = ("would move", "would skip") if s.dry_run else ("moved", "skipped")
    moved = (
        f"{verb} {plural(len(s.moved), 'file')} of {plural(s.groups, 'group')} to the trash "
        f"({_size(s.size)})"
        if s.moved
        else f"nothing {verb}"
    )
    if s.dry_run:
        print(moved + (":" if s.moved else ""))
        for f in s.moved:
            print(f"  {_clean_file(f, absolute)}")
        if s.skipped:
            print(f"{skip} {len(s.skipped):,}:")
    else:
        print(moved + (f"; {skip} {len(s.skipped):,}:" if s.skipped else ""))
    _print_left(s.skipped, absolute)
    for warning in s.warnings:
        err(f"warning: {warning}")
    if s.journal is not None:
        print(f"undo with: organizer clean --undo {shlex.quote(str(s.journal))}")


def print_undo(s: UndoSummary, absolute: bool = False) -> None:
    """What ``organizer clean --undo`` put back, and what it refused to (and why)."""
    journal = shlex.quote(str(s.journal))
    if s.nothing_left:
        print(f"nothing left to undo in {journal}")
        return
    size = sum(f.size for f in s.restored)
    refused = f"; refused {len(s.refused):,}:" if s.refused else ""
    print(f"put back {plural(len(s.restored), 'file')} ({_size(size)}){refused}")
    _print_left(s.refused, absolute)
    for warning in s.warnings:
        err(f"warning: {warning}")
    if s.refused:
        print(f"once they can go back, run: organizer clean --undo {journal}")


def _clean_file(f: CleanFile, absolute: bool) -> str:
    root = os.fsencode(f.root)
    src = shown_path(f.root, os.path.relpath(f.path, root), absolute)
    inside = not absolute and is_within(f.trash, root, strictly=True)
    dst = shown_path(f.root, os.path.relpath(f.trash, root)) if inside else display_path(f.trash)
    return f"{src} -> {dst}"


def _print_left(files: Sequence[LeftFile], absolute: bool) -> None:
    for f in files:
        print(f"  {f.shown(absolute)}: {f.reason}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return plural(n, "byte")


def print_runs(runs: Sequence[ClusterRunRecord]) -> None:
    if not runs:
        print("no cluster runs yet: organizer cluster -k auto")
    for r in runs:
        created = r.to_dict()["created_at"]
        print(f"run {r.id}: {created}  k={r.k}  {r.algorithm}  {r.n_images} images")


def print_evaluation(result: RunEvaluation) -> None:
    run, ev = result.run, result.evaluation
    sil = f"{run.silhouette:.3f}" if run.silhouette is not None else "n/a"
    print(
        f"run {run.id} (k={run.k}): NMI {ev.nmi:.3f}  ARI {ev.ari:.3f}  "
        f"purity {ev.purity:.3f}  silhouette {sil}"
    )
    # Whole paths (the labels of several roots) share long beginnings: never cut them.
    width = max([24, *(len(s.label) for s in ev.spread)])
    print(f"  {'label':<{width}} {'images':>6} {'clusters':>8}  main cluster (share)  entropy")
    for s in ev.spread:
        print(
            f"  {s.label:<{width}} {s.size:>6} {s.clusters:>8}  {s.main_cluster:>4} "
            f"({s.main_share:.0%}){'':>9}{s.entropy_bits:.2f} bits"
        )


def print_report(s: ReportSummary) -> None:
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


class StatusLine:
    """A rich status line on stderr while a long step runs (terminals only): ``label: stage
    done/total`` from progress records with those three fields."""

    def __init__(self, label: str, enabled: bool, first: str = "reading the library"):
        self.label = label
        self.first = first
        self.enabled = enabled and sys.stderr.isatty()
        self._status: Any = None

    def __enter__(self) -> Callable[[StageProgress], None] | None:
        if not self.enabled:
            return None
        from rich.console import Console

        self._status = Console(stderr=True).status(f"{self.label}: {self.first}")
        self._status.start()
        return self._update

    def _update(self, p: StageProgress) -> None:
        count = f" {p.done:,}/{p.total:,}" if p.total > 1 else ""
        self._status.update(f"{self.label}: {p.stage}{count}")

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
