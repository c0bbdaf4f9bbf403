"""Policy: the jurisdiction groups and their legal sources, each model's release
timeline, and the organizations with their vetting (those lapsing soon named)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console import policy_view
from gateway.console.context import Console
from gateway.console.render import render
from gateway.console.sessions import Actor
from gateway.console.timeline_view import timeline


def routes(console: Console) -> list[Route]:
    @console.page
    async def policy(request: Request, actor: Actor) -> Response:
        current = console.state.policy
        if current is None:
            return render(request, "policy.html", {"title": "Policy", "policy": None}, status=503)
        now = console.clock()
        query = request.query_params.get("org", "")[:200]
        orgs, matched = policy_view.org_rows(current, now, query)
        return render(request, "policy.html", {
            "title": "Policy", "policy": current, "today": policy_view.today(now),
            "groups": policy_view.group_rows(current),
            "timelines": [timeline(model, now) for model in current.models.values()],
            "lapsing": policy_view.lapsing(current, now), "within_days": policy_view.LAPSING_WITHIN_DAYS,
            "orgs": orgs, "orgs_matched": matched, "org_query": query,
        })

    return [Route("/policy", policy, methods=["GET"])]
