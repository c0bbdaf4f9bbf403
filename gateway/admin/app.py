"""The admin listener (docs/admin-api.md), never the public one: health and readiness for
anyone who can reach it (the orchestrator's probes); metrics for anyone too on a
loopback listener, else for an admin token of either role
(`admin.metrics_require_token`: Prometheus sends it as a bearer token, see
docs/operators.md); the admin API for bearer tokens with a role. `viewer`
reads, `operator` also changes. Every change goes through `LiveState`, which
records who, when, what, before and after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from gateway.policy import countries
from gateway.policy import explain
from gateway.admin import openapi as admin_openapi
from gateway.audit import lines_backwards
from gateway.audit.signing import PublicKey
from gateway.config import AdminToken
from gateway.live.control import ChangeControl
from gateway.policy.decision import Facts, decide
from gateway.live.overlay import ChangeError, missing_names
from gateway.live.state import LiveState, PolicyState
from gateway.metrics import Metrics
from gateway.policy.issues import PolicyError
from gateway.policy.snapshot import Suspension

log = logging.getLogger("gateway.admin")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
MAX_ADMIN_BODY = 64 * 1024 * 1024
Handler = Callable[[Request], Awaitable[Response]]
CLOSING = {"reject": "rejected", "withdraw": "withdrawn"}


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


class AdminRefusals:
    """The admin listener's answers to requests its protocol refuses (gateway/request/listener.py):
    the admin API's error shape. Not audited: the admin listener serves no model."""

    def refuse(self, peer: str | None, status: int, error: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return [], json.dumps({"error": {"code": error, "message": message}}, separators=(",", ":")).encode()


class Tokens:
    """Admin bearer tokens, known only by their SHA-256 (config `admin.tokens`)."""

    def __init__(self, tokens: list[AdminToken]) -> None:
        self.tokens = tokens

    def identify(self, request: Request) -> AdminToken | None:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        digest = hashlib.sha256(credential.strip().encode()).hexdigest()
        found = None
        for token in self.tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return found


def create_admin_app(state: PolicyState, metrics: Metrics, ready_checks: Callable[[], list[str]],
                     live: LiveState, tokens: list[AdminToken], audit_path: str | None = None, *,
                     metrics_require_token: bool = False, control: ChangeControl,
                     audit_public_key: PublicKey | None = None, console: ASGIApp | None = None) -> Starlette:
    """`ready_checks` returns what is missing for readiness (empty when ready); every change goes
    through `control` (gateway/live/control.py); `console`, when given, is served at /console
    (gateway/console/)."""
    known = Tokens(tokens)

    def guarded(role: str, action: str, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            token = known.identify(request)
            if token is None:
                return refuse_token(request)
            if role == "operator" and token.role != "operator":
                answer = error(403, "forbidden", f"The {token.role} role cannot make changes.")
            else:
                answer = await answered(request, handler, token.name)
            report(request, action_of(action, request), token.name, answer, change=role == "operator")
            return answer
        return endpoint

    async def answered(request: Request, handler: Callable[[Request, str], Awaitable[Response]], actor: str) -> Response:
        try:
            return await handler(request, actor)
        except ChangeError as refused:
            return error(refused.status, "change_refused", "The change was refused.", problems=refused.problems)
        except PolicyError as refused:
            return error(422, "invalid_policy", str(refused), issues=[i.as_dict() for i in refused.issues])
        except BodyError as refused:
            return error(400, "invalid_request", str(refused))
        except Exception as failure:  # the store could not be reached: fail closed, never a bare 500
            log.warning("admin %s %s failed: %r", request.method, request.url.path, failure)
            return error(503, "state_unavailable", "The shared state could not be reached; the change was not "
                         "confirmed. Check GET /admin/changes before retrying.")

    def report(request: Request, action: str, actor: str, answer: Response, *, change: bool) -> None:
        """Log every admin action (actor, action, target, result); count the changes."""
        status = answer.status_code
        result = result_of(status)
        target = request.path_params.get("id") or target_of(answer)
        if change:
            metrics.child(metrics.admin_changes, action, result).inc()
        level = logging.INFO if status < 400 else logging.WARNING
        log.log(level, "admin %s%s by %s: %s", action, f" {target}" if target else "", actor, result,
                extra={"actor": actor, "action": action, "target": target, "result": result, "status": status})

    def refuse_token(request: Request) -> Response:
        """No valid admin token: logged with the caller's address and counted, since repeated
        failures are someone guessing or a client (Prometheus) with a stale token."""
        reason = "missing" if not request.headers.get("authorization") else "invalid"
        metrics.child(metrics.admin_auth_failures, reason).inc()
        client = request.client.host if request.client else None
        log.warning("admin authentication failed (%s token) from %s for %s %s", reason, client, request.method,
                    request.url.path, extra={"client_ip": client, "reason": reason, "path": request.url.path})
        refused = error(401, "unauthorized", "A valid admin bearer token is required.")
        refused.headers["www-authenticate"] = 'Bearer realm="frontier-gateway-admin"'
        return refused

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        missing = ready_checks()
        policy = state.policy
        body = {"ready": not missing, "policy_version": policy.version if policy else None, "missing": missing}
        return JSONResponse(body, status_code=200 if not missing else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_require_token and known.identify(request) is None:
            return refuse_token(request)
        return Response(metrics.exposition(), media_type=PROMETHEUS_TEXT)

    async def get_policy(request: Request, actor: str) -> Response:
        policy = state.policy
        return JSONResponse({
            "policy_version": policy.version if policy else None,
            "bundle_version": live.base_version,
            "files_version": live.files_version,
            "revision": live.revision,
            "files": live.bundle_files,
            "overlay": live.overlay.as_json(),
        })

    async def submit(kind: str, target: str | None, body: dict[str, Any], actor: str, *, applied: int = 200,
                     reason: Any = None, reference: Any = None) -> Response:
        """A change through change control: `applied` when it took effect, 202 with the proposal when it loosens."""
        status, answer = await control.submit(kind, target, body, actor, reason=_text(reason), reference=_text(reference))
        return JSONResponse(answer, status_code=applied if status == 200 else status)

    async def put_policy(request: Request, actor: str) -> Response:
        body = await json_body(request)
        files = body.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise BodyError('expected {"files": {"<name>.yaml": "<YAML text>", ...}}')
        change = {"files": files, "lift": list(_names(body, "lift")),
                  "reset_organizations": list(_names(body, "reset_organizations"))}
        return await submit("policy.replace", None, change, actor,
                            reason=body.get("reason"), reference=body.get("reference"))

    async def list_suspensions(request: Request, actor: str) -> Response:
        policy = state.policy
        items = [suspension_item(s, live) for s in (policy.suspensions if policy else ())]
        return JSONResponse({"suspensions": items})

    async def create_suspension(request: Request, actor: str) -> Response:
        body = await json_body(request)
        return await submit("suspension.create", None, body, actor, applied=201,
                            reason=body.get("reason"), reference=body.get("reference"))

    async def lift_suspension(request: Request, actor: str) -> Response:
        query = request.query_params
        return await submit("suspension.lift", request.path_params["id"], {}, actor,
                            reason=query.get("reason"), reference=query.get("reference"))

    async def patch_organization(request: Request, actor: str) -> Response:
        body = await json_body(request)
        reason, reference = body.pop("reason", None), body.pop("reference", None)
        return await submit("organization.update", request.path_params["id"], body, actor, reason=reason,
                            reference=reference)

    async def reload(request: Request, actor: str) -> Response:
        made = await live.reload(force=True)  # refused: PolicyError (422) or ChangeError (409); the running policy stays
        if made is not None and "proposer" in made:  # file_reloads: propose, and the files grant access
            return JSONResponse(made, status_code=202)
        policy = state.policy
        return JSONResponse({"reloaded": True, "policy_version": policy.version if policy else None, "actor": actor})

    async def reinstate_credential(request: Request, actor: str) -> Response:
        return await submit("credential.reinstate", request.path_params["id"], {}, actor,
                            reason=request.query_params.get("reason"))

    async def create_key(request: Request, actor: str) -> Response:
        """A new API key from the SHA-256 of a secret the requester keeps (gateway/live/key_changes.py)."""
        body = await json_body(request)
        return await submit("apikey.create", None, body, actor, applied=201,
                            reason=body.get("reason"), reference=body.get("reference"))

    async def revoke_key(request: Request, actor: str) -> Response:
        query = request.query_params
        return await submit("apikey.revoke", request.path_params["id"], {}, actor,
                            reason=query.get("reason"), reference=query.get("reference"))

    async def list_keys(request: Request, actor: str) -> Response:
        if control.keys is None:
            return error(404, "not_found", "API keys are disabled here (identity.api_keys: false).")
        keys = await asyncio.to_thread(control.keys.list)
        return JSONResponse({"keys": [dataclasses.asdict(key) for key in keys]})

    async def create_proposal(request: Request, actor: str) -> Response:
        status, proposal = await control.propose(await json_body(request), actor)
        return JSONResponse(proposal, status_code=status)

    async def list_proposals(request: Request, actor: str) -> Response:
        return JSONResponse({"proposals": await control.list(request.query_params.get("state"))})

    async def show_proposal(request: Request, actor: str) -> Response:
        return JSONResponse(await control.get(request.path_params["id"]))

    async def decide_proposal(request: Request, actor: str) -> Response:
        verb, proposal_id = request.path_params["verb"], request.path_params["id"]
        reason = _text((await optional_body(request)).get("reason"))
        if verb == "approve":
            return JSONResponse(await control.approve(proposal_id, actor, reason))
        if verb in CLOSING:
            return JSONResponse(await control.close(proposal_id, CLOSING[verb], actor, reason))
        return error(404, "not_found", "approve, reject or withdraw")

    async def countersign(request: Request, actor: str) -> Response:
        reason = _text((await optional_body(request)).get("reason"))
        return JSONResponse(await control.countersign(request.path_params["id"], actor, reason))

    async def whoami(request: Request, actor: str) -> Response:
        token = known.identify(request)
        assert token is not None  # guarded
        return JSONResponse({"name": token.name, "role": token.role, "approvals_needed": control.config.approvals})

    async def explain_endpoint(request: Request, actor: str) -> Response:
        policy = state.policy
        if policy is None:
            return error(503, "unavailable", "No policy is loaded.")
        body = await json_body(request)
        facts, now = _facts(body)
        return JSONResponse(explain.as_json(policy, facts, decide(policy, facts, now), now))

    async def decisions(request: Request, actor: str) -> Response:
        query = request.query_params
        filters = {k: query[k] for k in ("org", "model", "observed_country", "decision") if k in query}
        if "country" in query:
            filters["observed_country"] = query["country"].upper()
        since, until = _time(query.get("since")), _time(query.get("until"))
        limit = _limit(request)
        matching = matching_records(audit_path, filters, since=since, until=until)
        return JSONResponse({"decisions": list(itertools.islice(matching, limit))})

    async def changes(request: Request, actor: str) -> Response:
        return JSONResponse({"changes": await live.changes(_limit(request)),
                             "awaiting_countersign": await control.awaiting()})

    async def verify_changes(request: Request, actor: str) -> Response:
        return JSONResponse((await live.verify_changes()).as_json())

    async def public_key(request: Request, actor: str) -> Response:
        if audit_public_key is None:
            return error(404, "no_signing_key", "audit.signing_key_file is not set: checkpoints are not signed.")
        return JSONResponse({"algorithm": "ed25519", "public_key": audit_public_key.text,
                             "key_id": audit_public_key.id})

    async def openapi(request: Request, actor: str) -> Response:
        return JSONResponse(admin_openapi.document())

    console_routes = [Mount("/console", console)] if console is not None else []
    return Starlette(routes=[
        *console_routes,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/admin/policy", guarded("viewer", "policy.get", get_policy), methods=["GET"]),
        Route("/admin/policy", guarded("operator", "policy.replace", put_policy), methods=["PUT"]),
        Route("/admin/suspensions", guarded("viewer", "suspensions.list", list_suspensions), methods=["GET"]),
        Route("/admin/suspensions", guarded("operator", "suspension.create", create_suspension), methods=["POST"]),
        Route("/admin/suspensions/{id}", guarded("operator", "suspension.lift", lift_suspension), methods=["DELETE"]),
        Route("/admin/organizations/{id}", guarded("operator", "organization.update", patch_organization), methods=["PATCH"]),
        Route("/admin/reload", guarded("operator", "policy.reload", reload), methods=["POST"]),
        Route("/admin/credentials/{id:path}", guarded("operator", "credential.reinstate", reinstate_credential), methods=["DELETE"]),
        Route("/admin/explain", guarded("viewer", "explain", explain_endpoint), methods=["POST"]),
        Route("/admin/decisions", guarded("viewer", "decisions.list", decisions), methods=["GET"]),
        Route("/admin/changes", guarded("viewer", "changes.list", changes), methods=["GET"]),
        Route("/admin/changes/verify", guarded("viewer", "changes.verify", verify_changes), methods=["GET"]),
        Route("/admin/audit/public-key", guarded("viewer", "audit.public_key", public_key), methods=["GET"]),
        Route("/admin/changes/{id}/countersign", guarded("operator", "change.countersign", countersign), methods=["POST"]),
        Route("/admin/proposals", guarded("operator", "proposal.create", create_proposal), methods=["POST"]),
        Route("/admin/proposals", guarded("viewer", "proposals.list", list_proposals), methods=["GET"]),
        Route("/admin/proposals/{id}", guarded("viewer", "proposal.get", show_proposal), methods=["GET"]),
        Route("/admin/proposals/{id}/{verb}", guarded("operator", "proposal.{verb}", decide_proposal), methods=["POST"]),
        Route("/admin/whoami", guarded("viewer", "whoami", whoami), methods=["GET"]),
        Route("/admin/openapi.json", guarded("viewer", "openapi.get", openapi), methods=["GET"]),
        Route("/admin/keys", guarded("viewer", "keys.list", list_keys), methods=["GET"]),
        Route("/admin/keys", guarded("operator", "apikey.create", create_key), methods=["POST"]),
        Route("/admin/keys/{id}", guarded("operator", "apikey.revoke", revoke_key), methods=["DELETE"]),
    ])


class BodyError(ValueError):
    pass


def action_of(action: str, request: Request) -> str:
    """The action's name: a bounded label value, whatever the path says."""
    if action == "proposal.{verb}":
        verb = request.path_params.get("verb")
        return f"proposal.{verb}" if verb == "approve" or verb in CLOSING else "proposal.unknown"
    return action


def target_of(answer: Response) -> str | None:
    """What a change made names, when the path does not (a new suspension's id)."""
    if answer.status_code >= 400 or not isinstance(answer, JSONResponse):
        return None
    try:
        target = json.loads(answer.body).get("target")
    except (ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


def result_of(status: int) -> str:
    if status == 202:
        return "proposed"  # a loosening change, waiting for approval
    if status < 400:
        return "ok"
    if status == 403:
        return "forbidden"
    return "refused" if status < 500 else "failed"


def suspension_item(suspension: Suspension, live: LiveState) -> dict[str, Any]:
    """A suspension as listed: its entries as given, the places it denies (or, for
    deny_outside, admits) now, and for a live one the places recorded when it was made
    and any name the bundle in force no longer defines."""
    s = suspension
    item = {"id": s.id, "models": sorted(s.models), "scope": s.scope, "groups": list(s.groups.names),
            "places": {"countries": sorted(s.groups.countries), "regions": sorted(s.groups.regions)},
            "from": explain.iso(s.starts) if s.starts is not None else None,
            "until": explain.iso(s.ends) if s.ends is not None else None,
            "reason": s.reason, "reference": s.reference, "mode": s.mode, "live": s.id in live.overlay.suspensions}
    document = live.overlay.suspensions.get(s.id)
    if document is not None:
        item["expanded"] = document.get("expanded")
        if live.base is not None and (missing := missing_names(live.base, document)):
            item["missing"] = missing
    return item


def _names(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BodyError(f"{key} must be a list of ids")
    return tuple(dict.fromkeys(value))


async def json_body(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_ADMIN_BODY):
        raise BodyError("the body is too large")
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        raise BodyError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BodyError("the body must be a JSON object")
    return body


def _facts(body: dict[str, Any]) -> tuple[Facts, datetime]:
    org, model = body.get("org"), body.get("model")
    if not isinstance(org, str) or not isinstance(model, str):
        raise BodyError("org and model are required strings")
    country = body.get("country")
    region = body.get("region")
    if country is not None and (not isinstance(country, str) or not countries.is_country(country.upper())):
        raise BodyError("country must be an ISO 3166-1 alpha-2 code")
    if region is not None and (not isinstance(region, str) or not countries.is_region(region.upper())):
        raise BodyError("region must be an ISO 3166-2 code")
    try:
        at = datetime.fromisoformat(body["at"]) if body.get("at") else datetime.now(UTC)
    except (TypeError, ValueError):
        raise BodyError("at must be an ISO 8601 time") from None
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    # As `gateway explain`: a region names its own country, which stands in for a missing
    # one, and may lie outside a given one (Crimea reported under RU).
    region = region.upper() if region else None
    country = country.upper() if country else (region[:2] if region else None)
    facts = Facts(org, model, country, region, bool(body.get("anonymizer", False)))
    return facts, at


async def optional_body(request: Request) -> dict[str, Any]:
    """A JSON object, or {} for an empty body (approve, countersign: the reason is optional)."""
    if not await request.body():
        return {}
    return await json_body(request)


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BodyError("reason and reference must be strings")
    return value


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BodyError("since and until must be ISO 8601 times, e.g. 2026-12-01T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _within(stamp: Any, since: datetime | None, until: datetime | None) -> bool:
    """`since` inclusive, `until` exclusive, as everywhere in the policy."""
    if since is None and until is None:
        return True
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return False
    return (since is None or moment >= since) and (until is None or moment < until)


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise BodyError("limit must be a whole number from 1 to 1000")
    return int(text)


def matching_records(path: str | None, filters: dict[str, str], *, reason: str | None = None,
                     since: datetime | None = None, until: datetime | None = None,
                     scan_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of a JSONL audit file whose fields equal `filters` (and that give
    `reason`, and fall in [since, until)), newest first; only the last `scan_bytes` read.
    A line that does not even contain each wanted value is skipped before it is parsed:
    a rare filter reads a large file at the speed of a substring search."""
    wanted = [*filters.values(), *([reason] if reason else [])]
    needles = [json.dumps(value).encode() for value in wanted if value.isascii()]
    for record in read_backwards(path, needles, scan_bytes):
        if all(str(record.get(k)) == v for k, v in filters.items()) and _within(record.get("time"), since, until) \
                and (reason is None or reason in (record.get("reasons") or ())):
            yield record


def read_backwards(path: str | None, needles: list[bytes] | None = None,
                   scan_bytes: int | None = None) -> Iterator[dict[str, Any]]:
    """The request records of a JSONL audit file, newest first (signed checkpoints skipped);
    only lines containing every one of `needles`; only the last `scan_bytes` read."""
    if path is None:
        return
    # Large blocks, and the longest needle to skip blocks by: the rarer it is, the less is split into lines.
    needle = max(needles, key=len) if needles else None
    for line in lines_backwards(Path(path), 1 << 20 if needle else 1 << 16, needle, scan_bytes):
        if needles and not all(needle in line for needle in needles):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") != "checkpoint":
            yield record
