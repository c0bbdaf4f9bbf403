"""Decisions: the audit records, newest first, filtered; one decision explained."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.console.context import Console
from gateway.console.render import render
from gateway.console.sessions import Actor


def routes(console: Console) -> list[Route]:
    @console.page
    async def decisions(request: Request, actor: Actor) -> Response:
        return render(request, "decisions.html", {"title": "Decisions"})

    return [Route("/decisions", decisions, methods=["GET"])]
