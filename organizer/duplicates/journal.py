"""The journal of a clean-up: what it will move, written and flushed to disk before the
first move, then what became of each move, and of its undo.

One JSON document a line, appended, in the library's cache folder (``clean-ups/``), named
``<UTC time>-<plan checksum[:12]>.jsonl``::

    {"organizer_clean": 1, "plan": ..., "plan_checksum": ..., "created": ..., ...}
    {"record": "intent", "n": 1, "src": ..., "dst": ..., "sha256": ..., "size": ..., ...}
    {"record": "left", "path": ..., "reason": ...}   a planned file the checks left out
    {"record": "moving", "count": 3}          every intent is on disk; moves may begin
    {"record": "done", "n": 1}                or "skipped", with its reason
    {"record": "finished"}                    the files moved and the library updated
    {"record": "undo"}                        an undo began: the clean-up is never resumed
    {"record": "undone", "n": 1}              or "refused" (left for a later undo)

A process killed at any point leaves a journal from which the files' state can be worked
out again: an intent without its ``done`` is settled by looking at both of its paths. A
last line cut short by the kill is ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from organizer.atomic import fsync_folder
from organizer.errors import CleanError

JOURNAL_FORMAT = 1
FOLDER = "clean-ups"
SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Intent:
    """A move the clean-up will make: ``src`` to ``dst``, of a file with this content, as it
    was when its content was read (size and modification time)."""

    n: int
    group: str
    root: str
    src: bytes
    dst: bytes
    sha256: str
    size: int
    mtime_ns: int
    companion_of: bytes | None = None

    def to_dict(self) -> dict:
        of = None if self.companion_of is None else os.fsdecode(self.companion_of)
        return {
            "record": "intent",
            "n": self.n,
            "group": self.group,
            "root": self.root,
            "src": os.fsdecode(self.src),
            "dst": os.fsdecode(self.dst),
            "sha256": self.sha256,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "companion_of": of,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Intent:
        of = d.get("companion_of")
        return cls(
            int(d["n"]),
            str(d["group"]),
            str(d["root"]),
            _path(d["src"]),
            _path(d["dst"]),
            str(d["sha256"]),
            int(d["size"]),
            int(d["mtime_ns"]),
            None if of is None else _path(of),
        )


def _path(text: str) -> bytes:
    """A path of a journal line as bytes; ValueError (a damaged journal) for one that no
    file name is (a NUL, which every call on it would fail with)."""
    raw = os.fsencode(text)
    if b"\0" in raw:
        raise ValueError(f"{text!r} is not a path")
    return raw


@dataclass(frozen=True)
class Header:
    """The first line: which plan, made when, for which library."""

    plan: str
    plan_checksum: str
    created: str
    library: str  # for people: the library's folder or redacted URL
    catalogue: str  # the library's UUID: an undo refuses another library's journal

    def to_dict(self) -> dict:
        return {
            "organizer_clean": JOURNAL_FORMAT,
            "plan": self.plan,
            "plan_checksum": self.plan_checksum,
            "created": self.created,
            "library": self.library,
            "catalogue": self.catalogue,
        }


@dataclass
class JournalState:
    """What a journal says so far."""

    path: Path
    header: Header
    intents: list[Intent] = field(default_factory=list)
    moving: bool = False
    done: set[int] = field(default_factory=set)
    skipped: dict[int, str] = field(default_factory=dict)
    finished: bool = False
    undo: bool = False
    undone: set[int] = field(default_factory=set)
    left: list[dict] = field(default_factory=list)  # the "left" records, as written

    @property
    def resumable(self) -> bool:
        """An interrupted clean-up a re-run completes (its moves began; no undo began)."""
        return self.moving and not self.finished and not self.undo

    def pending(self) -> list[Intent]:
        """The moves a resumed clean-up still has to settle."""
        return [i for i in self.intents if i.n not in self.done and i.n not in self.skipped]

    def to_undo(self) -> list[Intent]:
        """The moves an undo still has to reverse (or find never made), last first."""
        if not self.moving:
            return []
        left = [i for i in self.intents if i.n not in self.skipped and i.n not in self.undone]
        return left[::-1]


class Journal:
    """A journal open for appending; each record is one line, written with one call."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, folder: Path, header: Header) -> Journal:
        """A new journal in ``folder`` (made if need be), its header flushed to disk.

        Raises:
            CleanError: the folder or file cannot be written.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = folder / f"{stamp}-{header.plan_checksum[:12]}{SUFFIX}"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise CleanError(
                f"cannot write a journal in {folder}: {exc.strerror}; nothing was moved"
            ) from None
        journal = cls(path, fd)
        journal.write(header.to_dict(), sync=True)
        try:
            fsync_folder(folder)  # the journal's name survives a power cut too
        except OSError as exc:
            journal.close()
            raise CleanError(f"cannot write a journal in {folder}: {exc.strerror}") from None
        return journal

    @classmethod
    def reopen(cls, path: Path) -> Journal:
        """An existing journal, to append to.

        Raises:
            CleanError: it cannot be written.
        """
        try:
            return cls(path, os.open(path, os.O_WRONLY | os.O_APPEND))
        except OSError as exc:
            raise CleanError(f"cannot write the journal {path}: {exc.strerror}") from None

    def write(self, *records: dict, sync: bool = False) -> None:
        """Append records; with ``sync``, flush them to disk before returning.

        Raises:
            CleanError: the journal cannot be written (a full disk): stop before moving on.
        """
        data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if sync:
                os.fsync(self._fd)
        except OSError as exc:
            raise CleanError(
                f"cannot write the journal {self.path}: {exc.strerror}; run the same command "
                "again once it can be written, to finish"
            ) from None

    def sync(self) -> None:
        """Flush what was written to disk (the last record of a pass)."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise CleanError(f"cannot write the journal {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_journal(path: Path) -> JournalState:
    """Read a journal back.

    Raises:
        CleanError: no such file, unreadable, not a clean-up journal, or damaged (a line
            that is not a record, other than a last one cut short).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CleanError(
            f"no journal at {path}: `organizer clean --undo last` takes the latest"
        ) from None
    except OSError as exc:
        raise CleanError(f"cannot read the journal {path}: {exc.strerror}") from None
    lines = data.split(b"\n")[:-1]  # what follows the last newline was cut short: ignored
    try:
        first = json.loads(lines[0]) if lines else None
        if not isinstance(first, dict) or first.get("organizer_clean") != JOURNAL_FORMAT:
            raise CleanError(f"{path} is not an organizer clean-up journal")
        keys = ("plan", "plan_checksum", "created", "library", "catalogue")
        state = JournalState(path, Header(*(str(first[k]) for k in keys)))
        for number, line in enumerate(lines[1:], start=2):
            _apply(state, json.loads(line), number)
    except (ValueError, KeyError, TypeError) as exc:
        raise CleanError(f"the journal {path} is damaged ({exc}): it cannot be used") from None
    return state


def _apply(state: JournalState, record: dict, number: int) -> None:
    kind = record["record"]
    if kind == "intent":
        state.intents.append(Intent.from_dict(record))
    elif kind == "left":
        state.left.append(record)
    elif kind == "moving":
        state.moving = True
    elif kind == "done":
        state.done.add(int(record["n"]))
    elif kind == "skipped":
        state.skipped[int(record["n"])] = str(record["reason"])
    elif kind == "finished":
        state.finished = True
    elif kind == "undo":
        state.undo = True
    elif kind == "undone":
        state.undone.add(int(record["n"]))
    elif kind != "refused":
        raise ValueError(f"line {number} is an unknown record {kind!r}")


def journals(folder: Path) -> list[Path]:
    """The journals in ``folder``, oldest first."""
    try:
        return sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX))
    except OSError:
        return []


def resumable(folder: Path, checksum: str) -> JournalState | None:
    """The latest interrupted clean-up of the plan with this checksum, if any."""
    for path in reversed(journals(folder)):
        if f"-{checksum[:12]}" not in path.name:
            continue
        state = read_journal(path)
        if state.header.plan_checksum == checksum and state.resumable:
            return state
    return None


def moved_before(folder: Path, checksum: str) -> set[bytes]:
    """The files the earlier clean-ups of this plan moved and no undo put back."""
    moved: set[bytes] = set()
    for path in journals(folder):
        if f"-{checksum[:12]}" not in path.name:
            continue
        state = read_journal(path)
        if state.header.plan_checksum == checksum and not state.undo:
            moved.update(i.src for i in state.intents if i.n in state.done)
    return moved


def now_iso() -> str:
    """UTC now, ISO 8601 to the second, for the header."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
