"""Changes made in the console are counted as the admin API counts them
(gateway_admin_changes_total{action, result}): a dashboard or alert on admin changes
sees every change, whichever door it came through."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversarial.test_console_forms import Operator
from browser.conftest import VIEWER, make_console_stack
from e2e import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_console_stack(Path(tmp_path_factory.mktemp("console-counts")))
    try:
        yield stack
    finally:
        stack.close()


def changes_counted(stack: Stack, action: str, result: str) -> float:
    with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = rf'^gateway_admin_changes_total\{{action="{re.escape(action)}",result="{result}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_suspension_made_in_the_console_is_counted(stack: Stack) -> None:
    operator = Operator(stack)
    before = changes_counted(stack, "suspension.create", "ok")
    status, _ = operator.post("/console/changes/suspend", {"models": "fable", "places": "SE", "reason": "counted"})
    assert status == 303
    assert changes_counted(stack, "suspension.create", "ok") == before + 1


def test_a_lift_proposed_in_the_console_is_counted_as_proposed(stack: Stack) -> None:
    operator = Operator(stack)
    operator.post("/console/changes/suspend", {"models": "fable", "places": "NO", "reason": "to lift"})
    [suspension] = [s for s, d in stack.service.live.overlay.suspensions.items() if d.get("deny_in") == ["NO"]]
    before = changes_counted(stack, "suspension.lift", "proposed")
    status, _ = operator.post("/console/changes/lift", {"suspension": suspension, "reason": "over"})
    assert status == 303
    assert changes_counted(stack, "suspension.lift", "proposed") == before + 1


def test_refused_forms_are_counted_with_their_result(stack: Stack) -> None:
    operator, viewer = Operator(stack), Operator(stack, VIEWER)
    refused, forbidden = (changes_counted(stack, "suspension.create", r) for r in ("refused", "forbidden"))
    assert operator.post("/console/changes/suspend", {"models": "fable", "places": "XX", "reason": "x"})[0] == 422
    assert viewer.post("/console/changes/suspend", {"models": "fable", "places": "SE", "reason": "x"})[0] == 403
    assert changes_counted(stack, "suspension.create", "refused") == refused + 1
    assert changes_counted(stack, "suspension.create", "forbidden") == forbidden + 1
