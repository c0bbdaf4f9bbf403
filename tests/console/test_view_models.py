"""The console's pure parts: the per-minute counts, the map's shades, the overview's and the
Decisions page's view models, form tokens and origins. No server: values in, values out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.request.activity import EMPTY, Activity, Window, combined, window_from_json
from gateway.console import csrf, worldmap
from gateway.console.decisions_model import Filters, explained, filters_from, row
from gateway.console.overview_model import database_rows, every_minute, overview, replica_rows
from gateway.live.heartbeat import STALE_S, Heartbeat, heartbeat_from_json

T0 = 1_796_000_000.0  # a minute boundary is not needed: the counts bucket by whole minutes


def window_with(*counts: tuple[float, bool, str | None, str | None]) -> Window:
    activity = Activity()
    for at, allowed, country, region in counts:
        activity.count(at, allowed=allowed, country=country, region=region)
    return activity.window(max(at for at, *_ in counts))


# The last hour, per minute

def test_counts_by_minute_and_place() -> None:
    window = window_with((T0, False, "CN", "CN-22"), (T0 + 1, False, "CN", None), (T0 + 61, True, "SE", None),
                         (T0 + 62, False, None, None))
    assert (window.requests, window.denials) == (4, 3)
    assert window.countries == {"CN": 2, "unknown": 1} and window.regions == {"CN-22": 1}
    assert [(r, d) for _, r, d in window.per_minute] == [(2, 2), (2, 1)]


def test_an_hour_later_the_old_minutes_are_gone_and_their_slots_reused() -> None:
    activity = Activity()
    activity.count(T0, allowed=False, country="CN", region=None)
    activity.count(T0 + 3600, allowed=False, country="IR", region=None)  # the same slot of the ring, 60 minutes on
    window = activity.window(T0 + 3600)
    assert window.countries == {"IR": 1} and window.requests == 1
    assert activity.window(T0 + 2 * 3600).requests == 0


def test_fleet_windows_add_up_minute_by_minute() -> None:
    a = window_with((T0, False, "CN", None))
    b = window_with((T0, True, "SE", None), (T0 + 60, False, "CN", "CN-22"))
    total = combined([a, b])
    assert (total.requests, total.denials, total.countries) == (3, 2, {"CN": 2})
    assert [(r, d) for _, r, d in total.per_minute] == [(2, 1), (1, 1)]


@pytest.mark.parametrize("hostile", [None, [], "x", {"requests": 1}, {"requests": "many", "denials": 0, "countries": {},
                                     "regions": {}, "per_minute": []}, {"requests": 1, "denials": 0, "countries": [],
                                     "regions": {}, "per_minute": [[1, 2]]}])
def test_a_malformed_window_from_redis_is_refused_not_raised(hostile: Any) -> None:
    assert window_from_json(hostile) is None


def test_a_heartbeat_round_trips_and_garbage_is_no_heartbeat() -> None:
    beat = Heartbeat("gw-a", "v1", T0, window_with((T0, False, "CN", None)))
    assert heartbeat_from_json(beat.as_json()) == beat
    for garbage in ("", "{", "[]", json.dumps({"replica": "x"}), json.dumps({"replica": "x", "policy_version": 3,
                                                                               "seen_at": "soon", "window": {}})):
        assert heartbeat_from_json(garbage) is None


# The overview

@pytest.mark.parametrize("versions, agree, agreeing", [
    (["v1", "v1"], True, [True, True]),
    (["v1", "v2", "v1"], False, [True, False, True]),
    (["v1", None], False, [True, False]),
    ([None], False, [False]),
])
def test_replicas_agree_only_when_every_live_one_runs_the_same_version(
        versions: list[str | None], agree: bool, agreeing: list[bool]) -> None:
    beats = [Heartbeat(f"gw-{n}", v, T0, EMPTY) for n, v in enumerate(versions)]
    rows, agreed = replica_rows(beats, T0 + 1)
    assert agreed is agree and [r.agrees for r in rows] == agreeing


def test_a_replica_gone_quiet_is_shown_gone_and_does_not_count() -> None:
    beats = [Heartbeat("gw-a", "v1", T0, window_with((T0, False, "CN", None))),
             Heartbeat("gw-b", "v0", T0 - STALE_S - 5, window_with((T0 - 40, False, "IR", None)))]
    view = overview(beats, T0 + 1)
    assert [r.alive for r in view.replicas] == [True, False]
    assert view.versions_agree  # the gone replica's old version is no disagreement
    assert view.window.countries == {"CN": 1}  # nor are its counts the fleet's


def test_every_minute_is_a_fixed_hour_ending_now() -> None:
    window = window_with((T0 - 120, True, "SE", None), (T0, False, "CN", None))
    minutes = every_minute(window, T0)
    assert len(minutes) == 60 and minutes[-1] == (1, 1) and minutes[-3] == (1, 0) and sum(r for r, _ in minutes) == 2


@pytest.mark.parametrize("age_days, condition", [(1, "fresh"), (31, "old"), (61, "expired")])
def test_database_condition_follows_max_age(age_days: float, condition: str) -> None:
    assert database_rows({"country": age_days * 86400}, 30)[0].condition == condition


# The map

@pytest.mark.parametrize("denials, most, shade", [(0, 10, 0), (1, 1, 5), (1, 1000, 1), (1000, 1000, 5), (30, 1000, 3),
                                                  (5, 0, 0)])
def test_shades_are_relative_to_the_busiest_country_on_a_log_scale(denials: int, most: int, shade: int) -> None:
    assert worldmap.shade_of(denials, most) == shade


def test_the_shipped_map_has_every_country_by_iso_code_with_a_label() -> None:
    world = worldmap.shaded({"CN": 3, "UA": 1, "XX": 99})  # a code without a shape shades nothing
    by_code = {c.code: c for c in world.countries}
    assert {"US", "CN", "RU", "UA", "IR", "KP", "CU", "SY", "DE"} <= set(by_code) and len(by_code) > 240
    assert by_code["CN"].shade == 5 and 0 < by_code["UA"].shade < 5 and by_code["US"].shade == 0
    assert by_code["CN"].label == "China (CN): 3 denials" and by_code["UA"].label.endswith("1 denial")
    assert all(c.path.startswith("M") for c in world.countries) and world.view_box == "0 0 1010 666"


# The Decisions page

@pytest.mark.parametrize("query, expected, problems", [
    ({}, Filters(), []),
    ({"org": " org-acme ", "country": "cn", "decision": "deny"}, Filters(org="org-acme", country="CN", decision="deny"), []),
    ({"reason": "jurisdiction_embargoed"}, Filters(reason="jurisdiction_embargoed"), []),
    ({"country": "ZZ"}, None, ["country: not an ISO 3166-1 alpha-2 code"]),
    ({"org": '"><script>'}, None, ["org: not an organization id"]),
    ({"decision": "maybe"}, None, ["decision: allow or deny"]),
    ({"reason": "because"}, None, ["reason: not one of the gateway's reasons"]),
    ({"model": "m" * 200}, None, ["model: not a model name"]),
])
def test_filters_are_checked_and_a_refused_one_is_reported(query: dict[str, str], expected: Filters | None,
                                                           problems: list[str]) -> None:
    filters, found = filters_from(query)
    assert found == problems
    if expected is not None:
        assert filters == expected


def test_filters_name_audit_fields_and_rebuild_their_query() -> None:
    filters = Filters(org="org-acme", country="CN", model="fable", decision="deny", reason="org_unknown")
    assert filters.audit_fields() == {"org": "org-acme", "observed_country": "CN", "requested_model": "fable",
                                      "decision": "deny"}
    assert filters_from(dict(pair.split("=") for pair in filters.query().split("&")))[0] == filters


def test_a_record_with_missing_fields_is_still_a_row() -> None:
    shown = row({"decision_id": "ab" * 16, "decision": "deny", "status": 401, "reasons": ["credential_missing"]})
    assert (shown.org, shown.model, shown.place, shown.reasons) == ("-", "-", "unknown", "credential_missing")


def test_a_record_is_explained_as_gateway_audit_explain_does(reference_policy: Any) -> None:
    from gateway.policy import explain
    from gateway.audit import recorded
    from gateway.policy.decision import decide

    record = {"decision_id": "cd" * 16, "time": "2026-12-01T12:00:00Z", "org": "org-acme", "requested_model": "frontier-5.6",
              "observed_country": "CN", "observed_region": None, "anonymizer": False, "decision": "deny", "status": 451,
              "reasons": ["jurisdiction_of_concern"], "policy_version": reference_policy.version}
    facts, at = recorded.facts_of(record)
    expected = explain.render(explain.as_json(reference_policy, facts, decide(reference_policy, facts, at), at,
                                              recorded=record))
    account = explained(reference_policy, record)
    assert account.text == expected and account.problem is None
    assert any(s["source"] and "CN" == s["place"] for s in account.sources)


def test_a_record_without_an_org_is_not_explained_and_says_why(reference_policy: Any) -> None:
    account = explained(reference_policy, {"decision_id": "ef" * 16, "status": 401, "reasons": ["credential_missing"]})
    assert account.text is None and "never identified as an organization" in account.problem
    assert explained(None, {}).problem.startswith("No policy is loaded")


# Form tokens and origins

def test_form_tokens_are_per_session_and_checked_in_constant_shape() -> None:
    assert csrf.valid("session-a", csrf.token("session-a"))
    assert not csrf.valid("session-b", csrf.token("session-a"))
    for wrong in (None, "", 123, csrf.token("session-a")[:-1], csrf.token("session-a").upper()):
        assert not csrf.valid("session-a", wrong)


@pytest.mark.parametrize("headers, host, same", [
    ({}, "127.0.0.1:9090", True),
    ({"origin": "http://127.0.0.1:9090"}, "127.0.0.1:9090", True),
    ({"origin": "https://console.example"}, "console.example", True),
    ({"origin": "http://127.0.0.1:9091"}, "127.0.0.1:9090", False),
    ({"origin": "http://evil.example"}, "127.0.0.1:9090", False),
    ({"origin": "null"}, "127.0.0.1:9090", False),
    ({"origin": "javascript://127.0.0.1:9090"}, "127.0.0.1:9090", False),
    ({"origin": "http://127.0.0.1:9090"}, None, False),
    ({"sec-fetch-site": "cross-site"}, "127.0.0.1:9090", False),
    ({"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:9090"}, "127.0.0.1:9090", False),
    ({"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:9090"}, "127.0.0.1:9090", True),
])
def test_only_forms_from_our_own_origin_pass(headers: dict[str, str], host: str | None, same: bool) -> None:
    assert csrf.same_origin(headers, host) is same
