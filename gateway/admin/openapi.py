"""The admin listener's endpoints as an OpenAPI 3.1 document, served at
`GET /admin/openapi.json` (docs/admin-api.md is the same reference in prose).

The operations are a table, one row per route and method, so a reviewer can
diff it against `create_admin_app`; tests/test_reference_docs.py fails when a
route is missing here or in the prose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERSION = "1"
_ERROR = {"$ref": "#/components/schemas/Error"}
_OBJECT = {"type": "object"}
_REASONED = {"reason": {"type": "string"}, "reference": {"type": "string"}}
_PROPOSAL = {"$ref": "#/components/schemas/Proposal"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    role: str | None  # None: no token needed
    summary: str
    body: dict[str, Any] | None = None
    answers: dict[int, str] = field(default_factory=lambda: {200: "Done."})
    query: tuple[str, ...] = ()


def _object(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    return schema | ({"required": list(required)} if required else {})


_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_CHANGE = {200: "Applied (a tightening, or with change_control.approvals: 0).",
           202: "A loosening: not applied; the body is the proposal awaiting approval.",
           409: "Refused: it conflicts with the state in force.", 422: "Refused: the problems are listed."}

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", None, "Liveness: the process answers.", answers={200: "Always {\"status\": \"ok\"}."}),
    Operation("GET", "/readyz", None, "Readiness: a policy is loaded and every dependency is usable.",
              answers={200: "Ready: {ready, policy_version, missing: []}.", 503: "Not ready; `missing` says why."}),
    Operation("GET", "/metrics", None, "Prometheus metrics (docs/metrics.md). A bearer token of either role is "
              "needed when admin.metrics_require_token is in force.", answers={200: "Prometheus text format 0.0.4."}),
    Operation("GET", "/admin/openapi.json", "viewer", "This document.", answers={200: "OpenAPI 3.1."}),
    Operation("GET", "/admin/audit/public-key", "viewer", "The public key that verifies this replica's signed audit "
              "checkpoints (gateway audit verify --public-key).",
              answers={200: "{algorithm: ed25519, public_key, key_id}.", 404: "No audit.signing_key_file is set."}),
    Operation("GET", "/admin/whoami", "viewer", "The token's name and role, and how many approvals a loosening needs.",
              answers={200: "{name, role, approvals_needed}."}),
    Operation("GET", "/admin/policy", "viewer", "The policy in force: versions, the bundle's files and the live overlay.",
              answers={200: "{policy_version, bundle_version, files_version, revision, files, overlay}."}),
    Operation("PUT", "/admin/policy", "operator", "Replace the policy bundle, validated whole.",
              _object(("files",), files={"type": "object", "additionalProperties": _STRING,
                                         "description": "File name (e.g. models.yaml) to its YAML text."},
                      lift=_STRINGS | {"description": "Live suspensions the new bundle may drop."},
                      reset_organizations=_STRINGS | {"description": "Organization overrides to reset."},
                      **_REASONED), _CHANGE),
    Operation("POST", "/admin/reload", "operator", "Make policy_dir the policy again (as SIGHUP does).",
              answers={200: "{reloaded: true, policy_version, actor}.", 202: "file_reloads: propose, and the files "
                       "loosen access: the proposal.", 409: "The files would drop a live control.",
                       422: "The files are invalid; the running policy stays."}),
    Operation("GET", "/admin/suspensions", "viewer", "Every suspension, from the files and live, with the places it "
              "covers now.", answers={200: "{suspensions: [...]}."}),
    Operation("POST", "/admin/suspensions", "operator", "Suspend models in (deny_in) or outside (deny_outside) places, "
              "at once and fleet-wide.",
              _object(("models", "reason"), id=_STRING, models=_STRINGS, deny_in=_STRINGS, deny_outside=_STRINGS,
                      **{"from": _STRING | {"format": "date-time"}, "until": _STRING | {"format": "date-time"}},
                      mode={"enum": ["enforce", "shadow"]}, **_REASONED),
              {201: "Applied: the change, whose `target` is the suspension's id."} | _CHANGE),
    Operation("DELETE", "/admin/suspensions/{id}", "operator", "Lift a suspension (live or from the files); a "
              "loosening.", answers={200: "Applied.", 202: "The proposal.", 404: "No such suspension."},
              query=("reason", "reference")),
    Operation("PATCH", "/admin/organizations/{id}", "operator", "Override an organization's status, tier, "
              "vetted_until or status_reason; null resets a field to the files' value.",
              _object(status={"enum": ["active", "suspended", "denied", None]},
                      tier={"enum": ["government", "vetted_partner", "verified", "standard", None]},
                      vetted_until={"type": ["string", "null"], "format": "date"},
                      status_reason={"type": ["string", "null"]}, **_REASONED),
              _CHANGE | {404: "No such organization in the policy."}),
    Operation("DELETE", "/admin/credentials/{id}", "operator", "Reinstate a credential suspended for misuse "
              "(credential_misuse.suspend); a loosening.", answers={200: "Applied.", 202: "The proposal."},
              query=("reason",)),
    Operation("GET", "/admin/keys", "viewer", "The API keys: id, org, label, created, revoked; never a secret.",
              answers={200: "{keys: [...]}.", 404: "identity.api_keys is false."}),
    Operation("POST", "/admin/keys", "operator", "Register an API key from the SHA-256 of a secret the requester keeps.",
              _object(("org_id", "sha256"), org_id=_STRING, sha256=_STRING | {"pattern": "^[0-9a-f]{64}$"},
                      label=_STRING, key_id=_STRING, **_REASONED),
              {201: "Created: {key_id, org_id}.", 202: "The proposal.", 404: "No such organization."}),
    Operation("DELETE", "/admin/keys/{id}", "operator", "Revoke an API key, fleet-wide.",
              answers={200: "Revoked.", 404: "No such key."}, query=("reason", "reference")),
    Operation("POST", "/admin/explain", "viewer", "Decide one request from given facts on the live policy, and say why.",
              _object(("org", "model"), org=_STRING, model=_STRING,
                      country=_STRING | {"description": "ISO 3166-1 alpha-2"},
                      region=_STRING | {"description": "ISO 3166-2"}, anonymizer={"type": "boolean"},
                      at=_STRING | {"format": "date-time"}),
              {200: "{decision, status, reasons, stage, covered, policy_version, ...}.", 503: "No policy is loaded."}),
    Operation("GET", "/admin/decisions", "viewer", "Recent decision records of the authenticated audit log, newest "
              "first (docs/audit.md).", answers={200: "{decisions: [...]}."},
              query=("org", "model", "observed_country", "country", "decision", "since", "until", "limit")),
    Operation("GET", "/admin/changes", "viewer", "The change record, newest first, and tightenings awaiting a "
              "countersignature.", answers={200: "{changes: [...], awaiting_countersign: [...]}."}, query=("limit",)),
    Operation("GET", "/admin/changes/verify", "viewer", "Verify the change record's hash chain.",
              answers={200: "{ok, ...}: the verification report."}),
    Operation("POST", "/admin/changes/{id}/countersign", "operator", "Countersign a tightening made by another "
              "operator.", _object(reason=_STRING), {200: "Countersigned.", 403: "The token's holder made the change; another operator must countersign.",
               404: "No such change awaits a countersignature."}),
    Operation("GET", "/admin/proposals", "viewer", "Proposals, optionally of one state.",
              answers={200: "{proposals: [...]}."}, query=("state",)),
    Operation("POST", "/admin/proposals", "operator", "Propose any change: the direct endpoint's body plus `kind` "
              "(and `id` for a change that names its target).",
              _object(("kind",), kind={"enum": ["suspension.create", "suspension.lift", "organization.update",
                                                "policy.replace", "credential.reinstate", "apikey.create",
                                                "apikey.revoke"]}, id=_STRING),
              {201: "The proposal.", 422: "Refused: the problems are listed."}),
    Operation("GET", "/admin/proposals/{id}", "viewer", "One proposal, with its assessment.",
              answers={200: "The proposal.", 404: "No such proposal."}),
    Operation("POST", "/admin/proposals/{id}/{verb}", "operator", "`approve`, `reject` or `withdraw` a proposal; "
              "the proposer cannot approve their own.", _object(reason=_STRING),
              {200: "The proposal, applied once it has its approvals.",
               403: "The proposer approving, or someone else withdrawing.", 404: "No such proposal or verb.",
               409: "Not open, approved by this token already, or its access delta changed (review it again)."}),
)

_SCHEMAS = {
    "Error": _object(("error",), error=_object(("code", "message"), code=_STRING, message=_STRING,
                                               problems=_STRINGS, issues={"type": "array", "items": _OBJECT})),
    "Proposal": _object(id=_STRING, kind=_STRING, state=_STRING, proposer=_STRING, approvals={"type": "array"}),
}
_COMMON_ERRORS = {400: "The body or a query parameter is malformed.",
                  401: "No valid admin bearer token.", 403: "The viewer role cannot make changes.",
                  503: "The shared state could not be reached; the change was not confirmed."}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every admin listener endpoint."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Frontier Gateway admin API", "version": VERSION,
                 "description": "The admin listener. `viewer` tokens read; `operator` tokens also change. "
                                "Reference: docs/admin-api.md."},
        "paths": paths,
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                                          "description": "A token of admin.tokens."}}},
    }


def _operation(operation: Operation) -> dict[str, Any]:
    answers = dict(operation.answers)
    if operation.role is not None:
        answers = {status: text for status, text in _COMMON_ERRORS.items() if status not in answers} | answers
    spec: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": f"{operation.method.lower()}{operation.path}",
        "x-role": operation.role or "none",
        "security": [{"adminToken": []}] if operation.role else [],
        "parameters": _parameters(operation),
        "responses": {str(status): _answer(status, text) for status, text in sorted(answers.items())},
    }
    if operation.body is not None:
        spec["requestBody"] = {"required": operation.method != "POST" or "required" in operation.body,
                               "content": {"application/json": {"schema": operation.body}}}
    return spec


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in operation.path.split("/") if part.startswith("{")]
    path = [{"name": name, "in": "path", "required": True, "schema": _STRING} for name in names]
    return path + [{"name": name, "in": "query", "required": False, "schema": _STRING} for name in operation.query]


def _answer(status: int, text: str) -> dict[str, Any]:
    if status == 200 and text.startswith("Prometheus"):
        return {"description": text, "content": {"text/plain": {"schema": _STRING}}}
    schema = _ERROR if status >= 400 else _PROPOSAL if status == 202 else _OBJECT
    return {"description": text, "content": {"application/json": {"schema": schema}}}
