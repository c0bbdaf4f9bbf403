"""The Decisions page in a real browser: the live tail and its filters, a decision found by
its id, and its explanation with the legal source of the rule that matched."""

from __future__ import annotations

from typing import Any

from browser.conftest import NARROW, VIEWER, screenshot, sign_in
from e2e import CN_IP, SE_IP, Stack
from test_admin import audit_record, chat


def test_find_a_decision_by_id_and_read_its_explanation(page: Any, console_stack: Stack) -> None:
    status, _, decision_id = chat(console_stack, "org-acme", "frontier-5.6", CN_IP)
    assert status == 451
    audit_record(console_stack, decision_id)  # in the audit file
    sign_in(page, console_stack, VIEWER, then="/console/decisions")
    page.get_by_label("Decision id").fill(decision_id)
    page.get_by_role("button", name="Find").click()
    page.wait_for_url(f"**/console/decisions/{decision_id}")
    explanation = page.locator("#explanation").inner_text()
    assert f"Recorded decision {decision_id}" in explanation
    assert "Decision: DENY (451)" in explanation and "Rules that matched:" in explanation
    sources = page.locator("#sources").inner_text()
    assert "CN" in sources and "15 CFR 740" in sources  # the reference policy's source for ear_d5
    screenshot(page, "decision")


def test_an_unknown_or_malformed_decision_id_is_said_so(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER, then="/console/decisions")
    page.get_by_label("Decision id").fill("not-an-id")
    page.get_by_role("button", name="Find").click()
    assert "32 hexadecimal digits" in page.get_by_role("alert").inner_text()
    page.goto(console_stack.admin_url + "/console/decisions/" + "0" * 32)
    assert "Not in the newest" in page.get_by_role("alert").inner_text()


def test_the_tail_filters_and_stays_live(page: Any, console_stack: Stack) -> None:
    _, _, denied = chat(console_stack, "org-acme", "frontier-5.6", CN_IP)
    reason = audit_record(console_stack, denied)["reasons"][0]
    chat(console_stack, "org-acme", "small-2", SE_IP)
    sign_in(page, console_stack, VIEWER, then="/console/decisions")
    rows = page.locator("#decision-rows tr")
    assert rows.count() == 2

    page.get_by_label("Decision", exact=True).select_option("deny")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/console/decisions?*decision=deny*")
    assert rows.count() == 1 and "CN" in rows.first.inner_text()
    page.get_by_label("Country").fill("se")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("#decision-rows").inner_text().strip() == "No decisions match."

    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Reason").select_option(reason)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(f"**/console/decisions?*reason={reason}*")
    assert rows.count() == 1 and denied in rows.first.locator("a").get_attribute("href")
    page.goto(console_stack.admin_url + "/console/decisions")
    _, _, newest = chat(console_stack, "org-kyoto", "small-2", SE_IP)
    audit_record(console_stack, newest)
    page.locator(f"#decision-rows a[href$='{newest}']").wait_for(timeout=8000)  # appears without a reload
    assert rows.count() == 3
    screenshot(page, "decisions")


def test_a_refused_filter_shows_nothing_rather_than_everything(page: Any, console_stack: Stack) -> None:
    chat(console_stack, "org-acme", "small-2", SE_IP)
    sign_in(page, console_stack, VIEWER)
    page.goto(console_stack.admin_url + "/console/decisions?country=XYZ&org=%22%3E%3Cscript%3E")
    assert "country: not an ISO 3166-1 alpha-2 code" in page.locator("main").inner_text()
    assert page.locator("#decision-rows").inner_text().strip() == "No decisions match."


def test_the_decisions_page_fits_a_narrow_window(new_page: Any, console_stack: Stack) -> None:
    chat(console_stack, "org-acme", "frontier-5.6", CN_IP)
    narrow = new_page(NARROW)
    sign_in(narrow, console_stack, VIEWER, then="/console/decisions")
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(narrow, "decisions-narrow")
