"""Changes: proposals to review (approve, reject, withdraw), the change log with its
actors, suspensions (suspend at once, propose a lift) and API keys (create as a
proposal, revoke at once).

Every change goes through the gateway's change control (`ChangeControl`), exactly as
the admin API's do: a tightening applies at once and awaits a countersignature, a
loosening becomes a proposal another operator approves. A refusal is shown in the page
in the change control's own words; a change made redirects back (post/redirect/get).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.admin.app import suspension_item
from gateway.console import changes_view as view
from gateway.console.context import Console
from gateway.console.forms import Form
from gateway.console.render import ROOT, refusal, render
from gateway.console.sessions import Actor
from gateway.live.overlay import ChangeError
from gateway.live.proposals import REJECTED, WITHDRAWN
from gateway.policy import prove
from gateway.policy.issues import PolicyError

log = logging.getLogger("gateway.console")
HISTORY = 50
RECENT_PROPOSALS = 20
MAX_KEYS = 500
CLOSING = {"reject": REJECTED, "withdraw": WITHDRAWN}
# What a redirect after a change may say: fixed words, and an id checked by view.valid_id.
DONE = {
    "suspended": "Suspension {id} is in force now.",
    "proposed": "Proposal {id} is waiting for another operator's approval.",
    "approved": "You approved proposal {id}; it needs more approvals before it applies.",
    "applied": "Proposal {id} is approved and in force now.",
    "rejected": "Proposal {id} is rejected.",
    "withdrawn": "Proposal {id} is withdrawn.",
    "countersigned": "Change {id} is countersigned.",
    "revoked": "API key {id} is revoked: it no longer works.",
    "lifted": "Suspension {id} is lifted.",
    "key-created": "API key {id} is created and works now.",
}


def routes(console: Console) -> list[Route]:
    control = console.control

    @console.page
    async def changes(request: Request, actor: Actor) -> Response:
        return await page(console, request)

    @console.page
    async def proposal(request: Request, actor: Actor) -> Response:
        """One proposal, with each assertion proved again over the policy it would put in force."""
        proposal_id = request.path_params["id"]
        found = await attempt(lambda: control.get(proposal_id)) if view.valid_id(proposal_id) else None
        if not isinstance(found, dict):
            return refusal(request, 404, "Not found", "There is no such proposal.")
        shown = view.proposal_view(found)
        return render(request, "proposal.html", {"title": f"Proposal {shown.id}", "p": shown,
                                                 "outcomes": await outcomes(console, found) if shown.open else None})

    @console.form(action="suspension.create")
    async def suspend(request: Request, actor: Actor, form: Form) -> Response:
        policy = console.state.policy
        if policy is None:
            return await page(console, request, refused("Not suspended", ["No valid policy is loaded."], 503))
        draft = view.suspension(form, form.getlist, policy)
        if draft.problems:
            return await page(console, request, refused("Not suspended", draft.problems), filled=form, which="suspend")
        body = draft.body
        made = await attempt(lambda: control.submit("suspension.create", None, body, actor.name,
                                                    reason=body["reason"], reference=body.get("reference")))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled("Not suspended"), filled=form, which="suspend")
        return done(request, actor, "suspension.create", *outcome(made, "suspended"))

    @console.form(action="suspension.lift")
    async def lift(request: Request, actor: Actor, form: Form) -> Response:
        target = form.get("suspension")
        if not view.valid_id(target):
            return await page(console, request, refused("Not lifted", ["Choose a suspension to lift."]))
        made = await attempt(lambda: control.submit("suspension.lift", target, {}, actor.name,
                                                    reason=view.reason_of(form)))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled(f"Lift of {target} refused"))
        return done(request, actor, "suspension.lift", *outcome(made, "lifted", target))

    @console.form(action="proposal.{verb}")
    async def decide_proposal(request: Request, actor: Actor, form: Form) -> Response:
        verb, proposal_id = request.path_params["verb"], request.path_params["id"]
        if verb not in ("approve", *CLOSING) or not view.valid_id(proposal_id):
            return await page(console, request, refused("Refused", ["There is no such action on a proposal."], 404))
        reason = view.reason_of(form)
        if verb == "approve":
            made = await attempt(lambda: control.approve(proposal_id, actor.name, reason))
        else:
            made = await attempt(lambda: control.close(proposal_id, CLOSING[verb], actor.name, reason))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled(f"{verb.capitalize()} of {proposal_id} refused"))
        result = {"approve": "applied" if made.get("state") == "applied" else "approved",
                  "reject": "rejected", "withdraw": "withdrawn"}[verb]
        return done(request, actor, f"proposal.{verb}", result, proposal_id)

    @console.form(action="change.countersign")
    async def countersign(request: Request, actor: Actor, form: Form) -> Response:
        change_id = request.path_params["id"]
        made = await attempt(lambda: control.countersign(change_id, actor.name, view.reason_of(form)))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled(f"Countersignature of {change_id} refused"))
        return done(request, actor, "change.countersign", "countersigned", change_id)

    @console.form(action="apikey.create")
    async def create_key(request: Request, actor: Actor, form: Form) -> Response:
        draft = view.api_key(form)
        if draft.problems:
            return await page(console, request, refused("Key not created", draft.problems), filled=form, which="key")
        body = draft.body
        made = await attempt(lambda: control.submit("apikey.create", None, body, actor.name, reason=body["reason"]))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled("Key not created"), filled=form, which="key")
        return done(request, actor, "apikey.create", *outcome(made, "key-created", made[1].get("key_id")))

    @console.form(action="apikey.revoke")
    async def revoke_key(request: Request, actor: Actor, form: Form) -> Response:
        key_id = request.path_params["id"]
        made = await attempt(lambda: control.submit("apikey.revoke", key_id, {}, actor.name, reason=view.reason_of(form)))
        if isinstance(made, Refusal):
            return await page(console, request, made.titled(f"Revocation of {key_id} refused"))
        return done(request, actor, "apikey.revoke", *outcome(made, "revoked", key_id))

    return [Route("/changes", changes, methods=["GET"]),
            Route("/changes/proposals/{id}", proposal, methods=["GET"]),
            Route("/changes/suspend", suspend, methods=["POST"]),
            Route("/changes/lift", lift, methods=["POST"]),
            Route("/changes/proposals/{id}/{verb}", decide_proposal, methods=["POST"]),
            Route("/changes/countersign/{id}", countersign, methods=["POST"]),
            Route("/changes/keys", create_key, methods=["POST"]),
            Route("/changes/keys/{id}/revoke", revoke_key, methods=["POST"])]


class Refusal:
    """A change the change control refused, with its words, to show in the page."""

    def __init__(self, problems: list[str], status: int, title: str = "Refused") -> None:
        self.problems, self.status, self.title = problems, status, title

    def titled(self, title: str) -> Refusal:
        return Refusal(self.problems, self.status, title)


def refused(title: str, problems: list[str], status: int = 422) -> Refusal:
    return Refusal(problems, status, title)


async def attempt(change: Any) -> Any:
    """The change's answer, or its refusal (ChangeError, PolicyError); any other failure
    propagates, and the console's form door answers 503 "not confirmed"."""
    try:
        return await change()
    except ChangeError as refusal:
        return Refusal(refusal.problems, refusal.status)
    except PolicyError as refusal:
        return Refusal([str(refusal)], 422)


async def outcomes(console: Console, proposal: dict[str, Any]) -> list[dict[str, Any]] | str:
    """Each assertion proved over the policy the open proposal would put in force now, or
    why it cannot be (the change control refuses it: a broken assertion is named there)."""
    made = await attempt(lambda: console.control.prepare(proposal["kind"], proposal["target"], proposal["body"]))
    if isinstance(made, Refusal):
        return "It would be refused now: " + "; ".join(made.problems)
    proved = await asyncio.to_thread(prove.prove, made.after, datetime.now(UTC))
    return [{"name": o.assertion.name, "kind": o.assertion.kind, "description": o.assertion.description,
             "state": o.state, "counterexample": prove.describe(o.counterexample) if o.counterexample else None}
            for o in proved]


def outcome(made: tuple[int, dict[str, Any]], applied: str, target: str | None = None) -> tuple[str, str | None]:
    """("proposed", the proposal's id) for a loosening, else (`applied`, what it changed)."""
    status, answer = made
    if status == 202:
        return "proposed", answer.get("id")
    return applied, target or answer.get("target")


def done(request: Request, actor: Actor, action: str, result: str, target: str | None) -> Response:
    request.state.result = "proposed" if result == "proposed" else "ok"  # as the admin API counts it
    log.info("console %s by %s: %s %s", action, actor.name, result, target or "",
             extra={"actor": actor.name, "action": action, "target": target, "result": result})
    where = f"{ROOT}/changes?done={result}"
    if view.valid_id(target):
        where += f"&id={quote(str(target))}"
    return RedirectResponse(where, status_code=303)


async def page(console: Console, request: Request, refusal: Refusal | None = None, *,
               filled: Form | None = None, which: str = "") -> Response:
    """The Changes page, with a refusal shown at its top (and the form's values kept)."""
    policy, control = console.state.policy, console.control
    proposals = [view.proposal_view(p) for p in await control.list()]
    keys = await asyncio.to_thread(control.keys.list) if control.keys is not None else None
    done_code, done_id = request.query_params.get("done"), request.query_params.get("id")
    notice = None
    if refusal is None and done_code in DONE:
        notice = DONE[done_code].format(id=done_id if view.valid_id(done_id) else "")
    return render(request, "changes.html", {
        "title": "Changes", "refusal": refusal, "notice": notice,
        "open_proposals": [p for p in proposals if p.open],
        "closed_proposals": [p for p in proposals if not p.open][:RECENT_PROPOSALS],
        "history": [view.history_row(r) for r in await console.live.changes(HISTORY)],
        "awaiting": await control.awaiting(),
        "suspensions": [suspension_item(s, console.live) for s in (policy.suspensions if policy else ())],
        "models": sorted(policy.models) if policy else [],
        "groups": sorted(policy.groups) if policy else [],
        "keys": None if keys is None else sorted(keys, key=lambda k: (k.revoked_at is not None, k.org_id, k.key_id))[:MAX_KEYS],
        "approvals_needed": control.config.approvals,
        "filled": _filled(filled, which), "assertions": len(policy.assertions) if policy else 0,
    }, status=refusal.status if refusal else 200)


FILLED = ("places", "scope", "reason", "reference", "until", "org_id", "label", "sha256")


def _filled(form: Form | None, which: str) -> dict[str, Any]:
    """What the person typed in form `which`, put back in it above the refusal."""
    if form is None:
        return dict.fromkeys(FILLED, "") | {"scope": "deny_in", "models": [], "groups": [], "which": ""}
    return {name: str(form.get(name) or "") for name in FILLED} | {
        "models": form.getlist("models"), "groups": form.getlist("groups"), "which": which}
