"""Ingest a folder into a library whose index then grows in place, for crash tests.

Usage, from the repository root:
    python -m tests.reliability.crash_grow LIBRARY ROOT [--die-at K] [--pq-min N]
Counts the file-system steps of the index update (renames, unlinks, writes, fsyncs, and
the commit of the record naming the files); with ``--die-at K`` it SIGKILLs this process
at the K-th (test instrumentation only). Prints how many steps the update took.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import organizer.vectors.cache as cache_module
import organizer.vectors.kinds
from organizer.config import Settings
from organizer.ingest import IngestOptions
from organizer.library import Library
from tests.fakes import FakeEmbedder

STEPS = {"n": 0, "on": False, "die": 0}


def _counted(name: str, real):
    def step(*args, **kwargs):
        if STEPS["on"]:
            STEPS["n"] += 1
            if STEPS["n"] == STEPS["die"]:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    step.__name__ = name
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("root")
    parser.add_argument("--die-at", type=int, default=0)
    parser.add_argument("--pq-min", type=int, default=0, help="ivf-pq from this many vectors")
    args = parser.parse_args()
    if args.pq_min:
        organizer.vectors.kinds.PQ_MIN = args.pq_min
    STEPS["die"] = args.die_at
    for name in ("replace", "rename", "unlink", "write", "fsync"):
        setattr(os, name, _counted(name, getattr(os, name)))
    record = cache_module.DatabaseFileRecord
    record.write = _counted("commit", record.write)  # type: ignore[method-assign]
    apply = cache_module.IndexCache._apply_locked

    def counting(self, delta):
        STEPS["on"] = True
        try:
            return apply(self, delta)
        finally:
            STEPS["on"] = False

    cache_module.IndexCache._apply_locked = counting  # type: ignore[method-assign]
    fake = FakeEmbedder()
    settings = Settings(library=Path(args.library))
    with Library.open(settings, create=True, embedder_loader=lambda s, t: fake) as lib:
        summary = lib.ingest([args.root], options=IngestOptions(workers=0))
    print("embedded", summary.embedded, "steps", STEPS["n"], flush=True)


if __name__ == "__main__":
    main()
