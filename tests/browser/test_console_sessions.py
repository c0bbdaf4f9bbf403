"""Signing in and out of the console, sessions that end, and forms no other site can send,
in headless Chromium against a real gateway."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from browser.conftest import NARROW, OPERATOR, VIEWER, make_console_stack, screenshot, sign_in
from e2e import Stack


def test_signing_in_shows_the_actor_and_signing_out_ends_the_session(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/")
    assert "/console/sign-in" in page.url  # not signed in: the sign-in page, not the overview
    screenshot(page, "sign-in")
    sign_in(page, console_stack, OPERATOR)
    header = page.locator("header")
    assert "ops-alice" in header.inner_text() and "operator" in header.inner_text()
    assert page.locator("#policy-version").inner_text() == console_stack.service.state.policy.version
    cookie = cookie_of(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    assert cookie["path"] == "/console"

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/sign-in")
    page.goto(console_stack.admin_url + "/console/")
    assert "/console/sign-in" in page.url
    # The cookie someone copied before the sign-out opens nothing either: the session is gone.
    assert fetch(console_stack.admin_url + "/console/", cookie["value"]) == 303


def test_a_wrong_token_is_refused_and_counted(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/sign-in")
    page.get_by_label("Admin token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "That token is not an admin token here."
    assert not page.context.cookies()
    exposition = console_stack.service.metrics.exposition().decode()
    assert 'gateway_admin_auth_failures_total{reason="invalid"} 1.0' in exposition


def test_after_sign_in_the_page_asked_for_opens(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/decisions")
    page.get_by_label("Admin token").fill(VIEWER)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(console_stack.admin_url + "/console/decisions")
    assert page.get_by_role("heading", level=1).inner_text() == "Decisions"


def test_sign_in_never_redirects_to_another_site(page: Any, console_stack: Stack) -> None:
    page.goto(console_stack.admin_url + "/console/sign-in?next=//evil.example/")
    page.get_by_label("Admin token").fill(VIEWER)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(console_stack.admin_url + "/console/")


def test_a_session_expires(page: Any, tmp_path: Path) -> None:
    stack = make_console_stack(tmp_path, session_ttl="2s")
    try:
        sign_in(page, stack, VIEWER)
        time.sleep(2.2)
        page.goto(stack.admin_url + "/console/")
        assert "/console/sign-in" in page.url
    finally:
        stack.close()


def test_a_viewer_sees_no_change_buttons_and_the_server_refuses_their_changes(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, VIEWER)
    assert page.get_by_role("button", name="Reload policy files").count() == 0
    # A viewer who builds the form by hand, with a valid form token, is still refused.
    token = form_token(page)
    answer = page.request.post(console_stack.admin_url + "/console/reload", form={"csrf_token": token},
                               headers={"origin": console_stack.admin_url}, max_redirects=0)
    assert answer.status == 403
    assert "The viewer role cannot make changes." in answer.text()


def test_an_operator_form_works_with_its_token(page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR)
    page.get_by_role("button", name="Reload policy files").click()
    page.wait_for_url("**/console/?reloaded=*")
    assert "Policy files reloaded" in page.get_by_role("status").inner_text()
    screenshot(page, "overview-after-reload")


@pytest.mark.parametrize("case", ["no token", "wrong token", "token of another session", "other origin",
                                  "cross-site fetch"])
def test_a_form_without_this_sessions_token_or_from_another_site_is_refused(
        case: str, page: Any, new_page: Any, console_stack: Stack) -> None:
    sign_in(page, console_stack, OPERATOR)
    other = new_page()
    sign_in(other, console_stack, OPERATOR)
    token = {"no token": None, "wrong token": "0" * 64, "token of another session": form_token(other)}.get(
        case, form_token(page))
    headers = {"origin": console_stack.admin_url}
    if case == "other origin":
        headers = {"origin": "http://evil.example"}
    if case == "cross-site fetch":
        headers = {"origin": console_stack.admin_url, "sec-fetch-site": "cross-site"}
    answer = page.request.post(console_stack.admin_url + "/console/reload", headers=headers, max_redirects=0,
                               form={"csrf_token": token} if token is not None else {"x": "1"})
    assert answer.status == 403
    assert "Refused" in answer.text()


def test_a_page_of_another_site_cannot_make_the_browser_send_a_form(page: Any, console_stack: Stack, tmp_path: Path) -> None:
    """The real attack: a page elsewhere auto-submits a form to the console of a signed-in
    operator. Its Origin is another site's, and the browser does not even send the SameSite
    cookie along."""
    sign_in(page, console_stack, OPERATOR)
    reloads = console_stack.service.metrics.policy_reloads.labels("success")._value.get()
    page.route("http://attacker.test/", lambda route: route.fulfill(content_type="text/html", body=(
        f'<form id="f" method="post" action="{console_stack.admin_url}/console/reload">'
        '<input name="csrf_token" value="guessed"></form><script>document.getElementById("f").submit()</script>')))
    page.goto("http://attacker.test/")
    page.wait_for_url(console_stack.admin_url + "/console/reload")
    assert page.get_by_role("heading", level=1).inner_text() == "Refused"
    assert console_stack.service.metrics.policy_reloads.labels("success")._value.get() == reloads


def test_the_console_is_readable_on_a_narrow_window(new_page: Any, console_stack: Stack) -> None:
    narrow = new_page(NARROW)
    sign_in(narrow, console_stack, OPERATOR)
    assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(narrow, "overview-narrow")


def test_the_public_listener_does_not_serve_the_console(console_stack: Stack) -> None:
    for path in ("/console", "/console/sign-in", "/console/static/console.css"):
        assert fetch(console_stack.url + path, None) == 404, path


def cookie_of(page: Any) -> dict[str, Any]:
    cookies = [c for c in page.context.cookies() if c["name"] == "fgw_console"]
    assert len(cookies) == 1
    return cookies[0]


def form_token(page: Any) -> str:
    return page.locator("input[name=csrf_token]").first.get_attribute("value")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def fetch(url: str, session: str | None) -> int:
    """The status of a GET with this session cookie (redirects not followed)."""
    headers = {"Cookie": f"fgw_console={session}"} if session else {}
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as answer:
        return answer.code
