"""The console's change forms under hostile input: whatever an operator's browser (or
someone holding an operator's session) sends, a form is read into the admin API's own
change body or refused in words; it never crashes a page, never reflects markup, and
never makes a change the form did not name.

The form readers are pure, so hypothesis drives them over arbitrary text; a real
gateway then takes the hostile values through its HTTP forms, signed in as an operator.
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import ImmutableMultiDict

from browser.conftest import OPERATOR, make_console_stack
from e2e import Stack
from gateway.policy import countries
from gateway.console.changes_view import MAX_TEXT, api_key, places, suspension
from gateway.policy.snapshot import Policy

SCRIPT = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
texts = st.text(max_size=200)


@given(texts)
def test_places_are_only_ever_iso_codes(text: str) -> None:
    codes, problems = places(text)
    assert all(countries.is_place(code) for code in codes)
    assert all(" is not an ISO 3166-1 country code " in problem for problem in problems)  # each names its value


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["models", "places", "groups", "scope", "reason", "reference", "until", "x"]),
                          texts), max_size=12))
def test_a_suspension_form_is_a_valid_body_or_says_what_is_wrong(reference_policy: Policy, pairs: list[tuple[str, str]]) -> None:
    form = ImmutableMultiDict(pairs)
    draft = suspension(form, form.getlist, reference_policy)
    if draft.problems:
        return
    body = draft.body
    [scope] = [key for key in ("deny_in", "deny_outside") if key in body]
    assert body[scope] and all(countries.is_place(e) or e in reference_policy.groups for e in body[scope])
    assert body["models"] and all(reference_policy.model_named(m) is not None for m in body["models"])
    assert body["reason"] and len(body["reason"]) <= MAX_TEXT
    assert set(body) <= {"models", scope, "reason", "reference", "until"}


@given(st.dictionaries(st.sampled_from(["org_id", "sha256", "label", "reason", "key_id", "secret"]), texts))
def test_a_key_form_never_sends_more_than_the_admin_api_takes(fields: dict[str, str]) -> None:
    draft = api_key(ImmutableMultiDict(fields))
    assert set(draft.body) == {"org_id", "sha256", "label", "reason"}  # never a key_id or a secret of the form's


class Operator:
    """An operator signed in to the console over plain HTTP (no browser): what a script
    holding a session could send."""

    def __init__(self, stack: Stack, token: str = OPERATOR) -> None:
        self.stack = stack
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())
        self.post("/console/sign-in", {"token": token}, token=False)
        status, page = self.get("/console/changes")
        assert status == 200
        self.token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page).group(1)

    def get(self, path: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(self.stack.admin_url + path))

    def post(self, path: str, fields: dict[str, Any] | list[tuple[str, str]], *, token: bool = True) -> tuple[int, str]:
        pairs = list(fields.items()) if isinstance(fields, dict) else list(fields)
        body = urllib.parse.urlencode(pairs + ([("csrf_token", self.token)] if token else [])).encode()
        return self._open(urllib.request.Request(self.stack.admin_url + path, data=body, headers={
            "origin": self.stack.admin_url, "content-type": "application/x-www-form-urlencoded"}))

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as answer:
            return answer.code, answer.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    stack = make_console_stack(Path(tmp_path_factory.mktemp("console-forms")))
    try:
        yield Operator(stack)
    finally:
        stack.close()


def live_suspensions(operator: Operator) -> dict[str, Any]:
    return dict(operator.stack.service.live.overlay.suspensions)


@pytest.mark.parametrize("fields", [
    {"models": "fable", "places": "SE" * 60_000, "reason": "long"},  # one huge code
    {"models": "fable", "places": ", ".join(["SE"] * 20_000), "reason": "many"},  # the same place 20 000 times, once
    {"models": "fable", "places": "S\u0395", "reason": "a Greek capital epsilon"},  # looks like SE
    {"models": "fable", "places": "SE\x00", "reason": "nul"},
    {"models": "fable", "places": "SE", "reason": "\u202e\u0000"},  # no printable reason
    {"models": "fable", "groups": "__proto__", "reason": "x"},
    {"models": "../../etc/passwd", "places": "SE", "reason": "x"},
    {"models": "fable", "places": "SE", "scope": "deny_nowhere", "reason": "x"},
    {"models": "fable", "places": "SE", "until": "2026-13-45T99:99", "reason": "x"},
    {"models": "fable", "places": "SE", "until": "2026-11-01T00:00", "reason": "already over"},
])
def test_hostile_suspension_forms_are_refused_in_words_and_change_nothing(operator: Operator, fields: dict[str, str]) -> None:
    before = live_suspensions(operator)
    status, page = operator.post("/console/changes/suspend", fields)
    assert status in (303, 400, 409, 422), page[:500]
    if status == 303:  # the only acceptable success: a suspension of exactly the form's place
        [made] = set(live_suspensions(operator)) - set(before)
        assert live_suspensions(operator)[made]["deny_in"] == ["SE"]
        return
    assert 'role="alert"' in page and "Nothing was changed." in page
    assert live_suspensions(operator) == before


def test_markup_in_a_reason_is_shown_as_text_never_run(operator: Operator) -> None:
    status, _ = operator.post("/console/changes/suspend", {"models": "small-2", "places": "UA-43", "reason": SCRIPT})
    assert status == 303
    status, page = operator.get("/console/changes")
    assert status == 200
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "<img src=x" not in page
    status, page = operator.post("/console/changes/suspend", {"models": "fable", "places": SCRIPT, "reason": "x"})
    assert status == 422 and "<script>alert" not in page and "&lt;img src=x" in page  # named, escaped


@pytest.mark.parametrize("path", [
    "/console/changes/proposals/%3Cscript%3E/approve",
    "/console/changes/proposals/prop-1/delete",
    "/console/changes/proposals/prop-none/approve",
    "/console/changes/countersign/chg-none",
    "/console/changes/keys/key_000000000000/revoke",
    "/console/changes/keys/..%2F..%2Fstate/revoke",
])
def test_actions_on_what_does_not_exist_are_refused_in_words(operator: Operator, path: str) -> None:
    status, page = operator.post(path, {"reason": "x"})
    assert 400 <= status < 500, (status, page[:300])
    assert "<script>" not in page


def test_a_crafted_redirect_message_is_never_shown(operator: Operator) -> None:
    status, page = operator.get("/console/changes?done=applied&id=%3Cscript%3Ealert(7)%3C/script%3E")
    assert status == 200 and "alert(7)" not in page
    assert "Proposal  is approved and in force now." in page  # the fixed words, without the hostile id
    status, page = operator.get("/console/changes?done=Your+account+is+locked.+Call+555-0100")
    assert status == 200 and "555-0100" not in page
