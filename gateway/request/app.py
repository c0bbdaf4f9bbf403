"""The public listener: one raw ASGI application whose request path reads top to
bottom (docs/policy.md): route -> identity -> model -> jurisdiction -> decide -> quota
-> forward -> audit + metrics. Every step that cannot establish a fact it needs
ends the request with a denial; nothing is forwarded by default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import aiohttp

from gateway.request import proxy
from gateway.request import responses
from gateway.request import revocation
from gateway.request import catalogue
from gateway.request.activity import Activity
from gateway.audit import AuditLogs
from gateway.request.body_models import other_models
from gateway.request.clientip import ClientLocator, ForwardedForError, TrustedProxies
from gateway.config import Config
from gateway.policy.decision import Decision, Facts
from gateway.request.decisions import Decisions
from gateway.geo.reader import UNKNOWN, Place
from gateway.geo.files import LiveGeo
from gateway.identity import Authenticator, CredentialError, Principal
from gateway.identity.fingerprint import fingerprint, presented
from gateway.request.listener import REFUSAL, on_client_gone
from gateway.metrics import Metrics, model_label
from gateway.request.misuse import LocalSightings, Sightings
from gateway.policy.snapshot import Policy
from gateway.request.pool import PoolUnavailable
from gateway.live.state import PolicyState
from gateway.request.quota import LocalQuota, Quota, Reservation
from gateway.policy.reasons import Reason
from gateway.request.usage import Tap, reservation
from gateway.request.body import RequestError, extract_model, query_names_model, with_model
from gateway.request.revocation import Revocations
from gateway.request.routing import Route, Router, api_of

log = logging.getLogger("gateway")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = dict[bytes, list[str]]  # request headers by lower-case name, in order

JSON = (b"content-type", b"application/json")
RETRY_SOON = (b"retry-after", b"1")  # a pool's URLs come back, or free up, within seconds
SETTLE_S = 1.0  # how long an answer may wait for its audit record to reach the file


@dataclass(slots=True)
class Exchange:
    """What one request established, for its response, audit record and metrics."""

    decision_id: str
    started: float
    method: str = ""
    path: str = ""
    api: str = "openai"
    principal: Principal | None = None
    client_ip: str | None = None
    place: Place = UNKNOWN
    requested_model: str | None = None
    other_models: tuple[str, ...] = ()  # named elsewhere in the body (a tool's): all decided on
    decision: Decision | None = None
    decision_seconds: float | None = None
    status: int = 0
    error: str | None = None
    upstream_status: int | None = None
    upstream_bytes: int = 0
    response_started: bool = False
    streamed: bool = False  # the answer is a server-sent event stream
    forwarded: bool = False
    completed: bool = False
    document: dict[str, Any] | None = None  # the parsed body, until admission has read its limits
    reservation: Reservation | None = None  # tokens held for the request until it is settled
    tokens: Tap | None = None
    tokens_used: int | None = None
    tokens_charged: int | None = None
    misuse: list[str] | None = None
    recorded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Gateway:
    def __init__(
        self,
        config: Config,
        state: PolicyState,
        authenticator: Authenticator,
        geo: LiveGeo,
        upstreams: proxy.Upstreams,
        audit: AuditLogs,
        metrics: Metrics,
        *,
        quota: Quota | None = None,
        sightings: Sightings | None = None,
        on_misuse: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None,
        clock: Callable[[], float] = time.time,
        revocations: Revocations | None = None,
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.identity = authenticator
        self.upstreams = upstreams
        self.audit = audit
        self.metrics = metrics
        self.clock = clock
        self.activity = activity  # the last hour per minute, for the console (gateway/request/activity.py)
        self.router = Router(config.routes)
        self.decisions = Decisions()  # the same facts decide alike until the policy's next breakpoint
        self.geo = geo
        self.locator = ClientLocator(TrustedProxies(config.trusted_proxies), geo)
        geo.on_swap(self.locator.forget)
        self.quota = quota or LocalQuota()
        self.sightings = sightings or LocalSightings(config.credential_misuse.window_s)
        self.on_misuse = on_misuse
        self.revocations = revocations
        self._background: set[asyncio.Future[Any]] = set()
        self.decode = frozenset(config.request.decode_encodings)
        self.blocked_by = f"<{config.denials.blocked_by}>; rel=\"blocked-by\"".encode()
        self.jurisdiction_status = config.denials.jurisdiction_status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "websocket":
            # Upgrades are never forwarded: the decision covers one request, not a session.
            await send({"type": "websocket.close", "code": 1008})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        exchange = Exchange(os.urandom(16).hex(), time.perf_counter(), scope["method"], scope["path"])
        self.metrics.inflight.inc()
        try:
            await self.process(exchange, scope, receive, send)
        except RequestError as error:
            # Malformed or ambiguous: refused before (or instead of) a decision.
            await self.reply(exchange, send, responses.for_status(error.status, error.message, error.param))
        except Exception:
            log.exception("request %s failed", exchange.decision_id, extra={"decision_id": exchange.decision_id})
            if not exchange.response_started:
                await self.reply(exchange, send, responses.for_status(503))
        finally:
            self.metrics.inflight.dec()
            if exchange.reservation is not None:
                self.release(exchange)
            if not exchange.recorded:
                self.finish(exchange)

    async def process(self, exchange: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _index(scope["headers"])
        try:
            route = self.router.match(scope.get("raw_path") or scope["path"].encode(), scope["method"])
        except RequestError:
            exchange.api = api_of(exchange.path)  # so that a 404 under /v1/messages is in Anthropic's shape
            raise
        exchange.api = route.api
        if b"upgrade" in headers:
            # The parser stops at an upgrade: the body is never read, and the decision
            # covers one request, not a session.
            raise RequestError(400, "Protocol upgrades are not supported; send plain HTTP/1.1 requests.", None)
        if b"connection" in headers:
            proxy.check_connection(headers[b"connection"])  # it may not strip what is decided on
        policy = self.state.policy
        if policy is None or not self.state.usable() or not self.audit.healthy:
            return await self.deny(exchange, send, _unavailable(policy))

        principal, credential = await self.authenticate(exchange, headers, policy)
        if principal is None:
            self.locate_refused(exchange, scope, headers)
            facts = Facts(org_id=None, model=None, credential=credential)
            return await self.deny(exchange, send, self.decide(exchange, policy, facts))

        place = self.locate(exchange, scope, headers)
        # Who is calling settles some requests alone (a denied org): decided before the
        # body is read, so that such a caller's bodies cost no parse.
        caller = self.decisions.facts(principal.org_id, None, place.country, place.region, place.anonymizer)
        now = datetime.fromtimestamp(self.clock(), UTC)
        refusal = self.screen_caller(exchange, policy, caller, now)
        if refusal is not None:
            return await self.deny(exchange, send, refusal)

        model, body = await self.read_model(exchange, route, scope, receive, headers)
        if place.country is not None:
            await self.watch_credential(exchange, principal, place.country, policy)
        facts = self.decisions.facts(principal.org_id, model, place.country, place.region, place.anonymizer,
                                     self.geo.expired(now.timestamp()))
        decision = self.decide(exchange, policy, facts, now, listing=route.kind == "models_list")
        if decision.allowed and exchange.other_models:
            decision = self.decide_others(exchange, policy, facts, now, decision)
        if not decision.allowed:
            return await self.deny(exchange, send, decision)
        if decision.upstream_model is not None and decision.upstream_model != model and exchange.document is not None:
            body = with_model(exchange.document, decision.upstream_model)  # only then re-serialized

        try:
            retry_after = await self.admit(exchange, policy, principal, decision, len(body))
        except RequestError:  # a token limit the request names cannot be read
            raise
        except Exception as error:  # quota state unreachable: fail closed
            log.warning("quota check failed: %r", error)
            return await self.deny(exchange, send, _unavailable(policy))
        if retry_after is not None:
            return await self.deny(exchange, send, _rate_limited(decision), retry_after=retry_after)

        if route.kind == "models_list":
            return await self.list_models(exchange, policy, facts, route, scope, send)
        if route.kind == "models_get":
            return await self.get_model(exchange, policy, decision, facts, route, scope, send)
        await self.forward(exchange, decision, principal, route, scope, body, send)

    # Facts

    async def authenticate(self, exchange: Exchange, headers: Headers,
                           policy: Policy) -> tuple[Principal | None, str]:
        authorization = _single(headers, b"authorization")
        api_key = _single(headers, b"x-api-key")
        exchange.extra["token"] = (authorization or api_key or "").count(".") == 2
        try:
            principal = await self.identity.authenticate(authorization, api_key)
        except CredentialError as error:
            self.refused_credential(exchange, error.detail, authorization, api_key)
            return None, "missing" if error.reason == Reason.CREDENTIAL_MISSING else "invalid"
        if principal.credential_id in policy.suspended_credentials:
            self.refused_credential(exchange, "credential suspended", authorization, api_key)
            return None, "invalid"
        exchange.principal = principal
        return principal, "valid"

    @staticmethod
    def refused_credential(exchange: Exchange, why: str, authorization: str | None, api_key: str | None) -> None:
        """What the record of a refused credential says of it: why, and its fingerprint
        (gateway/identity/fingerprint.py), never the credential."""
        kind, digest = fingerprint(presented(authorization, api_key))
        exchange.extra["refused"] = {"credential_error": why, "credential_kind": kind,
                                     "credential_fingerprint": digest}

    def locate_refused(self, exchange: Exchange, scope: Scope, headers: Headers) -> None:
        """Where a caller without a valid credential is, for its record and the denial
        metrics only. An X-Forwarded-For that cannot be read leaves it unknown: the answer
        stays the 401, which tells such a caller no more than that it needs a credential."""
        try:
            exchange.client_ip, exchange.place = self.locator.locate(_peer(scope), headers.get(b"x-forwarded-for", []))
        except ForwardedForError:
            exchange.extra.setdefault("refused", {})["forwarded_for"] = "unreadable"

    def locate(self, exchange: Exchange, scope: Scope, headers: Headers) -> Place:
        """Where the caller is; an X-Forwarded-For that cannot be read is a 400, never unknown."""
        try:
            exchange.client_ip, exchange.place = self.locator.locate(_peer(scope), headers.get(b"x-forwarded-for", []))
        except ForwardedForError as error:
            raise RequestError(400, str(error), None) from None
        return exchange.place

    async def watch_credential(self, exchange: Exchange, principal: Principal, country: str, policy: Policy) -> None:
        """Flag a credential seen from too many countries; suspend it if so configured."""
        settings = self.config.credential_misuse
        try:
            countries = await self.sightings.observe(principal.credential_id, country, time.time())
        except Exception as error:  # monitoring, not a fact the decision needs
            log.warning("credential sightings unavailable: %r", error)
            return
        if len(countries) < settings.countries:
            return
        exchange.misuse = sorted(countries)
        org = policy.organizations.get(principal.org_id)
        self.metrics.credential_misuse.labels(org.tier if org else "unknown").inc()
        if settings.suspend and self.on_misuse is not None:
            why = {"reason": "credential misuse", "countries": exchange.misuse, "org": principal.org_id,
                   "window_s": settings.window_s, "decision_id": exchange.decision_id}
            task = asyncio.ensure_future(self.on_misuse(principal.credential_id, why))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def read_model(self, exchange: Exchange, route: Route, scope: Scope, receive: Receive,
                         headers: Headers) -> tuple[str | None, bytes]:
        """The model the request names, and the exact bytes to forward."""
        if route.kind == "models_list":
            return None, b""
        # A model in the query would be a second one, read by some servers only.
        query = scope["query_string"]
        if query and (query_names_model(query) or any(map(_names_model, _query_keys(query)))):
            raise RequestError(400, "The model must not be given in the query string.", "model")
        if route.kind == "models_get":
            exchange.requested_model = route.model_in_path
            return route.model_in_path, b""
        raw = await self.read_body(scope, receive, _single(headers, b"content-length"))
        model, body, document = extract_model(
            raw,
            _single(headers, b"content-type"),
            _single(headers, b"content-encoding"),
            max_bytes=self.config.request.max_body_bytes,
            decode_encodings=self.decode,
            keys=route.body.keys,
            max_containers=self.config.request.max_json_containers,
        )
        exchange.requested_model = model
        exchange.document = document
        exchange.other_models = other_models(document, route.body, model)
        exchange.extra["decoded"] = body is not raw
        return model, body

    async def read_body(self, scope: Scope, receive: Receive, content_length: str | None) -> bytes:
        limit = self.config.request.max_body_bytes
        if content_length is not None and (not content_length.isdigit() or int(content_length) > limit):
            status = 413 if content_length.isdigit() else 400
            raise RequestError(status, responses.for_status(status).message, None)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect" or REFUSAL in scope:
                # Or the listener refused the rest of it: bad framing, too slow (gateway/request/listener.py).
                status, why = scope.get(REFUSAL) or (400, "The request body was not received.")
                raise RequestError(status, why, None)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, responses.for_status(413).message, None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def screen_caller(self, exchange: Exchange, policy: Policy, caller: Facts, now: datetime) -> Decision | None:
        """The denial that who is calling settles alone, if any (a step of its own to trace)."""
        return self.decisions.caller(policy, caller, now)

    def decide(self, exchange: Exchange, policy: Policy, facts: Facts, now: datetime | None = None, *,
               listing: bool = False) -> Decision:
        now = now or datetime.fromtimestamp(self.clock(), UTC)
        started = time.perf_counter()
        decisions = self.decisions
        decision = (decisions.listing if listing else decisions.decide)(policy, facts, now)
        exchange.decision_seconds = time.perf_counter() - started
        self.metrics.decision_seconds.observe(exchange.decision_seconds)
        exchange.decision = decision
        return decision

    def decide_others(self, exchange: Exchange, policy: Policy, facts: Facts, now: datetime,
                      decision: Decision) -> Decision:
        """Every other model the body names must be allowed too: the first that is not
        is the request's decision, and the model its record and denial name."""
        for model in exchange.other_models:
            other = self.decide(exchange, policy, replace(facts, model=model), now)
            if not other.allowed:
                exchange.requested_model = model
                return other
        exchange.decision = decision
        return decision

    async def admit(self, exchange: Exchange, policy: Policy, principal: Principal, decision: Decision,
                    body_bytes: int) -> float | None:
        """None when the org's quotas admit the request, with the most tokens it can use
        held against a daily budget (docs/quotas.md); else seconds to wait."""
        document, exchange.document = exchange.document, None
        org = policy.organizations[principal.org_id]
        quota = policy.quota_for(org, decision.tier or org.tier)
        if quota is None or (quota.requests_per_minute is None and quota.tokens_per_day is None):
            return None
        reserve = 0
        if quota.tokens_per_day is not None and document is not None:  # an inference request
            try:
                reserve = reservation(document, body_bytes, self.config.quota.default_max_tokens)
            except RequestError:
                exchange.error = "invalid_request"  # refused after an allowing decision: say why
                raise
        # Quota windows follow the wall clock, not the (injectable) decision clock.
        now = time.time()
        retry_after = await self.quota.admit(org.id, quota.requests_per_minute, quota.tokens_per_day, now,
                                             reserve=reserve)
        if retry_after is None and reserve:
            exchange.reservation = Reservation(org.id, reserve, now)
            exchange.tokens = Tap()
        return retry_after

    # Acting on the decision

    async def forward(self, exchange: Exchange, decision: Decision, principal: Principal, route: Route,
                      scope: Scope, body: bytes, send: Send) -> None:
        # A model the policy does not list (allowed by `unknown_models: allow`) names no
        # upstream: it goes to the default one.
        upstream = decision.upstream or "default"
        pool = self.upstreams.pools.get(upstream)
        if pool is None:
            log.error("model %s names upstream %r, which is not configured", decision.model, upstream)
            return await self.reply(exchange, send, responses.for_status(503))
        rules = self.upstreams.rules[upstream]
        headers = proxy.request_headers(
            scope["headers"],
            org_id=principal.org_id,
            decision_id=exchange.decision_id,
            pass_credentials=self.config.forward.pass_credentials,
            drop_content_encoding=exchange.extra.get("decoded", False),
            rules=rules,
        )
        target = route.path + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        task = asyncio.current_task()
        # A client that goes away cancels the upstream request (and its stream); one gone
        # already is not forwarded to.
        watch = _DisconnectWatch(task, exchange)
        if not on_client_gone(scope, watch.client_gone):
            exchange.error = "client_disconnected"
            return
        # A policy change that comes to deny the request ends it too (gateway/request/revocation.py).
        revocations = self.revocations
        if revocations is not None:
            revocations.track(exchange, task)
        started = time.perf_counter()
        exchange.forwarded = True
        try:
            async with pool.request(scope["method"], target, headers=headers, data=body or None,
                                    allow_redirects=False) as upstream:
                self.metrics.upstream_seconds.observe(time.perf_counter() - started)
                exchange.upstream_status = upstream.status
                if proxy.is_redirect(upstream.status):
                    return await self.upstream_redirected(exchange, send)
                exchange.streamed = upstream.content_type == "text/event-stream"
                head = proxy.response_headers(upstream.raw_headers, exchange.decision_id.encode(), rules.passed)
                # An answer encoded despite Accept-Encoding: identity cannot be read: its
                # reservation stands (fail closed).
                tap = exchange.tokens if upstream.headers.get("Content-Encoding", "identity") == "identity" else None
                content = upstream.content
                if content.is_eof() and content.exception() is None:
                    return await self.answer_whole(exchange, send, upstream.status, head, content.read_nowait(), tap)
                await self.start_response(exchange, send, upstream.status, head)
                await self.relay(exchange, send, content, upstream.content_length, tap)
        except asyncio.CancelledError:
            if exchange.error == revocation.REVOKED:
                _uncancel()
                watch.stop()  # the client may go away meanwhile: the ending is then a no-op
                return await self.end_revoked(exchange, send)
            if not watch.fired:
                raise
            _uncancel()
            exchange.error = "client_disconnected"
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            await self.upstream_failed(exchange, send, error)
        except PoolUnavailable as error:
            await self.pool_unavailable(exchange, send, error)
        finally:
            watch.stop()
            if revocations is not None:
                revocations.untrack(exchange)

    async def answer_whole(self, exchange: Exchange, send: Send, status: int, headers: list[tuple[bytes, bytes]],
                           body: bytes, tap: Tap | None) -> None:
        """An answer that came whole with its head (all but long ones and streams): counted
        and recorded first, it then leaves in one write, head, body and end together."""
        exchange.status = status  # as the record has it
        exchange.upstream_bytes = len(body)
        if tap is not None:
            tap.feed(body)
        await self.complete(exchange)
        await self.start_response(exchange, send, status, headers)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def relay(self, exchange: Exchange, send: Send, content: aiohttp.StreamReader, length: int | None,
                    tap: Tap | None) -> None:
        """Pass the answer on as it arrives, counted and recorded before its end leaves:
        with a length, the client is done at its last byte, which then ends the body."""
        async for chunk in content.iter_any():
            exchange.upstream_bytes += len(chunk)
            if tap is not None:
                tap.feed(chunk)
            if length is not None and exchange.upstream_bytes >= length:
                await self.complete(exchange)
                return await send({"type": "http.response.body", "body": chunk, "more_body": False})
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await self.complete(exchange)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def end_revoked(self, exchange: Exchange, send: Send) -> None:
        """The policy came to deny the request while it was answered; its upstream is
        closed. The client gets the denial a new request would get: the response itself
        if none has started, else an error event ending the stream. Any other body is
        left incomplete: the listener then closes the connection, so the client sees
        the answer cut short rather than a well-formed truncated one."""
        denial = revocation.denial(exchange)
        if not exchange.response_started:
            return await self.reply(exchange, send, denial, self.denial_headers(denial))
        await self.end_started(exchange, send, denial)

    async def complete(self, exchange: Exchange) -> None:
        """The upstream's answer is all here: count it and record it before the client
        receives its end."""
        if exchange.completed:
            return
        exchange.completed = True
        self.count_tokens(exchange)
        await self.settle(exchange)

    def count_tokens(self, exchange: Exchange) -> None:
        """Settle the reservation with the usage the complete answer reports (never
        waiting for it: gateway/request/quota.py)."""
        held = exchange.reservation
        if held is None:
            return
        exchange.reservation = None
        tap = exchange.tokens
        exchange.tokens_used = tap.tokens(stream=exchange.streamed) if tap is not None else None
        exchange.tokens_charged = _charge(exchange, held)
        self.quota.settle_soon(held, exchange.tokens_charged)

    def release(self, exchange: Exchange) -> None:
        """Settle a reservation the answer did not (the client or the upstream went away,
        the request was revoked or never sent), off the request's path."""
        held, exchange.reservation = exchange.reservation, None
        if held is None:
            return
        exchange.tokens_charged = _charge(exchange, held)
        self.quota.settle_soon(held, exchange.tokens_charged)

    async def list_models(self, exchange: Exchange, policy: Policy, facts: Facts, route: Route,
                          scope: Scope, send: Send) -> None:
        """GET /v1/models: the models this caller may use, in a list built afresh
        (gateway/request/catalogue.py), never the upstream's with entries taken out."""
        fetched = await self.fetch_catalogue(exchange, "default", route.path, facts, scope, send)
        if fetched is None:
            return
        status, document = fetched
        now = datetime.fromtimestamp(self.clock(), UTC)
        try:
            answer = catalogue.listing(policy, facts, now, document) if status == 200 else None
        except ValueError:
            answer = None
        await self.answer_catalogue(exchange, send, answer)

    async def get_model(self, exchange: Exchange, policy: Policy, decision: Decision, facts: Facts,
                        route: Route, scope: Scope, send: Send) -> None:
        """GET /v1/models/{id} of a model the caller may use: the entry without the
        fields that could name another model (gateway/request/catalogue.py)."""
        fetched = await self.fetch_catalogue(exchange, decision.upstream or "default", route.path, facts, scope, send)
        if fetched is None:
            return
        status, document = fetched
        if status == 404:  # the upstream does not serve it: the same answer as a model it does not know
            return await self.reply(exchange, send, responses.for_reason(Reason.MODEL_UNKNOWN, 404))
        answer = None
        if status == 200 and isinstance(document, dict) and isinstance(document.get("id"), str):
            now = datetime.fromtimestamp(self.clock(), UTC)
            answer = catalogue.entry(document, catalogue.concealed(policy, facts, now))
        await self.answer_catalogue(exchange, send, answer)

    async def fetch_catalogue(self, exchange: Exchange, upstream: str, path: str, facts: Facts, scope: Scope,
                              send: Send) -> tuple[int, Any] | None:
        """The upstream's status and parsed JSON answer (None when it is not JSON); None
        once the client has been answered for an upstream that failed."""
        pool = self.upstreams.pools.get(upstream)
        if pool is None:
            log.error("model %s names upstream %r, which is not configured", facts.model, upstream)
            await self.reply(exchange, send, responses.for_status(503))
            return None
        headers = proxy.request_headers(
            [(n, v) for n, v in scope["headers"] if n != b"accept-encoding"],
            org_id=facts.org_id or "", decision_id=exchange.decision_id,
            pass_credentials=self.config.forward.pass_credentials, drop_content_encoding=False,
            rules=self.upstreams.rules[upstream],
        )
        exchange.forwarded = True
        try:
            async with pool.request("GET", path, headers=headers, allow_redirects=False) as answer:
                exchange.upstream_status = answer.status
                payload = await answer.read()
                exchange.upstream_bytes = len(payload)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            await self.upstream_failed(exchange, send, error)
            return None
        except PoolUnavailable as error:
            await self.pool_unavailable(exchange, send, error)
            return None
        if proxy.is_redirect(answer.status):
            await self.upstream_redirected(exchange, send)
            return None
        try:
            return answer.status, json.loads(payload)
        except ValueError:
            return answer.status, None

    async def answer_catalogue(self, exchange: Exchange, send: Send, answer: dict[str, Any] | None) -> None:
        """200 with `answer`, or 502 when the upstream gave none that could be read."""
        if answer is None:
            return await self.reply(exchange, send, responses.for_status(502))
        body = json.dumps(answer, separators=(",", ":")).encode()
        await self.start_response(exchange, send, 200, [JSON, (b"content-length", str(len(body)).encode()),
                                                       (b"x-gateway-decision-id", exchange.decision_id.encode())])
        await self.settle(exchange)
        await send({"type": "http.response.body", "body": body})

    async def upstream_failed(self, exchange: Exchange, send: Send, error: BaseException) -> None:
        kind = "timeout" if isinstance(error, asyncio.TimeoutError) else "connect" if isinstance(error, aiohttp.ClientConnectionError) else "protocol"
        self.metrics.upstream_errors.labels(kind).inc()
        exchange.error = f"upstream_{kind}"
        log.warning("upstream failed for %s: %r", exchange.decision_id, error, extra={"decision_id": exchange.decision_id})
        denial = responses.for_status(504 if kind == "timeout" else 502)
        if exchange.response_started:
            await self.end_started(exchange, send, denial)
        else:
            await self.reply(exchange, send, denial)

    async def pool_unavailable(self, exchange: Exchange, send: Send, error: PoolUnavailable) -> None:
        """No URL of the pool could take the request: a 503 with the pool's code, nothing sent."""
        exchange.forwarded = False
        exchange.error = error.code
        log.warning("%s for %s", error, exchange.decision_id, extra={"decision_id": exchange.decision_id})
        await self.reply(exchange, send, responses.for_pool(error.code), [RETRY_SOON])

    async def upstream_redirected(self, exchange: Exchange, send: Send) -> None:
        """A 3xx is never followed (allow_redirects=False) nor passed on: either would serve
        the client from somewhere the decision did not cover. The API's own 502 instead."""
        self.metrics.upstream_errors.labels("redirect").inc()
        exchange.error = "upstream_redirect"
        log.warning("upstream answered %s for %s with a redirect", exchange.upstream_status, exchange.decision_id,
                    extra={"decision_id": exchange.decision_id})
        await self.reply(exchange, send, responses.for_status(502))

    async def end_started(self, exchange: Exchange, send: Send, denial: responses.Denial) -> None:
        """End an answer already under way that cannot be completed. A stream ends with
        the error as an event in its API's format. Any other body is left incomplete: the
        listener then closes the connection, so the client sees an answer cut short
        rather than a truncated one that looks whole."""
        await self.settle(exchange)
        if exchange.streamed:
            await send({"type": "http.response.body", "body": responses.sse_event(denial, exchange.api), "more_body": False})

    # Responses

    async def deny(self, exchange: Exchange, send: Send, decision: Decision, *, retry_after: float | None = None) -> None:
        exchange.decision = decision
        reason = decision.reasons[0]
        denial = responses.for_reason(reason, decision.status, token=exchange.extra.get("token", False))
        extra = self.denial_headers(denial)
        if denial.status == 451 and self.jurisdiction_status != 451:
            denial = responses.with_status(denial, self.jurisdiction_status)
        if retry_after is not None:
            extra.append((b"retry-after", str(int(retry_after)).encode()))
        await self.reply(exchange, send, denial, extra)

    def denial_headers(self, denial: responses.Denial) -> list[tuple[bytes, bytes]]:
        """What a denial's status calls for: where a 451 comes from, how to authenticate."""
        if denial.status == 451:
            return [(b"link", self.blocked_by)]
        if denial.status == 401:
            return [(b"www-authenticate", b'Bearer realm="frontier-gateway"')]
        return []

    async def reply(self, exchange: Exchange, send: Send, denial: responses.Denial,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if exchange.decision is None:
            exchange.error = denial.code
        body = responses.body(denial, exchange.api)
        decision_id = exchange.decision_id.encode()
        headers = [JSON, (b"content-length", str(len(body)).encode()), (b"x-gateway-decision-id", decision_id),
                   (responses.REQUEST_ID[exchange.api], decision_id), *(extra or [])]
        await self.start_response(exchange, send, denial.status, headers)
        await self.settle(exchange)
        await send({"type": "http.response.body", "body": body})

    async def start_response(self, exchange: Exchange, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        exchange.status = status
        exchange.response_started = True
        await send({"type": "http.response.start", "status": status, "headers": headers})

    def refuse(self, peer: str | None, status: int, error: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """A request the listener refused before it reached here (gateway/request/listener.py:
        invalid HTTP, a head over the limits or too slow, a connection over the cap):
        recorded with its status and error, its method and path unknown, since the
        parser could not vouch for them."""
        exchange = Exchange(os.urandom(16).hex(), time.perf_counter(), status=status, error=error, client_ip=peer)
        self.finish(exchange)
        body = responses.body(responses.for_status(status, message), "openai")
        decision_id = exchange.decision_id.encode()
        return [(b"x-gateway-decision-id", decision_id), (responses.REQUEST_ID["openai"], decision_id)], body

    # Record

    async def settle(self, exchange: Exchange) -> None:
        """Record the request and hold the end of its response until the record is in
        the audit file, so no answered request goes unrecorded if the process dies.
        Bounded: a file that cannot be written delays an answer by at most a second
        (and makes the gateway refuse new requests meanwhile)."""
        written = self.finish(exchange, wait=True)
        if written is not None and not await _done_within(written, SETTLE_S):
            log.warning("audit record of %s not yet written; answering anyway", exchange.decision_id,
                        extra={"decision_id": exchange.decision_id})

    def finish(self, exchange: Exchange, *, wait: bool = False) -> asyncio.Future[None] | None:
        decision = exchange.decision
        policy = self.state.policy
        principal = exchange.principal
        org = policy.organizations.get(principal.org_id) if policy and principal else None
        reasons = [str(r) for r in decision.reasons] if decision else []
        # "allow" is the gateway's decision, not the outcome: a request it forwarded stays
        # allowed when the upstream then fails or a change revokes it (see `error`).
        allowed = decision is not None and decision.allowed and (exchange.forwarded or exchange.status < 400)
        first = reasons[0] if reasons else ("none" if allowed else exchange.error or "none")
        exchange.recorded = True
        now = time.time()
        place = exchange.place
        # In canonical (sorted) key order, with the chain's fields in place for seal() to
        # fill (gateway/audit/chain.py): a record already in order serializes faster.
        entry = {
            "anonymizer": place.anonymizer,
            "client_ip": exchange.client_ip,
            "covered": decision.covered if decision else None,
            "credential_id": principal.credential_id if principal else None,
            "credential_misuse": exchange.misuse,
            "decision": "allow" if allowed else "deny",
            "decision_id": exchange.decision_id,
            "decision_us": round(exchange.decision_seconds * 1e6, 1) if exchange.decision_seconds is not None else None,
            "declared_country": org.country if org else None,
            "error": exchange.error,
            "format": None,
            "method": exchange.method,
            "model": decision.model if decision else None,
            "observed_country": place.country,
            "observed_region": place.region,
            "org": principal.org_id if principal else None,
            "path": exchange.path,
            "policy_version": decision.policy_version if decision else (policy.version if policy else None),
            "prev": None,
            "reasons": reasons,
            "replica": None,
            "requested_model": exchange.requested_model,
            "revoked": exchange.extra.get(revocation.REVOKED),
            "seq": None,
            "stage": decision.stage if decision else None,
            "status": exchange.status,
            "subject": principal.subject if principal else None,
            "tier": decision.tier if decision else None,
            "time": _timestamp(now),
            "tokens": exchange.tokens_used,
            "tokens_charged": exchange.tokens_charged if exchange.reservation is None
            else _charge(exchange, exchange.reservation),
            "upstream_bytes": exchange.upstream_bytes,
            "upstream_status": exchange.upstream_status,
            "would_deny": [str(r) for r in decision.shadow] if decision and decision.shadow else None,
        }
        refused = exchange.extra.get("refused")
        if refused:
            entry.update(refused)  # a refused credential: what it was, never the credential
        written = self.audit.record(entry, wait=wait, authenticated=principal is not None)
        metrics = self.metrics
        if decision is not None:
            for reason in decision.shadow:
                metrics.would_deny.labels(str(reason)).inc()
        model = model_label(decision, policy is not None and policy.conceal_unreleased)
        metrics.requests.labels(
            "allow" if allowed else "deny", first, model,
            (decision.stage if decision else None) or "none", (decision.tier if decision else None) or "none",
        ).inc()
        metrics.count_country(exchange.place.country, "allow" if allowed else "deny")
        if self.activity is not None:
            self.activity.count(now, allowed=allowed, country=exchange.place.country, region=exchange.place.region)
        if not allowed:
            metrics.denials.labels(first, exchange.place.country or "unknown", model).inc()
        self.metrics.request_seconds.observe(time.perf_counter() - exchange.started)
        return written


async def _done_within(future: asyncio.Future[None], seconds: float) -> bool:
    """Whether `future` is done within `seconds`; never cancels it, even when the caller is
    cancelled. What wait_for(shield(future)) does, with one future and two callbacks fewer."""
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    timer = loop.call_later(seconds, _release, waiter)
    released = partial(_release, waiter)
    future.add_done_callback(released)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(released)
    return future.done()


def _release(waiter: asyncio.Future[None], *_: Any) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _timestamp(now: float) -> str:
    """RFC 3339 in UTC with microseconds, as datetime.isoformat writes it."""
    global _second
    fraction, whole = math.modf(now)
    micro = round(fraction * 1e6)  # as datetime.fromtimestamp rounds
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    second = _second  # read once: (whole second, its text) stay a pair whatever thread calls
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return "%s%06dZ" % (second[1], micro)


_second = (math.nan, "")  # the last second a timestamp was written in, and its text


def _charge(exchange: Exchange, held: Reservation) -> int:
    """What a request's hold becomes: the usage a complete answer reports; nothing for a
    request never sent, or an error answer that reports none (no tokens were served);
    else the whole hold, since the upstream may have spent it (fail closed)."""
    if not exchange.forwarded:
        return 0
    if exchange.completed:
        if exchange.tokens_used is not None:
            return exchange.tokens_used
        if (exchange.upstream_status or 0) >= 400:
            return 0
    return held.tokens


def _unavailable(policy: Policy | None) -> Decision:
    return Decision(False, 503, (Reason.STATE_UNAVAILABLE,), policy.version if policy else "none")


def _rate_limited(decision: Decision) -> Decision:
    return Decision(False, 429, (Reason.RATE_LIMITED,), decision.policy_version, decision.model, decision.stage,
                    decision.covered, decision.tier, decision.upstream)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _index(raw: list[tuple[bytes, bytes]]) -> Headers:
    """The request's headers by (lower-case) name, read once per request."""
    index: Headers = {}
    for name, value in raw:
        index.setdefault(name, []).append(value.decode("latin-1"))
    return index


def _query_keys(query: bytes) -> list[str]:
    # ";" too: older servers split the query on it (Python's parse_qsl did until 3.10).
    return [key for key, _ in parse_qsl(query.decode("latin-1").replace(";", "&"), keep_blank_values=True)]


def _names_model(key: str) -> bool:
    """A query parameter some upstream might read as the model: `model` however
    decorated (`model%00`, `Model `, `model[]`, `model.id`); these APIs have no other."""
    return "".join(c for c in key if c.isalnum()).casefold().startswith("model")


def _single(headers: Headers, name: bytes) -> str | None:
    """A header that must appear at most once; a repeated one is ambiguous."""
    values = headers.get(name, [])
    if len(values) > 1:
        raise RequestError(400, f"The {name.decode()} header may appear only once.", None)
    return values[0] if values else None


def _uncancel() -> None:
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()


class _DisconnectWatch:
    """Cancels the forwarding task when the client goes away: the listener calls
    `client_gone` at that moment (gateway/request/listener.py, on_client_gone)."""

    __slots__ = ("task", "exchange", "fired", "active")

    def __init__(self, task: asyncio.Task[Any] | None, exchange: Exchange) -> None:
        self.task = task
        self.exchange = exchange
        self.fired = False  # it cancelled the task
        self.active = True

    def client_gone(self) -> None:
        # A complete answer is being sent its end: nothing is left to cancel.
        if self.active and self.task is not None and not self.exchange.completed:
            self.fired = True
            self.task.cancel()

    def stop(self) -> None:
        self.active = False
