"""Decisions: the newest audit records, filtered and kept live; one decision found by its id
and explained as `gateway audit explain` explains it (gateway/policy/explain.py), with the legal
source of each rule that matched.

Audit files are read newest first through gateway.admin.app.matching_records (the admin API's
GET /admin/decisions reads the same way), off the event loop, and never past the newest
SCAN_BYTES: a page answers in bounded time however large the file has grown.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.admin.app import matching_records
from gateway.console import decisions_model as model
from gateway.console.context import Console
from gateway.console.render import ROOT, render
from gateway.console.sessions import Actor

SHOWN = 100  # rows on the page
SCAN_BYTES = 256 * 1024 * 1024  # of each audit file, read at most for one page: ~3x10^5 records


def routes(console: Console) -> list[Route]:
    @console.page
    async def decisions(request: Request, actor: Actor) -> Response:
        return render(request, "decisions.html", {"title": "Decisions", **await tail(console, request)})

    @console.page
    async def rows(request: Request, actor: Actor) -> Response:
        """The table's rows alone, for the page's live refresh (static/console.js)."""
        return render(request, "decision_rows.html", await tail(console, request))

    @console.page
    async def find(request: Request, actor: Actor) -> Response:
        wanted = (request.query_params.get("id") or "").strip().lower()
        if not model.DECISION_ID.match(wanted):
            return render(request, "decision.html", {"title": "Decision", "decision_id": wanted[:64], "record": None,
                                                     "problem": "A decision id is 32 hexadecimal digits, as in the "
                                                                "X-Gateway-Decision-Id header."}, status=400)
        return RedirectResponse(f"{ROOT}/decisions/{wanted}", status_code=303)

    @console.page
    async def decision(request: Request, actor: Actor) -> Response:
        wanted = request.path_params["id"]
        if not model.DECISION_ID.match(wanted):
            return render(request, "decision.html", {"title": "Decision", "decision_id": wanted[:64], "record": None,
                                                     "problem": "That is not a decision id."}, status=404)
        record = await asyncio.to_thread(find_record, console, wanted)
        if record is None:
            return render(request, "decision.html", {
                "title": "Decision", "decision_id": wanted, "record": None,
                "problem": f"Not in the newest {SCAN_BYTES >> 20} MiB of the audit logs of this replica "
                           "(older records: gateway audit explain on the rotated files)."}, status=404)
        return render(request, "decision.html", {
            "title": f"Decision {wanted}", "decision_id": wanted, "record": record, "row": model.row(record),
            "explained": model.explained(console.state.policy, record), "problem": None})

    return [Route("/decisions", decisions, methods=["GET"]), Route("/decisions/rows", rows, methods=["GET"]),
            Route("/decisions/find", find, methods=["GET"]), Route("/decisions/{id}", decision, methods=["GET"])]


async def tail(console: Console, request: Request) -> dict[str, Any]:
    filters, problems = model.filters_from(request.query_params)
    records = [] if problems else await asyncio.to_thread(newest, console.audit_path, filters)
    return {"filters": filters, "problems": problems, "rows": [model.row(r) for r in records],
            "reasons": model.REASONS, "shown": SHOWN, "live": request.query_params.get("live") != "off"}


def newest(path: str | None, filters: model.Filters) -> list[dict[str, Any]]:
    matching = matching_records(path, filters.audit_fields(), reason=filters.reason, scan_bytes=SCAN_BYTES)
    return list(itertools.islice(matching, SHOWN))


def find_record(console: Console, decision_id: str) -> dict[str, Any] | None:
    """The record of `decision_id` in the audit log, else in the unauthenticated requests' log."""
    for path in (console.audit_path, console.unauthenticated_audit_path):
        found = next(matching_records(path, {"decision_id": decision_id}, scan_bytes=SCAN_BYTES), None)
        if found is not None:
            return found
    return None
