"""Run an ingest in this process with the numpy fake embedder, for crash tests.

Usage, from the repository root:
    python -m tests.reliability.crash_ingest LIBRARY ROOT [--slow SECONDS]
        [--die-after-commit N] [--die-in-index-write] [--die-in-migration]
The --die-* options SIGKILL this process at a named point (test instrumentation only).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import organizer.ingest.writer
import organizer.library
import organizer.vectors.cache
from organizer.choices import is_url
from organizer.config import Settings
from organizer.ingest import IngestOptions
from organizer.library import Library
from tests.fakes import FakeEmbedder


class SlowFake(FakeEmbedder):
    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay

    def embed_pixels(self, batch):
        time.sleep(self.delay)
        return super().embed_pixels(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("root")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--die-after-commit", type=int, default=0)
    parser.add_argument("--die-in-index-write", action="store_true")
    parser.add_argument("--die-in-migration", action="store_true")
    args = parser.parse_args()

    if args.die_in_migration:
        import alembic.command

        real_upgrade = alembic.command.upgrade

        def dying_upgrade(config, revision):
            real_upgrade(config, revision)  # every table created, nothing committed yet
            os.kill(os.getpid(), signal.SIGKILL)

        alembic.command.upgrade = dying_upgrade

    if args.die_after_commit:
        real = organizer.ingest.writer.write_transaction
        commits = {"n": 0}

        from contextlib import contextmanager

        @contextmanager
        def counting(engine):
            with real(engine) as conn:
                yield conn
            commits["n"] += 1
            if commits["n"] == args.die_after_commit:
                os.kill(os.getpid(), signal.SIGKILL)

        organizer.ingest.writer.write_transaction = counting

    if args.die_in_index_write:

        def dying_write(path, index):
            import faiss

            faiss.write_index(index.faiss, str(path) + ".full")
            data = Path(str(path) + ".full").read_bytes()
            with open(str(path) + ".partial", "wb") as fh:
                fh.write(data[: len(data) // 2])
            with open(path, "r+b" if path.exists() else "wb") as fh:
                fh.write(data[: len(data) // 2])  # a torn write in place: the worst case
            os.kill(os.getpid(), signal.SIGKILL)

        organizer.vectors.cache.write_index = dying_write

    fake = SlowFake(args.slow)
    settings = Settings(library=args.library if is_url(args.library) else Path(args.library))
    with Library.open(settings, create=True, embedder_loader=lambda s, t: fake) as lib:
        # Decoding in this process: the crash points under test are the database and index
        # writes, and a worker pool's start-up would only blur the timing of the kills.
        options = IngestOptions(batch_size=args.batch_size, workers=0)
        summary = lib.ingest([args.root], options=options)
    print("embedded", summary.embedded, flush=True)


if __name__ == "__main__":
    main()
