"""The admin listener (SPEC §4): health, readiness and metrics; never the public one."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import PolicyState
from gateway.metrics import Metrics

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def create_admin_app(state: PolicyState, metrics: Metrics, ready_checks: Callable[[], list[str]]) -> Starlette:
    """`ready_checks` returns what is missing for readiness (empty when ready)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        missing = ready_checks()
        policy = state.policy
        body = {
            "ready": not missing,
            "policy_version": policy.version if policy else None,
            "missing": missing,
        }
        return JSONResponse(body, status_code=200 if not missing else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=PROMETHEUS_TEXT)

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
    ])
