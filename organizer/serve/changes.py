"""What the web app may change, when started with ``organizer serve --allow-changes``: the
decisions about a duplicate group (another keeper, not duplicates, keep all).

Each change is the library's own (the CLI's ``organizer duplicates mark``), made one at a
time, about a group the page showed (by its id); the service then forgets the groups it
remembered, so the next page shows the library as the change left it. The front door
(:mod:`organizer.serve.guard`) has already checked the request: allowed, same origin, CSRF.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from organizer.choices import Decision
from organizer.duplicates.groups import DuplicateGroup, Role
from organizer.errors import QueryError
from organizer.scan import display_path
from organizer.serve.service import NotFound, Service

GROUP_ID_LENGTH = 12


@dataclass(frozen=True)
class Done:
    """A change made: one sentence for the page, and the decision's number when one was
    recorded (``organizer duplicates unmark`` takes it back)."""

    message: str
    decision: int | None = None

    def to_dict(self) -> dict:
        return {"done": self.message, "decision": self.decision}


class Changes:
    """The changes a page may ask for, one at a time."""

    def __init__(self, service: Service):
        self.service = service
        self.lib = service.lib
        self._one = threading.Lock()

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
