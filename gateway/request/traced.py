"""The request path with OpenTelemetry spans (`export.otlp.traces: true`).

`TracedGateway` is the Gateway of gateway/request/app.py with each step it times wrapped in a
span: one `request` span (server kind) per request, with children `identity`, `geo`,
`decide` and `upstream`, each carrying the request's `gateway.decision_id`, the id in
its audit record and in its X-Gateway-Decision-Id header. With tracing off the service
runs the plain Gateway: the request path then makes no tracer call at all, not even a
check whether tracing is on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from gateway.request.app import Exchange, Gateway, Headers, Receive, Scope, Send
from gateway.policy.decision import Decision, Facts
from gateway.geo.reader import Place
from gateway.identity import Principal
from gateway.policy.snapshot import Policy
from gateway.request.routing import Route

DECISION_ID = "gateway.decision_id"
ROOT = "trace.root"  # the request span, in Exchange.extra


class TracedGateway(Gateway):
    def __init__(self, *args: Any, tracer: Tracer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracer = tracer

    @contextmanager
    def step(self, name: str, exchange: Exchange) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes={DECISION_ID: exchange.decision_id}) as span:
            yield span

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Method and path as the parser read them; the path is bounded by the span limits.
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        with self.tracer.start_as_current_span("request", kind=SpanKind.SERVER, attributes=attributes):
            await super().handle(scope, receive, send)

    async def process(self, exchange: Exchange, scope: Scope, receive: Receive, send: Send) -> None:
        root = exchange.extra[ROOT] = trace.get_current_span()
        root.set_attribute(DECISION_ID, exchange.decision_id)
        await super().process(exchange, scope, receive, send)

    async def authenticate(self, exchange: Exchange, headers: Headers,
                           policy: Policy) -> tuple[Principal | None, str]:
        with self.step("identity", exchange) as span:
            principal, credential = await super().authenticate(exchange, headers, policy)
            span.set_attribute("gateway.credential", credential)
            if principal is not None:
                span.set_attribute("gateway.org", principal.org_id)
            return principal, credential

    def locate(self, exchange: Exchange, scope: Scope, headers: Headers) -> Place:
        with self.step("geo", exchange) as span:
            place = super().locate(exchange, scope, headers)
            span.set_attribute("gateway.observed_country", place.country or "unknown")
            return place

    def screen_caller(self, exchange: Exchange, policy: Policy, caller: Facts, now: datetime) -> Decision | None:
        with self.step("decide", exchange) as span:
            refusal = super().screen_caller(exchange, policy, caller, now)
            if refusal is not None:
                _decided(span, refusal)
            return refusal

    def decide(self, exchange: Exchange, policy: Policy, facts: Facts, now: datetime | None = None, *,
               listing: bool = False) -> Decision:
        with self.step("decide", exchange) as span:
            decision = super().decide(exchange, policy, facts, now, listing=listing)
            _decided(span, decision)
            return decision

    async def forward(self, exchange: Exchange, decision: Decision, principal: Principal, route: Route,
                      scope: Scope, body: bytes, send: Send) -> None:
        with self.step("upstream", exchange) as span:
            await super().forward(exchange, decision, principal, route, scope, body, send)
            _answered(span, exchange)

    async def fetch_catalogue(self, exchange: Exchange, upstream: str, path: str, facts: Facts, scope: Scope,
                              send: Send) -> tuple[int, Any] | None:
        with self.step("upstream", exchange) as span:
            fetched = await super().fetch_catalogue(exchange, upstream, path, facts, scope, send)
            _answered(span, exchange)
            return fetched

    def finish(self, exchange: Exchange, *, wait: bool = False) -> Any:
        written = super().finish(exchange, wait=wait)
        root = exchange.extra.get(ROOT)
        if root is not None:
            decision = exchange.decision
            allowed = decision is not None and decision.allowed and (exchange.forwarded or exchange.status < 400)
            root.set_attribute("http.response.status_code", exchange.status)
            root.set_attribute("gateway.decision", "allow" if allowed else "deny")
            if exchange.status >= 500:
                root.set_status(StatusCode.ERROR)
        return written


def _decided(span: Span, decision: Decision) -> None:
    span.set_attribute("gateway.allowed", decision.allowed)
    span.set_attribute("gateway.reasons", [str(reason) for reason in decision.reasons])
    span.set_attribute("gateway.policy_version", decision.policy_version)


def _answered(span: Span, exchange: Exchange) -> None:
    if exchange.upstream_status is not None:
        span.set_attribute("http.response.status_code", exchange.upstream_status)
    if exchange.error is not None:
        span.set_attribute("error.type", exchange.error)
