"""What the web app may change, when started with ``organizer serve --allow-changes``: the
decisions about a duplicate group (another keeper, not duplicates, keep all), moving a
group's other files to the trash, and undoing that.

Each change is the library's own (the CLI's ``organizer duplicates mark`` and ``organizer
clean``), made one at a time, about a group the page showed (by its id); the service then
forgets the groups it remembered, so the next page shows the library as the change left it.
The front door (:mod:`organizer.serve.guard`) has already checked the request: allowed, same
origin, CSRF.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from organizer.choices import Decision
from organizer.duplicates.checks import LeftFile
from organizer.duplicates.clean import CleanSummary
from organizer.duplicates.groups import DuplicateGroup, Role
from organizer.duplicates.plan import Plan
from organizer.errors import QueryError
from organizer.scan import display_path
from organizer.serve.service import NotFound, Service

GROUP_ID_LENGTH = 12
PLANS = "plans"  # in the library's cache folder: the plan of each clean-up made here


@dataclass(frozen=True)
class CleanedHere:
    """The last clean-up made from the page, which its Undo puts back."""

    group: str
    moved: int
    skipped: tuple[str, ...]  # why each file left where it was stayed
    journal: Path
    at: datetime


@dataclass(frozen=True)
class Done:
    """A change made: one sentence for the page, and the decision's number when one was
    recorded (``organizer duplicates unmark`` takes it back)."""

    message: str
    decision: int | None = None

    def to_dict(self) -> dict:
        return {"done": self.message, "decision": self.decision}


def files(n: int) -> str:
    return "1 file" if n == 1 else f"{n:,} files"


class Changes:
    """The changes a page may ask for, one at a time."""

    def __init__(self, service: Service):
        self.service = service
        self.lib = service.lib
        self._one = threading.Lock()
        self.cleaned: CleanedHere | None = None  # what the page's Undo would put back

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """One change at a time; the remembered answers are forgotten after each (even a
        failed one: it may have done part)."""
        with self._one:
            try:
                yield
            finally:
                self.service.changed()

    def group(self, group_id: str) -> DuplicateGroup:
        """A group the page shows now, by its id; :class:`NotFound` when there is none (a
        decided or cleaned group, or one another change has reshaped)."""
        if len(group_id) != GROUP_ID_LENGTH or not all(c in "0123456789abcdef" for c in group_id):
            raise NotFound(group_id)
        found = self.service.duplicates().by_id.get(group_id)
        if found is None:
            raise NotFound(group_id)
        return found

    def choose_keeper(self, group_id: str, image_id: int) -> Done:
        """Keep ``image_id`` in its group (a ``keeper`` decision: by content, so in any group
        it is in), taking back earlier keeper choices among the group's contents, which
        would otherwise tie with it.

        Raises:
            NotFound: no such group; QueryError: the image is not one that can be chosen.
        """
        with self._turn():
            group = self.group(group_id)
            chosen = next((f for f in group.files if f.image_id == image_id), None)
            if chosen is None:
                raise QueryError(f"image {image_id} is not in group {group_id}")
            if chosen.role == Role.KEEP:
                raise QueryError(f"image {image_id} is the keeper of group {group_id} already")
            if chosen.identical:
                raise QueryError(
                    f"image {image_id} has the keeper's very bytes: identical copies are one "
                    "content, and decisions are by content"
                )
            made = self.lib.mark_duplicates(Decision.KEEPER, [os.fsdecode(chosen.record.path)])
            contents = {f.record.content_hash for f in group.files}
            for earlier in self.service.duplicates().found.decided or []:
                if (
                    earlier.decision == Decision.KEEPER
                    and earlier.id != made.id
                    and any(r.content_hash in contents for r in earlier.records)
                ):
                    self.lib.unmark_duplicates(earlier.id)
        name = display_path(os.path.basename(chosen.record.relpath))
        return Done(f"{name} is now the keeper of group {group_id}.", made.id)

    def decide(self, group_id: str, decision: Decision) -> Done:
        """``not-duplicates`` or ``keep-all`` about a group: it is not listed again.

        Raises:
            NotFound: no such group; OptionsError: the library refuses the decision (not
                duplicates about identical copies).
        """
        if decision == Decision.KEEPER:
            raise QueryError("a keeper is chosen by its image: use /keeper")
        with self._turn():
            group = self.group(group_id)
            made = self.lib.mark_duplicates(
                decision, [os.fsdecode(f.record.path) for f in group.files]
            )
        if decision == Decision.NOT_DUPLICATES:
            return Done(
                f"Group {group_id}: marked as not duplicates; its files are not grouped "
                "together again.",
                made.id,
            )
        return Done(
            f"Group {group_id}: all {len(group.files)} files kept; it is not listed again.",
            made.id,
        )

    def trash(self, group_id: str) -> Done:
        """Move the files a group does not keep to the trash: a plan of that one group,
        written to the library's ``plans/`` folder and carried out by the library's clean-up
        (each file checked against its content, the moves journalled, undoable).

        Raises:
            NotFound: no such group; QueryError: the group moves nothing; PlanError,
                CleanError, LibraryBusyError: from the clean-up.
        """
        with self._turn():
            group = self.group(group_id)
            if not group.moved:
                raise QueryError(f"group {group_id} keeps every file: there is nothing to move")
            now = datetime.now(UTC)
            plan = Plan(self.lib.home.name, now.isoformat(timespec="seconds"), (group.planned(),))
            path = self.lib.home.cache_dir / PLANS / f"{now:%Y%m%dT%H%M%S.%fZ}-{group_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            plan.write(path)
            summary = self.lib.clean(path)
            self.lib.index_catch_up()  # the trashed images leave the near pairs now
            if summary.journal is not None:
                self.cleaned = _cleaned_here(group_id, summary, now)
        message = f"Moved {files(len(summary.moved))} of group {group_id} to the trash."
        return Done(" ".join([message, *_left(summary.skipped), *summary.warnings]))

    def undo(self) -> Done:
        """Put back what the last clean-up made from the page moved (the library's undo of
        its journal), refusing any file whose old path is taken or whose copy changed.

        Raises:
            QueryError: no clean-up was made from the page since the server started (or it
                was undone); CleanError, LibraryBusyError: from the undo.
        """
        with self._turn():
            cleaned = self.cleaned
            if cleaned is None:
                raise QueryError(
                    "no clean-up made here is left to undo (organizer clean --undo last "
                    "undoes the library's latest)"
                )
            summary = self.lib.undo_clean(cleaned.journal)
            self.lib.index_catch_up()  # the files put back are near pairs again now
            self.cleaned = None
        message = f"Put back {files(len(summary.restored))} of group {cleaned.group}."
        return Done(" ".join([message, *_left(summary.refused), *summary.warnings]))


def _cleaned_here(group_id: str, summary: CleanSummary, at: datetime) -> CleanedHere:
    assert summary.journal is not None
    return CleanedHere(
        group_id, len(summary.moved), tuple(_left(summary.skipped)), summary.journal, at
    )


def _left(left: tuple[LeftFile, ...]) -> list[str]:
    """Each file a clean-up (or an undo) left where it was, and why, as a sentence."""
    return [f"{f.shown()} stayed where it is: {f.reason}." for f in left]
