"""Signing in to the console with a JWT of the API's issuer whose claim names an admin role
(console.jwt_role_claim), and only then."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.conftest import make_console_stack
from e2e import SigningKey, Stack


@pytest.fixture
def jwt_stack(tmp_path: Path) -> Iterator[Stack]:
    stack = make_console_stack(tmp_path, jwt_role_claim="gateway_role")
    try:
        yield stack
    finally:
        stack.close()


def sign_in_with(page: Any, stack: Stack, token: str) -> None:
    page.goto(stack.admin_url + "/console/sign-in")
    page.get_by_label("Admin token or JWT").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_a_jwt_whose_claim_names_a_role_signs_in_with_that_role(page: Any, jwt_stack: Stack) -> None:
    sign_in_with(page, jwt_stack, jwt_stack.signing.token("org-caisi", gateway_role="operator"))
    page.wait_for_url(jwt_stack.admin_url + "/console/")
    assert "jwt:user@org-caisi" in page.locator("header").inner_text()
    page.get_by_role("button", name="Reload policy files").click()  # an operator's form
    page.wait_for_url("**/console/?reloaded=*")


def test_a_viewer_claim_gives_a_viewer(page: Any, jwt_stack: Stack) -> None:
    sign_in_with(page, jwt_stack, jwt_stack.signing.token("org-caisi", gateway_role="viewer"))
    page.wait_for_url(jwt_stack.admin_url + "/console/")
    assert "viewer" in page.locator("header").inner_text()
    assert page.get_by_role("button", name="Reload policy files").count() == 0


@pytest.mark.parametrize("case", ["no claim", "another value", "a list", "another key", "expired"])
def test_any_other_jwt_signs_no_one_in(page: Any, jwt_stack: Stack, case: str) -> None:
    token = {
        "no claim": lambda: jwt_stack.signing.token("org-caisi"),
        "another value": lambda: jwt_stack.signing.token("org-caisi", gateway_role="admin"),
        "a list": lambda: jwt_stack.signing.token("org-caisi", gateway_role=["operator"]),
        "another key": lambda: SigningKey().token("org-caisi", gateway_role="operator"),
        "expired": lambda: jwt_stack.signing.token("org-caisi", lifetime=-60, gateway_role="operator"),
    }[case]()
    sign_in_with(page, jwt_stack, token)
    assert page.get_by_role("alert").inner_text() == "That token is not an admin token here."
    assert not page.context.cookies()


def test_a_jwt_session_ends_with_the_jwt(page: Any, jwt_stack: Stack) -> None:
    # Expired 27 s ago: still valid for the 30 s leeway of identity.jwt, so for 3 s more.
    sign_in_with(page, jwt_stack, jwt_stack.signing.token("org-caisi", lifetime=-27, gateway_role="viewer"))
    page.wait_for_url(jwt_stack.admin_url + "/console/")
    time.sleep(3.5)
    page.goto(jwt_stack.admin_url + "/console/")
    assert "/console/sign-in" in page.url


def test_without_the_setting_an_api_jwt_is_no_admin(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/sign-in")
    page.get_by_label("Admin token").fill(console_stack.signing.token("org-caisi", gateway_role="operator"))
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That token is not an admin token here."
