"""The Policy page in headless Chromium against a real gateway deciding at 2026-12-01:
groups with their sources, release timelines with today's line and the suspensions over
them, organizations whose vetting lapses soon highlighted in words."""

from __future__ import annotations

import time
from typing import Any

from browser.conftest import NARROW, OPERATOR, VIEWER, screenshot, sign_in
from e2e import Stack

POLICY = "/console/policy"
SUSPENSION = {"models": ["fable"], "deny_in": ["SE"], "reason": "Export order for Sweden"}


def test_an_organization_whose_vetting_lapses_within_30_days_is_highlighted_in_words(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER, then=POLICY)
    expiring = page.locator("#org-org-expiring")  # vetted until 2026-12-15: 14 days left on 2026-12-01
    assert expiring.get_attribute("class") == "vetting-lapsing"
    assert "Vetting lapses in 14 days" in expiring.inner_text()
    summary = page.locator("#lapsing-summary").inner_text()
    assert "Vetting lapses within 30 days for 1 organization" in summary and "org-expiring" in summary
    lapsed = page.locator("#org-org-lapsed")  # vetted until 2026-10-31: lapsed, counts as standard
    assert "Vetting lapsed: counts as standard" in lapsed.inner_text()
    acme = page.locator("#org-org-acme")  # vetted until 2027-06-30: nothing to say
    assert acme.get_attribute("class") is None and "Vetting" not in acme.inner_text()
    # Lapsing first: the organization that needs attention heads the table.
    assert page.locator("#organizations tbody tr").first.get_attribute("id") == "org-org-expiring"


def test_the_organizations_can_be_filtered(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER, then=POLICY)
    page.get_by_label("Organization id or name").fill("kyoto")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/console/policy?org=kyoto*")
    rows = page.locator("#organizations tbody tr")
    assert rows.count() == 1 and "Kyoto Materials Lab" in rows.first.inner_text()


def test_groups_show_their_sources_and_includes(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER, then=POLICY)
    row = page.locator("#group-countries_of_concern")
    assert "D:5 + E:1 + E:2, plus Macau" in row.inner_text()
    assert row.get_by_role("link", name="ear_d5").get_attribute("href") == "#group-ear_d5"
    assert "not recorded" in row.inner_text()  # no check date in the reference files: said so


def test_the_timeline_shows_today_and_a_suspension_in_force(page: Any, console_stack: Stack) -> None:
    made = console_stack.thread.run(console_stack.service.live.suspend(SUSPENSION | {"id": "susp-se"}, "ops-alice"))
    assert made["target"] == "susp-se"
    sign_in(page, console_stack, OPERATOR, then=POLICY)
    fable = page.locator("#timeline-fable")
    assert "stage general in force; suspended: susp-se." in fable.locator("figcaption").inner_text()
    today = fable.locator("line.tl-today")
    assert today.count() == 1 and today.locator("title").text_content() == "Today, 2026-12-01"
    in_force = fable.locator("g.tl-suspension.tl-in_force rect")
    assert in_force.count() == 1
    assert in_force.locator("title").text_content() == "Suspension susp-se: deny in SE, at once to until lifted (in force)"
    # The suspension's bar starts before today's line and runs on to the axis's end: in force, open-ended.
    bar_x, bar_width = float(in_force.get_attribute("x")), float(in_force.get_attribute("width"))
    today_x = float(today.get_attribute("x1"))
    assert bar_x < today_x < bar_x + bar_width
    ended = fable.locator("g.tl-suspension.tl-ended rect title")  # the files' suspension of November
    assert "commerce-2026-11-03" in ended.text_content() and "(ended)" in ended.text_content()
    band = fable.locator("g.tl-band.tl-in_force")
    assert band.locator("title").text_content() == "general: from 2026-08-25 (in force)"
    screenshot(page, "policy")
    # Another model's timeline is not suspended.
    assert "suspended" not in page.locator("#timeline-small-2 figcaption").inner_text()
    nextgen = page.locator("#timeline-nextgen-7 figcaption").inner_text()
    assert "not released yet" in nextgen


def test_the_policy_page_is_readable_on_a_narrow_window(new_page: Any, console_stack: Stack) -> None:
    narrow = new_page(NARROW)
    sign_in(narrow, console_stack, VIEWER, then=POLICY)
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # A timeline keeps a readable size and scrolls sideways inside its own frame, by keyboard too.
    frame = narrow.locator("#timeline-fable .axis-wrap")
    assert frame.bounding_box()["width"] <= NARROW["width"]
    assert narrow.locator("#timeline-fable svg").bounding_box()["width"] >= 560
    frame.focus()
    narrow.keyboard.press("ArrowRight")
    deadline = time.monotonic() + 5  # the browser may scroll smoothly (wait_for_function needs eval: the CSP forbids it)
    while frame.evaluate("e => e.scrollLeft") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert frame.evaluate("e => e.scrollLeft") > 0
    screenshot(narrow, "policy-narrow")
