"""The Changes page in headless Chromium against a real gateway: a suspension made in the
page denies real requests through the public listener, a lift proposed there and approved
by a second operator allows them again, refusals are shown in plain words, and a viewer
can change nothing, whatever they send."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from browser.conftest import NARROW, OPERATOR, SECOND_OPERATOR, VIEWER, make_console_stack, screenshot, sign_in
from e2e import SE_IP, US_IP, Stack
from test_admin import audit_record, chat

CHANGES = "/console/changes"
SHIPPED_POLICIES = Path(__file__).resolve().parents[2] / "policies"


def suspend(page: Any, *, models: list[str], places: str, reason: str) -> None:
    for model in models:
        page.get_by_role("checkbox", name=model, exact=True).check()
    page.get_by_label("Countries and regions").fill(places)
    page.get_by_label("Reason (recorded with the change)").fill(reason)
    page.get_by_role("button", name="Suspend now").click()


def only_suspension_made_live(stack: Stack) -> str:
    live = list(stack.service.live.overlay.suspensions)
    assert len(live) == 1, live
    return live[0]


def test_a_suspension_denies_at_once_and_a_lift_applies_once_a_second_operator_approves(
        page: Any, new_page: Any, console_stack: Stack) -> None:
    assert chat(console_stack, "org-public", "fable", SE_IP)[0] == 200
    sign_in(page, console_stack, OPERATOR, then=CHANGES)

    suspend(page, models=["fable"], places="se", reason="Export order for Sweden")
    page.wait_for_url("**/console/changes?done=suspended*")
    suspension_id = only_suspension_made_live(console_stack)
    assert page.get_by_role("status").inner_text() == f"Suspension {suspension_id} is in force now."
    # A real request from Sweden, decided by the gateway: denied; from the US still allowed.
    status, _, decision_id = chat(console_stack, "org-public", "fable", SE_IP)
    assert status == 451 and audit_record(console_stack, decision_id)["reasons"] == ["export_suspended"]
    assert chat(console_stack, "org-public", "fable", US_IP)[0] == 200
    row = page.locator(f"#suspension-{suspension_id}")
    assert "deny in SE" in row.inner_text()
    assert suspension_id in page.locator("#awaiting").inner_text()  # a tightening: awaiting a countersignature

    # Lifting grants access again: a proposal, not a change.
    page.get_by_label(f"Why lift {suspension_id}").fill("Order withdrawn")
    page.get_by_role("button", name=f"Propose lifting {suspension_id}").click()
    page.wait_for_url("**/console/changes?done=proposed*")
    proposal = page.locator("article.proposal")
    assert proposal.count() == 1
    proposal_id = proposal.get_attribute("id").removeprefix("proposal-")
    assert f"Proposal {proposal_id} is waiting" in page.get_by_role("status").inner_text()
    assert "Access delta: loosening" in proposal.inner_text()
    assert "grants fable" in proposal.locator(".delta").inner_text()
    assert "You proposed this change: another operator must approve it." in proposal.inner_text()
    assert chat(console_stack, "org-public", "fable", SE_IP)[0] == 451  # not lifted yet
    screenshot(page, "changes-proposal")

    # The proposer cannot approve their own: the change control refuses, and the page says so.
    page.get_by_role("button", name=f"Approve {proposal_id}").click()
    alert = page.get_by_role("alert")
    assert f"Approve of {proposal_id} refused" in alert.inner_text()
    assert "ops-alice proposed this change and cannot approve it: another operator must" in alert.inner_text()
    assert chat(console_stack, "org-public", "fable", SE_IP)[0] == 451

    carol = new_page()
    sign_in(carol, console_stack, SECOND_OPERATOR, then=CHANGES)
    carol.get_by_label(f"Approval note on {proposal_id} (optional)").fill("Checked with legal")
    carol.get_by_role("button", name=f"Approve {proposal_id}").click()
    carol.wait_for_url("**/console/changes?done=applied*")
    assert carol.get_by_role("status").inner_text() == f"Proposal {proposal_id} is approved and in force now."
    assert chat(console_stack, "org-public", "fable", SE_IP)[0] == 200
    history = carol.locator("#history").inner_text()
    assert "ops-carol" in history and "proposal.approve" in history and "suspension.lift" in history
    assert f"proposal {proposal_id}" in history and "approved by ops-carol" in history
    assert "No proposal is waiting." in carol.locator("#no-proposals").inner_text()
    screenshot(carol, "changes")


def test_an_unknown_place_is_named_and_nothing_changes(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR, then=CHANGES)
    suspend(page, models=["fable"], places="SE, XX, ua-43", reason="Test")
    alert = page.get_by_role("alert")
    assert "Not suspended" in alert.inner_text()
    assert "'XX' is not an ISO 3166-1 country code" in alert.inner_text()
    assert "'ua-43'" not in alert.inner_text()  # a region code in lower case is read as UA-43
    assert page.get_by_label("Countries and regions").input_value() == "SE, XX, ua-43"  # kept to correct
    assert not console_stack.service.live.overlay.suspensions


def test_a_region_is_suspended_by_its_iso_3166_2_code(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR, then=CHANGES)
    suspend(page, models=["small-2", "fable"], places="UA-43", reason="Crimea")
    page.wait_for_url("**/console/changes?done=suspended*")
    suspension_id = only_suspension_made_live(console_stack)
    document = console_stack.service.live.overlay.suspensions[suspension_id]
    assert document["deny_in"] == ["UA-43"] and sorted(document["models"]) == ["fable", "small-2"]


def test_a_viewer_sees_both_pages_without_forms_and_every_change_is_refused(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER, then=CHANGES)
    assert page.get_by_role("heading", level=1).inner_text() == "Changes"
    assert page.locator("main form").count() == 0
    assert "commerce-2026-11-03" in page.locator("#suspensions").inner_text()
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    crafted = {
        "/suspend": {"models": "fable", "places": "SE", "reason": "x"},
        "/lift": {"suspension": "commerce-2026-11-03", "reason": "x"},
        "/proposals/prop-1/approve": {}, "/proposals/prop-1/reject": {},
        "/countersign/chg-1": {},
        "/keys": {"org_id": "org-public", "sha256": "0" * 64, "reason": "x"},
        "/keys/key_000000000000/revoke": {},
    }
    for path, fields in crafted.items():
        answer = page.request.post(console_stack.admin_url + CHANGES + path, form={"csrf_token": token, **fields},
                                   headers={"origin": console_stack.admin_url}, max_redirects=0)
        assert answer.status == 403, path
        assert "The viewer role cannot make changes." in answer.text(), path
    assert not console_stack.service.live.overlay.suspensions and not console_stack.service.live.overlay.lifted
    assert console_stack.thread.run(console_stack.service.control.list()) == []
    page.goto(console_stack.admin_url + "/console/policy")
    assert page.get_by_role("heading", level=1).inner_text() == "Policy"
    assert page.locator("main form[method=post]").count() == 0


def test_an_api_key_drawn_in_the_browser_works_once_approved_and_stops_once_revoked(
        page: Any, new_page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR, then=CHANGES)
    page.get_by_label("Organization id").fill("org-public")
    page.get_by_label("Label (optional)").fill("ci runner")
    page.get_by_role("button", name="Draw a secret in this browser").click()
    secret = page.get_by_label("The key's secret").input_value()
    assert secret.startswith("fgw_") and len(secret) == 47
    assert page.get_by_label("SHA-256 of the secret").input_value() == hashlib.sha256(secret.encode()).hexdigest()
    page.get_by_label("Reason", exact=True).fill("CI")
    with page.expect_request("**/console/changes/keys") as sent:
        page.get_by_role("button", name="Propose the key").click()
    assert secret not in (sent.value.post_data or "")  # only its hash left the browser
    page.wait_for_url("**/console/changes?done=proposed*")
    proposal_id = page.locator("article.proposal").get_attribute("id").removeprefix("proposal-")
    assert "grants: API key key_" in page.locator("article.proposal .delta").inner_text()
    assert chat_with(console_stack, secret) == 401  # not before it is approved

    carol = new_page()
    sign_in(carol, console_stack, SECOND_OPERATOR, then=CHANGES)
    carol.get_by_role("button", name=f"Approve {proposal_id}").click()
    carol.wait_for_url("**/console/changes?done=applied*")
    row = carol.locator("#keys tr", has_text="ci runner")
    key_id = row.locator("th").inner_text()
    assert "in force" in row.inner_text()
    assert eventually(lambda: chat_with(console_stack, secret) == 200)

    carol.get_by_role("button", name=f"Revoke {key_id}").click()
    carol.wait_for_url("**/console/changes?done=revoked*")
    assert carol.get_by_role("status").inner_text() == f"API key {key_id} is revoked: it no longer works."
    assert "revoked" in carol.locator(f"#key-{key_id}").inner_text()
    assert carol.get_by_role("button", name=f"Revoke {key_id}").count() == 0
    assert eventually(lambda: chat_with(console_stack, secret) == 401)


def chat_with(stack: Stack, secret: str) -> int:
    """The status of one chat request through the public listener with this API key."""
    request = urllib.request.Request(stack.url + "/v1/chat/completions", method="POST", headers={
        "Authorization": f"Bearer {secret}", "Content-Type": "application/json", "X-Forwarded-For": US_IP},
        data=json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def eventually(check: Any, seconds: float = 5.0) -> bool:
    """A running gateway sees a key change within about a second."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_malformed_key_hash_is_refused_in_plain_words(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR, then=CHANGES)
    page.get_by_label("Organization id").fill("org-public")
    page.get_by_label("SHA-256 of the secret").fill("not-a-hash")
    page.get_by_role("button", name="Propose the key").click()
    assert "sha256: the SHA-256 of the secret, 64 lowercase hex digits" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Organization id").input_value() == "org-public"


def test_the_changes_page_is_usable_on_a_narrow_window_and_by_keyboard(new_page: Any, console_stack: Stack) -> None:
    narrow = new_page(NARROW)
    sign_in(narrow, console_stack, OPERATOR, then=CHANGES)
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Every control of a form is labelled (a name a screen reader reads out).
    unlabelled = narrow.evaluate("""[...document.querySelectorAll('main input:not([type=hidden]), main select')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)""")
    assert unlabelled == []
    narrow.keyboard.press("Tab")  # the skip link first, then into the page
    assert narrow.evaluate("document.activeElement.textContent") == "Skip to content"
    screenshot(narrow, "changes-narrow")


def test_a_proposal_page_proves_each_assertion_again(page: Any, new_page: Any, tmp_path: Path) -> None:
    """On the shipped policies (with assertions.yaml): a proposal's own page proves every
    assertion over the policy it would put in force, and names each one's result."""
    stack = make_console_stack(tmp_path, policy_dir=SHIPPED_POLICIES, orgs=["org-partner-us"])
    try:
        sign_in(page, stack, OPERATOR, then=CHANGES)
        suspend(page, models=["example-frontier-1"], places="JP", reason="Order")
        page.wait_for_url("**/console/changes?done=suspended*")
        suspension_id = only_suspension_made_live(stack)
        page.get_by_role("button", name=f"Propose lifting {suspension_id}").click()
        page.wait_for_url("**/console/changes?done=proposed*")
        page.locator("article.proposal h3 a").click()
        assert page.get_by_role("heading", level=1).inner_text().startswith("Proposal prop-")
        outcomes = page.locator("#assertion-outcomes")
        names = [stack.service.state.policy.assertions[i].name for i in range(5)]
        for name in names:
            assert outcomes.get_by_role("row", name=name).get_by_text("holds", exact=True).count() == 1
        screenshot(page, "changes-proposal-assertions")
        # A viewer reads the same page, without the buttons.
        viewer = new_page()
        sign_in(viewer, stack, VIEWER, then=page.url.removeprefix(stack.admin_url))
        assert viewer.locator("#assertion-outcomes").get_by_text("holds", exact=True).count() == len(names)
        assert viewer.locator("main form").count() == 0
    finally:
        stack.close()
