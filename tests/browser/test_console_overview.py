"""The overview in a real browser: the map shades the country denied requests came from,
the fleet's policy version, and the state the gateway depends on."""

from __future__ import annotations

from typing import Any

from browser.conftest import NARROW, OPERATOR, VIEWER, screenshot, sign_in
from e2e import CN_IP, SE_IP, Stack
from test_admin import chat


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
