"""State changing under the request path: a policy reloaded while requests are
in flight, Redis frozen mid-traffic in fleet mode, and the clock at the exact
instant a suspension, a review window or a vetting ends. Every request is
answered with its policy version's decision, never a 500, and only allowed
ones reach the upstream."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY, at
from e2e import CN_IP, DECISION_TIME, SE_IP, US_IP, Stack
from fleet import Fleet, RedisServer, Replica, policy_variant, redis_server_binary, start_fleet, wait_for

from .conftest import CHAT, COVERED, PLAIN, Probe, chat_body

OPERATOR = "operator-adversarial"


def admin_config() -> str:
    import hashlib

    return f'change_control: {{approvals: 0}}\nadmin:\n  tokens:\n    - {{name: ops, sha256: "{hashlib.sha256(OPERATOR.encode()).hexdigest()}", role: operator}}\n'


def admin_call(stack: Stack, method: str, path: str, body: Any = None) -> dict[str, Any]:
    request = urllib.request.Request(stack.admin_url + path, data=json.dumps(body).encode() if body else b"",
                                     method=method, headers={"Authorization": f"Bearer {OPERATOR}",
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


# 1. Reload races


def suspend_public(texts: dict[str, str]) -> None:
    marker = "  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n"
    assert marker in texts["organizations.yaml"]
    texts["organizations.yaml"] = texts["organizations.yaml"].replace(marker, marker + "    status: suspended\n")


@pytest.mark.parametrize("how", ["policy files reloaded", "live change through the admin API"])
def test_every_request_in_a_policy_change_race_is_decided_under_one_version(tmp_path: Path, how: str) -> None:
    active = policy_variant(tmp_path / "active").joinpath("organizations.yaml").read_text()
    suspended = policy_variant(tmp_path / "suspended", suspend_public).joinpath("organizations.yaml").read_text()
    policy = policy_variant(tmp_path / "policy")
    stack = Stack(tmp_path, policy_dir=policy, extra_config=admin_config())
    outcome = {admin_call(stack, "POST", "/admin/reload")["policy_version"]: 200}

    def change(suspend: bool) -> str:
        """Org-public suspended or active again; the version now in force."""
        if how == "live change through the admin API":
            body = {"status": "suspended" if suspend else "active"}
            return admin_call(stack, "PATCH", "/admin/organizations/org-public", body)["policy_version"]
        (policy / "organizations.yaml").write_text(suspended if suspend else active)
        return admin_call(stack, "POST", "/admin/reload")["policy_version"]

    key, body = stack.api_key("org-public"), chat_body(PLAIN)
    replies: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        host, port = stack.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        while not stop.is_set():
            connection.request("POST", CHAT, body, {"Authorization": f"Bearer {key}", "X-Forwarded-For": US_IP,
                                                    "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            replies.append((response.status, response.getheader("x-gateway-decision-id") or ""))
        connection.close()

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        for flip in range(8):
            outcome[change(suspend=flip % 2 == 0)] = 403 if flip % 2 == 0 else 200
            time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    try:
        assert set(outcome.values()) == {200, 403}, outcome
        assert {status for status, _ in replies} == {200, 403}, "the race did not race"
        records = {}
        for record in stack.audit_records():
            assert record["decision_id"] not in records, "two audit records for one request"
            records[record["decision_id"]] = record
        for status, decision_id in replies:
            record = records[decision_id]
            check_outcome(status, record, outcome)
        forwarded = [r.header("x-gateway-decision-id") for r in stack.received]
        answered = [d for s, d in replies if s == 200]
        revoked = [d for s, d in replies if records[d]["error"] == "revoked"]  # maybe before reaching it
        assert set(answered) <= set(forwarded) <= set(answered + revoked) and len(forwarded) == len(set(forwarded))
    finally:
        stack.close()


def check_outcome(status: int, record: dict[str, Any], outcome: dict[str, int]) -> None:
    """The answer is what the record's policy version gives: 200 or 403. A request allowed,
    forwarded and then revoked by a newer version (gateway/request/revocation.py) got that one's."""
    assert record["policy_version"] in outcome, record
    if record["error"] == "revoked":
        assert outcome[record["policy_version"]] == 200 and record["decision"] == "allow", record
        assert status == record["status"] == outcome[record["revoked"]["policy_version"]], (status, record)
    else:
        assert status == record["status"] == outcome[record["policy_version"]], (status, record)

# 2. Fleet mode: two replicas on a Redis of their own, which a test may freeze (SIGSTOP).


@pytest.fixture(scope="module")
def own_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, RedisServer]]:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary ($REDIS_SERVER_BIN or PATH)")
    directory = tmp_path_factory.mktemp("fleet")
    server = RedisServer(binary, directory / "redis")
    server.start()
    fleet = None
    try:
        fleet = start_fleet(directory / "fleet", redis_url=server.url, size=2, max_staleness_s=1.0)
        yield fleet, server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        if fleet is not None:
            fleet.close()
        server.close()


def test_fleet_live_change_race_decides_each_request_under_one_version(own_fleet: tuple[Fleet, RedisServer]) -> None:
    """Org-public suspended and reinstated on replica A while both replicas serve it."""
    fleet, _ = own_fleet
    key = fleet.token("org-public")
    outcome = {fleet.a.policy_version(): 200}
    first = {replica.name: len(replica.sent) for replica in fleet.replicas}
    stop = threading.Event()
    cut: list[http.client.IncompleteRead] = []

    def traffic(replica: Replica) -> None:
        while not stop.is_set():
            try:
                replica.chat(key)
            except http.client.IncompleteRead as short:  # revoked after its head was sent: cut short on purpose
                cut.append(short)

    workers = [threading.Thread(target=traffic, args=(replica,)) for replica in fleet.replicas]
    try:
        for worker in workers:
            worker.start()
        for flip in range(6):
            status = "suspended" if flip % 2 == 0 else "active"
            change = fleet.a.admin("PATCH", "/admin/organizations/org-public", {"status": status})
            assert change.status == 200, change
            outcome[change.json["policy_version"]] = 403 if status == "suspended" else 200
            time.sleep(0.25)
    finally:
        stop.set()
        for worker in workers:
            worker.join(15)
    records = {r["decision_id"]: r for replica in fleet.replicas for r in _audit(replica.audit_path)}
    replies = [r for replica in fleet.replicas for r in replica.sent[first[replica.name]:]]
    assert {r.status for r in replies} == {200, 403}, "the race did not race"
    for reply in replies:
        check_outcome(reply.status, records[reply.decision_id], outcome)
    assert len(cut) <= sum(r["error"] == "revoked" for r in records.values()), "an answer cut short without a revocation"
    fleet.check_nothing_denied_was_forwarded()


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_redis_frozen_mid_traffic_fails_closed_and_recovers(own_fleet: tuple[Fleet, RedisServer]) -> None:
    """Not a refused connection but silence: every request is answered within the Redis
    timeouts, with 503 once the state is stale, and served again once Redis wakes."""
    fleet, redis_server = own_fleet
    token, key = fleet.token("org-public"), fleet.key("org-public")
    first = {replica.name: len(replica.sent) for replica in fleet.replicas}
    for replica in fleet.replicas:
        assert replica.chat(token).status == 200 and replica.chat(key).status == 200
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    during = []
    try:
        while time.monotonic() < frozen + 3.0:
            for replica in fleet.replicas:
                for credential in (token, key):
                    started = time.monotonic()
                    reply = replica.chat(credential, timeout=5)
                    during.append((round(time.monotonic() - frozen, 2), round(time.monotonic() - started, 2), reply))
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert {r.status for _, _, r in during} <= {200, 503}, during
    assert all(took < 2.5 for _, took, _ in during), [(t, took) for t, took, _ in during if took >= 2.5]
    late = [r for since, _, r in during if since > 2.0]
    assert late and all(r.status == 503 and r.code == "service_unavailable" for r in late), late

    for replica in fleet.replicas:
        wait_for(lambda: replica.chat(token).status == 200 and replica.chat(key).status == 200, timeout=5, interval=0.05)
        assert {r.status for r in replica.sent[first[replica.name]:]} <= {200, 503}, replica.sent
    fleet.check_nothing_denied_was_forwarded()


# 3. Clock edges: decisions at a settable instant (credentials are checked at the real time).


class Clock:
    def __init__(self) -> None:
        self.now = DECISION_TIME

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clocked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Probe, Clock]]:
    clock = Clock()
    stack = Stack(tmp_path_factory.mktemp("clocked"), clock=clock, policy_dir=REFERENCE_POLICY)
    yield Probe(stack), clock
    stack.close()


JUST_BEFORE = -1e-6
EDGES: list[tuple[str, str, float, str, str, str, int]] = [
    # (case, instant, offset s, org, model, client ip, status)
    ("suspension not yet", "2026-11-03T00:00:00Z", JUST_BEFORE, "org-public", "fable", SE_IP, 200),
    ("suspension starts", "2026-11-03T00:00:00Z", 0, "org-public", "fable", SE_IP, 451),
    ("suspension last instant", "2026-11-21T00:00:00Z", JUST_BEFORE, "org-public", "fable", SE_IP, 451),
    ("suspension ends", "2026-11-21T00:00:00Z", 0, "org-public", "fable", SE_IP, 200),
    ("suspension never covered the US", "2026-11-03T00:00:00Z", 0, "org-public", "fable", US_IP, 200),
    ("before the first stage", "2026-11-01T00:00:00Z", JUST_BEFORE, "org-caisi", COVERED, US_IP, 404),
    ("review starts", "2026-11-01T00:00:00Z", 0, "org-caisi", COVERED, US_IP, 200),
    ("review window last instant", "2026-11-25T00:00:00Z", JUST_BEFORE, "org-acme", COVERED, US_IP, 404),
    ("review window ends", "2026-11-25T00:00:00Z", 0, "org-acme", COVERED, US_IP, 200),
    ("review window ends for an ally", "2026-11-25T00:00:00Z", 0, "org-acme", COVERED, SE_IP, 200),
    ("still no country of concern", "2026-11-25T00:00:00Z", 0, "org-acme", COVERED, CN_IP, 451),
    ("general availability not yet", "2027-02-01T00:00:00Z", JUST_BEFORE, "org-public", COVERED, US_IP, 404),
    ("general availability", "2027-02-01T00:00:00Z", 0, "org-public", COVERED, US_IP, 200),
    ("vetting last instant", "2026-12-16T00:00:00Z", JUST_BEFORE, "org-expiring", COVERED, US_IP, 200),
    ("vetting lapses", "2026-12-16T00:00:00Z", 0, "org-expiring", COVERED, US_IP, 404),
    ("lapsed long ago", "2026-12-01T00:00:00Z", 0, "org-lapsed", COVERED, US_IP, 404),
]


@pytest.mark.parametrize(("instant", "offset", "org", "model", "ip", "status"), [e[1:] for e in EDGES],
                         ids=[e[0] for e in EDGES])
def test_decision_at_the_instant_a_period_starts_or_ends(clocked: tuple[Probe, Clock], instant: str, offset: float,
                                                         org: str, model: str, ip: str, status: int) -> None:
    probe, clock = clocked
    probe.stack.upstream.app.reset()
    clock.now = at(instant).timestamp() + offset
    reply = probe.send(body=chat_body(model), credential=probe.token(org), ip=ip)
    if status == 200:
        probe.allowed(reply, org=org, model=model)
    else:
        probe.denied(reply, status)


def test_token_accepted_then_cached_stops_at_exp_plus_leeway(gw: Probe) -> None:
    """A token verified (and cached) a moment before exp + leeway (30 s) is refused from that instant."""
    wait_for(lambda: time.time() % 1 < 0.5, timeout=1)
    end = int(time.time()) + 1  # exp + leeway
    token = gw.token(exp=end - 30)
    gw.allowed(gw.send(body=chat_body(), credential=token))
    time.sleep(max(0.0, end - time.time()) + 0.02)
    gw.stack.upstream.app.reset()
    gw.denied(gw.send(body=chat_body(), credential=token), 401)
