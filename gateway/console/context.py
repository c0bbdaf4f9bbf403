"""What every console page is given: the gateway's state to read and change, and the
doors (`page`, `form`) its handlers go through (gateway/console/guards.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.console import guards
from gateway.console.auth import Authority
from gateway.live.control import ChangeControl
from gateway.live.state import LiveState, PolicyState
from gateway.metrics import Metrics


@dataclass
class Console:
    """What the console's pages read and change, and who is asking."""
    authority: Authority
    state: PolicyState
    live: LiveState
    control: ChangeControl
    metrics: Metrics
    audit_path: str | None
    ready_checks: Callable[[], list[str]]
    clock: Callable[[], float]
    extras: dict[str, Any] = field(default_factory=dict)  # collaborators a page adds (the overview's fleet view)

    def page(self, handler: guards.PageHandler) -> guards.Endpoint:
        """A GET handler `(request, actor) -> Response` for any signed-in actor."""
        return guards.page(self.authority, handler)

    def form(self, handler: guards.FormHandler | None = None, *, role: str = "operator") -> Any:
        """A POST handler `(request, actor, form) -> Response`, checked for origin, session,
        form token and role. As `@console.form` or `@console.form(role="viewer")`."""
        if handler is not None:
            return guards.form(self.authority, handler, role=role)
        return lambda inner: guards.form(self.authority, inner, role=role)
