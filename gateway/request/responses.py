"""Denials in the caller's own API shape (docs/errors.md).

OpenAI routes: {"error": {"message", "type", "param", "code"}}; Anthropic's
/v1/messages: {"type": "error", "error": {"type", "message"}}. Messages are
clear to the caller and reveal no policy internals: no list contents, no other
orgs, and nothing that tells a concealed caller a pre-release model exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from gateway.policy.reasons import Reason


@dataclass(frozen=True, slots=True)
class Denial:
    status: int
    code: str
    message: str
    openai_type: str
    anthropic_type: str
    param: str | None = None


# The header each API's official SDK reads into `error.request_id`: the gateway's own answers
# carry the decision id there, so a caller's bug report names the audit record.
REQUEST_ID = {"openai": b"x-request-id", "anthropic": b"request-id"}

_AUTH = Denial(401, "invalid_api_key", "Invalid or missing credentials.", "invalid_request_error", "authentication_error")
# A JWT-shaped credential gets `invalid_token` (docs/errors.md); the body is otherwise the
# same whether the credential was missing, malformed, unknown or revoked.
_AUTH_TOKEN = Denial(401, "invalid_token", _AUTH.message, _AUTH.openai_type, _AUTH.anthropic_type)
_NOT_FOUND_MODEL = "The model does not exist or you do not have access to it."
_COUNTRY = "Country, region, or territory not supported."

_BY_REASON: dict[Reason, Denial] = {
    Reason.CREDENTIAL_MISSING: _AUTH,
    Reason.CREDENTIAL_INVALID: _AUTH,
    Reason.ORG_UNKNOWN: Denial(403, "organization_not_permitted", "Your organization is not permitted to use this service.", "permission_denied", "permission_error"),
    Reason.ORG_DENIED: Denial(403, "organization_not_permitted", "Your organization is not permitted to use this service.", "permission_denied", "permission_error"),
    Reason.ORG_SUSPENDED: Denial(403, "organization_suspended", "Your organization's access is suspended.", "permission_denied", "permission_error"),
    Reason.MODEL_UNKNOWN: Denial(404, "model_not_found", _NOT_FOUND_MODEL, "invalid_request_error", "not_found_error", "model"),
    Reason.MODEL_NOT_RELEASED: Denial(404, "model_not_found", _NOT_FOUND_MODEL, "invalid_request_error", "not_found_error", "model"),
    Reason.TIER_NOT_PERMITTED: Denial(403, "model_access_denied", "Your organization does not have access to this model.", "permission_denied", "permission_error", "model"),
    Reason.RATE_LIMITED: Denial(429, "rate_limit_exceeded", "Rate limit exceeded. Retry after the time in the Retry-After header.", "rate_limit_error", "rate_limit_error"),
    Reason.STATE_UNAVAILABLE: Denial(503, "service_unavailable", "The service is temporarily unavailable. Try again shortly.", "server_error", "api_error"),
}
_JURISDICTION = Denial(451, "unsupported_country_region_territory", _COUNTRY, "request_forbidden", "permission_error")
for _reason in (Reason.JURISDICTION_EMBARGOED, Reason.EXPORT_SUSPENDED, Reason.JURISDICTION_OF_CONCERN,
                Reason.ANONYMIZER, Reason.JURISDICTION_UNKNOWN, Reason.JURISDICTION_NOT_PERMITTED):
    _BY_REASON[_reason] = _JURISDICTION
_CONCEALED = _BY_REASON[Reason.MODEL_UNKNOWN]

# Errors of the request itself, before any decision.
_BY_STATUS: dict[int, Denial] = {
    400: Denial(400, "invalid_request", "The request is malformed.", "invalid_request_error", "invalid_request_error"),
    404: Denial(404, "not_found", "Not found.", "invalid_request_error", "not_found_error"),
    405: Denial(405, "method_not_allowed", "Method not allowed.", "invalid_request_error", "invalid_request_error"),
    408: Denial(408, "request_timeout", "The request was not received in time.", "invalid_request_error",
                "invalid_request_error"),
    413: Denial(413, "request_too_large", "The request body is too large.", "invalid_request_error", "request_too_large"),
    414: Denial(414, "uri_too_long", "The request target is too long.", "invalid_request_error", "invalid_request_error"),
    415: Denial(415, "unsupported_media_type", "Unsupported content type or encoding.", "invalid_request_error", "invalid_request_error"),
    431: Denial(431, "request_header_fields_too_large", "The request's header fields are too large.", "invalid_request_error",
                "invalid_request_error"),
    502: Denial(502, "upstream_unavailable", "The model service could not be reached.", "server_error", "api_error"),
    503: _BY_REASON[Reason.STATE_UNAVAILABLE],
    504: Denial(504, "upstream_timeout", "The model service did not answer in time.", "server_error", "api_error"),
}

# No URL of the upstream's pool can take the request (gateway/request/pool.py): the gateway decided
# to allow it, and the model service is what is missing, so a 503 the SDKs retry.
_BY_POOL: dict[str, Denial] = {
    "no_healthy_upstream": Denial(503, "no_healthy_upstream", "The model service is unavailable. Try again shortly.",
                                  "server_error", "api_error"),
    "upstream_at_capacity": Denial(503, "upstream_at_capacity", "The model service is at capacity. Retry after the "
                                   "time in the Retry-After header.", "server_error", "overloaded_error"),
}


def for_reason(reason: Reason, status: int, *, token: bool = False) -> Denial:
    """The denial for a decision's first reason; a concealed tier denial is a 404."""
    if status == 401 and token:
        return _AUTH_TOKEN
    if status == 404:
        return _CONCEALED if reason is Reason.TIER_NOT_PERMITTED else _BY_REASON[reason]
    return _BY_REASON[reason]


def with_status(denial: Denial, status: int) -> Denial:
    """The same denial under another status (`denials.jurisdiction_status`)."""
    return replace(denial, status=status)


def for_status(status: int, message: str | None = None, param: str | None = None) -> Denial:
    base = _BY_STATUS[status]
    if message is None and param is None:
        return base
    return Denial(base.status, base.code, message or base.message, base.openai_type, base.anthropic_type, param)


def for_pool(code: str) -> Denial:
    """The 503 of a pool that could not take the request (`PoolUnavailable.code`)."""
    return _BY_POOL[code]


def body(denial: Denial, api: str) -> bytes:
    if api == "anthropic":
        payload: dict[str, object] = {"type": "error", "error": {"type": denial.anthropic_type, "message": denial.message}}
    else:
        payload = {"error": {"message": denial.message, "type": denial.openai_type, "param": denial.param, "code": denial.code}}
    return json.dumps(payload, separators=(",", ":")).encode()


def sse_event(denial: Denial, api: str) -> bytes:
    """An error ending a stream, as a server-sent event in the stream's own API. Anthropic streams
    end with `event: error` and the error body (its Messages streaming docs, "Error
    events"); OpenAI streams with an event whose data is the error object, which its
    SDKs raise as an APIError. The leading blank lines end any event the upstream
    left unfinished; after a finished one they dispatch nothing (HTML Living
    Standard §9.2.6: an empty data buffer is no event)."""
    payload = body(denial, api)
    if api == "anthropic":
        return b"\n\nevent: error\ndata: " + payload + b"\n\n"
    return b"\n\ndata: " + payload + b"\n\n"
