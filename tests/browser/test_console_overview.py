"""The overview in a real browser: the map shades the country denied requests came from,
the fleet's policy version, and the state the gateway depends on."""

from __future__ import annotations

from typing import Any

from browser.conftest import NARROW, OPERATOR, VIEWER, screenshot, sign_in
from e2e import CN_IP, SE_IP, Stack
from test_admin import admin, chat


def test_the_map_shades_the_country_denied_requests_came_from(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER)
    assert page.locator("#map-CN").get_attribute("class") == "shade-0"
    assert "No denials in the last hour." in page.locator("#denials-by-country").inner_text()

    for _ in range(3):
        status, _, _ = chat(console_stack, "org-acme", "frontier-5.6", CN_IP)
        assert status == 451
    status, _, _ = chat(console_stack, "org-acme", "small-2", SE_IP)
    assert status == 200

    page.reload()
    china = page.locator("#map-CN")
    assert china.get_attribute("class") == "shade-5" and china.get_attribute("data-denials") == "3"
    assert "China (CN): 3 denials" in china.get_attribute("aria-label")
    assert page.locator("#map-SE").get_attribute("class") == "shade-0"  # allowed requests shade nothing
    assert "China (CN)" in page.locator("#denials-by-country").inner_text()
    assert page.locator("#requests-hour").inner_text().startswith("4 ")
    assert page.locator("#denials-hour").inner_text().startswith("3 ")
    screenshot(page, "overview")


def test_the_overview_shows_the_policy_and_the_databases(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR)
    version = console_stack.service.state.policy.version
    assert version in page.locator("#replicas").inner_text()
    assert "embedded mode" in page.locator("#redis-state").inner_text()
    assert "GeoIP country" in page.locator(".facts").first.inner_text() or "GeoIP" in page.content()


def test_the_overview_fits_a_narrow_window(new_page: Any, console_stack: Stack) -> None:
    narrow = new_page(NARROW)
    sign_in(narrow, console_stack, VIEWER)
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert narrow.locator("#denial-map").bounding_box()["width"] <= NARROW["width"]
    screenshot(narrow, "overview-narrow")


def test_suspensions_in_force_and_changes_awaiting_a_second_person(page: Any, console_stack: Stack) -> None:
    suspension = {"id": "susp-se", "models": ["fable"], "deny_in": ["SE"], "reason": "export order 7"}
    status, made = admin(console_stack, "POST", "/admin/suspensions", suspension, token=OPERATOR)
    assert status == 201, made  # a tightening: at once, awaiting a countersignature
    status, proposal = admin(console_stack, "DELETE", "/admin/suspensions/susp-se", token=OPERATOR)
    assert status == 202, proposal  # lifting it loosens: a proposal to approve
    sign_in(page, console_stack, VIEWER)
    suspensions = page.locator("#suspensions").inner_text()
    assert "susp-se" in suspensions and "export order 7" in suspensions
    assert page.locator("#suspensions tbody td").nth(2).inner_text() == "SE"  # where: named once
    assert "suspension.lift susp-se by ops-alice" in page.locator("#awaiting-approval").inner_text()
    assert "by ops-alice" in page.locator("#awaiting-countersign").inner_text()
    screenshot(page, "overview-awaiting")

