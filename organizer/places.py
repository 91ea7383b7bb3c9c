"""TEMPORARY STUB (replaced by the real gazetteer module)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    city: str
    region: str | None
    country: str
    country_code: str

    def label(self) -> str:
        parts = [self.city, self.region if self.region != self.city else None, self.country]
        return ", ".join(p for p in parts if p)


def name_places(coords: Sequence[tuple[float, float]]) -> list[Place | None]:
    return [None for _ in coords]
