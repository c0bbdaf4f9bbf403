"""Sign-in, sign-out and who is asking: an admin token, once, for a session cookie.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends
it) and Secure when the page came over TLS, directly or through a trusted proxy that
says so (X-Forwarded-Proto), so it never travels in clear text after a TLS sign-in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.clientip import TrustedProxies
from gateway.config import AdminToken
from gateway.console.forms import Form, read_form
from gateway.console.render import ROOT, render
from gateway.console.sessions import COOKIE, Actor, Session, SessionStore, new_session_id, token_by_secret, token_for
from gateway.metrics import Metrics

log = logging.getLogger("gateway.console")
MAX_SIGN_IN_BODY = 4096


@dataclass
class Authority:
    """Everything that decides who a console request comes from."""
    tokens: list[AdminToken]
    sessions: SessionStore
    session_ttl_s: float
    trusted_proxies: TrustedProxies
    metrics: Metrics
    clock: Callable[[], float]

    async def actor(self, request: Request) -> Actor | None:
        """The signed-in actor, or None: no cookie, no such session, expired, or its token
        no longer configured. A store that cannot be reached raises (the caller fails closed)."""
        session_id = request.cookies.get(COOKIE)
        if not session_id or len(session_id) > 128:
            return None
        session = await self.sessions.get(session_id)
        if session is None or not session.alive(self.clock()):
            return None
        token = token_for(self.tokens, session)
        return Actor(token.name, token.role, session_id) if token is not None else None

    def over_tls(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https" and peer is not None and self.trusted_proxies.contains(peer)

    async def sign_in(self, request: Request, secret: str) -> Response | None:
        """A session for `secret`'s token and a redirect into the console; None when no token matches."""
        token = token_by_secret(self.tokens, secret) if secret else None
        if token is None:
            self.metrics.child(self.metrics.admin_auth_failures, "invalid").inc()
            client = request.client.host if request.client else None
            log.warning("console sign-in refused from %s", client, extra={"client_ip": client, "reason": "invalid"})
            return None
        now = self.clock()
        session_id = new_session_id()
        await self.sessions.put(session_id, Session(token.sha256, now, now + self.session_ttl_s))
        log.info("console sign-in by %s", token.name, extra={"actor": token.name, "action": "console.sign_in"})
        answer = RedirectResponse(local_target(request.query_params.get("next")), status_code=303)
        answer.set_cookie(COOKIE, session_id, max_age=int(self.session_ttl_s), path=ROOT, httponly=True,
                          samesite="strict", secure=self.over_tls(request))
        return answer

    async def sign_out(self, request: Request, actor: Actor) -> Response:
        await self.sessions.delete(actor.session_id)
        log.info("console sign-out by %s", actor.name, extra={"actor": actor.name, "action": "console.sign_out"})
        answer = RedirectResponse(f"{ROOT}/sign-in", status_code=303)
        answer.delete_cookie(COOKIE, path=ROOT, httponly=True, samesite="strict", secure=self.over_tls(request))
        return answer


# A console path and query of plain characters: no scheme, host, backslash, dot segment or control character.
LOCAL_TARGET = re.compile(r"^/console/[A-Za-z0-9_/-]*(\?[A-Za-z0-9_.=&%+-]*)?$")


def local_target(target: str | None) -> str:
    """Where to go after signing in: a console page only (never another site, nor the admin API)."""
    if target and LOCAL_TARGET.match(target) and "//" not in target:
        return target
    return ROOT + "/"


def to_sign_in(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{ROOT}/sign-in?next={quote(here, safe='')}", status_code=303)


def sign_in_page(request: Request, *, message: str | None = None, status: int = 200) -> Response:
    return render(request, "sign_in.html", {"title": "Sign in", "message": message,
                                            "next": local_target(request.query_params.get("next"))}, status=status)


async def sign_in_form(request: Request) -> Form | None:
    """The sign-in form's fields; None when it is too large or not a form."""
    return await read_form(request, MAX_SIGN_IN_BODY)

