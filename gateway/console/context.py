"""What every console page is given: the gateway's state to read and change, and the
doors (`page`, `form`) its handlers go through (gateway/console/guards.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.admin.app import action_of, result_of
from gateway.request.activity import Activity
from gateway.console import guards
from gateway.console.auth import Authority
from gateway.geo.files import LiveGeo
from gateway.live.heartbeat import Heartbeats
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
    extras: dict[str, Any] = field(default_factory=dict)  # collaborators a page may add
    # The overview's: this replica's id, its last hour, the fleet's heartbeats (None: embedded), the GeoIP.
    replica: str = "gateway"
    unauthenticated_audit_path: str | None = None
    activity: Activity = field(default_factory=Activity)
    heartbeats: Heartbeats | None = None
    geo: Callable[[], LiveGeo | None] = lambda: None
    geoip_max_age_days: float = 30.0

    def page(self, handler: guards.PageHandler) -> guards.Endpoint:
        """A GET handler `(request, actor) -> Response` for any signed-in actor."""
        return guards.page(self.authority, handler)

    def form(self, handler: guards.FormHandler | None = None, *, role: str = "operator",
             action: str | None = None) -> Any:
        """A POST handler `(request, actor, form) -> Response`, checked for origin, session,
        form token and role. As `@console.form`, `@console.form(role="viewer")`, or for a
        change `@console.form(action="suspension.create")`: counted in
        gateway_admin_changes_total as the admin API counts the same change."""
        def door(inner: guards.FormHandler) -> guards.Endpoint:
            endpoint = guards.form(self.authority, inner, role=role)
            return endpoint if action is None else self._counted(endpoint, action)
        return door(handler) if handler is not None else door

    def _counted(self, endpoint: guards.Endpoint, action: str) -> guards.Endpoint:
        async def counted(request: Request) -> Response:
            answer = await endpoint(request)
            # A change's handler names its result ("proposed" for a loosening); a refusal has its status.
            result = getattr(request.state, "result", None) or result_of(answer.status_code)
            self.metrics.child(self.metrics.admin_changes, action_of(action, request), result).inc()
            return answer
        return counted
