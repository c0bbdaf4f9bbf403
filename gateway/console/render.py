"""One way to answer with a page: `render(request, template, context)`. Every page gets the
signed-in actor, the form token and the navigation in its context, and the same
security headers (a strict Content-Security-Policy: our own scripts and styles only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from gateway.console import csrf
from gateway.console.sessions import Actor

ROOT = "/console"
TEMPLATES = Path(__file__).parent / "templates"
# The navigation, in order: (label, path under ROOT). A page module's routes fill these.
NAV = (("Overview", "/"), ("Decisions", "/decisions"), ("Policy", "/policy"), ("Changes", "/changes"))
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def actor_of(request: Request) -> Actor | None:
    return getattr(request.state, "actor", None)


def render(request: Request, template: str, context: dict[str, Any] | None = None, *, status: int = 200,
           headers: dict[str, str] | None = None) -> Response:
    """The page `template` (under templates/) with `context`, plus what every page needs:
    `actor` (None on the sign-in page), `csrf_token`, `root`, `nav` and `current` (the path
    under ROOT, for the navigation's aria-current)."""
    actor = actor_of(request)
    current = request.url.path[len(ROOT):] or "/"
    page = {"actor": actor, "csrf_token": csrf.token(actor.session_id) if actor else "", "root": ROOT, "nav": NAV,
            "current": current, "csrf_field": csrf.FIELD}
    html = environment.get_template(template).render(page | (context or {}))
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS | (headers or {}))


def refusal(request: Request, status: int, title: str, message: str) -> Response:
    """A refused request as a page (never a stack trace)."""
    return render(request, "refused.html", {"title": title, "message": message}, status=status)
