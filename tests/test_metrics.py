"""The metrics' model label: a concealed model is never a label value (issue 12)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.decision import Decision
from gateway.metrics import UNRELEASED, model_label

ALLOWED = Decision(True, 200, (), "v1", "small-2", "general", False, "standard", "default")


@pytest.mark.parametrize("changes,conceal,label", [
    ({}, True, "small-2"),
    ({"model": None, "stage": None}, True, "none"),               # unknown model, or none established
    ({"model": "frontier-5.6", "stage": "limited_partner"}, True, UNRELEASED),
    ({"model": "frontier-5.6", "stage": "limited_partner"}, False, "frontier-5.6"),  # the policy does not conceal it
    ({"model": "frontier-5.6", "stage": "government_review"}, True, UNRELEASED),
    ({"model": "nextgen-7", "stage": None}, False, UNRELEASED),   # not yet released: always concealed
    ({"model": "nextgen-7", "stage": "internal"}, False, UNRELEASED),
    ({"model": "fable", "stage": "general"}, True, "fable"),
])
def test_the_model_label_of_a_concealed_model_is_fixed(changes: dict[str, Any], conceal: bool, label: str) -> None:
    assert model_label(replace(ALLOWED, **changes), conceal) == label
    assert model_label(replace(ALLOWED, allowed=False, status=404, **changes), conceal) == label


def test_no_decision_no_model_label() -> None:
    assert model_label(None, True) == "none"
