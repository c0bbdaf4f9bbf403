"""Fleet mode end to end (docs/admin-api.md, docs/operators.md): two real `gateway serve` processes sharing
one real Redis (a namespace of their own), in front of one demo upstream.

What a user would notice is asserted — statuses, error codes, Retry-After,
readiness — and, in every test, that nothing denied reached the upstream.
The Redis of `scripts/with-redis` ($REDIS_URL) serves most tests; the outage
tests start a redis-server of their own ($REDIS_SERVER_BIN or PATH) to kill.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet import (OPERATOR_TOKEN, SE_IP, VIEWER_TOKEN, Fleet, RedisServer, Reply, percentile,
                   policy_variant, reference_texts, start_fleet, wait_for)

PROPAGATION_ROUNDS = 50
FleetFactory = Callable[..., Fleet]


@pytest.fixture
def fleets(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FleetFactory]:
    """Start fleets (`start_fleet` arguments); every one is stopped at the end, whatever happened.
    When the test failed, the replicas' logs are printed at teardown (pytest shows them)."""
    started: list[Fleet] = []
    failures = request.session.testsfailed

    def start(**options: Any) -> Fleet:
        fleet = start_fleet(tmp_path / f"fleet-{len(started)}", **options)
        started.append(fleet)
        return fleet

    yield start
    exits = {}
    for fleet in started:
        exits |= {f"{fleet.namespace}/{name}": code for name, code in fleet.close().items()}
        if request.session.testsfailed > failures:
            print(fleet.logs())
    assert all(code == 0 for code in exits.values()), f"replicas did not stop cleanly: {exits}"


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Shown by -rA (captured) and on the terminal as the test runs."""
    print(text)
    with capsys.disabled():
        print(f"\n{text}")


def suspension(models: list[str], **scope: list[str]) -> dict[str, Any]:
    return {"models": models, **scope, "reason": "fleet test: export suspended pending review",
            "reference": "TEST-ORDER-1"}


def denied_with(status: int, code: str) -> Callable[[Reply], bool]:
    return lambda reply: reply.status == status and reply.code == code


UNSUPPORTED_COUNTRY = "unsupported_country_region_territory"


# 1. Propagation


def test_a_suspension_made_on_one_replica_is_enforced_on_the_other_within_a_second(
        fleets: FleetFactory, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = fleets(redis_url=redis_url)
    a, b, key = fleet.a, fleet.b, fleet.key("org-public")
    assert b.chat(key).status == 200
    created_ms: list[float] = []
    lifted_ms: list[float] = []
    for round_ in range(PROPAGATION_ROUNDS):
        started = time.monotonic()
        made = a.admin("POST", "/admin/suspensions", suspension(["small-2"], deny_in=["us"]) | {"reference": f"R{round_}"})
        assert made.status == 201, made
        reply, _ = wait_for(lambda: (r := b.chat(key)).status != 200 and r, timeout=3)
        created_ms.append((time.monotonic() - started) * 1000)
        assert reply.status == 451 and reply.code == UNSUPPORTED_COUNTRY, reply
        assert reply.headers.get("link", "").endswith('rel="blocked-by"')
        assert denied_with(451, UNSUPPORTED_COUNTRY)(a.chat(key))

        started = time.monotonic()
        lifted = a.admin("DELETE", f"/admin/suspensions/{made.json['suspension']['id']}")
        assert lifted.status == 200, lifted
        reply, _ = wait_for(lambda: (r := b.chat(key)).status != 451 and r, timeout=3)
        lifted_ms.append((time.monotonic() - started) * 1000)
        assert reply.status == 200, reply
        assert a.chat(key).status == 200

    both = created_ms + lifted_ms
    lines = [f"fleet propagation, replica A's admin API -> replica B's public API ({PROPAGATION_ROUNDS} rounds; "
             "from sending the change to B's first answer reflecting it):"]
    for name, values in (("create", created_ms), ("lift", lifted_ms), ("all", both)):
        lines.append(f"  {name:6} p50 {percentile(values, 0.5):7.1f} ms   p99 {percentile(values, 0.99):7.1f} ms   "
                     f"max {max(values):7.1f} ms")
    report(capsys, "\n".join(lines))
    assert percentile(both, 0.99) <= 1000
    assert a.policy_version() == b.policy_version()
    fleet.check_nothing_denied_was_forwarded()


# 2. Organization status


def test_an_org_suspended_on_one_replica_is_refused_on_the_other_and_reinstated(
        fleets: FleetFactory, redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url)
    a, b, key, other = fleet.a, fleet.b, fleet.key("org-public"), fleet.key("org-acme")
    assert a.chat(key).status == 200 and b.chat(key).status == 200

    changed = a.admin("PATCH", "/admin/organizations/org-public", {"status": "suspended", "status_reason": "unpaid"})
    assert changed.status == 200, changed
    # The replica that made the change applies it at once; the other within a second.
    assert denied_with(403, "organization_suspended")(a.chat(key))
    reply, elapsed = wait_for(lambda: (r := b.chat(key)).status != 200 and r, timeout=3)
    assert denied_with(403, "organization_suspended")(reply), reply
    assert elapsed <= 1.0
    assert reply.json["error"]["message"] == "Your organization's access is suspended."
    # Every model, every country; other organizations carry on.
    assert denied_with(403, "organization_suspended")(b.chat(key, model="fable", ip=SE_IP))
    assert b.chat(other).status == 200

    # Who, what, before and after, as seen from the other replica.
    change = b.admin("GET", "/admin/changes?limit=1", token=VIEWER_TOKEN).json["changes"][0]
    assert change["actor"] == "ops-alice" and change["action"] == "organization.update"
    assert change["target"] == "org-public"
    assert change["before"]["status"] == "active" and change["after"]["status"] == "suspended"

    assert a.admin("PATCH", "/admin/organizations/org-public", {"status": "active"}).status == 200
    assert a.chat(key).status == 200
    reply, elapsed = wait_for(lambda: (r := b.chat(key)).status == 200 and r, timeout=3)
    assert elapsed <= 1.0
    assert a.policy_version() == b.policy_version()
    fleet.check_nothing_denied_was_forwarded()


# 3. Quota


def test_a_per_minute_quota_is_shared_by_the_replicas(fleets: FleetFactory, redis_url: str,
                                                      tmp_path: Path) -> None:
    limit = 7

    def with_quota(texts: dict[str, str]) -> None:
        texts["framework.yaml"] += f"quotas:\n  standard:\n    requests_per_minute: {limit}\n"

    fleet = fleets(redis_url=redis_url, policy_dir=policy_variant(tmp_path / "quota-policy", with_quota))
    a, b, key = fleet.a, fleet.b, fleet.key("org-public")
    # The window is the wall-clock minute: keep clear of its end.
    if time.time() % 60 > 54:
        time.sleep(60.2 - time.time() % 60)
    window = int(time.time() // 60)
    replies = [(a if i % 2 == 0 else b).chat(key) for i in range(2 * limit)]
    assert int(time.time() // 60) == window, "the minute rolled over mid-test"

    assert [r.status for r in replies].count(200) == limit, [r.status for r in replies]
    assert [r.status for r in replies] == [200] * limit + [429] * limit  # in order: the first N get through
    served_by = {"A": sum(r.status == 200 for r in replies[0::2]), "B": sum(r.status == 200 for r in replies[1::2])}
    assert served_by["A"] > 0 and served_by["B"] > 0
    for reply in replies[limit:]:
        assert reply.code == "rate_limit_exceeded", reply
        retry_after = int(reply.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert abs(retry_after - math.ceil(60 - time.time() % 60)) <= 1
    # The quota is the org's own: another tier (unlimited) is not held back, on either replica.
    assert a.chat(fleet.key("org-acme")).status == 200 and b.chat(fleet.key("org-acme")).status == 200
    forwarded = set(fleet.upstream.decision_ids())
    assert sum(reply.decision_id in forwarded for reply in replies) == limit
    fleet.check_nothing_denied_was_forwarded()


# 4. Redis outage


def _traffic(fleet: Fleet, key: str, until: Callable[[float], bool], limit_s: float) -> list[tuple[float, str, Reply]]:
    """Requests to both replicas in turn until `until(seconds elapsed)` or `limit_s`: (time, replica, reply)."""
    started = time.monotonic()
    seen = []
    while (elapsed := time.monotonic() - started) < limit_s and not until(elapsed):
        for replica in fleet.replicas:
            seen.append((time.monotonic(), replica.name, replica.chat(key, timeout=5)))
        time.sleep(0.02)
    return seen


def test_redis_stopped_mid_traffic_fails_closed_and_recovers_by_itself(
        fleets: FleetFactory, private_redis: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    staleness = 1.0
    fleet = fleets(redis_url=private_redis.url, max_staleness_s=staleness)
    # A JWT (checked against a JWKS file): this test is about the live policy state, not about
    # where API keys are kept.
    a, b, key = fleet.a, fleet.b, fleet.token("org-public")
    made = a.admin("POST", "/admin/suspensions", suspension(["fable"], deny_in=["us"]))
    assert made.status == 201, made
    suspension_id = made.json["suspension"]["id"]
    wait_for(lambda: b.chat(key, model="fable").status == 451, timeout=1)
    before = _traffic(fleet, key, lambda t: t > 0.3, 1)
    assert {r.status for _, _, r in before} == {200}

    killed = time.monotonic()
    private_redis.kill()
    refusing: dict[str, float] = {}  # replica -> when it first answered 503
    during = []
    while time.monotonic() < killed + 3.5:
        if len(refusing) == 2 and time.monotonic() - max(refusing.values()) > 0.5:
            break  # both refuse, and have kept refusing for half a second
        for replica in fleet.replicas:
            reply = replica.chat(key)
            during.append((time.monotonic(), replica.name, reply))
            if reply.status == 503:
                refusing.setdefault(replica.name, time.monotonic())
        time.sleep(0.02)
    assert {r.status for _, _, r in during} <= {200, 503}, during
    assert set(refusing) == {"A", "B"}, f"still serving 3.5 s after Redis stopped: {during[-4:]}"
    # Within max_staleness + a resync: from then on, every request is refused, none forwarded.
    assert max(refusing.values()) - killed <= 2.5, refusing
    for name in "AB":
        after = [r for t, n, r in during if n == name and t >= refusing[name]]
        assert all(r.status == 503 and r.code == "service_unavailable" for r in after), after
    for replica in fleet.replicas:
        ready = replica.readyz()
        assert ready.status == 503 and "shared state (redis)" in ready.json["missing"], ready

    restarted = time.monotonic()
    private_redis.start()  # same port, empty
    serving: dict[str, float] = {}
    recovery = []
    while time.monotonic() < restarted + 5 and len(serving) < 2:
        for replica in fleet.replicas:
            reply = replica.chat(key)
            recovery.append((time.monotonic(), replica.name, reply))
            if reply.status == 200:
                serving.setdefault(replica.name, time.monotonic())
        time.sleep(0.02)
    assert set(serving) == {"A", "B"}, f"not serving 5 s after Redis came back: {recovery[-4:]}"
    assert {r.status for _, _, r in recovery} <= {200, 503}
    after = _traffic(fleet, key, lambda t: t > 0.5, 1)
    assert {r.status for _, _, r in after} == {200}

    # The live suspension made before the outage is back in Redis and in force everywhere.
    for replica in fleet.replicas:
        assert denied_with(451, UNSUPPORTED_COUNTRY)(replica.chat(key, model="fable")), replica.name
        assert replica.readyz().status == 200
        assert suspension_id in replica.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["overlay"]["suspensions"]
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        assert f"susp:{suspension_id}" in client.hgetall("{" + fleet.namespace + "}:overlay")
    finally:
        client.close()
    assert a.policy_version() == b.policy_version()

    report(capsys, "fleet Redis outage (max_staleness_s 1): refusing (503) "
           + ", ".join(f"{n} {1000 * (t - killed):.0f} ms" for n, t in sorted(refusing.items()))
           + " after the kill; serving again "
           + ", ".join(f"{n} {1000 * (t - restarted):.0f} ms" for n, t in sorted(serving.items()))
           + " after the restart")
    everything = [r for replica in fleet.replicas for r in replica.sent]
    assert not [r for r in everything if r.status >= 500 and r.status != 503]
    fleet.check_nothing_denied_was_forwarded()


# 5. Admin refusals


def test_admin_api_refusals_change_nothing(fleets: FleetFactory, redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url)
    a, b = fleet.a, fleet.b
    version = a.policy_version()
    assert b.policy_version() == version
    changes = len(a.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["changes"])
    good = suspension(["small-2"], deny_in=["us"])

    for method, path, body in (("POST", "/admin/suspensions", good), ("DELETE", "/admin/suspensions/x", None),
                               ("PATCH", "/admin/organizations/org-public", {"status": "suspended"}),
                               ("PUT", "/admin/policy", {"files": reference_texts()}), ("POST", "/admin/reload", None),
                               ("GET", "/admin/policy", None), ("GET", "/admin/changes", None)):
        for token in (None, "not-a-token", OPERATOR_TOKEN + "x"):
            reply = a.admin(method, path, body, token=token)
            assert reply.status == 401 and reply.code == "unauthorized", (method, path, token, reply)
        if method != "GET":
            reply = a.admin(method, path, body, token=VIEWER_TOKEN)
            assert reply.status == 403 and reply.code == "forbidden", (method, path, reply)
            assert "viewer" in reply.json["error"]["message"]
    assert a.admin("GET", "/admin/policy", token=VIEWER_TOKEN).status == 200  # viewers read

    def refused(reply: Reply, status: int, *needles: str) -> None:
        assert reply.status == status, reply
        text = reply.raw.decode()
        assert all(needle in text for needle in needles), (needles, reply)

    refused(a.admin("POST", "/admin/suspensions", "not json {", headers={"Content-Type": "application/json"}),
            400, "invalid_request", "JSON object")
    refused(a.admin("POST", "/admin/suspensions", ["small-2"]), 400, "JSON object")
    refused(a.admin("POST", "/admin/suspensions", suspension(["no-such-model"], deny_in=["us"])),
            422, "change_refused", "unknown model 'no-such-model'")
    refused(a.admin("POST", "/admin/suspensions", suspension(["small-2"], deny_in=["atlantis"])),
            422, "unknown jurisdiction group 'atlantis'")
    refused(a.admin("POST", "/admin/suspensions", suspension(["small-2"])), 422, "exactly one of deny_outside or deny_in")
    refused(a.admin("PATCH", "/admin/organizations/org-nope", {"status": "suspended"}),
            404, "organization 'org-nope' is not in the policy")
    refused(a.admin("PATCH", "/admin/organizations/org-public", {"status": "gone"}), 422, "status")
    refused(a.admin("PATCH", "/admin/organizations/org-public", {"colour": "red"}), 422, "colour: unknown field")
    refused(a.admin("PATCH", "/admin/organizations/org-public", "{"), 400, "JSON object")
    refused(a.admin("DELETE", "/admin/suspensions/no-such-suspension"), 404, "no suspension 'no-such-suspension'")
    refused(a.admin("PUT", "/admin/policy", {"files": ["models.yaml"]}), 400, "files")

    time.sleep(0.6)  # past a resync: nothing is on its way either
    assert a.policy_version() == version and b.policy_version() == version
    assert len(b.admin("GET", "/admin/changes", token=VIEWER_TOKEN).json["changes"]) == changes
    assert b.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["overlay"] == {
        "suspensions": {}, "lifted": [], "organizations": {}, "credentials": {}}
    key = fleet.key("org-public")
    assert a.chat(key).status == 200 and b.chat(key).status == 200
    fleet.check_nothing_denied_was_forwarded()


# 6. Replacing the policy


def test_put_policy_refuses_an_invalid_bundle_whole_and_spreads_a_valid_one(
        fleets: FleetFactory, redis_url: str) -> None:
    fleet = fleets(redis_url=redis_url)
    a, b = fleet.a, fleet.b
    version = a.policy_version()
    new_key = fleet.key("org-new")
    assert denied_with(403, "organization_not_permitted")(b.chat(new_key))

    broken = reference_texts()
    broken["framework.yaml"] = broken["framework.yaml"].replace("review_window_max_days: 30", "review_window_max_days: 0")
    broken["organizations.yaml"] = broken["organizations.yaml"].replace(
        "tier: standard\n    status: denied", "tier: platinum\n    status: denied")
    broken["models.yaml"] = broken["models.yaml"].replace(
        "jurisdictions: [us]\n      - stage: limited_partner\n        from: 2026-11-25",
        "jurisdictions: [atlantis]\n      - stage: limited_partner\n        from: 2026-11-25")
    broken["organizations.yaml"] += "  org-new:\n    name: New Org\n    country: US\n"  # valid on its own
    reply = a.admin("PUT", "/admin/policy", {"files": broken})
    assert reply.status == 422 and reply.code == "invalid_policy", reply
    issues = reply.json["error"]["issues"]
    found = {(i["file"], i["path"]) for i in issues if i["severity"] == "error"}
    assert {("framework.yaml", "review_window_max_days"), ("organizations.yaml", "organizations.org-listed.tier"),
            ("models.yaml", "models.frontier-5.6.release[0].jurisdictions[0]")} <= found, issues
    assert all(i.get("line") for i in issues), issues
    assert any("atlantis" in i["message"] for i in issues)
    time.sleep(0.6)
    assert a.policy_version() == version and b.policy_version() == version
    assert b.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["files"] == reference_texts()
    assert denied_with(403, "organization_not_permitted")(b.chat(new_key))

    fixed = reference_texts()
    fixed["organizations.yaml"] += "  org-new:\n    name: New Org\n    country: US\n"
    started = time.monotonic()
    reply = a.admin("PUT", "/admin/policy", {"files": fixed})
    assert reply.status == 200, reply
    new_version = reply.json["policy_version"]
    assert new_version and new_version != version
    assert a.policy_version() == new_version
    _, elapsed = wait_for(lambda: b.policy_version() == new_version, timeout=3)
    assert time.monotonic() - started <= 1.0, elapsed
    assert b.chat(new_key).status == 200
    assert b.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["files"] == fixed
    change = b.admin("GET", "/admin/changes?limit=1", token=VIEWER_TOKEN).json["changes"][0]
    assert change["action"] == "policy.replace" and change["actor"] == "ops-alice"
    fleet.check_nothing_denied_was_forwarded()


def test_a_suspension_acknowledged_before_an_outage_survives_a_replica_that_had_not_seen_it(
        fleets: FleetFactory, private_redis: RedisServer) -> None:
    """Replicas may lag the shared state by up to a resync. If Redis restarts empty while one
    lags, the mirror it restores from, or the revision number it compares, must not make an
    acknowledged suspension disappear."""
    fleet = fleets(redis_url=private_redis.url, max_staleness_s=1.0)
    a, b, key = fleet.a, fleet.b, fleet.token("org-public")
    assert a.chat(key, model="fable").status == 200 and b.chat(key, model="fable").status == 200
    b.pause()  # B falls behind: it will not see the next change before Redis goes away
    try:
        made = a.admin("POST", "/admin/suspensions", suspension(["fable"], deny_in=["us"]))
        assert made.status == 201, made
        assert denied_with(451, UNSUPPORTED_COUNTRY)(a.chat(key, model="fable"))
        private_redis.kill()
    finally:
        b.resume()
    wait_for(lambda: a.chat(key).status == 503 and b.chat(key).status == 503, timeout=3, interval=0.05)

    private_redis.start()  # empty
    wait_for(lambda: a.chat(key).status == 200 and b.chat(key).status == 200, timeout=5, interval=0.05)
    time.sleep(1.5)  # three resyncs: the replicas have settled
    suspension_id = made.json["suspension"]["id"]
    for replica in fleet.replicas:
        overlay = replica.admin("GET", "/admin/policy", token=VIEWER_TOKEN).json["overlay"]
        assert suspension_id in overlay["suspensions"], (replica.name, overlay)
        assert denied_with(451, UNSUPPORTED_COUNTRY)(replica.chat(key, model="fable")), replica.name
    assert a.policy_version() == b.policy_version()
    fleet.check_nothing_denied_was_forwarded()


def test_an_admin_change_while_redis_is_down_is_refused_with_503_not_500(
        fleets: FleetFactory, private_redis: RedisServer) -> None:
    fleet = fleets(redis_url=private_redis.url, max_staleness_s=1.0)
    a, b = fleet.a, fleet.b
    version = a.policy_version()
    private_redis.kill()
    replies = {
        "create": a.admin("POST", "/admin/suspensions", suspension(["small-2"], deny_in=["us"])),
        "org": a.admin("PATCH", "/admin/organizations/org-public", {"status": "suspended"}),
        "policy": a.admin("PUT", "/admin/policy", {"files": reference_texts()}),
        "changes": a.admin("GET", "/admin/changes", token=VIEWER_TOKEN),
    }
    for name, reply in replies.items():
        assert reply.status == 503 and reply.code, (name, reply)  # a JSON error an operator's tool can read
    assert a.policy_version() == version and b.policy_version() == version
    private_redis.start()
    key = fleet.token("org-public")
    wait_for(lambda: a.chat(key).status == 200 and b.chat(key).status == 200, timeout=5, interval=0.05)
    assert a.policy_version() == version and b.policy_version() == version
    fleet.check_nothing_denied_was_forwarded()
