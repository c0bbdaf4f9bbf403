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

from gateway.request.clientip import TrustedProxies
from gateway.config import AdminToken
from gateway.console.forms import Form, read_form
from gateway.console.render import ROOT, render
from gateway.console.sessions import COOKIE, Actor, Session, SessionStore, new_session_id, token_by_secret, token_for
from gateway.identity.authenticator import is_jwt
from gateway.identity.jwt import JwtVerifier
from gateway.identity.principal import CredentialError
from gateway.metrics import Metrics

log = logging.getLogger("gateway.console")
MAX_SIGN_IN_BODY = 16384  # a JWT may be several kilobytes
ROLES = ("viewer", "operator")


@dataclass
class Authority:
    """Everything that decides who a console request comes from."""
    tokens: list[AdminToken]
    sessions: SessionStore
    session_ttl_s: float
    trusted_proxies: TrustedProxies
    metrics: Metrics
    clock: Callable[[], float]
    jwt: JwtVerifier | None = None  # identity.jwt's verifier, for a JWT sign-in
    jwt_role_claim: str | None = None  # console.jwt_role_claim: None, no JWT sign-in

    async def actor(self, request: Request) -> Actor | None:
        """The signed-in actor, or None: no cookie, no such session, expired, or its token
        no longer configured. A store that cannot be reached raises (the caller fails closed)."""
        session_id = request.cookies.get(COOKIE)
        if not session_id or len(session_id) > 128:
            return None
        session = await self.sessions.get(session_id)
        if session is None or not session.alive(self.clock()):
            return None
        if session.subject is not None:  # a JWT sign-in: valid while JWT sign-in is configured
            if self.jwt_role_claim is None or session.role not in ROLES:
                return None
            return Actor(f"jwt:{session.subject}", session.role, session_id)
        token = token_for(self.tokens, session)
        return Actor(token.name, token.role, session_id) if token is not None else None

    def over_tls(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https" and peer is not None and self.trusted_proxies.contains(peer)

    async def sign_in(self, request: Request, secret: str) -> Response | None:
        """A session for `secret` (an admin token, or a JWT whose role claim names an admin role)
        and a redirect into the console; None when it is neither."""
        now = self.clock()
        found = await self.jwt_session(secret.strip(), now) if is_jwt(secret.strip()) else None
        token = token_by_secret(self.tokens, secret) if secret and found is None else None
        if token is not None:
            found = token.name, Session(token.sha256, now, now + self.session_ttl_s)
        if found is None:
            self.metrics.child(self.metrics.admin_auth_failures, "invalid").inc()
            client = request.client.host if request.client else None
            log.warning("console sign-in refused from %s", client, extra={"client_ip": client, "reason": "invalid"})
            return None
        name, session = found
        session_id = new_session_id()
        await self.sessions.put(session_id, session)
        log.info("console sign-in by %s", name, extra={"actor": name, "action": "console.sign_in"})
        answer = RedirectResponse(local_target(request.query_params.get("next")), status_code=303)
        answer.set_cookie(COOKIE, session_id, max_age=int(self.session_ttl_s), path=ROOT, httponly=True,
                          samesite="strict", secure=self.over_tls(request))
        return answer

    async def jwt_session(self, token: str, now: float) -> tuple[str, Session] | None:
        """(actor name, session) for a JWT of identity.jwt whose role claim is an admin role;
        the session ends with the JWT at the latest. None for any other token."""
        if self.jwt is None or self.jwt_role_claim is None:
            return None
        try:
            principal, claims, valid_until = await self.jwt.verify_with_claims(token)
        except CredentialError:
            return None
        role = claims.get(self.jwt_role_claim)
        if role not in ROLES:
            return None
        expires = min(now + self.session_ttl_s, valid_until)
        return f"jwt:{principal.subject}", Session("", now, expires, principal.subject, role)

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


def sign_in_page(request: Request, *, message: str | None = None, status: int = 200, jwt: bool = False) -> Response:
    """`jwt`: a JWT with an admin role claim also signs in (console.jwt_role_claim)."""
    return render(request, "sign_in.html", {"title": "Sign in", "message": message, "jwt": jwt,
                                            "next": local_target(request.query_params.get("next"))}, status=status)


async def sign_in_form(request: Request) -> Form | None:
    """The sign-in form's fields; None when it is too large or not a form."""
    return await read_form(request, MAX_SIGN_IN_BODY)

