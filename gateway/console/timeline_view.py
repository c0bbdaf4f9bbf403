"""A model's release timeline as geometry for the Policy page's inline SVG.

Stage bands on a time axis (each from its start to the next stage's, the last one
open to the axis's end), today's line, and the model's suspensions as bars over it,
each with the words a screen reader or a narrow window shows instead of the picture.

Pure: the model and the time in, coordinates out (x in the axis's own units, 0..width).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.policy.snapshot import Model, Suspension

DAY = 86_400.0
WIDTH = 720.0
MIN_PADDING_S = 7 * DAY
MAX_TICKS = 8
Place = Callable[[float], float]  # epoch seconds -> x on the axis


@dataclass(frozen=True, slots=True)
class Band:
    """One stage: where it starts and how wide it is on the axis."""
    stage: str
    x: float
    width: float
    status: str  # "past", "in_force" or "upcoming"
    starts: str  # ISO date
    until: str | None  # ISO date of the next stage's start; None: open-ended


@dataclass(frozen=True, slots=True)
class SuspensionBar:
    id: str
    x: float
    width: float
    status: str  # "in_force", "upcoming" or "ended"
    scope: str  # "deny in SE" / "deny outside us"
    starts: str | None  # None: at once (no start)
    until: str | None  # None: until lifted


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Timeline:
    model: str
    width: float
    start: float  # the axis's ends, epoch seconds
    end: float
    bands: tuple[Band, ...]
    today_x: float
    suspensions: tuple[SuspensionBar, ...]
    ticks: tuple[Tick, ...]
    stage_now: str | None  # the stage in force; None: not released

    @property
    def suspended_now(self) -> tuple[SuspensionBar, ...]:
        return tuple(bar for bar in self.suspensions if bar.status == "in_force")


def timeline(model: Model, now: float, *, width: float = WIDTH) -> Timeline:
    """The model's stages and suspensions on an axis that holds them all and `now`."""
    start, end = axis(model, now)
    place = _scale(start, end, width)
    current = model.stage_index(now)
    bands = tuple(_band(model, index, current, start, end, place) for index in range(len(model.stages)))
    bars = tuple(_bar(s, now, start, end, place) for s in model.suspensions)  # the axis holds them all
    stage_now = model.stages[current].name if current >= 0 else None
    return Timeline(model.id, width, start, end, bands, place(now), bars, ticks(start, end, place), stage_now)


def axis(model: Model, now: float) -> tuple[float, float]:
    """From before the first stage (or now) to after the last dated event (or now),
    padded so that today's line and a band's edge are never on the frame."""
    moments = [now, *model.stage_starts]
    for suspension in model.suspensions:
        moments += [t for t in (suspension.starts, suspension.ends) if t is not None]
    low, high = min(moments), max(moments)
    padding = max(MIN_PADDING_S, (high - low) * 0.08)
    return low - padding, high + padding


def ticks(start: float, end: float, place: Place) -> tuple[Tick, ...]:
    """The first day of months on the axis, at most MAX_TICKS of them, evenly thinned."""
    months = []
    moment = datetime.fromtimestamp(start, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while moment.timestamp() <= end:
        if moment.timestamp() >= start:
            months.append(moment)
        moment = moment.replace(year=moment.year + moment.month // 12, month=moment.month % 12 + 1)
    step = -(-len(months) // MAX_TICKS) if months else 1  # ceiling division
    return tuple(Tick(place(m.timestamp()), f"{m:%b %Y}") for m in months[::step])



def _scale(start: float, end: float, width: float) -> Place:
    span = end - start

    def place(moment: float) -> float:
        return round(min(max((moment - start) / span, 0.0), 1.0) * width, 1)
    return place


def _band(model: Model, index: int, current: int, start: float, end: float, place: Place) -> Band:
    stage = model.stages[index]
    begins = model.stage_starts[index]
    following = model.stage_starts[index + 1] if index + 1 < len(model.stages) else None
    status = "in_force" if index == current else ("past" if index < current else "upcoming")
    x = place(begins)
    return Band(stage.name, x, place(following if following is not None else end) - x, status,
                _date(begins), _date(following) if following is not None else None)


def _bar(suspension: Suspension, now: float, start: float, end: float, place: Place) -> SuspensionBar:
    x = place(suspension.starts if suspension.starts is not None else start)
    right = place(suspension.ends if suspension.ends is not None else end)
    return SuspensionBar(suspension.id, x, max(right - x, 1.0), _status(suspension, now), scope_text(suspension),
                         _date(suspension.starts) if suspension.starts is not None else None,
                         _date(suspension.ends) if suspension.ends is not None else None)


def scope_text(suspension: Suspension) -> str:
    verb = "deny outside" if suspension.scope == "deny_outside" else "deny in"
    return f"{verb} {', '.join(suspension.groups.names) or '(nothing)'}"


def _status(suspension: Suspension, now: float) -> str:
    if suspension.in_force(now):
        return "in_force"
    return "upcoming" if suspension.starts is not None and now < suspension.starts else "ended"


def _date(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")
