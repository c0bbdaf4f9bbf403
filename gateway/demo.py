"""`gateway demo`: a tour of decisions over the shipped policy bundle.

Each stop decides one request with the pure core and prints the `gateway
explain` command that reproduces it, so a new user sees allowed requests,
concealment of a pre-release model, jurisdiction denials and an Entity List
denial in one run, offline. The tour is pinned to one moment so that it reads
the same whatever day it is run.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from gateway.cli import parse_time
from gateway.decision import Facts, decide
from gateway.policy.load import load_bundle

SHIPPED_POLICIES = Path(__file__).resolve().parent.parent / "policies"
TOUR_TIME = "2026-12-01T12:00:00Z"


@dataclass(frozen=True)
class Stop:
    story: str
    org: str
    model: str
    country: str | None
    region: str | None = None
    anonymizer: bool = False


TOUR = (
    Stop("A vetted US partner uses a covered model in its limited rollout", "org-partner-us", "example-frontier-2", "US"),
    Stop("A vetted Japanese partner, from Japan (an allied jurisdiction)", "org-partner-jp", "example-frontier-2", "JP"),
    Stop("The same partner's credential seen from China", "org-partner-jp", "example-frontier-2", "CN"),
    Stop("A standard developer asks for the pre-release model: concealed", "org-developer-us", "example-frontier-2", "US"),
    Stop("A partner whose vetting lapsed counts as standard", "org-lapsed-partner", "example-frontier-2", "US"),
    Stop("A small, uncovered model is open to every tier", "org-developer-us", "example-small-latest", "BR"),
    Stop("...but not from a comprehensively embargoed country", "org-developer-us", "example-small-1", "IR"),
    Stop("...nor from an embargoed region (needs a City database)", "org-developer-us", "example-small-1", "UA", "UA-43"),
    Stop("An org declared in China is refused a covered model even from a US address", "org-verified-cn", "example-frontier-1", "US"),
    Stop("Covered models are refused through anonymizers", "org-developer-us", "example-frontier-1", "US", anonymizer=True),
    Stop("Covered models are refused when the country is unknown", "org-developer-us", "example-frontier-1", None),
    Stop("An Entity List match is denied everything", "org-entity-listed", "example-small-1", "US"),
)


def explain_command(stop: Stop, policy_dir: Path) -> str:
    try:
        policy_dir = policy_dir.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    argv = ["gateway", "explain", "--policy", str(policy_dir), "--org", stop.org, "--model", stop.model, "--at", TOUR_TIME]
    if stop.country:
        argv += ["--country", stop.country]
    if stop.region:
        argv += ["--region", stop.region]
    if stop.anonymizer:
        argv.append("--anonymizer")
    return shlex.join(argv)


def run_tour(policy_dir: Path = SHIPPED_POLICIES) -> int:
    policy_dir = Path(policy_dir)
    policy = load_bundle(policy_dir).policy
    now = parse_time(TOUR_TIME)
    print(f"Frontier Gateway decision tour — policy {policy_dir} (version {policy.version}), as of {TOUR_TIME}\n")
    for number, stop in enumerate(TOUR, 1):
        facts = Facts(stop.org, stop.model, stop.country, stop.region, stop.anonymizer)
        decision = decide(policy, facts, now)
        outcome = f"{decision.verdict.upper()} {decision.status}"
        if decision.reasons:
            outcome += " " + ", ".join(decision.reasons)
        print(f"{number:2}. {stop.story}\n    -> {outcome}\n    $ {explain_command(stop, policy_dir)}\n")
    print("Run any command above (add --json for machine-readable output) to see every rule behind the")
    print("decision; after `make demo` the command is .venv/bin/gateway, or activate .venv first.")
    return 0
