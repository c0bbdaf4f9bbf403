"""Benchmark `decide()`: time per decision on the reference bundle and on a
large generated one (10^5 orgs, 10^4 models by default); and the client-address
resolution (X-Forwarded-For against `trusted_proxies`) as that list grows from
10 to 10^6 CIDRs (10^5 with --quick).

    python bench/decide.py            # full run, about a minute (mostly loading)
    python bench/decide.py --quick    # smaller bundle, fewer calls
    python bench/decide.py --profile  # also cProfile the decision loop

Each bundle gets a fixed, varied set of requests (known and unknown orgs and
models, aliases and odd spellings, allowed, embargoed, concern and unknown
countries, anonymizers, times across 2025-2028), so that both allowed and
denied paths are timed. Every call is timed alone with `perf_counter_ns`; the
timer's own cost is measured and shown, not subtracted. The goal (the budget
for the decision core) is a median of at most 20 µs per decision, and the
issue's: flat cost as lists grow (large / reference and 10^6 / 10 CIDRs within
1.5x at the median).

The CIDR lists: a fixed core (127.0.0.1/32 and a few proxy networks) plus random
IPv4 and IPv6 networks (one of each prefix length first, then any); the same requests (a trusted peer,
one to three X-Forwarded-For hops through the core's proxies, a client address
that is not trusted) are resolved against each list by `client_ip()`, the
function the request path calls. `TrustedProxies` tests one set per distinct
prefix length, so its cost follows the lengths present (at most 33 for IPv4,
129 for IPv6), not the number of networks: flatness is judged between the
smallest list holding every length (142 CIDRs) and the largest.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import ipaddress
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bundlegen import REFERENCE, generate  # noqa: E402
from gateway.request.clientip import TrustedProxies, client_ip  # noqa: E402
from gateway.policy.countries import ALPHA2  # noqa: E402
from gateway.policy.decision import Facts, decide  # noqa: E402
from gateway.policy.load import load_bundle  # noqa: E402
from gateway.policy.snapshot import Policy  # noqa: E402

GOAL_MEDIAN_US = 20.0
GOAL_FLAT_RATIO = 1.5  # large list / small list, median
CORE_CIDRS = ("127.0.0.1/32", "10.20.0.0/16", "192.0.2.0/24", "2001:db8:77::/48")
Request = tuple[Facts, datetime]
T = TypeVar("T")


@dataclass(frozen=True)
class Timing:
    median_us: float
    p99_us: float
    mean_us: float
    calls: int
    by_outcome: dict[str, float]  # median µs for allowed / denied calls


def requests(policy: Policy, count: int, seed: int) -> list[Request]:
    """A varied, reproducible set of (facts, now) for this policy."""
    rng = random.Random(seed)
    orgs = list(policy.organizations)
    names = [name for model in policy.models.values() for name in (model.id, *model.aliases)]
    groups = policy.groups
    usual = sorted(groups["us"].countries) + sorted(groups.get("tier1_allies", groups["us"]).countries)
    concern = sorted(groups["countries_of_concern"].countries) if "countries_of_concern" in groups else usual
    embargoed = sorted(groups["embargoed"].countries) if "embargoed" in groups else usual
    regions = sorted(groups["embargoed"].regions) if "embargoed" in groups else []
    anywhere = sorted(ALPHA2)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    span = int(timedelta(days=4 * 365).total_seconds())
    made: list[Request] = []
    for _ in range(count):
        org = rng.choice(orgs) if rng.random() < 0.95 else "org-unknown-to-bench"
        name = rng.choice(names) if rng.random() < 0.95 else "no-such-model"
        if rng.random() < 0.1:
            name = f"  {name.upper()} "
        country = rng.choices((usual, anywhere, concern, embargoed, None), (55, 25, 10, 3, 7))[0]
        observed = rng.choice(country) if country is not None else None
        region = None
        if observed == "UA" and regions and rng.random() < 0.5:
            region = rng.choice(regions)
        facts = Facts(org, name, observed, region, anonymizer=rng.random() < 0.05)
        model = policy.model_named(name)
        if model is not None and rng.random() < 0.7:
            # Mostly around the model's own timeline, so that its stages are exercised
            # rather than "not released yet" for half of a bundle spread over four years.
            now = model.stages[0].starts + timedelta(days=rng.uniform(-30, 400))
        else:
            now = start + timedelta(seconds=rng.randrange(span))
        made.append((facts, now))
    return made


def timer_overhead_ns(samples: int = 100_000) -> float:
    clock = time.perf_counter_ns
    spans = []
    for _ in range(samples):
        t0 = clock()
        spans.append(clock() - t0)
    return statistics.median(spans)


def time_decisions(policy: Policy, batch: Sequence[Request], calls: int) -> Timing:
    # Warm-up: every request once. An item's outcome is the same on every call.
    outcome = [decide(policy, facts, now).allowed for facts, now in batch]
    clock = time.perf_counter_ns
    spans: list[int] = []
    append = spans.append
    size = len(batch)
    gc.collect()
    for index in range(calls):
        facts, now = batch[index % size]
        t0 = clock()
        decide(policy, facts, now)
        append(clock() - t0)
    allowed = [span for index, span in enumerate(spans) if outcome[index % size]]
    denied = [span for index, span in enumerate(spans) if not outcome[index % size]]
    ordered = sorted(spans)
    return Timing(
        median_us=statistics.median(ordered) / 1000,
        p99_us=ordered[int(0.99 * (len(ordered) - 1))] / 1000,
        mean_us=sum(spans) / len(spans) / 1000,
        calls=calls,
        by_outcome={
            "allowed": statistics.median(allowed) / 1000 if allowed else float("nan"),
            "denied": statistics.median(denied) / 1000 if denied else float("nan"),
        },
    )


def mix(policy: Policy, batch: Sequence[Request]) -> str:
    reasons: Counter[str] = Counter()
    allowed = 0
    for facts, now in batch:
        decision = decide(policy, facts, now)
        allowed += decision.allowed
        reasons[str(decision.reason) if decision.reason else "allow"] += 1
    top = ", ".join(f"{name} {count * 100 / len(batch):.0f}%" for name, count in reasons.most_common(6))
    return f"{allowed * 100 / len(batch):.0f}% allowed; first reasons: {top}"


def profile(policy: Policy, batch: Sequence[Request], calls: int) -> str:
    profiler = cProfile.Profile()
    size = len(batch)
    profiler.enable()
    for index in range(calls):
        facts, now = batch[index % size]
        decide(policy, facts, now)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return out.getvalue()


V4_LENGTHS, V6_LENGTHS = range(8, 33), range(16, 129)
EVERY_LENGTH = len(CORE_CIDRS) + len(V4_LENGTHS) + len(V6_LENGTHS)  # the smallest list with every length


def cidr_list(count: int, seed: int) -> list[str]:
    """CORE_CIDRS, then one random network of each prefix length, then random networks (90% IPv4)
    up to `count`; none covers the core or the clients."""
    rng = random.Random(seed)
    cidrs = list(CORE_CIDRS)
    lengths = [(4, n) for n in V4_LENGTHS] + [(6, n) for n in V6_LENGTHS]
    while len(cidrs) < count:
        version, length = lengths.pop(0) if lengths else (4 if rng.random() < 0.9 else 6, None)
        if version == 4:
            length = length or rng.randint(8, 32)
            value = rng.getrandbits(32) >> (32 - length) << (32 - length)
            if value >> 24 in (10, 127) or 192 <= value >> 24 <= 223:
                if len(cidrs) < EVERY_LENGTH:
                    lengths.insert(0, (version, length))  # draw this length again
                continue  # keep clear of the core and of the clients drawn below
            cidrs.append(f"{ipaddress.IPv4Address(value)}/{length}")
        else:
            length = length or rng.randint(16, 128)
            value = rng.getrandbits(128) >> (128 - length) << (128 - length)
            if value >> 112 in (0x2001, 0):
                if len(cidrs) < EVERY_LENGTH:
                    lengths.insert(0, (version, length))
                continue
            cidrs.append(f"{ipaddress.IPv6Address(value)}/{length}")
    return cidrs


def forwarded_requests(count: int, seed: int) -> list[tuple[str, list[str]]]:
    """(peer, X-Forwarded-For values): through 0-2 of the core's proxies, from a client in 193-223.x.x.x."""
    rng = random.Random(seed)
    proxies = ["10.20.3.4", "192.0.2.9", "2001:db8:77::5"]
    made = []
    for _ in range(count):
        client = f"{rng.randint(193, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        hops = [client, *rng.sample(proxies, rng.randint(0, 2))]
        made.append(("127.0.0.1", [", ".join(hops)]))
    return made


def time_client_ip(trusted: TrustedProxies, batch: Sequence[tuple[str, list[str]]], calls: int) -> float:
    """Median µs per client_ip() call."""
    for peer, forwarded in batch:
        client_ip(peer, forwarded, trusted)
    clock = time.perf_counter_ns
    spans = []
    size = len(batch)
    gc.collect()
    for index in range(calls):
        peer, forwarded = batch[index % size]
        t0 = clock()
        client_ip(peer, forwarded, trusted)
        spans.append(clock() - t0)
    return statistics.median(spans) / 1000


def cidr_scaling(largest: int, calls: int, seed: int) -> float:
    """Print client_ip() cost for growing trusted_proxies lists; the largest/smallest median ratio."""
    batch = forwarded_requests(10_000, seed)
    answers = None
    medians = {}
    print("client_ip() against trusted_proxies (X-Forwarded-For through 0-2 trusted hops):")
    for count in sorted({len(CORE_CIDRS), EVERY_LENGTH, 1_000, 100_000, largest}):
        if count > largest:
            continue
        cidrs, made = timed(lambda: cidr_list(count, seed))
        trusted, built = timed(lambda: TrustedProxies(cidrs))
        resolved = [client_ip(peer, forwarded, trusted) for peer, forwarded in batch]
        answers = answers or resolved
        if resolved != answers:  # the extra networks never cover the clients: same answers at every size
            raise SystemExit(f"client_ip() answers changed with {count} CIDRs")
        lengths = len(trusted._v4) + len(trusted._v6)
        medians[count] = time_client_ip(trusted, batch, calls)
        print(f"  {count:>9,} CIDRs ({lengths:>3} distinct prefix lengths, built in {built:5.1f} s): "
              f"median {medians[count]:5.2f} µs per call")
        del trusted, cidrs
        gc.collect()
    # The cost follows the distinct prefix lengths present (at most 33 IPv4 + 129 IPv6), not the
    # count: flatness is judged from the smallest list that has every length the largest has.
    small, big = medians[EVERY_LENGTH], medians[max(medians)]
    ratio = big / small
    print(f"  ratio {max(medians):,} / {EVERY_LENGTH} CIDRs (both with every prefix length): median {ratio:.2f}x "
          f"(goal <= {GOAL_FLAT_RATIO:g}x: {'met' if ratio <= GOAL_FLAT_RATIO else 'NOT met'}); "
          f"{max(medians):,} / {len(CORE_CIDRS)} CIDRs: {big / medians[len(CORE_CIDRS)]:.2f}x")
    return ratio


def timed(action: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def report(label: str, timing: Timing) -> None:
    verdict = "ok" if timing.median_us <= GOAL_MEDIAN_US else "OVER GOAL"
    print(
        f"  {label:<10} median {timing.median_us:6.2f} µs   p99 {timing.p99_us:6.2f} µs   "
        f"mean {timing.mean_us:6.2f} µs   (allowed {timing.by_outcome['allowed']:.2f} / "
        f"denied {timing.by_outcome['denied']:.2f} µs median; {timing.calls} calls)   "
        f"goal median <= {GOAL_MEDIAN_US:g} µs: {verdict}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 orgs, 10^3 models, 20k calls")
    parser.add_argument("--orgs", type=int, help="organizations in the large bundle (default 100000)")
    parser.add_argument("--models", type=int, help="models in the large bundle (default 10000)")
    parser.add_argument("--calls", type=int, help="timed calls per bundle (default 200000)")
    parser.add_argument("--requests", type=int, default=10_000, help="distinct requests per bundle")
    parser.add_argument("--seed", type=int, default=20260801)
    parser.add_argument("--bundle", type=Path, help="write the large bundle here (default: a temporary directory)")
    parser.add_argument("--profile", action="store_true", help="cProfile the decision loop on the large bundle")
    parser.add_argument("--cidrs", type=int, help="largest trusted_proxies list (default 1000000; --quick 100000)")
    args = parser.parse_args(argv)
    orgs = args.orgs or (10_000 if args.quick else 100_000)
    models = args.models or (1_000 if args.quick else 10_000)
    calls = args.calls or (20_000 if args.quick else 200_000)

    print(f"python {sys.version.split()[0]}; timer overhead {timer_overhead_ns():.0f} ns per call (included)")
    reference, ref_load = timed(lambda: load_bundle(REFERENCE))
    print(f"reference bundle: load {ref_load * 1000:.1f} ms ({len(reference.policy.organizations)} orgs, "
          f"{len(reference.policy.models)} models)")

    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as scratch:
        directory = args.bundle or Path(scratch) / "policy"
        made, gen_time = timed(lambda: generate(directory, orgs, models, args.seed))
        size = sum(p.stat().st_size for p in Path(directory).glob("*.yaml"))
        large, large_load = timed(lambda: load_bundle(directory))
    print(f"large bundle: {made.orgs} orgs, {made.models} models ({made.covered} covered), "
          f"{made.suspensions} suspensions, {size / 1e6:.1f} MB; generated in {gen_time:.1f} s, "
          f"loaded in {large_load:.1f} s ({len(large.warnings)} warnings)")

    results: dict[str, Timing] = {}
    for label, loaded in (("reference", reference), ("large", large)):
        batch = requests(loaded.policy, args.requests, args.seed)
        print(f"{label}: {len(batch)} distinct requests, {mix(loaded.policy, batch)}")
        results[label] = time_decisions(loaded.policy, batch, calls)

    print("decide() per call:")
    for label, timing in results.items():
        report(label, timing)
    ref, big = results["reference"], results["large"]
    print(f"  ratio large/reference: median {big.median_us / ref.median_us:.2f}x, p99 {big.p99_us / ref.p99_us:.2f}x")

    if args.profile:
        batch = requests(large.policy, args.requests, args.seed)
        print(profile(large.policy, batch, min(calls, 50_000)))
    flat = big.median_us / ref.median_us <= GOAL_FLAT_RATIO
    print(f"  goal: flat as the bundle grows (large/reference median <= {GOAL_FLAT_RATIO:g}x): "
          f"{'met' if flat else 'NOT met'}")
    del large, made
    gc.collect()
    cidr_ratio = cidr_scaling(args.cidrs or (100_000 if args.quick else 1_000_000), min(calls, 100_000), args.seed)
    within = all(t.median_us <= GOAL_MEDIAN_US for t in results.values())
    print(f"goal: median <= {GOAL_MEDIAN_US:g} µs per decision: {'met' if within else 'NOT met'}; "
          f"flat with 10^{len(str(orgs)) - 1} orgs: {'met' if flat else 'NOT met'}; "
          f"flat with {args.cidrs or (100_000 if args.quick else 1_000_000):,} CIDRs: "
          f"{'met' if cidr_ratio <= GOAL_FLAT_RATIO else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
