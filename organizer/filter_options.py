"""The command line's filter options (``--after``, ``--before``, ``--camera``, ``--place``,
``--near``, ``--under``), shared by every command that lists images, and ``--sort``.

Each value is checked as it is parsed (a usage error, exit 2, naming the option); the
options together become one :class:`~organizer.filters.PhotoFilter`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from organizer.choices import Sort
from organizer.errors import OptionsError
from organizer.filters import PhotoFilter, parse_filter, parse_near, period

PANEL = "Filters"


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            check(value)
        except OptionsError as exc:
            raise typer.BadParameter(str(exc)) from None
        return value

    return parse


def _folder(value: str) -> str:
    if not value.strip():
        raise typer.BadParameter("'' is an empty path: give a folder")
    try:
        return os.path.realpath(Path(value).expanduser())
    except (RuntimeError, OSError) as exc:  # ~nosuchuser, or a path the system refuses
        raise typer.BadParameter(f"{value}: {exc}") from None


AfterOpt = Annotated[
    str | None,
    typer.Option(
        "--after",
        metavar="DATE",
        parser=_checked(lambda v: period(v, "--after")),
        help="Only photos taken in or after this year, month or day (2019, 2019-06, 2019-06-14).",
        rich_help_panel=PANEL,
    ),
]
BeforeOpt = Annotated[
    str | None,
    typer.Option(
        "--before",
        metavar="DATE",
        parser=_checked(lambda v: period(v, "--before")),
        help="Only photos taken in or before this year, month or day (--after 2019 --before "
        "2019: the year 2019).",
        rich_help_panel=PANEL,
    ),
]
CameraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--camera",
        metavar="TEXT",
        help="Only photos from a camera whose make or model contains TEXT (repeatable: any).",
        rich_help_panel=PANEL,
    ),
]
PlaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--place",
        metavar="TEXT",
        help="Only photos taken in this city, region or country (repeatable: any).",
        rich_help_panel=PANEL,
    ),
]
NearOpt = Annotated[
    str | None,
    typer.Option(
        "--near",
        metavar="LAT,LON[,KM]",
        parser=_checked(parse_near),
        help="Only photos taken within KM (default 10) of a point, in decimal degrees.",
        rich_help_panel=PANEL,
    ),
]
UnderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--under",
        metavar="FOLDER",
        parser=_folder,
        help="Only images in this folder, at any depth (repeatable: any).",
        rich_help_panel=PANEL,
    ),
]
SortOpt = Annotated[
    Sort,
    typer.Option(
        "--sort",
        help="Order: score (most similar first) or date (oldest taken first, undated last).",
        rich_help_panel=PANEL,
    ),
]


def where(
    after: str | None = None,
    before: str | None = None,
    camera: list[str] | None = None,
    place: list[str] | None = None,
    near: str | None = None,
    under: list[str] | None = None,
) -> PhotoFilter:
    """The filter the options give (empty when none is given).

    Raises:
        OptionsError: options that contradict each other (--after later than --before).
    """
    return parse_filter(after, before, camera or (), place or (), near, under or ())
