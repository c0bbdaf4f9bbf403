"""Overview: the fleet and whether it agrees, the state it depends on, the last hour's
requests and denials (with the map), suspensions in force and changes awaiting a second person."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.console import overview_model as model
from gateway.console.context import Console
from gateway.console.forms import Form
from gateway.console.render import ROOT, refusal, render
from gateway.console.sessions import Actor
from gateway.live.heartbeat import Heartbeat
from gateway.live.overlay import ChangeError
from gateway.policy.issues import PolicyError

log = logging.getLogger("gateway.console")
READ_TIMEOUT_S = 1.0  # a page waits this long at most for the shared state, then says it could not read it


def routes(console: Console) -> list[Route]:
    @console.page
    async def overview(request: Request, actor: Actor) -> Response:
        return render(request, "overview.html", {"title": "Overview", **await gather(console),
                                                 "reloaded": request.query_params.get("reloaded")})

    @console.form(action="policy.reload")
    async def reload(request: Request, actor: Actor, form: Form) -> Response:
        """The policy files again, as `POST /admin/reload` (a loosening becomes a proposal)."""
        try:
            made = await console.live.reload(force=True)
        except PolicyError as refused:
            return refusal(request, 422, "Reload refused", f"The policy files were refused; the running policy stays. {refused}")
        except ChangeError as refused:
            return refusal(request, refused.status, "Reload refused", "; ".join(refused.problems))
        outcome = "proposed" if made is not None and "proposer" in made else "applied"
        request.state.result = "proposed" if outcome == "proposed" else "ok"
        log.info("console policy.reload by %s: %s", actor.name, outcome,
                 extra={"actor": actor.name, "action": "policy.reload", "result": outcome})
        return RedirectResponse(f"{ROOT}/?reloaded={outcome}", status_code=303)

    return [Route("/", overview, methods=["GET"]), Route("/reload", reload, methods=["POST"])]


async def gather(console: Console) -> dict[str, Any]:
    """Read everything the overview shows; what cannot be read is shown as such, never guessed."""
    now = time.time()
    beats, redis = await fleet(console, now)
    policy = console.state.policy
    geo = console.geo()
    approval, countersign = await shared_or_none(console.control.list("open")), await shared_or_none(console.control.awaiting())
    return {
        "view": model.overview(beats, now),
        "fleet_mode": console.heartbeats is not None,
        "replica": console.replica,
        "redis": redis,
        "missing": console.ready_checks(),
        "databases": model.database_rows(geo.ages(console.clock()), console.geoip_max_age_days) if geo else (),
        "suspensions": model.suspension_rows(policy.suspensions, console.clock()) if policy else (),
        "awaiting": model.awaiting_rows(approval or [], countersign or []),
        "awaiting_unknown": approval is None or countersign is None,
        "policy_version": policy.version if policy else None,
    }


async def fleet(console: Console, now: float) -> tuple[list[Heartbeat], str]:
    """The replicas' heartbeats and Redis's state; embedded mode (or Redis away): this replica alone."""
    own = Heartbeat(console.replica, console.state.policy.version if console.state.policy else None, now,
                    console.activity.window(now))
    if console.heartbeats is None:
        return [own], "not used (embedded mode: state in state_dir)"
    try:
        started = time.perf_counter()
        beats = await asyncio.wait_for(console.heartbeats.fleet(), READ_TIMEOUT_S)
        return beats, f"reachable ({(time.perf_counter() - started) * 1000:.0f} ms)"
    except Exception as failure:  # noqa: BLE001 - shown, not raised: the overview is how one sees it
        log.warning("console overview: Redis not read: %r", failure)
        return [own], "UNREACHABLE: other replicas unknown; the gateway fails closed until it is back"


async def shared_or_none(read: Any) -> Any:
    try:
        return await asyncio.wait_for(read, READ_TIMEOUT_S)
    except Exception as failure:  # noqa: BLE001
        log.warning("console overview: change control not read: %r", failure)
        return None
