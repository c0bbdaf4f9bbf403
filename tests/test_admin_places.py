"""Live suspensions that name single places by ISO code (issue 13), end to end: a real
gateway and its admin API, a City database that gives addresses a region, and requests
on the public listener decided at once.

The bundle is the reference one with Crimea (UA-43) taken out of its embargo, so that
only the suspension can deny it; small-2 is not covered and denied nowhere else here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY
from e2e import US_IP, Stack
from mmdb import write
from test_admin import OPERATOR, VIEWER, admin, admin_config, audit_record, changes, chat, version_now
from test_admin_cli import gateway_admin

TOKYO, OSAKA, CRIMEA_UA, CRIMEA_RU, KYIV, LONDON = (
    "198.51.100.1", "198.51.100.17", "198.51.100.33", "198.51.100.49", "198.51.100.65", "198.51.100.81")


def _city(country: str, *codes: str) -> dict[str, Any]:
    return {"country": {"iso_code": country}, "subdivisions": [{"iso_code": code} for code in codes]}


RECORDS = {
    "198.51.100.0/28": _city("JP", "13"),
    "198.51.100.16/28": _city("JP", "27"),
    "198.51.100.32/28": _city("UA", "43"),
    "198.51.100.48/28": _city("RU", "CR"),  # Crimea as some databases file it: under RU
    "198.51.100.64/28": _city("UA", "30"),
    "198.51.100.80/28": _city("GB", "ENG"),
    "216.160.83.56/29": _city("US", "WA"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("places")
    policy = directory / "policy"
    policy.mkdir()
    for source in REFERENCE_POLICY.glob("*.yaml"):
        text = source.read_text()
        if source.name == "jurisdictions.yaml":
            assert "regions: [UA-43, UA-40" in text
            text = text.replace("regions: [UA-43, UA-40", "regions: [UA-40")
        (policy / source.name).write_text(text)
    stack = Stack(directory, extra_config=admin_config(), policy_dir=policy,
                  country_db=write(directory / "City.mmdb", RECORDS))
    yield stack
    stack.close()


def status_from(stack: Stack, ip: str) -> int:
    """The status of a small-2 request from `ip`; a 451 must be the suspension's."""
    status, _, decision_id = chat(stack, "org-acme", model="small-2", ip=ip)
    if status == 451:
        assert audit_record(stack, decision_id)["reasons"] == ["export_suspended"]
    return status


def suspend(stack: Stack, scope: str, *entries: str) -> dict[str, Any]:
    status, created = admin(stack, "POST", "/admin/suspensions",
                            {"models": ["small-2"], scope: list(entries), "reason": "emergency order"})
    assert status == 201, created
    return created


def lift(stack: Stack, created: dict[str, Any]) -> None:
    status, lifted = admin(stack, "DELETE", f"/admin/suspensions/{created['suspension']['id']}")
    assert status == 200, lifted


PLACES = [TOKYO, OSAKA, CRIMEA_UA, CRIMEA_RU, KYIV, LONDON, US_IP]


def test_every_place_is_served_without_a_suspension(stack: Stack) -> None:
    assert {ip: status_from(stack, ip) for ip in PLACES} == {ip: 200 for ip in PLACES}


# (scope, entries, addresses denied with 451 export_suspended; every other one is served)
SUSPENSIONS = [
    ("deny_in", ["JP"], {TOKYO, OSAKA}),
    ("deny_in", ["UA-43"], {CRIMEA_UA, CRIMEA_RU}),  # the region, whatever country the database says
    ("deny_in", ["JP-13", "UA-43"], {TOKYO, CRIMEA_UA, CRIMEA_RU}),
    ("deny_outside", ["US"], {TOKYO, OSAKA, CRIMEA_UA, CRIMEA_RU, KYIV, LONDON}),
    ("deny_outside", ["us", "GB", "JP-27"], {TOKYO, CRIMEA_UA, CRIMEA_RU, KYIV}),
    ("deny_outside", ["UA"], {TOKYO, OSAKA, CRIMEA_RU, LONDON, US_IP}),  # Crimea under RU is not admitted by UA alone
]


@pytest.mark.parametrize(("scope", "entries", "denied"), SUSPENSIONS, ids=[f"{s[0]} {' '.join(s[1])}" for s in SUSPENSIONS])
def test_a_suspension_by_iso_code_is_in_force_at_once_and_lifting_restores(stack: Stack, scope: str, entries: list[str],
                                                                           denied: set[str]) -> None:
    created = suspend(stack, scope, *entries)
    try:
        assert created["suspension"][scope] == entries
        assert {ip for ip in PLACES if status_from(stack, ip) == 451} == denied
        assert {ip for ip in PLACES if status_from(stack, ip) == 200} == set(PLACES) - denied
    finally:
        lift(stack, created)
    assert {ip: status_from(stack, ip) for ip in PLACES} == {ip: 200 for ip in PLACES}


def test_the_change_log_and_the_list_show_the_entries_as_given(stack: Stack) -> None:
    created = suspend(stack, "deny_in", "UA-43", "countries_of_concern", "JP")
    try:
        record = changes(stack, 1)[0]
        assert (record["action"], record["actor"], record["after"]["deny_in"]) == (
            "suspension.create", "ops-alice", ["UA-43", "countries_of_concern", "JP"])
        status, listed = admin(stack, "GET", "/admin/suspensions", token=VIEWER)
        [live] = [s for s in listed["suspensions"] if s["id"] == created["suspension"]["id"]]
        assert status == 200 and (live["scope"], live["groups"]) == ("deny_in", ["UA-43", "countries_of_concern", "JP"])
    finally:
        lift(stack, created)
    assert changes(stack, 1)[0]["before"]["deny_in"] == ["UA-43", "countries_of_concern", "JP"]


# (entries, the problem the API names): an entry is an upper-case ISO code or a group's name.
REFUSED = [
    (["jp"], "deny_in: unknown jurisdiction group 'jp', nor an ISO 3166 code (did you mean 'JP'?)"),
    (["JP", "ZZ"], "deny_in: unknown jurisdiction group 'ZZ', nor an ISO 3166 code"),
    (["UA-4444"], "deny_in: unknown jurisdiction group 'UA-4444', nor an ISO 3166 code"),
    (["us", "JPN"], "deny_in: unknown jurisdiction group 'JPN', nor an ISO 3166 code"),
]


@pytest.mark.parametrize(("entries", "problem"), REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_an_entry_that_is_neither_a_group_nor_an_iso_code_is_refused_by_name(stack: Stack, entries: list[str],
                                                                             problem: str) -> None:
    version = version_now(stack)
    status, answer = admin(stack, "POST", "/admin/suspensions",
                           {"models": ["small-2"], "deny_in": entries, "reason": "emergency order"})
    assert status == 422 and answer["error"]["code"] == "change_refused"
    assert answer["error"]["problems"] == [problem]
    assert version_now(stack) == version and status_from(stack, TOKYO) == 200


def test_the_cli_suspends_by_iso_code(stack: Stack) -> None:
    done = gateway_admin(stack, "suspend", "--model", "small-2", "--deny-in", "JP", "UA-43", "--reason", "order",
                         "--id", "susp-cli-places", token=OPERATOR)
    try:
        assert done.returncode == 0, done.stderr
        assert "in JP, UA-43" in done.stdout
        assert (status_from(stack, TOKYO), status_from(stack, CRIMEA_RU), status_from(stack, US_IP)) == (451, 451, 200)
    finally:
        lifted = gateway_admin(stack, "lift", "susp-cli-places", token=OPERATOR)
    assert lifted.returncode == 0 and status_from(stack, TOKYO) == 200
    refused = gateway_admin(stack, "suspend", "--model", "small-2", "--deny-in", "jp", "--reason", "order", token=OPERATOR)
    assert refused.returncode == 1 and "  deny_in: unknown jurisdiction group 'jp', nor an ISO 3166 code " \
                                       "(did you mean 'JP'?)" in refused.stderr.splitlines()
