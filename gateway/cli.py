"""The `gateway` command. Each verb parses its options, reads what it needs and
calls the core; the work itself lives in the modules the verbs name."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from gateway import countries, explain
from gateway.decision import Facts, decide
from gateway.geo import GeoDatabaseError, GeoIP
from gateway.policy.issues import PolicyError
from gateway.policy.load import load_bundle


class UsageError(Exception):
    """Bad command-line input: printed, exit status 2."""


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC (SPEC §2.1)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T12:00:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def cmd_explain(args: argparse.Namespace) -> int:
    policy = load_bundle(args.policy).policy
    now = parse_time(args.at) if args.at else datetime.now(UTC)
    country, region, anonymizer = _place(args)
    facts = Facts(
        org_id=args.org,
        model=args.model,
        observed_country=country,
        observed_region=region,
        anonymizer=anonymizer,
    )
    decision = decide(policy, facts, now)
    if args.json:
        print(json.dumps(explain.as_json(policy, facts, decision, now), indent=2))
    else:
        print(explain.render(policy, facts, decision, now))
    return 0


def _place(args: argparse.Namespace) -> tuple[str | None, str | None, bool]:
    """The observed place from --country/--region, or looked up from --ip."""
    country = args.country.upper() if args.country else None
    region = args.region.upper() if args.region else None
    anonymizer = args.anonymizer
    if args.ip is not None:
        if args.geoip_db is None:
            raise UsageError("--ip needs --geoip-db FILE")
        try:
            geo = GeoIP(args.geoip_db, args.anonymous_ip_db)
        except GeoDatabaseError as exc:
            raise UsageError(str(exc)) from None
        place = geo.locate(args.ip)
        geo.close()
        country, region = place.country, region or place.region
        anonymizer = anonymizer or place.anonymizer
    if country is not None and not countries.is_country(country):
        raise UsageError(f"--country: {country!r} is not an ISO 3166-1 alpha-2 code")
    if region is not None:
        if not countries.is_region(region):
            raise UsageError(f"--region: {region!r} is not an ISO 3166-2 code (e.g. UA-43)")
        if country is None:
            country = region[:2]
        elif not region.startswith(country + "-"):
            raise UsageError(f"--region {region} is not in --country {country}")
    return country, region, anonymizer


def cmd_policy_validate(args: argparse.Namespace) -> int:
    loaded = load_bundle(args.directory)
    policy = loaded.policy
    if args.json:
        print(json.dumps({"valid": True, "version": policy.version, "issues": [w.as_dict() for w in loaded.warnings]}, indent=2))
        return 0
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    print(
        f"{args.directory}: valid, version {policy.version} — {len(policy.groups)} groups, "
        f"{len(policy.organizations)} organizations, {len(policy.models)} models, "
        f"{len(policy.suspensions)} suspensions"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_tour

    return run_tour(args.policy) if args.policy else run_tour()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Frontier Gateway: export-control access gateway.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    ex = verbs.add_parser("explain", help="decide one request from given facts and say why")
    ex.add_argument("--policy", required=True, metavar="DIR", help="policy bundle directory")
    ex.add_argument("--org", required=True, help="organization id")
    ex.add_argument("--model", required=True, help="model name or alias as a client would send it")
    where = ex.add_mutually_exclusive_group()
    where.add_argument("--country", help="observed country (ISO 3166-1 alpha-2); omitted: unknown")
    where.add_argument("--ip", help="client IP, looked up in --geoip-db")
    ex.add_argument("--geoip-db", metavar="FILE", help="GeoIP2/GeoLite2 Country or City .mmdb")
    ex.add_argument("--anonymous-ip-db", metavar="FILE", help="GeoIP2 Anonymous-IP .mmdb")
    ex.add_argument("--region", help="observed ISO 3166-2 region, e.g. UA-43")
    ex.add_argument("--anonymizer", action="store_true", help="the client came through a VPN/Tor/hosting network")
    ex.add_argument("--at", metavar="ISO8601", help="decide at this time (default: now)")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.set_defaults(run=cmd_explain)

    policy = verbs.add_parser("policy", help="work with policy bundles")
    policy_verbs = policy.add_subparsers(dest="policy_verb", required=True, metavar="VERB")
    validate = policy_verbs.add_parser("validate", help="check a bundle and report every error")
    validate.add_argument("directory", metavar="DIR")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(run=cmd_policy_validate)

    demo = verbs.add_parser("demo", help="a guided tour of decisions over the shipped policies (offline)")
    demo.add_argument("--policy", metavar="DIR", help="policy bundle (default: the shipped policies/)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except PolicyError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"valid": False, "issues": [i.as_dict() for i in exc.issues]}, indent=2))
        else:
            print(exc.report(), file=sys.stderr)
        return 1
    except UsageError as exc:
        parser.exit(2, f"gateway: error: {exc}\n")
    return 2
