"""`gateway admin proposals|show|approve|reject|withdraw|countersign|whoami`:
change control from a shell (docs/operators.md, "Change control").

`show` prints what a reviewer needs on one screen: the change, its access
delta, and how many recorded requests it would flip, by organization and country.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from gateway.admin.client import Client, compact, segment, show
from gateway.live.access_delta import render as render_delta

Verb = Callable[..., argparse.ArgumentParser]


def is_proposal(body: Any) -> bool:
    return isinstance(body, dict) and "proposer" in body and "approvals_needed" in body


def proposal_lines(p: dict[str, Any]) -> list[str]:
    """A proposal on one screen: what, who, state, diff, access delta, simulation."""
    approvals = ", ".join(a["actor"] for a in p.get("approvals") or []) or "none yet"
    lines = [
        f"proposal {p['id']}: {p['kind']} {p.get('target') or ''} — {p['state']}",
        f"  proposed by {p['proposer']} at {p['created']}; expires {p['expires_at'][:19]}Z",
        f"  reason: {p.get('reason') or '-'}; reference: {p.get('reference') or '-'}",
        f"  approvals: {approvals} ({len(p.get('approvals') or [])} of {p['approvals_needed']} needed, "
        f"none by the proposer)",
        f"  computed against policy version {p['policy_version']} (would become {p['resulting_policy_version']})",
    ]
    recomputed = p.get("recomputed")
    if recomputed:
        lines.append(f"  recomputed at {recomputed['time']} (live policy moved from {recomputed['from_policy_version']})"
                     + ("; its access delta changed and approvals were cleared" if recomputed["approvals_cleared"] else ""))
    lines += [f"  problem: {problem}" for problem in p.get("problems") or []]
    change = p.get("diff") or {}
    lines += ["", f"Change: {change.get('action')}", f"  before: {compact(change.get('before'))}",
              f"  after:  {compact(change.get('after'))}"]
    for section, entries in (change.get("changes") or {}).items():
        for entry in entries if isinstance(entries, list) else []:
            lines.append(f"  {section}: {entry.get('change', '~')} {entry.get('name', entry.get('field', ''))}")
    lines += ["", *render_delta(p["access_delta"]), "", *simulation_lines(p.get("simulation") or {})]
    if p.get("applied"):
        lines.append(f"applied at {p['applied']['time']} as change {p.get('change_id')}, "
                     f"policy version {p['applied']['policy_version']}")
    return lines


def simulation_lines(sim: dict[str, Any]) -> list[str]:
    flips = sim.get("would_flip") or {}
    lines = [f"Simulation over {sim.get('records', 0)} recent audit records ({sim.get('replayed', 0)} decided): "
             f"{flips.get('deny_to_allow', 0)} would be allowed, {flips.get('allow_to_deny', 0)} denied"]
    for by in ("org", "country"):
        rows = sim.get(f"by_{by}") or []
        if rows:
            lines.append(f"  by {by}: " + ", ".join(
                f"{r[by]} +{r['deny_to_allow']}/-{r['allow_to_deny']}" for r in rows[:10]))
    return lines


def applied_or_proposed(body: dict[str, Any], applied: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """The answer of a direct change: applied (and awaiting countersignature), or a proposal."""
    if is_proposal(body):
        return [f"not applied: this change grants access, so it needs {body['approvals_needed']} other operator(s) "
                f"to approve it (gateway admin approve {body['id']})", "", *proposal_lines(body)]
    lines = applied(body)
    countersign = body.get("countersign") or {}
    if countersign.get("state") == "awaiting":
        lines.append(f"applied at once; another operator must countersign change {body.get('change_id')} "
                     f"by {countersign['due']} (gateway admin countersign {body.get('change_id')})")
    return lines


def do_proposals(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", "/admin/proposals", query={"state": None if args.all else "open"})

    def readable(b: dict[str, Any]) -> list[str]:
        items = b.get("proposals") or []
        if not items:
            return ["no proposals" if args.all else "no open proposals"]
        return [f"{p['id']} {p['state']} {p['kind']} {p.get('target') or ''} by {p['proposer']} "
                f"({len(p.get('approvals') or [])}/{p['approvals_needed']} approvals; {p['access_delta']['kind']}): "
                f"{p.get('reason') or '-'}" for p in items]
    show(args, answer, readable)
    return 0


def do_show(client: Client, args: argparse.Namespace) -> int:
    show(args, client.call("GET", f"/admin/proposals/{segment(args.id)}"), proposal_lines)
    return 0


def _decide(verb: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(client: Client, args: argparse.Namespace) -> int:
        answer = client.call("POST", f"/admin/proposals/{segment(args.id)}/{verb}", {"reason": args.reason})
        show(args, answer, lambda p: [f"{verb}: proposal {p['id']} is now {p['state']}"]
             + ([f"applied as change {p.get('change_id')}, policy version {p['applied']['policy_version']}"]
                if p.get("applied") else []))
        return 0
    return run


def do_countersign(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("POST", f"/admin/changes/{segment(args.change_id)}/countersign", {"reason": args.reason})
    show(args, answer, lambda b: [f"change {b.get('target')} countersigned by {b.get('actor')}"])
    return 0


def do_whoami(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", "/admin/whoami")
    show(args, answer, lambda b: [f"{b['name']} ({b['role']}); loosening changes need {b['approvals_needed']} "
                                  "approval(s) by other operators"])
    return 0


def add_verbs(verb: Verb) -> None:
    listing = verb("proposals", do_proposals, "open proposals (GET /admin/proposals?state=open)")
    listing.add_argument("--all", action="store_true", help="every proposal, whatever its state")
    shown = verb("show", do_show, "one proposal: its change, access delta and simulation (GET /admin/proposals/ID)")
    shown.add_argument("id", metavar="PROPOSAL_ID")
    for name, text in (("approve", "approve a proposal (it applies once enough operators other than its proposer do)"),
                       ("reject", "reject a proposal, with a reason"),
                       ("withdraw", "withdraw your own proposal")):
        parser = verb(name, _decide(name), f"{text} (POST /admin/proposals/ID/{name})")
        parser.add_argument("id", metavar="PROPOSAL_ID")
        parser.add_argument("--reason", required=name != "approve", metavar="TEXT", help="why (recorded)")
    countersign = verb("countersign", do_countersign,
                       "countersign another operator's tightening (POST /admin/changes/ID/countersign)")
    countersign.add_argument("change_id", metavar="CHANGE_ID")
    countersign.add_argument("--reason", metavar="TEXT", help="recorded with the countersignature")
    verb("whoami", do_whoami, "the name and role of your admin token (GET /admin/whoami)")
