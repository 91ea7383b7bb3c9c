"""Which file of a duplicate group to keep, and why, in words a user can check.

The default order keeps the original over its re-encodes: a camera RAW file, then more
pixels, then the larger file for the same pixels, then the one with camera metadata, then the earliest taken, then the
shortest path. ``--prefer`` rules go before it, in the order given::

    format:raw,heic,jpg     these formats first, in this order ("raw" is any camera RAW)
    folder:~/Photos/Originals   files under this folder first
    largest | oldest | newest

A file the user chose (``organizer duplicates mark keeper``) is kept before any rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from organizer.errors import OptionsError
from organizer.paths import is_within
from organizer.scan import IMAGE_EXTENSIONS, RAW_EXTENSIONS, is_raw_name
from organizer.store.records import ImageRecord
from organizer.vectors.kinds import format_bytes

RAW = "raw"
# Other names people write for one format: the first is the one the rule compares.
_SAME_FORMAT = {"jpeg": "jpg", "jpe": "jpg", "jfif": "jpg", "tif": "tiff", "heif": "heic"}
PREFER_HELP = "format:raw,heic,jpg | folder:PATH | largest | oldest | newest"


@dataclass(frozen=True)
class KeeperRule:
    """One step of the keeper order: a sort key (smaller is kept first) and its words."""

    name: str
    key: Callable[[ImageRecord], tuple]
    says: Callable[[ImageRecord, ImageRecord], str]  # why the keeper beat the runner-up


@dataclass(frozen=True)
class Keeper:
    """The file a group keeps, the rule that decided it, and that rule in words."""

    image_id: int
    rule: str
    reason: str


def format_of(record: ImageRecord) -> str:
    """The format a rule names a file by: ``raw`` for any camera RAW, else its extension."""
    name = os.path.basename(record.relpath)
    if is_raw_name(name):
        return RAW
    ext = os.fsdecode(os.path.splitext(name)[1]).lower().lstrip(".")
    return _SAME_FORMAT.get(ext, ext)


def _mb(size: int) -> str:
    return format_bytes(size) if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _sizes(a: int, b: int) -> str:
    if _mb(a) == _mb(b):
        return f"{a:,} bytes, against {b:,}"
    return f"{_mb(a)}, against {_mb(b)}"


def _dims(r: ImageRecord) -> str:
    return f"{r.width}×{r.height}" if r.width else "unknown size"


def _when(r: ImageRecord) -> str:
    if r.taken_at is not None:
        return f"taken {r.taken_at:%Y-%m-%d %H:%M:%S}"
    return f"modified {datetime.fromtimestamp(r.mtime_ns / 1e9):%Y-%m-%d %H:%M:%S}"


def _times(k: ImageRecord, o: ImageRecord) -> str:
    if _when(k) == _when(o):
        return f"{_when(k)}, less than a second apart"
    return f"{_when(k)}, against {_when(o)}"


def _camera(r: ImageRecord) -> str | None:
    return r.meta.camera if r.meta is not None else None


PIXELS = KeeperRule(
    "pixels",
    lambda r: (-r.pixels,),
    lambda k, o: f"the most pixels ({_dims(k)}, against {_dims(o)})",
)
FILE_SIZE = KeeperRule(
    "size",
    lambda r: (-r.size,),
    lambda k, o: f"the largest file for its pixels ({_sizes(k.size, o.size)})",
)
CAMERA = KeeperRule(
    "camera",
    lambda r: (_camera(r) is None,),
    lambda k, o: f"it has the camera's metadata ({_camera(k)}); the next best has none",
)
OLDEST = KeeperRule("oldest", lambda r: (r.taken,), lambda k, o: f"the earliest ({_times(k, o)})")
NEWEST = KeeperRule("newest", lambda r: (-r.taken,), lambda k, o: f"the newest ({_times(k, o)})")
SHORTEST_PATH = KeeperRule(
    "path",
    lambda r: (len(r.path), r.path),
    lambda k, o: (
        (
            "identical copies"
            if k.content_hash == o.content_hash
            else "the same in every other respect"
        )
        + (": the shortest path" if len(k.path) != len(o.path) else ": the first path by name")
    ),
)
LARGEST = KeeperRule(
    "largest",
    lambda r: (-r.pixels, -r.size),
    lambda k, o: (PIXELS if k.pixels != o.pixels else FILE_SIZE).says(k, o),
)
RAW_FIRST = KeeperRule(
    "raw",
    lambda r: (format_of(r) != RAW,),
    lambda k, o: "the camera's RAW file: the original",
)
# A RAW file first: a JPEG copy elsewhere never sends the only RAW of a shot to the trash.
DEFAULT_ORDER = (RAW_FIRST, PIXELS, FILE_SIZE, CAMERA, OLDEST, SHORTEST_PATH)


def format_rule(formats: Sequence[str]) -> KeeperRule:
    order = {f: n for n, f in enumerate(formats)}

    def says(k: ImageRecord, o: ImageRecord) -> str:
        listed = ", ".join(f.upper() for f in formats)
        return (
            f"a preferred format ({format_of(k).upper()} before {format_of(o).upper()}; "
            f"order {listed})"
        )

    return KeeperRule("format", lambda r: (order.get(format_of(r), len(order)),), says)


def folder_rule(folder: str) -> KeeperRule:
    path = os.fsencode(os.path.abspath(os.path.expanduser(folder)))
    return KeeperRule(
        "folder",
        lambda r: (not is_within(r.path, path),),
        lambda k, o: f"in the preferred folder {folder}",
    )


def chosen_rule(chosen: frozenset[str]) -> KeeperRule:
    return KeeperRule(
        "chosen",
        lambda r: (r.content_hash not in chosen,),
        lambda k, o: "you chose it (organizer duplicates mark keeper)",
    )


def parse_prefer(texts: Iterable[str]) -> tuple[KeeperRule, ...]:
    """``--prefer`` values as rules, in the order given.

    Raises:
        OptionsError: an unknown rule or format, or a folder rule without a folder.
    """
    rules = []
    for text in texts:
        name, sep, value = text.strip().partition(":")
        name = name.lower()
        if name in ("largest", "oldest", "newest") and not sep:
            rules.append({"largest": LARGEST, "oldest": OLDEST, "newest": NEWEST}[name])
        elif name == "format" and value.strip():
            rules.append(format_rule(_formats(value)))
        elif name == "folder" and value.strip():
            rules.append(folder_rule(value.strip()))
        else:
            raise OptionsError(f"--prefer {text!r}: a rule is one of {PREFER_HELP}")
    return tuple(rules)


def _formats(value: str) -> list[str]:
    known = {RAW} | {
        _SAME_FORMAT.get(e, e) for e in (x.decode().lstrip(".") for x in IMAGE_EXTENSIONS)
    }
    known -= {x.decode().lstrip(".") for x in RAW_EXTENSIONS}
    out = []
    for part in value.split(","):
        name = part.strip().lower().lstrip(".")
        name = _SAME_FORMAT.get(name, name)
        if name not in known:
            raise OptionsError(
                f"--prefer format:{value}: {part.strip()!r} is not a format; "
                f"use raw or one of {', '.join(sorted(known - {RAW}))}"
            )
        out.append(name)
    return out


def choose(
    files: Sequence[ImageRecord],
    rules: Sequence[KeeperRule] = (),
    chosen: frozenset[str] = frozenset(),
    together: Callable[[ImageRecord, ImageRecord], bool] = lambda a, b: False,
) -> Keeper:
    """The keeper of ``files`` under ``rules`` then the default order, with the reason: the
    first rule that tells it from the runner-up (the best file not ``together`` with it,
    as a RAW file's JPEG is)."""
    order = [*([chosen_rule(chosen)] if chosen else []), *rules, *DEFAULT_ORDER]
    ranked = sorted(files, key=lambda r: (*(x for rule in order for x in rule.key(r)), r.id))
    keeper = ranked[0]
    runner = next((r for r in ranked[1:] if not together(keeper, r)), None)
    if runner is None:
        return Keeper(keeper.id, "only", "the only shot of its group")
    for rule in order:
        if rule.key(keeper) != rule.key(runner):
            return Keeper(keeper.id, rule.name, rule.says(keeper, runner))
    return Keeper(keeper.id, "first", "the same in every respect: the first one found")
