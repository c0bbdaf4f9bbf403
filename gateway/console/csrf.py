"""Cross-site request forgery: every console form carries a per-session token, and a
POST from another origin is refused before its token is even looked at.

The token is derived from the session id (HMAC-SHA256), so it needs no storage, differs
per session, ends with the session, and reveals nothing of the cookie it is bound to.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

FIELD = "csrf_token"
SAME_SITE_FETCHES = {"same-origin", "none"}  # Sec-Fetch-Site values a form on our own page sends


def token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"frontier-gateway console csrf", hashlib.sha256).hexdigest()


def valid(session_id: str, submitted: object) -> bool:
    return isinstance(submitted, str) and hmac.compare_digest(token(session_id), submitted)


def same_origin(headers: dict[str, str] | object, host: str | None) -> bool:
    """Whether a request's Origin (and Sec-Fetch-Site, where the browser sends it) says it
    came from a page of this host. `headers` is a case-insensitive mapping."""
    get = headers.get  # type: ignore[attr-defined]
    fetch_site = get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in SAME_SITE_FETCHES:
        return False
    origin = get("origin")
    if origin is None:
        return True  # older browsers omit it on same-origin posts; the form token still has to match
    if not host:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
