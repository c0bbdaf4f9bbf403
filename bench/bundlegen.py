"""Generate large, valid policy bundles for benchmarks.

`generate(directory, orgs=100_000, models=10_000, seed=...)` writes the five
bundle files: `jurisdictions.yaml` and `framework.yaml` copied from the
reference bundle, and a generated registry, model list and suspension list that
respect the loader's rules (docs/policy.md):

- stages run internal -> government_review -> limited_partner -> general, each
  at most once, with strictly increasing starts;
- a government review admits only the government tier and lasts at most the
  framework's window; it is always followed by a later stage (no open-ended
  review, which the loader warns about);
- a covered model (by the framework's thresholds) released beyond review has a
  review stage, or, for a few, a recorded `review_waiver`;
- names are unique after case-folding, aliases included.

The YAML is written as text, not through PyYAML: dumping 10^5 entries is slow,
and the shapes are simple. Every country code is quoted, so that `NO` stays
Norway. The same seed always gives the same bundle.

With `breakpoints=N` every instant in the bundle (stage starts, vetting lapses,
suspension starts and ends) is one of N midnights, evenly spaced within a year
from `origin`: the bundle then has N breakpoints as the prover counts them
(gateway/policy/prove.py), all inside a 365-day horizon from `origin`, instead
of one for nearly every stage, date and suspension (`bench/prove.py`).

Run it to write a bundle: `python bench/bundlegen.py DIR [--orgs N] [--models N] [--breakpoints N]`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.policy.countries import ALPHA2  # noqa: E402

REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "policy"
COPIED = ("jurisdictions.yaml", "framework.yaml")
# Reference groups the generated entries refer to; checked to exist before writing.
ALLOW_GROUPS = ("us", "tier1_allies")
DENY_GROUPS = ("countries_of_concern", "ear_d5", "embargoed")

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=4 * 365)  # timelines start within 2025-2028
GRID_ORIGIN = datetime(2027, 1, 1, tzinfo=UTC)  # `breakpoints=N`: the year from here
GRID_SPAN_DAYS = 365


@dataclass(frozen=True)
class Generated:
    directory: Path
    orgs: int
    models: int
    suspensions: int
    covered: int
    grid: tuple[datetime, ...] = field(default=())  # with `breakpoints=N`: the only instants used


@dataclass(frozen=True)
class _Reference:
    groups: dict[str, list[str]]  # group -> countries, includes expanded
    thresholds: list[tuple[str, float]]  # covered when any is met (the reference uses `any`)
    review_days: int


def generate(
    directory: str | Path,
    orgs: int = 100_000,
    models: int = 10_000,
    seed: int = 20260801,
    *,
    suspensions: int | None = None,
    breakpoints: int | None = None,
    origin: datetime = GRID_ORIGIN,
    reference: str | Path = REFERENCE,
) -> Generated:
    """Write a bundle to `directory` (created if needed) and say what is in it.

    `suspensions` defaults to one per 200 models (at least one). `breakpoints`:
    take every instant from that many midnights after `origin` (module docstring)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    source = Path(reference)
    ref = _read_reference(source)
    rng = random.Random(seed)
    clock: _Clock = _FreeClock() if breakpoints is None else _GridClock(origin, breakpoints, ref.review_days)
    for name in COPIED:
        (target / name).write_text((source / name).read_text(encoding="utf-8"), encoding="utf-8")
    (target / "organizations.yaml").write_text(_organizations(rng, orgs, ref, clock), encoding="utf-8")
    model_text, names, covered = _models(rng, models, ref, clock)
    (target / "models.yaml").write_text(model_text, encoding="utf-8")
    count = max(1, models // 200) if suspensions is None else suspensions
    (target / "suspensions.yaml").write_text(_suspensions(rng, count, names, clock), encoding="utf-8")
    grid = clock.instants if isinstance(clock, _GridClock) else ()
    return Generated(target, orgs, models, count, covered, grid)


def _read_reference(source: Path) -> _Reference:
    groups_doc = yaml.safe_load((source / "jurisdictions.yaml").read_text(encoding="utf-8"))["groups"]
    framework = yaml.safe_load((source / "framework.yaml").read_text(encoding="utf-8"))
    missing = [g for g in (*ALLOW_GROUPS, *DENY_GROUPS) if g not in groups_doc]
    if missing:
        raise ValueError(f"reference jurisdictions lack the groups {missing}")
    rule = framework["covered_model"]
    if "any" not in rule:
        raise ValueError("bundlegen computes coverage for an `any` rule only")

    def expand(name: str) -> list[str]:
        group = groups_doc[name]
        found = [str(c) for c in group.get("countries", ())]
        for inner in group.get("include", ()):
            found += expand(inner)
        return found

    return _Reference(
        groups={name: sorted(set(expand(name))) for name in groups_doc},
        # YAML 1.1 reads `1.0e26` as a string: float() takes either form.
        thresholds=[(t["evaluation"], float(t["at_least"])) for t in rule["any"]],
        review_days=int(framework["review_window_max_days"]),
    )


# When things happen: anywhere in 2025-2028, or only on a grid of instants.


class _Clock(Protocol):
    def start(self, rng: random.Random) -> datetime:
        """A release timeline's first stage."""

    def later(self, rng: random.Random, moment: datetime, days: tuple[int, int], hours: bool = True) -> datetime:
        """Some `days` (a range) after `moment`, stages' starts strictly increasing."""

    def vetted_until(self, rng: random.Random) -> date: ...

    def suspension_start(self, rng: random.Random) -> datetime: ...


class _FreeClock:
    def start(self, rng: random.Random) -> datetime:
        start = EPOCH + timedelta(seconds=rng.randrange(int(SPAN.total_seconds())))
        return start.replace(second=0)

    def later(self, rng: random.Random, moment: datetime, days: tuple[int, int], hours: bool = True) -> datetime:
        return moment + timedelta(days=rng.randint(*days), hours=rng.randint(0, 23) if hours else 0)

    def vetted_until(self, rng: random.Random) -> date:
        return _day(rng, date(2025, 6, 1), date(2028, 12, 31))

    def suspension_start(self, rng: random.Random) -> datetime:
        return EPOCH + timedelta(days=rng.randrange(4 * 365), hours=rng.randrange(24))


class _GridClock:
    """`count` midnights a whole number of days apart, the first one step after
    `origin`, the last before `origin` + GRID_SPAN_DAYS. A span of days becomes a
    number of steps (at least one); a timeline starts early enough that its
    longest possible run stays on the grid, and a review stays within the window."""

    def __init__(self, origin: datetime, count: int, review_days: int) -> None:
        self.step = GRID_SPAN_DAYS // (count + 1)
        if count < 2 or self.step < 1:
            raise ValueError(f"breakpoints: between 2 and {GRID_SPAN_DAYS - 1}, not {count}")
        if self.step > review_days - 1:
            raise ValueError(f"breakpoints: {count} are {self.step} days apart, more than a "
                             f"{review_days}-day review window allows; ask for more")
        first = origin.replace(hour=0, minute=0, second=0, microsecond=0)
        self.instants = tuple(first + timedelta(days=self.step * (i + 1)) for i in range(count))
        self.index = {moment: i for i, moment in enumerate(self.instants)}
        # The longest timeline: internal, review, limited partner (see _timeline), in steps.
        self.reserve = sum(self._steps((1, high)) for high in (60, review_days - 1, 120))
        if self.reserve >= count:
            raise ValueError(f"breakpoints: {count} are too few for a whole release timeline")

    def _steps(self, days: tuple[int, int]) -> int:
        return max(1, days[1] // self.step)

    def start(self, rng: random.Random) -> datetime:
        return self.instants[rng.randrange(len(self.instants) - self.reserve)]

    def later(self, rng: random.Random, moment: datetime, days: tuple[int, int], hours: bool = True) -> datetime:
        index = self.index[moment] + rng.randint(1, self._steps(days))
        return self.instants[min(index, len(self.instants) - 1)]

    def vetted_until(self, rng: random.Random) -> date:
        # Valid through its end: vetting lapses at the next midnight, a grid instant.
        return rng.choice(self.instants).date() - timedelta(days=1)

    def suspension_start(self, rng: random.Random) -> datetime:
        return self.instants[rng.randrange(len(self.instants) - 1)]  # room for an end after it


# organizations.yaml

TIERS = ("government", "vetted_partner", "verified", "standard")
TIER_WEIGHTS = (2, 25, 28, 45)


def _organizations(rng: random.Random, count: int, ref: _Reference, clock: _Clock) -> str:
    us = ref.groups["us"]
    allies = ref.groups["tier1_allies"]
    concern = ref.groups["countries_of_concern"]
    embargoed = ref.groups["embargoed"]
    others = sorted(ALPHA2 - set(us) - set(allies) - set(concern) - set(embargoed))
    pools = (us, allies, others, concern, embargoed)
    pool_weights = (40, 25, 25, 8, 2)
    lines = ["# Generated by bench/bundlegen.py: a synthetic partner registry.", "organizations:"]
    for index in range(count):
        pool = rng.choices(pools, pool_weights)[0]
        tier = rng.choices(TIERS, TIER_WEIGHTS)[0]
        lines += [
            f"  org-{index:06d}:",
            f"    name: Generated Organization {index}",
            f'    country: "{rng.choice(pool)}"',
            f"    tier: {tier}",
        ]
        if tier == "vetted_partner" or (tier == "verified" and rng.random() < 0.2):
            lines.append(f"    vetted_until: {clock.vetted_until(rng).isoformat()}")
        roll = rng.random()
        if roll < 0.01:
            lines += ["    status: denied", "    status_reason: Entity List match (synthetic)"]
        elif roll < 0.02:
            lines += ["    status: suspended", "    status_reason: Under review (synthetic)"]
    return "\n".join(lines) + "\n"


# models.yaml


def _models(rng: random.Random, count: int, ref: _Reference, clock: _Clock) -> tuple[str, list[str], int]:
    """The models' text, every requestable name (ids and aliases), and how many are covered."""
    lines = ["# Generated by bench/bundlegen.py: synthetic models and release timelines.", "models:"]
    names: list[str] = []
    covered_count = 0
    for index in range(count):
        model_id = f"gen-{index:05d}"
        aliases = [f"{model_id}-latest", f"g{index}"][: rng.choice((0, 0, 1, 2))]
        names += [model_id, *aliases]
        evaluations = _evaluations(rng)
        # A missing evaluation counts as met, as the loader does (fail closed).
        covered = any(float(evaluations.get(name, "inf")) >= floor for name, floor in ref.thresholds)
        covered_count += covered
        waived = covered and rng.random() < 0.01
        lines.append(f"  {model_id}:")
        if aliases:
            lines.append(f"    aliases: [{', '.join(aliases)}]")
        lines.append(f"    upstream: {rng.choice(('default', 'default', 'pool-a', 'pool-b'))}")
        lines.append("    evaluations:")
        lines += [f"      {name}: {value}" for name, value in evaluations.items()]
        if waived:
            lines += ["    review_waiver:", "      reason: Evaluated under a prior agreement (synthetic)"]
        lines.append("    release:")
        for stage, start, tiers, groups in _timeline(rng, covered and not waived, ref.review_days, clock):
            lines.append(f"      - stage: {stage}")
            lines.append(f"        from: {_stamp(start)}")
            if tiers is not None:
                lines.append(f"        tiers: [{', '.join(tiers)}]")
            if groups is not None:
                lines.append(f"        jurisdictions: [{', '.join(groups)}]")
    return "\n".join(lines) + "\n", names, covered_count


def _evaluations(rng: random.Random) -> dict[str, str]:
    """Evaluation results as YAML scalars; `3.0e+26`, the form YAML 1.1 reads as a float."""
    exponent = rng.choice((23, 24, 25, 25, 26, 26, 27))
    evaluations = {"training_compute_flop": f"{rng.uniform(1, 9.9):.1f}e+{exponent}"}
    if rng.random() < 0.99:  # the rest: coverage cannot be established, so covered (with a warning)
        evaluations["cyber_capability_score"] = f"{rng.betavariate(2, 4):.2f}"
    return evaluations


Stage = tuple[str, datetime, Sequence[str] | None, Sequence[str] | None]


def _timeline(rng: random.Random, needs_review: bool, review_days: int, clock: _Clock) -> list[Stage]:
    start = clock.start(rng)
    stages: list[Stage] = []
    if rng.random() < 0.3:
        stages.append(("internal", start, None, None))
        start = clock.later(rng, start, (1, 60))
    review = needs_review or rng.random() < 0.1
    if review:
        groups = rng.choice((["us"], ["us"], None))
        stages.append(("government_review", start, ["government"], groups))
        # Reviews end within the window; a later stage always follows.
        start = clock.later(rng, start, (1, review_days - 1))
    limited = rng.random() < (0.7 if review else 0.4)
    general = rng.random() < 0.85 or not (limited or review)
    if review and not (limited or general):
        general = True
    if limited:
        tiers = rng.choice((["government", "vetted_partner"], ["government", "vetted_partner", "verified"], None))
        groups = rng.choice((["us"], ["us", "tier1_allies"], None))
        stages.append(("limited_partner", start, tiers, groups))
        start = clock.later(rng, start, (7, 120))
    if general:
        stages.append(("general", start, None, None))
    return stages


# suspensions.yaml

SCOPES = (
    ("deny_outside", ["us"]),
    ("deny_outside", ["us", "tier1_allies"]),
    ("deny_in", ["countries_of_concern"]),
    ("deny_in", ["ear_d5"]),
)


def _suspensions(rng: random.Random, count: int, names: list[str], clock: _Clock) -> str:
    lines = ["# Generated by bench/bundlegen.py: synthetic export suspensions.", "suspensions:"]
    for index in range(count):
        scope, groups = rng.choice(SCOPES)
        start = clock.suspension_start(rng)
        lines += [
            f"  - id: gen-suspension-{index:04d}",
            f"    models: [{', '.join(rng.sample(names, rng.randint(1, 5)))}]",
            f"    {scope}: [{', '.join(groups)}]",
            f"    from: {_stamp(start)}",
        ]
        if rng.random() < 0.8:
            lines.append(f"    until: {_stamp(clock.later(rng, start, (3, 60), hours=False))}")
        lines += [
            "    reason: Synthetic suspension for benchmarks",
            f'    reference: "BENCH-{index:04d}"',
        ]
        if rng.random() < 0.1:
            lines.append("    mode: shadow")
    return "\n".join(lines) + "\n"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a large synthetic policy bundle.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--orgs", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--suspensions", type=int, default=None)
    parser.add_argument("--seed", type=int, default=20260801)
    parser.add_argument("--breakpoints", type=int, default=None,
                        help="take every instant from this many midnights in the year after --origin")
    parser.add_argument("--origin", type=_utc, default=GRID_ORIGIN,
                        help=f"with --breakpoints (default {GRID_ORIGIN.date()})")
    args = parser.parse_args(argv)
    made = generate(args.directory, args.orgs, args.models, args.seed, suspensions=args.suspensions,
                    breakpoints=args.breakpoints, origin=args.origin)
    grid = f", instants on {len(made.grid)} midnights from {made.grid[0].date()}" if made.grid else ""
    print(
        f"wrote {made.directory}: {made.orgs} orgs, {made.models} models "
        f"({made.covered} covered), {made.suspensions} suspensions{grid}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
