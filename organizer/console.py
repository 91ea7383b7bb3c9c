"""Console output of the CLI: tables, JSON, progress on stderr, Ctrl-C handling.

Data goes to stdout (a table, or one JSON document); progress, warnings and errors to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time


def err(message: str) -> None:
    print(message, file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err(f"warning: {message}")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def shown(root: str, relpath: bytes, absolute: bool) -> str:
    from organizer.scan import display_path

    text = display_path(relpath)
    return os.path.join(display_path(os.fsencode(root)), text) if absolute else text


class StopRequest:
    """First Ctrl-C: finish the current batch, commit, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err("stopping after the current batch (Ctrl-C again to stop at once)")

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self):
        import signal

        self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        signal.signal(signal.SIGINT, self._old)


class IngestProgress:
    """A rich progress bar on stderr when it is a terminal; a no-op callback otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._started = time.perf_counter()

    def __enter__(self):
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

    def _update(self, p) -> None:
        elapsed = time.perf_counter() - self._started
        rate = f"{p.embedded / elapsed:.1f} img/s" if elapsed > 0 and p.embedded else ""
        self._bar.update(self._task, completed=p.done, total=p.total, rate=rate)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def print_failures(failures, absolute: bool, as_json: bool) -> None:
    if as_json:
        from organizer.scan import display_path

        print_json(
            {
                "failed": [
                    {
                        "root": f.root,
                        "path": shown(f.root, f.relpath, absolute),
                        "path_bytes_hex": f.relpath.hex()
                        if display_path(f.relpath) != f.relpath.decode("utf-8", "replace")
                        else None,
                        "reason": f.reason,
                    }
                    for f in failures
                ]
            }
        )
        return
    if not failures:
        print("no failed files")
        return
    current_root = None
    for f in failures:
        if f.root != current_root and not absolute:
            print(f"{f.root}:")
            current_root = f.root
        indent = "" if absolute else "  "
        print(f"{indent}{shown(f.root, f.relpath, absolute)}: {f.reason}")


def print_status(st) -> None:
    model = st.model
    rows = [("library", st.library)]
    if model:
        random = "  (random weights)" if model["random_weights"] else ""
        rows.append(("model", f"{model['name']} / {model['pretrained']}, {model['dim']}-d{random}"))
    else:
        rows.append(("model", "none yet (chosen at the first ingest)"))
    rows.append(("roots", "\n        ".join(st.roots) if st.roots else "none"))
    images = st.images
    rows.append(
        ("images", f"{images['ok']} ok, {images['failed']} failed, {images['missing']} missing")
    )
    index = st.index
    health = "in sync" if index.in_sync else "stale: rebuilt from the database on next use"
    rows.append(("index", f"{index.description or 'none'}, {index.count or 0} vectors, {health}"))
    if st.last_ingest:
        last = st.last_ingest
        rows.append(
            (
                "ingest",
                f"{last['finished_at']} ({last['status']}, {last['precision']} on {last['device']})",
            )
        )
    for key, value in rows:
        print(f"{key:<7} {value}")


def print_results(res, absolute: bool, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "query": res.query,
                "results": [
                    {
                        "rank": r.rank,
                        "path": shown(r.root, r.relpath, absolute),
                        "root": r.root,
                        "score": round(r.score, 6),
                        "image_id": r.image_id,
                    }
                    for r in res.results
                ],
            }
        )
        return
    if not res.results:
        print("no results")
    for r in res.results:
        print(f"{r.rank:>3}  {r.score:.4f}  {shown(r.root, r.relpath, absolute)}")


def group_json(group, absolute: bool) -> dict:
    images = [
        {
            "path": shown(m.root, m.relpath, absolute),
            "root": m.root,
            "image_id": m.image_id,
            "size": m.size,
            "width": m.width,
            "height": m.height,
            "identical": m.identical_to_keeper,
        }
        for m in group.members
    ]
    keep = next(i["path"] for i in images if i["image_id"] == group.keep)
    return {"images": images, "keep": keep}


def print_run(summary, absolute: bool = False, top: int = 0) -> None:
    sil = f"{summary.silhouette:.3f}" if summary.silhouette is not None else "n/a"
    print(
        f"run {summary.run_id}: k={summary.k} ({summary.algorithm}, seed {summary.seed}), "
        f"{summary.n_images} images, silhouette {sil}"
    )
    if summary.sweep:
        best = summary.k
        print("  k sweep (silhouette, cosine):")
        for p in summary.sweep:
            print(
                f"    k={p['k']:<4} {p['silhouette']:.4f}{'  <- chosen' if p['k'] == best else ''}"
            )
    print(f"  {'#':>3}  {'label':<24} {'size':>6}  silhouette")
    for c in summary.clusters:
        csil = f"{c.silhouette:.3f}" if c.silhouette is not None else "n/a"
        print(f"  {c.number:>3}  {(c.label or '-')[:24]:<24} {c.size:>6}  {csil}")
        for root, relpath in c.representatives[:top]:
            print(f"         {shown(root, relpath, absolute)}")


class ReportProgress:
    """A rich status line on stderr while the report is made (terminals only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._status = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console

        self._status = Console(stderr=True).status("report: reading the library")
        self._status.start()
        return self._update

    def _update(self, p) -> None:
        self._status.update(f"report: {p.stage} {p.done}/{p.total}")

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.stop()
