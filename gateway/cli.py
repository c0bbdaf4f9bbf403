"""The `gateway` command. Each verb parses its options, reads what it needs and
calls the core; the work itself lives in the modules the verbs name."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.policy import countries
from gateway.policy import explain
from gateway.config import Config, ConfigError, GeoIPConfig, load_config
from gateway.policy.decision import Facts, decide
from gateway.geo.reader import GeoDatabaseError
from gateway.geo.files import UNENFORCED_ANONYMIZERS, build_geoip, configured_files, unenforced_anonymizer_rules
from gateway.policy.issues import Issue, PolicyError
from gateway.policy.load import load_bundle
from gateway.policy.snapshot import Policy


class UsageError(Exception):
    """Bad command-line input: printed, exit status 2."""


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC (docs/policy.md)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T12:00:00Z)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def cmd_explain(args: argparse.Namespace) -> int:
    policy = load_bundle(args.policy).policy
    now = parse_time(args.at) if args.at else datetime.now(UTC)
    if args.org is None:
        return _explain_timeline(args, policy, now)
    country, region, anonymizer = _place(args)
    facts = Facts(
        org_id=args.org,
        model=args.model,
        observed_country=country,
        observed_region=region,
        anonymizer=anonymizer,
    )
    account = explain.as_json(policy, facts, decide(policy, facts, now), now)
    print(json.dumps(account, indent=2) if args.json else explain.render(account))
    return 0


def _explain_timeline(args: argparse.Namespace, policy: Policy, now: datetime) -> int:
    """`explain --model X` without `--org`: the model's release timeline."""
    from gateway.policy import timeline

    given = [f"--{name.replace('_', '-')}" for name in ("country", "ip", "region", "geoip_db", "anonymous_ip_db")
             if getattr(args, name) is not None] + (["--anonymizer"] if args.anonymizer else [])
    if given:
        raise UsageError(f"{', '.join(given)} needs --org (without --org, explain shows the model's release timeline)")
    try:
        timeline.find_model(policy, args.model)
    except KeyError:
        raise UsageError(f"--model: {args.model!r} is not a model or alias in the policy") from None
    if args.json:
        print(json.dumps(timeline.as_json(policy, args.model, now), indent=2))
    else:
        print(timeline.render(policy, args.model, now))
    return 0


def _place(args: argparse.Namespace) -> tuple[str | None, str | None, bool]:
    """The observed place from --country/--region, or looked up from --ip. A region
    names its own country and may be reported under another (Crimea, UA-43, under
    RU by some databases): that is a place to decide, not bad input."""
    country = args.country.upper() if args.country else None
    region = args.region.upper() if args.region else None
    anonymizer = args.anonymizer
    if args.ip is not None:
        if args.geoip_db is None:
            raise UsageError("--ip needs --geoip-db FILE")
        try:  # with the embedded region overlay on top, as the gateway's default config has it
            geo = build_geoip(configured_files(GeoIPConfig(country_db=args.geoip_db, anonymous_ip_db=args.anonymous_ip_db)))
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
    return country, region, anonymizer


def cmd_policy_validate(args: argparse.Namespace) -> int:
    # The time only adds warnings (expired suspensions, vetting lapsed or lapsing soon); the
    # overlay's regions, a warning for each region only a City database can place a caller in.
    config = _config(args) if args.config else None
    loaded = load_bundle(args.directory, now=parse_time(args.at) if args.at else datetime.now(UTC),
                         placeable_regions=_placeable_regions(config))
    policy = loaded.policy
    warnings = [*loaded.warnings, *(_config_issues(policy, config) if config else [])]
    _refuse_violations(policy, parse_time(args.at) if args.at else datetime.now(UTC), warnings)
    if args.json:
        print(json.dumps({"valid": True, "version": policy.version, "issues": [w.as_dict() for w in warnings]}, indent=2))
        return 0
    for warning in warnings:
        print(f"warning: {warning}")
    print(
        f"{args.directory}: valid, version {policy.version} — {len(policy.groups)} groups, "
        f"{len(policy.organizations)} organizations, {len(policy.models)} models, "
        f"{len(policy.suspensions)} suspensions"
    )
    return 0


def _refuse_violations(policy: Policy, at: datetime, warnings: list[Issue]) -> None:
    """A violated assertion makes the bundle invalid, as any other error does."""
    from gateway.policy import prove
    from gateway.policy.load import ASSERTIONS

    errors = [Issue(ASSERTIONS, f"assertions.{o.assertion.name}",
                    f"violated: {prove.describe(o.counterexample).splitlines()[0]} (see gateway policy prove)")
              for o in prove.prove(policy, at, regions=_overlay_regions()) if o.counterexample is not None]
    if errors:
        raise PolicyError([*errors, *warnings])


def _placeable_regions(config: Config | None) -> frozenset[str] | None:
    """The regions a caller is placed in without a City database: the embedded overlay's, none
    if the config turns it off; None (no such warnings) if the overlay cannot be read."""
    from gateway.geo.region_overlay import RegionOverlay, default_region_overlay

    if config is not None and not config.geoip.region_overlay:
        return frozenset()
    try:
        overlay = RegionOverlay(default_region_overlay())
    except GeoDatabaseError as exc:
        print(f"warning: region warnings skipped: {exc}", file=sys.stderr)
        return None
    overlay.close()
    return overlay.regions


def _config_issues(policy: Policy, config: Config) -> list[Issue]:
    """What the bundle asks that the gateway's config cannot deliver."""
    anonymizers = unenforced_anonymizer_rules(policy, config.geoip.anonymous_ip_db is not None)
    return [Issue("framework.yaml", rule, UNENFORCED_ANONYMIZERS, severity="warning") for rule in anonymizers]


def cmd_policy_diff(args: argparse.Namespace) -> int:
    from gateway.policy import diff, prove

    old = load_bundle(args.old).policy
    new = load_bundle(args.new).policy
    at = parse_time(args.at) if args.at else datetime.now(UTC)
    try:
        result = diff.diff(old, new, at, models=args.model, anonymizer=args.anonymizer)
    except KeyError as exc:
        raise UsageError(f"--model: {exc.args[0]!r} is in neither bundle") from None
    regions = _overlay_regions()
    changes = prove.state_changes(prove.prove(old, at, regions=regions), prove.prove(new, at, regions=regions))
    if args.json:
        print(json.dumps(diff.as_json(result) | {"assertions": changes}, indent=2))
    else:
        print(diff.render(result, args.old, args.new))
        print(prove.render_changes(changes))
    return 0


def cmd_policy_prove(args: argparse.Namespace) -> int:
    from gateway.policy import prove

    if args.horizon <= 0:
        raise UsageError("--horizon: must be a positive number of days")
    policy = load_bundle(args.directory).policy
    at = parse_time(args.at) if args.at else datetime.now(UTC)
    outcomes = prove.prove(policy, at, horizon_days=args.horizon, regions=_overlay_regions())
    print(json.dumps(prove.as_json(outcomes), indent=2) if args.json else prove.render(outcomes))
    return 0 if all(o.proved for o in outcomes) else 1


def _overlay_regions() -> frozenset[str]:
    """The embedded overlay's regions: places a caller may be put in without a City database."""
    return _placeable_regions(None) or frozenset()


def cmd_policy_simulate(args: argparse.Namespace) -> int:
    from itertools import chain

    from gateway.policy import simulate

    policy = load_bundle(args.directory).policy
    baseline = load_bundle(args.against).policy if args.against else None
    at = parse_time(args.at) if args.at else None
    for path in args.audit:
        if not os.path.isfile(path):
            raise UsageError(f"--audit: {path!r} is not a file")
    try:
        result = simulate.simulate(policy, chain.from_iterable(simulate.read_audit(p) for p in args.audit),
                                   at=at, baseline=baseline)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--audit: cannot be read: {exc}") from None
    if args.json:
        print(json.dumps(simulate.as_json(result, examples=args.examples), indent=2))
    else:
        print(simulate.render(result, bundle=args.directory, audit=", ".join(args.audit), examples=args.examples))
    return 0


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config, os.environ)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import check_admin, check_audit, check_listen, check_policy_dir, check_workers, serve

    config = _config(args)
    try:
        check_admin(config)
        check_audit(config)
        check_workers(config, args.workers)
        if not args.serve_stored_policy:
            check_policy_dir(config)
        check_listen(config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return serve(config, workers=args.workers)


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.identity import keys_cli

    config = _config(args)
    args.state_dir = config.state_dir
    args.redis = config.redis  # redis.url set: the keys live in Redis (fleet mode)
    if args.keys_verb == "create":
        if not args.force:
            _check_org_known(args.org, config.policy_dir)
        return _recorded(config, keys_cli.keys_create, args)
    if args.keys_verb == "revoke":
        return _recorded(config, keys_cli.keys_revoke, args)
    return keys_cli.keys_list(args)


def _check_org_known(org: str, policy_dir: str) -> None:
    """A key for an org the policy does not know would only ever be denied: most likely a typo."""
    try:
        orgs = load_bundle(policy_dir).policy.organizations
    except PolicyError as exc:
        raise UsageError(f"cannot check organization {org!r}: the policy at {policy_dir} is refused ({exc}); "
                         "pass --force to create the key anyway") from None
    if org not in orgs:
        raise UsageError(f"organization {org!r} is not in the policy at {policy_dir}; "
                         "pass --force to create the key anyway") from None


def _recorded(config: Config, verb: Callable[..., int], args: argparse.Namespace) -> int:
    """Run a `gateway keys` verb that changes keys, its change in the change log as `local:<user>`:
    the bootstrap path, outside change control but not outside the record."""
    import asyncio
    import getpass

    from gateway.live.state import record_local

    failures: list[str] = []

    def record(action: str, key_id: str, before: Any, after: Any) -> None:
        change = {"actor": f"local:{getpass.getuser()}", "action": action, "target": key_id,
                  "before": before, "after": after, "reason": getattr(args, "reason", None)}
        try:
            asyncio.run(record_local(config, change))
        except Exception as failure:  # the key store was written; say the record was not
            failures.append(f"{action} {key_id} done, but not recorded in the change log: {failure!r}")

    status = verb(args, record)
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else status


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import command as demo

    if args.tour:
        return demo.run_tour(args.policy) if args.policy else demo.run_tour()
    return demo.run_demo(check_only=args.check, public_port=args.port, admin_port=args.admin_port)


def cmd_admin(args: argparse.Namespace) -> int:
    from gateway.admin import cli as admin_cli

    return admin_cli.run(args)


def cmd_geo_lookup(args: argparse.Namespace) -> int:
    from gateway.geo import lookup_cli as geo_lookup

    config = _config(args)
    try:
        report = geo_lookup.lookup(config.geoip, args.ip)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except GeoDatabaseError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else geo_lookup.render(report))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway import audit
    from gateway.audit import checkpoints, signing

    try:
        keys = [signing.parse_public(key) for key in args.public_key] if args.public_key else None
    except signing.KeyProblem as exc:
        raise UsageError(f"--public-key: {exc}") from None
    try:
        outside = [copy for path in args.checkpoints for copy in checkpoints.read_file(path)]
        if args.redis:
            outside += checkpoints.read_redis(args.redis, args.namespace)
    except OSError as exc:
        raise UsageError(f"--checkpoints: cannot be read: {exc}") from None
    except Exception as exc:  # redis errors
        raise UsageError(f"--redis: {exc}") from None
    result = audit.verify(args.files, keys=keys, outside=outside)
    print(json.dumps(result.as_json(), indent=2) if args.json else audit.render(result))
    return 0 if result.ok else 1


def cmd_audit_keygen(args: argparse.Namespace) -> int:
    from gateway.audit import signing

    try:
        key = signing.generate(args.out)
    except FileExistsError:
        raise UsageError(f"{args.out} exists: a signing key is never overwritten (move it away first)") from None
    except OSError as exc:
        raise UsageError(f"{args.out}: {exc.strerror or exc}") from None
    public = f"{args.out}.pub"
    with open(public, "w") as handle:
        handle.write(key.public.text + "\n")
    print(key.public.text)
    print(f"key id {key.public.id}; private key in {args.out} (mode 0600), public key also in {public}. "
          "Set audit.signing_key_file to the private key; give verifiers the public key.", file=sys.stderr)
    return 0


def cmd_audit_explain(args: argparse.Namespace) -> int:
    from gateway.audit import recorded

    policy = load_bundle(args.policy).policy
    for path in args.audit:
        if not os.path.isfile(path):
            raise UsageError(f"--audit: {path!r} is not a file")
    try:
        record = recorded.find(args.audit, args.decision_id)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--audit: cannot be read: {exc}") from None
    if record is None:
        print(f"gateway: decision {args.decision_id} is not in {', '.join(args.audit)}", file=sys.stderr)
        return 1
    try:
        facts, at = recorded.facts_of(record)
    except recorded.RecordError as exc:
        print(f"gateway: decision {args.decision_id}: {exc}", file=sys.stderr)
        return 1
    account = explain.as_json(policy, facts, decide(policy, facts, at), at, recorded=record)
    print(json.dumps(account, indent=2) if args.json else explain.render(account))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Frontier Gateway: export-control access gateway.")
    parser.add_argument("--version", action="version", version=f"gateway {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    ex = verbs.add_parser("explain", help="decide one request from given facts and say why; without --org, "
                                          "show a model's release timeline",
                          description="With --org: decide one request and say why (docs/policy.md). Without --org: "
                                      "the model's release timeline at --at — whether it is covered and which "
                                      "evaluations decide it, every stage with its dates and audience, the "
                                      "government review's use of the review window, suspensions, and what "
                                      "changes next and when.")
    ex.add_argument("--policy", required=True, metavar="DIR", help="policy bundle directory")
    ex.add_argument("--org", help="organization id (omit for the model's release timeline)")
    ex.add_argument("--model", required=True, help="model name or alias as a client would send it")
    where = ex.add_mutually_exclusive_group()
    where.add_argument("--country", help="observed country (ISO 3166-1 alpha-2); omitted: unknown")
    where.add_argument("--ip", help="client IP, looked up in --geoip-db and the embedded region overlay")
    ex.add_argument("--geoip-db", metavar="FILE", help="GeoIP2/GeoLite2 Country or City .mmdb")
    ex.add_argument("--anonymous-ip-db", metavar="FILE", help="GeoIP2 Anonymous-IP .mmdb")
    ex.add_argument("--region", help="observed ISO 3166-2 region, e.g. UA-43; it may lie outside --country, as "
                                     "when a database reports Crimea under RU")
    ex.add_argument("--anonymizer", action="store_true", help="the client came through a VPN/Tor/hosting network")
    ex.add_argument("--at", metavar="ISO8601", help="decide at this time (default: now)")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.set_defaults(run=cmd_explain)

    policy = verbs.add_parser("policy", help="work with policy bundles")
    policy_verbs = policy.add_subparsers(dest="policy_verb", required=True, metavar="VERB")
    validate = policy_verbs.add_parser("validate", help="check a bundle and report every error")
    validate.add_argument("directory", metavar="DIR")
    validate.add_argument("--at", metavar="ISO8601",
                          help="judge time-relative warnings (expired suspensions, lapsing vetting) at this time "
                               "(default: now)")
    validate.add_argument("--config", metavar="FILE",
                          help="also check the bundle against this gateway config (e.g. deny_anonymizers without "
                               "an anonymous-IP database)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(run=cmd_policy_validate)

    pdiff = policy_verbs.add_parser(
        "diff", help="the semantic difference between two bundles: who gains or loses access to what",
        description="Lists groups that gained or lost countries (includes expanded), framework settings, models "
                    "whose covered status, stages or fields changed, and organizations and suspensions added, "
                    "removed or changed. Then the access delta: decide() under both bundles at --at for every "
                    "model x tier x place (every ISO country, every region a group names, and an unknown "
                    "country), with one active organization per tier whose declared country is the observed "
                    "country; decisions that flip between allow and deny are grouped by model, tier and "
                    "direction. Organizations whose own entry changed are also decided at their declared "
                    "countries. The grid is about 1,000 decisions per model and bundle: for large bundles, "
                    "compare a few models at a time with --model.")
    pdiff.add_argument("old", metavar="OLD", help="the bundle in force (directory)")
    pdiff.add_argument("new", metavar="NEW", help="the proposed bundle (directory)")
    pdiff.add_argument("--at", metavar="ISO8601", help="decide at this time (default: now)")
    pdiff.add_argument("--model", action="append", metavar="MODEL",
                       help="only this model (id or alias) in the access delta; repeat for more")
    pdiff.add_argument("--anonymizer", action="store_true", help="decide the grid as if through a VPN/Tor/hosting network")
    pdiff.add_argument("--json", action="store_true", help="machine-readable output")
    pdiff.set_defaults(run=cmd_policy_diff)

    pprove = policy_verbs.add_parser(
        "prove", help="prove the bundle's assertions (assertions.yaml) over every fact; exit 1 on a violation",
        description="For each assertion of DIR/assertions.yaml: PROVED, or VIOLATED with a counterexample (the "
                    "organization or class of organizations, model, place, anonymizer and time, and the decision "
                    "and explanation there). Exact, not sampled: every instant from --at over --horizon days, "
                    "every country and region, every listed organization and every tier/status an unlisted one "
                    "could have (see docs/assertions.md).")
    pprove.add_argument("directory", metavar="DIR")
    pprove.add_argument("--horizon", type=float, default=365, metavar="DAYS",
                        help="prove over this many days from --at (default: 365)")
    pprove.add_argument("--at", metavar="ISO8601", help="start of the horizon (default: now)")
    pprove.add_argument("--json", action="store_true", help="machine-readable output")
    pprove.set_defaults(run=cmd_policy_prove)

    sim = policy_verbs.add_parser(
        "simulate", help="replay recorded requests under a proposed bundle: which decisions would flip",
        description="Decide the facts of every audit record (org, requested model, observed country and region, "
                    "anonymizer) again under DIR, at the record's own time unless --at is given, and compare with "
                    "the recorded decision (or with --against OLD). Flips are counted by model, organization, "
                    "country and reason, with example decision ids. Records without an organization or a model "
                    "(401, unrouted 404, 400 bodies, model listings) are skipped and counted.")
    sim.add_argument("directory", metavar="DIR", help="the proposed bundle")
    sim.add_argument("--audit", required=True, action="append", metavar="FILE",
                     help="audit JSONL file; repeat for rotated files")
    sim.add_argument("--at", metavar="ISO8601", help="decide every record at this time (default: each record's own)")
    sim.add_argument("--against", metavar="OLD",
                     help="compare with decisions under this bundle instead of the recorded ones")
    sim.add_argument("--examples", type=int, default=10, metavar="N", help="example flips to list (default 10)")
    sim.add_argument("--json", action="store_true", help="machine-readable output")
    sim.set_defaults(run=cmd_policy_simulate)

    serve = verbs.add_parser("serve", help="run the gateway (public and admin listeners)")
    serve.add_argument("--config", metavar="FILE", help="YAML config (docs/configuration.md); GATEWAY_* variables override it")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the public port (default 1); N > 1 needs fleet mode "
                            "(redis.url). Worker k writes its own audit file (audit-wk.jsonl, replica <id>-wk) and "
                            "has its own admin listener on the admin port + k")
    serve.add_argument("--serve-stored-policy", action="store_true",
                       help="start even when policy_dir is missing, serving the policy last published to the state "
                            "(state_dir, or Redis in fleet mode); without it a missing policy_dir is an error")
    serve.set_defaults(run=cmd_serve)

    keys = verbs.add_parser("keys", help="manage API keys (embedded mode: under state_dir)")
    key_verbs = keys.add_subparsers(dest="keys_verb", required=True, metavar="VERB")
    create = key_verbs.add_parser("create", help="create a key for an organization; the secret is shown once")
    create.add_argument("--org", required=True)
    create.add_argument("--label")
    create.add_argument("--force", action="store_true",
                        help="create the key even if the policy does not know the organization (yet)")
    revoke = key_verbs.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", metavar="KEY_ID")
    listing = key_verbs.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--org", help="only this organization's keys")
    for verb in (create, revoke, listing):
        verb.add_argument("--config", metavar="FILE", help="YAML config (for state_dir)")
        verb.add_argument("--json", action="store_true", help="machine-readable output")
        verb.set_defaults(run=cmd_keys)

    demo = verbs.add_parser("demo", help="run the gateway, a demo upstream and demo credentials in one offline process")
    demo.add_argument("--check", action="store_true", help="send every printed example, report, and exit")
    demo.add_argument("--port", type=int, default=8080, help="public port (a free one if taken)")
    demo.add_argument("--admin-port", type=int, default=9090, help="admin port (a free one if taken)")
    demo.add_argument("--tour", action="store_true", help="only print a tour of decisions (no servers)")
    demo.add_argument("--policy", metavar="DIR", help="with --tour: policy bundle (default: the shipped policies/)")
    demo.set_defaults(run=cmd_demo)

    from gateway.admin import cli as admin_cli

    admin = verbs.add_parser("admin", help="drive a running gateway's admin API: suspend, lift, org, reload, policy, ...",
                             description="Drive a running gateway's admin API (docs/admin-api.md). The URL and token can also "
                                         "come from GATEWAY_ADMIN_URL and GATEWAY_ADMIN_TOKEN.")
    admin_cli.add_arguments(admin)
    admin.set_defaults(run=cmd_admin)

    geo = verbs.add_parser("geo", help="look up what the GeoIP databases say of an address")
    geo_verbs = geo.add_subparsers(dest="geo_verb", required=True, metavar="VERB")
    lookup = geo_verbs.add_parser(
        "lookup", help="where the gateway places an IP: country, region and its source, anonymizer, databases",
        description="Locate one address as the request path does, with the databases --config names (else the "
                    "embedded DB-IP country database and region overlay): country, region and whether it came "
                    "from the region overlay or the database, anonymizer flags, and each database's type and "
                    "build date. IPv4-mapped, NAT64, 6to4 and Teredo addresses are located by the IPv4 "
                    "address inside.")
    lookup.add_argument("ip", metavar="IP")
    lookup.add_argument("--config", metavar="FILE", help="YAML config (its geoip section); GATEWAY_* variables override it")
    lookup.add_argument("--json", action="store_true", help="machine-readable output")
    lookup.set_defaults(run=cmd_geo_lookup)

    audit = verbs.add_parser("audit", help="work with the audit trail")
    audit_verbs = audit.add_subparsers(dest="audit_verb", required=True, metavar="VERB")
    verify = audit_verbs.add_parser(
        "verify", help="check the hash chain and signed checkpoints of audit files",
        description="Recompute every record's hash and check every prev link and seq, per replica. With "
                    "--public-key, also every checkpoint's signature (catches re-sealing and a replaced key; "
                    "without it only the unkeyed chain is checked); with --checkpoints or --redis, that no "
                    "checkpoint copied outside the files is missing or different (catches records removed at the "
                    "end and emptied files). Give rotated "
                    "files oldest first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl. Exit status 1 at the first "
                    "bad record (edited, removed, reordered, garbage), naming its file and line.")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument("--public-key", action="append", metavar="KEY",
                        help="ed25519:BASE64 as `gateway audit keygen` prints it, or a file holding it; repeat for "
                             "the keys of earlier rotations (the output says where the key changed)")
    verify.add_argument("--checkpoints", action="append", default=[], metavar="FILE",
                        help="an outside copy of checkpoints (checkpoints.jsonl); may be repeated")
    verify.add_argument("--redis", metavar="URL", help="read the fleet's copy of checkpoints from this Redis")
    verify.add_argument("--namespace", default="fgw", help="the fleet's redis.namespace (default: fgw)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(run=cmd_audit_verify)
    keygen = audit_verbs.add_parser(
        "keygen", help="make an Ed25519 key for signed audit checkpoints",
        description="Write a new Ed25519 private key to OUT (mode 0600, never over an existing file) and its "
                    "public key to OUT.pub, and print the public key. Point audit.signing_key_file at OUT.")
    keygen.add_argument("--out", required=True, metavar="OUT", help="where the private key goes")
    keygen.set_defaults(run=cmd_audit_keygen)
    aex = audit_verbs.add_parser(
        "explain", help="explain a recorded decision by its id, as `gateway explain` would",
        description="Find the record with DECISION_ID (a response's X-Gateway-Decision-Id header) in the audit "
                    "files, decide its facts (org, requested model, observed country and region, anonymizer) again "
                    "under --policy at the record's own time, and explain that decision: each rule that matched, "
                    "the legal list a place came through, whether a 404 concealed the model. The account says when "
                    "the bundle is not the one the record was decided under (a later bundle, or live changes).")
    aex.add_argument("decision_id", metavar="DECISION_ID")
    aex.add_argument("--audit", required=True, action="append", metavar="FILE",
                     help="audit JSONL file; repeat for rotated files")
    aex.add_argument("--policy", required=True, metavar="DIR", help="policy bundle directory")
    aex.add_argument("--json", action="store_true", help="machine-readable output")
    aex.set_defaults(run=cmd_audit_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then ours to handle
    except BrokenPipeError:
        # The reader went away (`gateway ... | head`): what it wanted, it has. Python would
        # report the pipe again when flushing at exit, so stdout goes to /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE (128 + 13)
    return status


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("frontier-gateway")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _run(argv: Sequence[str] | None) -> int:
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
