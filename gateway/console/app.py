"""The console's Starlette app, mounted at /console on the admin listener (never the public
one). Each page module under gateway/console/pages/ has `routes(console) -> list[Route]`;
PAGES lists them, so adding a page is one module and one line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.console import csrf, guards
from gateway.console.auth import sign_in_form, sign_in_page
from gateway.console.pages import changes, decisions, overview, policy
from gateway.console.context import Console
from gateway.console.render import refusal
from gateway.console.sessions import Actor

STATIC = Path(__file__).parent / "static"
PAGES = (overview, decisions, policy, changes)


def create_console_app(console: Console) -> Starlette:
    routes: list[BaseRoute] = [*session_routes(console), Mount("/static", StaticFiles(directory=STATIC), name="static")]
    for module in PAGES:
        routes.extend(module.routes(console))
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        return refusal(request, 404, "Not found", "There is no such page in the console.")

    app.add_exception_handler(404, not_found)
    return app


def session_routes(console: Console) -> list[Route]:
    authority = console.authority
    jwt = authority.jwt is not None and authority.jwt_role_claim is not None

    async def show_sign_in(request: Request) -> Response:
        return sign_in_page(request, jwt=jwt)

    async def sign_in(request: Request) -> Response:
        if not csrf.same_origin(request.headers, request.headers.get("host")):
            return refusal(request, 403, "Refused", "This form was sent from another site.")
        fields = await sign_in_form(request)
        if fields is None:
            return sign_in_page(request, message="The sign-in form was not understood.", status=400, jwt=jwt)
        try:
            answer = await authority.sign_in(request, fields.get("token", ""))
        except Exception as failure:  # noqa: BLE001 - the session store
            return guards.unavailable(request, failure)
        return answer or sign_in_page(request, message="That token is not an admin token here.", status=401, jwt=jwt)

    @console.form(role="viewer")
    async def sign_out(request: Request, actor: Actor, form: Any) -> Response:
        return await authority.sign_out(request, actor)

    return [Route("/sign-in", show_sign_in, methods=["GET"]), Route("/sign-in", sign_in, methods=["POST"]),
            Route("/sign-out", sign_out, methods=["POST"])]

