"""Overview: the fleet, the state it depends on, and the denials of the last hour."""

from __future__ import annotations

import logging
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.console.forms import Form
from gateway.console.context import Console
from gateway.console.render import ROOT, refusal, render
from gateway.console.sessions import Actor
from gateway.live.overlay import ChangeError
from gateway.policy.issues import PolicyError

log = logging.getLogger("gateway.console")


def routes(console: Console) -> list[Route]:
    @console.page
    async def overview(request: Request, actor: Actor) -> Response:
        policy = console.state.policy
        return render(request, "overview.html", {"title": "Overview",
                                                 "policy_version": policy.version if policy else None,
                                                 "missing": console.ready_checks(),
                                                 "reloaded": request.query_params.get("reloaded")})

    @console.form
    async def reload(request: Request, actor: Actor, form: Form) -> Response:
        """The policy files again, as `POST /admin/reload` (a loosening becomes a proposal)."""
        try:
            made = await console.live.reload(force=True)
        except PolicyError as refused:
            return refusal(request, 422, "Reload refused", f"The policy files were refused; the running policy stays. {refused}")
        except ChangeError as refused:
            return refusal(request, refused.status, "Reload refused", "; ".join(refused.problems))
        outcome = "proposed" if made is not None and "proposer" in made else "applied"
        log.info("console policy.reload by %s: %s", actor.name, outcome,
                 extra={"actor": actor.name, "action": "policy.reload", "result": outcome})
        return RedirectResponse(f"{ROOT}/?reloaded={outcome}", status_code=303)

    return [Route("/", overview, methods=["GET"]), Route("/reload", reload, methods=["POST"])]
