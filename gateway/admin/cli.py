"""`gateway admin`: drive a running gateway's admin API (docs/admin-api.md) from a shell.

    gateway admin --url http://127.0.0.1:9090 suspend --model fable --deny-outside us --reason "BIS order"

The URL and the bearer token can come from `GATEWAY_ADMIN_URL` and
`GATEWAY_ADMIN_TOKEN` (or `--token-file`), so tokens need not appear in shell
history.

Output is one readable line per item; `--json` prints the API's JSON instead. The
HTTP client and the output helpers the verbs share are in gateway/admin/client.py.
Exit status: 0 done; 1 the API refused or failed (its message and every
problem are printed); 2 the admin API could not be reached, or bad usage.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.parse
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gateway.policy import explain
from gateway.admin import control_cli as admin_control_cli
from gateway.admin import keys_cli as admin_keys_cli
from gateway.admin.client import DEFAULT_TIMEOUT_S, Client, Failed, Refused, Unreachable, compact, segment, show
from gateway.admin.control_cli import applied_or_proposed

DEFAULT_URL = "http://127.0.0.1:9090"
RESET_WORDS = ("none", "reset", "null")
STATUSES = ("active", "suspended", "denied")
# Override field -> the `gateway admin org` option that sets it.
ORG_OPTIONS = {"status": "status", "tier": "tier", "vetted_until": "vetted-until", "status_reason": "reason"}


class AdminUsageError(Exception):
    """Bad command-line input: printed, exit status 2."""


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminUsageError(f"--url: {url!r} is not an http(s) URL (e.g. http://127.0.0.1:9090)")
    return url


# Input


def parse_time(text: str, option: str) -> str:
    """ISO 8601; a time without an offset is UTC (docs/policy.md). Sent with its offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminUsageError(f"{option}: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00Z)") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return moment.isoformat().replace("+00:00", "Z")


def parse_reset(value: str | None) -> bool:
    return value is not None and value.strip().lower() in RESET_WORDS


def parse_date(text: str) -> str:
    try:
        return date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise AdminUsageError(f"--vetted-until: {text!r} is not a date (YYYY-MM-DD) or 'none'") from None


# Output


def version_line(body: dict[str, Any]) -> str:
    before, after = body.get("policy_version_before"), body.get("policy_version")
    if before and after and before != after:
        return f"policy version {before} -> {after}"
    return f"policy version {after or '-'}" + (" (unchanged)" if before and before == after else "")


def issue_line(issue: Any) -> str:
    if not isinstance(issue, dict):
        return str(issue)
    where = str(issue.get("file") or "")
    if issue.get("line"):
        where += f":{issue['line']}"
    key = f" {issue['path']}:" if issue.get("path") else ""
    severity = "" if issue.get("severity", "error") == "error" else f" ({issue['severity']})"
    return f"{where}:{key} {issue.get('message', '')}{severity}"


def print_refusal(refused: Refused, as_json: bool) -> None:
    body = refused.body
    if as_json and isinstance(body, dict):
        print(json.dumps(body, indent=2))
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or error.get("code") or "the request was refused"
        print(f"error: {message} (HTTP {refused.status}{', ' + error['code'] if error.get('code') else ''})", file=sys.stderr)
        for problem in error.get("problems") or []:
            print(f"  {problem}", file=sys.stderr)
        for issue in error.get("issues") or []:
            print(f"  {issue_line(issue)}", file=sys.stderr)
    else:
        text = body if isinstance(body, str) and body else http.client.responses.get(refused.status, "")
        print(f"error: HTTP {refused.status}: {text}", file=sys.stderr)


def _or_proposed(readable: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    """A direct change is applied (and may await a countersignature) or became a proposal."""
    return lambda body: applied_or_proposed(body, readable)


# Verbs: each returns (method, path, body, query) via the client and prints the answer.


def do_status(client: Client, args: argparse.Namespace) -> int:
    try:
        body = client.call("GET", "/readyz")
    except Refused as refused:
        if refused.status != 503 or not isinstance(refused.body, dict):
            raise
        body = refused.body
    show(args, body, lambda b: [
        f"{'ready' if b.get('ready') else 'NOT READY'}; policy version {b.get('policy_version') or '-'}"
        + (f"; missing: {', '.join(b.get('missing') or [])}" if b.get("missing") else "")])
    return 0 if body.get("ready") else 1


def do_suspend(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"models": args.model, "reason": args.reason}
    if args.deny_outside is not None:
        body["deny_outside"] = args.deny_outside
    if args.deny_in is not None:
        body["deny_in"] = args.deny_in
    if args.reference:
        body["reference"] = args.reference
    if args.from_:
        body["from"] = parse_time(args.from_, "--from")
    if args.until:
        body["until"] = parse_time(args.until, "--until")
    if args.id:
        body["id"] = args.id
    answer = client.call("POST", "/admin/suspensions", body)

    def readable(b: dict[str, Any]) -> list[str]:
        doc = b.get("suspension") or b.get("after") or {}
        scope = ("outside " + ", ".join(doc["deny_outside"])) if doc.get("deny_outside") is not None \
            else "in " + ", ".join(doc.get("deny_in") or [])
        window = "".join([f" from {doc['from']}" if doc.get("from") else "", f" until {doc['until']}" if doc.get("until") else ""])
        verb = "admits only" if doc.get("deny_outside") is not None else "denies"
        return [f"suspension {doc.get('id', b.get('target'))} created: {', '.join(doc.get('models', []))} denied {scope}{window}",
                f"  {verb}: {places_text(recorded_places(doc.get('expanded') or {}))}", version_line(b)]
    show(args, answer, _or_proposed(readable))
    return 0


def do_lift(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("DELETE", f"/admin/suspensions/{segment(args.id)}",
                         query={"reason": args.reason, "reference": args.reference})
    show(args, answer, _or_proposed(lambda b: [f"suspension {b.get('target', args.id)} lifted", version_line(b)]))
    return 0


def do_org(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.status is not None:
        body["status"] = None if parse_reset(args.status) else args.status
    if args.tier is not None:
        body["tier"] = None if parse_reset(args.tier) else args.tier.strip()
    if args.vetted_until is not None:
        body["vetted_until"] = None if parse_reset(args.vetted_until) else parse_date(args.vetted_until)
    if args.reason is not None:
        body["status_reason"] = None if parse_reset(args.reason) else args.reason
    if not body:
        raise AdminUsageError("give one or more of --status, --tier, --vetted-until, --reason")
    answer = client.call("PATCH", f"/admin/organizations/{segment(args.org_id)}", body)

    def readable(b: dict[str, Any]) -> list[str]:
        before, after = b.get("before") or {}, b.get("after") or {}
        parts = [f"{name} {compact(before.get(name))} -> "
                 f"{'(policy files value)' if after.get(name) is None else compact(after.get(name))}" for name in after]
        lines = [f"organization {b.get('target', args.org_id)} updated: {'; '.join(parts)}", version_line(b)]
        remaining = b.get("remaining") or {}
        if any(value is None for value in after.values()):  # a reset: say what it left
            lines.append(remaining_line(remaining))
        return lines
    show(args, answer, _or_proposed(readable))
    return 0


def remaining_line(remaining: dict[str, Any]) -> str:
    if not remaining:
        return "no overrides remain: the policy files' record is in force"
    return "still overridden: " + "; ".join(
        f"{name} {compact(value)} (reset with --{ORG_OPTIONS.get(name, name)} none)" for name, value in remaining.items())


def do_reload(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("POST", "/admin/reload")
    show(args, answer, _or_proposed(lambda b: [f"policy files reloaded; policy version {b.get('policy_version') or '-'}"]))
    return 0


def do_policy_get(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", "/admin/policy")
    files: dict[str, str] = answer.get("files") or {}
    overlay = answer.get("overlay") or {}
    written: list[Path] = []
    if args.out:
        out = Path(args.out)
        for name in files:
            if Path(name).name != name or not name.endswith((".yaml", ".yml")):
                raise Failed(f"refusing to write a file named {name!r} from the answer")
        try:
            out.mkdir(parents=True, exist_ok=True)
            for name, text in sorted(files.items()):
                (out / name).write_text(text, encoding="utf-8")
                written.append(out / name)
        except OSError as failure:
            raise AdminUsageError(f"--out: cannot write to {out}: {failure.strerror or failure}") from None

    def readable(b: dict[str, Any]) -> list[str]:
        lines = [f"policy version {b.get('policy_version') or '-'} (bundle {b.get('bundle_version') or '-'}, "
                 f"policy files {b.get('files_version') or '-'}, revision {b.get('revision')})"]
        if written:
            lines.append(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
        else:
            lines += [f"file {name}: {len(text.splitlines())} lines" for name, text in sorted(files.items())]
        live = overlay.get("suspensions") or {}
        lifted = overlay.get("lifted") or []
        orgs = overlay.get("organizations") or {}
        if live or lifted or orgs:
            lines.append("live changes on top of the bundle" + (" (not in the files written)" if written else "") + ":")
            lines += [f"  suspension {sid} (live)" for sid in live]
            lines += [f"  suspension {sid} lifted" for sid in lifted]
            lines += [f"  organization {oid}: {compact(fields)}" for oid, fields in orgs.items()]
        else:
            lines.append("no live changes on top of the bundle")
        return lines
    if args.json and args.out:
        print(json.dumps({k: v for k, v in answer.items() if k != "files"} | {"written": [str(p) for p in written]}, indent=2))
    else:
        show(args, answer, readable)
    return 0


def do_policy_put(client: Client, args: argparse.Namespace) -> int:
    from gateway.policy.load import read_bundle
    from gateway.policy.issues import PolicyError

    try:
        texts, problems = read_bundle(args.directory)
    except PolicyError as refused:
        problems = list(refused.issues)
        texts = {}
    if problems:
        print(f"error: {args.directory}: the bundle cannot be sent", file=sys.stderr)
        for issue in problems:
            print(f"  {issue}", file=sys.stderr)
        return 1
    body: dict[str, Any] = {"files": texts}
    if args.lift:
        body["lift"] = args.lift
    if args.reset_org:
        body["reset_organizations"] = args.reset_org
    answer = client.call("PUT", "/admin/policy", body)
    show(args, answer, _or_proposed(lambda b: [
        f"policy replaced from {args.directory}: bundle {compact((b.get('before') or {}).get('bundle_version'))} -> "
        f"{compact((b.get('after') or {}).get('bundle_version'))}", version_line(b)]))
    return 0


def do_suspensions(client: Client, args: argparse.Namespace) -> int:
    answer = client.call("GET", "/admin/suspensions")

    def readable(b: dict[str, Any]) -> list[str]:
        items = b.get("suspensions") or []
        if not items:
            return ["no suspensions"]
        lines = []
        for s in items:
            window = "".join([f" from {s['from']}" if s.get("from") else "", f" until {s['until']}" if s.get("until") else ""])
            scope = "outside" if s.get("scope") == "deny_outside" else "in"
            source = "live" if s.get("live") else "policy files"
            mode = f" [{s['mode']}]" if s.get("mode") not in (None, "enforce") else ""
            reference = f" ({s['reference']})" if s.get("reference") else ""
            lines.append(f"{s.get('id')}: {','.join(s.get('models') or [])} denied {scope} {','.join(s.get('groups') or [])}"
                         f"{window} [{source}]{mode} — {s.get('reason')}{reference}")
            lines += suspension_places(s)
        return lines
    show(args, answer, readable)
    return 0


def places_text(places: Any) -> str:
    """{"countries": [...], "regions": [...]} as one list of codes."""
    codes = [*(places.get("countries") or []), *(places.get("regions") or [])] if isinstance(places, dict) else []
    return ", ".join(map(str, codes)) or "nowhere"


def recorded_places(expanded: Any) -> dict[str, list[str]]:
    """A live suspension's recorded expansion (entry -> places) as one set of places."""
    entries = [e for e in expanded.values() if isinstance(e, dict)] if isinstance(expanded, dict) else []
    return {kind: sorted({str(code) for e in entries for code in e.get(kind) or []}) for kind in ("countries", "regions")}


def suspension_places(item: dict[str, Any]) -> list[str]:
    """The places a listed suspension denies (admits, for deny_outside), and what
    was recorded when it was made where that differs."""
    verb = "admits only" if item.get("scope") == "deny_outside" else "denies"
    lines = [f"  {verb}: {places_text(item.get('places'))}"]
    if item.get("expanded") is not None and recorded_places(item["expanded"]) != item.get("places"):
        lines.append(f"  recorded when made: {places_text(recorded_places(item['expanded']))} "
                     "(the groups changed since; the stricter of the two is enforced)")
    lines += [f"  ! names {name}, which the policy in force does not define: the recorded places are enforced"
              for name in item.get("missing") or []]
    return lines


def do_changes(client: Client, args: argparse.Namespace) -> int:
    if args.verify:
        return do_verify_changes(client, args)
    answer = client.call("GET", "/admin/changes", query={"limit": args.limit})

    def readable(b: dict[str, Any]) -> list[str]:
        items = b.get("changes") or []
        if not items:
            return ["no changes"]
        lines = []
        for c in items:
            versions = f"{c.get('policy_version_before') or '-'} -> {c.get('policy_version') or '?'}"
            notes = "".join(f" {name} {c[name]};" for name in ("reason", "reference", "proposal") if c.get(name))
            if c.get("approved_by"):
                notes += f" approved by {', '.join(c['approved_by'])};"
            notes += f" id {c['change_id']}" if c.get("change_id") else ""
            lines.append(f"{c.get('time')} {c.get('actor')} {c.get('action')} {c.get('target')}: "
                         f"{compact(c.get('before'))} -> {compact(c.get('after'))} (policy {versions}){notes}")
        for e in b.get("awaiting_countersign") or []:
            lines.append(f"awaiting countersignature{' (OVERDUE)' if e.get('overdue') else ''}: {e['change_id']} "
                         f"{e['action']} {e['target']} by {e['actor']} at {e['time']}, due {e['due']}")
        return lines
    show(args, answer, readable)
    return 0


def do_verify_changes(client: Client, args: argparse.Namespace) -> int:
    """The change log's hash chain, checked by the gateway over the whole log (GET /admin/changes/verify)."""
    answer = client.call("GET", "/admin/changes/verify")

    def readable(b: dict[str, Any]) -> list[str]:
        source = ", ".join(b.get("files") or [])
        problem = b.get("error")
        if problem:
            which = f"seq {problem['seq']}: " if problem.get("seq") is not None else ""
            where = f" (line {problem['line']})" if problem.get("line") else ""
            return [f"FAILED {source}{where}: {which}{problem.get('kind')}: {problem.get('message')}",
                    f"{b.get('records', 0)} records verified before it"]
        ends = list((b.get("replicas") or {}).values())
        span = f", seq {ends[0]['first_seq']}..{ends[0]['last_seq']}" if ends else ""
        lines = [f"OK: {b.get('records', 0)} change records in {source}{span}, hash chain intact"]
        if b.get("unchained"):
            lines.append(f"  {b['unchained']} records before them predate the chained change log")
        return lines
    show(args, answer, readable)
    return 0 if isinstance(answer, dict) and answer.get("ok") else 1


def do_decisions(client: Client, args: argparse.Namespace) -> int:
    query = {"org": args.org, "model": args.model, "observed_country": args.country.upper() if args.country else None,
             "decision": args.decision, "limit": args.limit}
    answer = client.call("GET", "/admin/decisions", query=query)

    def readable(b: dict[str, Any]) -> list[str]:
        items = b.get("decisions") or []
        if not items:
            return ["no decisions"]
        lines = []
        for d in items:
            reasons = ",".join(d.get("reasons") or []) or "-"
            lines.append(f"{d.get('time')} {d.get('decision')} {d.get('status')} org={d.get('org') or '-'} "
                         f"model={d.get('model') or d.get('requested_model') or '-'} country={d.get('observed_country') or '-'} "
                         f"reasons={reasons} id={d.get('decision_id')}")
        return lines
    show(args, answer, readable)
    return 0


def do_explain(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"org": args.org, "model": args.model, "anonymizer": args.anonymizer}
    if args.country:
        body["country"] = args.country.upper()
    if args.region:
        body["region"] = args.region.upper()
    if args.at:
        body["at"] = parse_time(args.at, "--at")
    answer = client.call("POST", "/admin/explain", body)
    # The same account `gateway explain` prints, from the API's JSON.
    show(args, answer, lambda b: explain.render(b).splitlines())
    return 0


# Parser


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Connection options, accepted before and after the verb."""
    default: Any = None if top else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=default, metavar="ADMIN_URL",
                       help=f"admin listener URL (env GATEWAY_ADMIN_URL; default {DEFAULT_URL})")
    group.add_argument("--token", default=default, metavar="T",
                       help="admin bearer token (better: env GATEWAY_ADMIN_TOKEN or --token-file, to keep it out of shell history)")
    group.add_argument("--token-file", default=default, metavar="FILE", help="read the admin token from FILE")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S if top else argparse.SUPPRESS, metavar="SECONDS",
                       help=f"HTTP timeout (default {DEFAULT_TIMEOUT_S:g})")
    group.add_argument("--json", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="print the API's JSON instead of readable lines")


def add_arguments(admin: argparse.ArgumentParser) -> None:
    """Fill in `gateway admin`'s options and verbs (cli.py makes the parser)."""
    admin.epilog = ("exit status: 0 done; 1 the admin API refused or failed (every problem is printed); "
                    "2 the admin API could not be reached, or bad usage")
    _common(admin, top=True)
    verbs = admin.add_subparsers(dest="admin_verb", required=True, metavar="VERB")

    def verb(name: str, run: Callable[[Client, argparse.Namespace], int], help_text: str, description: str = "") -> argparse.ArgumentParser:
        parser = verbs.add_parser(name, help=help_text, description=description or help_text)
        _common(parser, top=False)
        parser.set_defaults(admin_run=run)
        return parser

    verb("status", do_status, "readiness and the policy version in force (GET /readyz)")

    suspend = verb("suspend", do_suspend, "suspend models, in force at once (POST /admin/suspensions)",
                   "Create a live suspension: the models are denied (451 export_suspended) outside, or in, "
                   "the given places: jurisdiction groups of the policy (e.g. us) or upper-case ISO codes of single "
                   "places (a country JP, a region UA-43). Prints the new id and the policy "
                   "version.")
    suspend.add_argument("--model", required=True, action="extend", nargs="+", metavar="M",
                         help="model id or alias (repeatable)")
    scope = suspend.add_mutually_exclusive_group(required=True)
    scope.add_argument("--deny-outside", action="extend", nargs="+", metavar="PLACE",
                       help="deny unless the request is from these groups or ISO codes")
    scope.add_argument("--deny-in", action="extend", nargs="+", metavar="PLACE",
                       help="deny requests from these groups or ISO codes (e.g. JP, UA-43)")
    suspend.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded and shown in the change log)")
    suspend.add_argument("--reference", metavar="REF", help="e.g. the order or ticket")
    suspend.add_argument("--from", dest="from_", metavar="ISO", help="start (ISO 8601; no offset means UTC; default: now)")
    suspend.add_argument("--until", metavar="ISO", help="end, exclusive (ISO 8601; default: until lifted)")
    suspend.add_argument("--id", metavar="ID", help="the suspension's id (default: generated)")

    lift = verb("lift", do_lift, "lift a suspension, live or from the policy files (DELETE /admin/suspensions/ID); "
                                 "a proposal when another operator must approve it")
    lift.add_argument("id", metavar="ID")
    lift.add_argument("--reason", metavar="TEXT", help="why (recorded in the change log)")
    lift.add_argument("--reference", metavar="REF", help="e.g. the order or ticket")

    org = verb("org", do_org, "override an organization's status, tier or vetting (PATCH /admin/organizations/ORG_ID)",
               "Override fields of an organization's record. A value of 'none' (or 'reset') removes the "
               "override: the field goes back to the policy files' value. Resetting the status also resets "
               "the status reason it set; the answer names every override that remains.")
    org.add_argument("org_id", metavar="ORG_ID")
    org.add_argument("--status", choices=[*STATUSES, *RESET_WORDS[:2]], help="active, suspended or denied")
    org.add_argument("--tier", metavar="T", help="government, vetted_partner, verified or standard")
    org.add_argument("--vetted-until", metavar="DATE|none", help="vetting valid through this date (YYYY-MM-DD, UTC)")
    org.add_argument("--reason", metavar="TEXT", help="the status reason (status_reason), e.g. 'Entity List match'")

    verb("reload", do_reload, "re-read the policy files on the gateway now (POST /admin/reload)")

    policy = verbs.add_parser("policy", help="get or replace the policy bundle (GET/PUT /admin/policy)",
                              description="Get or replace the policy bundle in force.")
    _common(policy, top=False)
    policy_verbs = policy.add_subparsers(dest="policy_verb", required=True, metavar="VERB")
    get = policy_verbs.add_parser("get", help="show the bundle in force; --out writes its files",
                                  description="Show the bundle in force (GET /admin/policy). Live changes are listed, "
                                              "not written into the files.")
    _common(get, top=False)
    get.add_argument("--out", metavar="DIR", help="write the bundle's YAML files into DIR")
    get.set_defaults(admin_run=do_policy_get)
    put = policy_verbs.add_parser("put", help="replace the bundle with a directory's YAML files",
                                  description="Replace the bundle with DIR's five YAML files (PUT /admin/policy). "
                                              "An invalid bundle is refused whole, every issue listed, as is one that no "
                                              "longer defines a group, model or organization a live suspension or "
                                              "override names, unless --lift/--reset-org remove it with the change.")
    _common(put, top=False)
    put.add_argument("directory", metavar="DIR")
    put.add_argument("--lift", action="extend", nargs="+", default=[], metavar="ID",
                     help="lift these live suspensions with the change (needed when the bundle drops what they name)")
    put.add_argument("--reset-org", action="extend", nargs="+", default=[], metavar="ORG_ID",
                     help="reset these organizations' live overrides with the change (needed when the bundle drops them)")
    put.set_defaults(admin_run=do_policy_put)

    verb("suspensions", do_suspensions, "list the suspensions in the policy in force (GET /admin/suspensions)")

    changes = verb("changes", do_changes, "the change log, newest first: who, when, what, before/after (GET /admin/changes)")
    changes.add_argument("--limit", type=int, metavar="N", help="at most N changes (server default 100)")
    changes.add_argument("--verify", action="store_true",
                         help="check the whole log's hash chain instead: an edited, removed or reordered record "
                              "is named by its seq (exit status 1)")

    decisions = verb("decisions", do_decisions, "recent decisions from the audit log, newest first (GET /admin/decisions)")
    decisions.add_argument("--org", help="only this organization")
    decisions.add_argument("--model", help="only this (canonical) model id")
    decisions.add_argument("--country", help="only this observed country (ISO 3166-1 alpha-2)")
    decisions.add_argument("--decision", choices=["allow", "deny"], help="only allowed or denied requests")
    decisions.add_argument("--limit", type=int, metavar="N", help="at most N decisions (server default 100)")

    admin_control_cli.add_verbs(verb)
    admin_keys_cli.add_verbs(verb)

    explain = verb("explain", do_explain, "decide one request on the running policy and say why (POST /admin/explain)")
    explain.add_argument("--org", required=True, help="organization id")
    explain.add_argument("--model", required=True, help="model name or alias")
    explain.add_argument("--country", help="observed country (ISO 3166-1 alpha-2); omitted: unknown")
    explain.add_argument("--region", help="observed ISO 3166-2 region, e.g. UA-43; it may lie outside --country, as "
                                          "when a database reports Crimea under RU")
    explain.add_argument("--anonymizer", action="store_true", help="the client came through a VPN/Tor/hosting network")
    explain.add_argument("--at", metavar="ISO8601", help="decide at this time (default: now)")


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        try:
            return Path(args.token_file).read_text().strip() or None
        except OSError as failure:
            raise AdminUsageError(f"--token-file: cannot read {args.token_file}: {failure.strerror or failure}") from None
    return getattr(args, "token", None) or os.environ.get("GATEWAY_ADMIN_TOKEN") or None


def run(args: argparse.Namespace) -> int:
    """Run one `gateway admin` verb; returns the exit status."""
    args.json = bool(getattr(args, "json", False))
    url = ""
    try:
        url = normalise_url(getattr(args, "url", None) or os.environ.get("GATEWAY_ADMIN_URL") or DEFAULT_URL)
        token = _token(args)
        if token is None and args.admin_verb != "status":
            raise AdminUsageError("no admin token: set GATEWAY_ADMIN_TOKEN, or give --token-file FILE or --token T")
        timeout = getattr(args, "timeout", DEFAULT_TIMEOUT_S)
        if not timeout > 0:
            raise AdminUsageError("--timeout must be positive")
        return int(args.admin_run(Client(url, token, timeout), args))
    except AdminUsageError as problem:
        print(f"gateway admin: error: {problem}", file=sys.stderr)
        return 2
    except Unreachable as failure:
        print(f"gateway admin: cannot reach the admin API at {url}: {failure}", file=sys.stderr)
        return 2
    except Refused as refused:
        print_refusal(refused, args.json)
        return 1
    except Failed as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
