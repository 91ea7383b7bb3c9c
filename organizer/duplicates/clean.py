"""``organizer clean PLAN.json``: move the files a plan names into the trash, and undo it.

A clean-up is a plan, a journal and an undo (house rule 16). Each group's keeper must still
be there with the content the plan names, or the group is left alone; each file to move
must still have its planned content; its companions (sidecars, a Live Photo's video) go
with it. Every move is journalled before the first one is made (:mod:`.journal`), so a
process killed halfway leaves a state that a re-run of the same plan, or an undo, completes.
The library is updated last: trashed images become missing (their vectors kept) and leave
every result; an undo brings them back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Connection, Engine

from organizer.duplicates import trash
from organizer.duplicates.checks import LeftFile, check_plan
from organizer.duplicates.journal import (
    Header,
    Intent,
    Journal,
    JournalState,
    journals,
    moved_before,
    now_iso,
    read_journal,
    resumable,
)
from organizer.duplicates.plan import Plan
from organizer.errors import CleanError, LibraryError
from organizer.scan import display_path, exact_path, shown_path
from organizer.sources import Storage
from organizer.store import queries as q
from organizer.store import trash_queries as tq
from organizer.store.db import write_transaction


@dataclass(frozen=True)
class CleanFile:
    """A file a clean-up moved (or would move) to the trash, or an undo put back."""

    path: bytes  # where it was, and is again after an undo
    trash: bytes  # where it is in the trash
    root: str
    size: int
    group: str
    companion_of: bytes | None = None

    def to_dict(self, absolute: bool = False) -> dict:
        rel = os.path.relpath(self.path, os.fsencode(self.root))
        of = self.companion_of
        return {
            "path": shown_path(self.root, rel, absolute),
            **exact_path(self.root, rel),
            "trash": display_path(self.trash),
            "size": self.size,
            "group": self.group,
            "companion_of": None if of is None else display_path(of),
        }

    @classmethod
    def of(cls, intent: Intent) -> CleanFile:
        i = intent
        return cls(i.src, i.dst, i.root, i.size, i.group, i.companion_of)


@dataclass(frozen=True)
class CleanSummary:
    """What ``organizer clean`` did (or, with ``dry_run``, would do)."""

    moved: tuple[CleanFile, ...]
    skipped: tuple[LeftFile, ...]
    journal: Path | None  # None when nothing moved (or a dry run)
    dry_run: bool = False
    resumed: bool = False  # it finished an interrupted clean-up of the same plan
    warnings: tuple[str, ...] = ()

    @property
    def groups(self) -> int:
        return len({f.group for f in self.moved})

    @property
    def size(self) -> int:
        return sum(f.size for f in self.moved)

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "moved": [f.to_dict(absolute) for f in self.moved],
            "skipped": [f.to_dict(absolute) for f in self.skipped],
            "groups": self.groups,
            "size": self.size,
            "journal": None if self.journal is None else str(self.journal),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class UndoSummary:
    """What ``organizer clean --undo`` put back, and what it refused to."""

    restored: tuple[CleanFile, ...]
    refused: tuple[LeftFile, ...]
    journal: Path
    nothing_left: bool = False  # the journal was undone already (or moved nothing)
    warnings: tuple[str, ...] = ()

    def to_dict(self, absolute: bool = False) -> dict:
        return {
            "restored": [f.to_dict(absolute) for f in self.restored],
            "refused": [f.to_dict(absolute) for f in self.refused],
            "journal": str(self.journal),
            "nothing_left": self.nothing_left,
            "warnings": list(self.warnings),
        }


class CleanUp:
    """Clean-ups of one library: carried out, resumed, undone; journals in ``folder``."""

    def __init__(
        self,
        engine: Engine,
        folder: Path,
        library: str,
        writer: Callable[[], AbstractContextManager[object]],
        refresh_index: Callable[[], str | None],
        storage: Storage | None = None,
    ):
        """``writer()`` holds the library's writer lock (never waiting) for a clean-up or an
        undo; ``refresh_index()`` brings the index in step after images left or came back
        (a warning when its file could not be written); ``library`` names the library in a
        journal's header, for people; ``storage`` reaches keepers in buckets (files there
        are never moved)."""
        self.engine = engine
        self.storage = storage
        self.folder = folder.absolute()  # printed in the undo command: from any folder
        self.library = library
        self.writer = writer
        self.refresh_index = refresh_index

    def last(self) -> Path | None:
        """The journal of the latest clean-up, or None."""
        found = journals(self.folder)
        return found[-1] if found else None

    # -- clean -------------------------------------------------------------------------------

    def clean(self, plan_path: Path, to: Path | None = None, dry_run: bool = False) -> CleanSummary:
        """Carry out a plan (see the module's docstring); an interrupted clean-up of the same
        plan is completed instead.

        Raises:
            PlanError: the plan cannot be read, or none of its files is under a root of
                this library.
            OptionsError: ``to`` is a folder inside a root that ingest would walk.
            LibraryBusyError: another process is writing to the library.
            CleanError: the journal cannot be written, or the library could not be updated
                after the files moved (a re-run finishes it).
        """
        plan = Plan.read(plan_path)
        roots = self._roots()
        target = None
        if to is not None:
            real = os.path.realpath(to.expanduser())
            trash.check_trash_folder(real, roots)
            target = os.fsencode(real)
        if dry_run:
            interrupted = resumable(self.folder, plan.checksum)
            if interrupted is not None:
                return self._summary(interrupted, interrupted.pending(), dry_run=True)
            earlier = moved_before(self.folder, plan.checksum)
            intents, left = check_plan(plan, plan_path, roots, target, earlier, self.storage)
            return CleanSummary(tuple(map(CleanFile.of, intents)), tuple(left), None, True)
        with self.writer():
            interrupted = resumable(self.folder, plan.checksum)
            if interrupted is not None:
                return self._carry_out(interrupted, Journal.reopen(interrupted.path))
            earlier = moved_before(self.folder, plan.checksum)
            intents, left = check_plan(plan, plan_path, roots, target, earlier, self.storage)
            if not intents:
                return CleanSummary((), tuple(left), None)
            header = Header(
                str(plan_path.resolve()), plan.checksum, now_iso(), self.library, self._uuid()
            )
            journal = Journal.create(self.folder, header)
            records = [*(f.record() for f in left), *(i.to_dict() for i in intents)]
            journal.write(*records, {"record": "moving", "count": len(intents)}, sync=True)
            state = JournalState(journal.path, header, intents, moving=True)
            state.left = [f.record() for f in left]
            return replace(self._carry_out(state, journal), resumed=False)

    def _carry_out(self, state: JournalState, journal: Journal) -> CleanSummary:
        with journal:
            for intent in state.pending():
                reason = trash.settle(intent)
                if reason is None:
                    journal.write({"record": "done", "n": intent.n})
                    state.done.add(intent.n)
                else:
                    journal.write({"record": "skipped", "n": intent.n, "reason": reason})
                    state.skipped[intent.n] = reason
            warning = self._update_library(
                state, lambda conn: tq.mark_trashed(conn, _trashed(state)), "are in the trash"
            )
            journal.write({"record": "finished"}, sync=True)
        return self._summary(state, [i for i in state.intents if i.n in state.done], warning)

    def _summary(
        self,
        state: JournalState,
        moved: list[Intent],
        warning: str | None = None,
        dry_run: bool = False,
    ) -> CleanSummary:
        by_n = {i.n: i for i in state.intents}
        skipped = [LeftFile.from_record(d) for d in state.left] + [
            LeftFile(by_n[n].src, by_n[n].root, by_n[n].group, reason)
            for n, reason in sorted(state.skipped.items())
        ]
        return CleanSummary(
            tuple(map(CleanFile.of, moved)),
            tuple(skipped),
            None if dry_run else state.path,
            dry_run,
            resumed=True,
            warnings=() if warning is None else (warning,),
        )

    # -- undo --------------------------------------------------------------------------------

    def undo(self, journal: Path | str) -> UndoSummary:
        """Put back every file a clean-up moved, last first, where its old path is free and
        its trashed copy unchanged; the others are refused and left for a later undo.

        Raises:
            CleanError: no such journal (or, for "last", no clean-up yet), a damaged one,
                one of another library, or the library could not be updated.
            LibraryBusyError: another process is writing to the library.
        """
        path = self.last() if journal == "last" else Path(journal).expanduser()
        if path is None:
            raise CleanError(f"no clean-up to undo: {self.folder} holds no journal")
        state = read_journal(path)
        if state.header.catalogue != self._uuid():
            raise CleanError(
                f"{path} is the journal of another library ({state.header.library}): pass "
                "--library to undo it there"
            )
        if not state.to_undo():
            return UndoSummary((), (), path, nothing_left=True)
        with self.writer():
            state = read_journal(path)  # another undo may have run meanwhile
            return self._undo(state)

    def _undo(self, state: JournalState) -> UndoSummary:
        restored: list[CleanFile] = []
        refused: list[LeftFile] = []
        with Journal.reopen(state.path) as journal:
            if not state.undo:
                journal.write({"record": "undo"}, sync=True)
            for intent in state.to_undo():
                moved, reason = trash.put_back(intent)
                if reason is None:
                    journal.write({"record": "undone", "n": intent.n})
                    state.undone.add(intent.n)
                    if moved:
                        restored.append(CleanFile.of(intent))
                else:
                    journal.write({"record": "refused", "n": intent.n, "reason": reason})
                    refused.append(LeftFile(intent.src, intent.root, intent.group, reason))
            warning = self._update_library(
                state, lambda conn: tq.mark_restored(conn, _back(state)), "are back"
            )
            journal.sync()
        warnings = () if warning is None else (warning,)
        return UndoSummary(tuple(restored), tuple(refused), state.path, warnings=warnings)

    # -- the library -------------------------------------------------------------------------

    def _roots(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(q.all_roots(conn).values())

    def _uuid(self) -> str:
        with self.engine.connect() as conn:
            return q.catalogue_uuid(conn)

    def _update_library(
        self, state: JournalState, update: Callable[[Connection], int], where: str
    ) -> str | None:
        """Run ``update`` in one transaction, then refresh the index when it changed
        something; the index's warning, if any. The files' truth is in the journal: when
        the database cannot be written, the same command run again does this again."""
        try:
            with write_transaction(self.engine) as conn:
                changed = update(conn)
        except LibraryError as exc:
            raise CleanError(
                f"the files {where}, but the library could not be updated ({exc}): run the "
                f"same command again to finish (journal {state.path})"
            ) from None
        return self.refresh_index() if changed else None


def _trashed(state: JournalState) -> list[tq.TrashedFile]:
    """The files a clean-up has moved to the trash, as the library names them."""
    return [
        tq.TrashedFile(i.root, os.path.relpath(i.src, os.fsencode(i.root)))
        for i in state.intents
        if i.n in state.done
    ]


def _back(state: JournalState) -> list[tq.RestoredFile]:
    """The files an undo has put back (or found never moved), as they are on disk now."""
    found = []
    for i in state.intents:
        if i.n not in state.undone:
            continue
        try:
            st = os.lstat(i.src)
        except OSError:
            continue
        rel = os.path.relpath(i.src, os.fsencode(i.root))
        found.append(tq.RestoredFile(i.root, rel, st.st_size, st.st_mtime_ns, i.sha256))
    return found
