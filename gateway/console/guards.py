"""The two doors every console handler goes through.

- `page`: a GET for a signed-in actor of any role; otherwise to the sign-in page.
- `form`: a POST from a form of our own: same origin, a live session, the session's form
  token, a role allowed to make it (the server refuses a viewer, whatever the page
  showed), and a bounded body. The handler gets the parsed form.

Any failure of the shared state refuses the request (503) rather than guessing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gateway.console import csrf
from gateway.console.auth import Authority, to_sign_in
from gateway.console.forms import Form, read_form
from gateway.console.render import refusal
from gateway.console.sessions import Actor

log = logging.getLogger("gateway.console")
MAX_FORM_BODY = 256 * 1024
PageHandler = Callable[[Request, Actor], Awaitable[Response]]
FormHandler = Callable[[Request, Actor, Form], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def page(authority: Authority, handler: PageHandler) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            actor = await authority.actor(request)
        except Exception as failure:  # noqa: BLE001 - the session store: fail closed
            return unavailable(request, failure)
        if actor is None:
            return to_sign_in(request)
        request.state.actor = actor
        try:
            return await handler(request, actor)
        except Exception as failure:  # noqa: BLE001 - a page never shows a traceback
            return unavailable(request, failure)
    return endpoint


def form(authority: Authority, handler: FormHandler, *, role: str = "operator") -> Endpoint:
    """`role`: "operator" for a change (the default), "viewer" for a form any signed-in
    actor may send (sign-out, a search that must be a POST)."""
    async def endpoint(request: Request) -> Response:
        if not csrf.same_origin(request.headers, request.headers.get("host")):
            return refusal(request, 403, "Refused", "This form was sent from another site.")
        try:
            actor = await authority.actor(request)
        except Exception as failure:  # noqa: BLE001
            return unavailable(request, failure)
        if actor is None:
            return refusal(request, 401, "Signed out", "Your session has ended. Sign in again and resend the form.")
        request.state.actor = actor
        fields = await read_form(request, MAX_FORM_BODY)
        if fields is None:
            return refusal(request, 400, "Refused", "The form was not understood (too large, or not a form).")
        if not csrf.valid(actor.session_id, fields.get(csrf.FIELD)):
            log.warning("console form without a valid token from %s", actor.name,
                        extra={"actor": actor.name, "path": request.url.path})
            return refusal(request, 403, "Refused", "The form's token is missing or stale. Reload the page and try again.")
        if role == "operator" and not actor.can_change:
            return refusal(request, 403, "Not allowed", f"The {actor.role} role cannot make changes.")
        try:
            return await handler(request, actor, fields)
        except Exception as failure:  # noqa: BLE001
            return unavailable(request, failure, NOT_CONFIRMED)
    return endpoint


NOT_READ = "The gateway's state could not be read just now. Try again in a moment."
NOT_CONFIRMED = ("The gateway's state could not be reached; the change was not confirmed. "
                 "Check the Changes page before sending it again.")


def unavailable(request: Request, failure: Exception, message: str = NOT_READ) -> Response:
    log.warning("console %s %s failed: %r", request.method, request.url.path, failure)
    return refusal(request, 503, "Unavailable", message)
