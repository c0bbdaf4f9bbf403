"""The world map of the overview: each country's shape (gateway/data/world-map.json, from
the npm package @svg-maps/world, CC BY 4.0; scripts/build-world-map) shaded by its denials.

Pure: counts in, shapes with a shade out; the template draws them as inline SVG. Shades
are relative to the country with the most denials, on a log scale, so one busy country
does not leave every other white.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MAP_FILE = Path(__file__).resolve().parent.parent / "data" / "world-map.json"
SHADES = 5  # shade-0 is no denials; shade-1..shade-5 from few to the most


@dataclass(frozen=True)
class CountryShape:
    code: str  # ISO 3166-1 alpha-2
    name: str
    path: str  # SVG path data
    denials: int
    shade: int

    @property
    def label(self) -> str:
        return f"{self.name} ({self.code}): {self.denials} denial{'s' if self.denials != 1 else ''}"


@dataclass(frozen=True)
class WorldMap:
    view_box: str
    countries: tuple[CountryShape, ...]


@lru_cache(maxsize=1)
def shapes() -> dict[str, Any]:
    return json.loads(MAP_FILE.read_text())


def shade_of(denials: int, most: int) -> int:
    if denials <= 0 or most <= 0:
        return 0
    return max(1, min(SHADES, math.ceil(SHADES * math.log1p(denials) / math.log1p(most))))


def shaded(denials_by_country: dict[str, int], data: dict[str, Any] | None = None) -> WorldMap:
    data = data if data is not None else shapes()
    most = max((n for code, n in denials_by_country.items() if code in data["countries"]), default=0)
    countries = tuple(
        CountryShape(code, shape["name"], shape["path"], denials_by_country.get(code, 0),
                     shade_of(denials_by_country.get(code, 0), most))
        for code, shape in sorted(data["countries"].items()))
    return WorldMap(data["view_box"], countries)
