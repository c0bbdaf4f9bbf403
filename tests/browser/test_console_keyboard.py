"""The console by keyboard alone, with every form control labelled and the focus visible."""

from __future__ import annotations

from typing import Any

import pytest

from browser.conftest import OPERATOR, screenshot, sign_in
from e2e import Stack

UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
  .map(el => el.outerHTML)"""


def test_sign_in_and_reach_every_page_by_keyboard(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/")
    assert page.evaluate("document.activeElement.id") == "token"  # the sign-in form is ready to type into
    page.keyboard.type(OPERATOR)
    page.keyboard.press("Enter")
    page.wait_for_url(console_stack.admin_url + "/console/")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # skip link, Overview, Decisions
    focused = page.evaluate("[document.activeElement.textContent, getComputedStyle(document.activeElement).outlineStyle]")
    assert focused == ["Decisions", "solid"]  # and the focus is drawn
    screenshot(page, "keyboard-focus", full_page=False)
    page.keyboard.press("Enter")
    page.wait_for_url(console_stack.admin_url + "/console/decisions")


@pytest.mark.parametrize("path", ["/console/", "/console/decisions", "/console/sign-in"])
def test_every_form_control_has_a_label(page: Any, console_stack: Stack, path: str) -> None:
    if path != "/console/sign-in":
        sign_in(page, console_stack, OPERATOR)
    page.goto(console_stack.admin_url + path)
    assert page.evaluate(UNLABELLED) == []
    assert page.locator("h1").count() == 1 and page.locator("main#main").count() == 1
