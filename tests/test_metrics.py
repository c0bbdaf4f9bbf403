"""The metrics: a concealed model is never a label value (issue 12); the build, process and
per-country series (issue 16)."""

from __future__ import annotations

import platform
import sys
from dataclasses import replace
from typing import Any

import pytest

from gateway.policy.decision import Decision
from gateway.metrics import UNRELEASED, Metrics, build_version, model_label

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


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_build_and_process_metrics_are_on_the_gateways_registry() -> None:
    metrics = Metrics()
    assert sample(metrics, "gateway_build_info", version=build_version(), python=platform.python_version()) == 1
    assert sample(metrics, "process_resident_memory_bytes") > 0
    assert sample(metrics, "python_info", implementation=platform.python_implementation(),
                  major=str(sys.version_info.major), minor=str(sys.version_info.minor),
                  patchlevel=str(sys.version_info.micro), version=platform.python_version()) == 1


@pytest.mark.parametrize("country,label", [("CN", "CN"), ("XK", "XK"), (None, "unknown"), ("EU", "unknown"),
                                            ("A1", "unknown"), ("cn", "unknown")])
def test_the_country_label_is_iso_3166_1_or_unknown(country: str | None, label: str) -> None:
    metrics = Metrics()
    metrics.count_country(country, "deny")
    metrics.count_country(country, "deny")
    assert sample(metrics, "gateway_requests_by_country_total", country=label, decision="deny") == 2


def test_redis_up_is_exported_in_fleet_mode_only() -> None:
    assert b"gateway_redis_up" not in Metrics().exposition()
    assert b"gateway_redis_up" in Metrics(fleet=True).exposition()
