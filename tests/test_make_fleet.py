"""`make fleet` (devtools/fleet_local.py): the compose topology as local processes.

Brought up through its Python API (and once through its command line, as `make fleet`
runs it): Redis (REDIS_URL, one namespace per fleet), two `gateway serve` replicas, a
load balancer (nginx when it can be had, and the Python one), the demo upstream. Requests
go through the load balancer with the caller's X-Forwarded-For; one replica is killed
mid-traffic and the answers are reconciled with both replicas' audit files. Every process
is stopped by the fixture's finalizer; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.fleet_local import CN, IR, LB_SOURCE, US, Example, LocalFleet

ROOT = Path(__file__).resolve().parent.parent
# The first fleet may install nginx from Debian's packages (as root, when it is missing).
pytestmark = pytest.mark.timeout(300)


def start(tmp_path: Path, **options: Any) -> LocalFleet:
    if not os.environ.get("REDIS_URL") and not os.environ.get("REDIS_SERVER_BIN"):
        pytest.skip("no Redis: run under scripts/with-redis")
    return LocalFleet(tmp_path / "fleet", port=0, prometheus="off", **options).start()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    running = start(tmp_path_factory.mktemp("fleet"))
    try:
        yield running
    finally:
        running.stop()


def audit_records(fleet: LocalFleet) -> dict[str, list[dict[str, Any]]]:
    """Every audit record of each replica, by replica name (rotated files included)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for replica in fleet.replicas:
        records = found.setdefault(replica.name, [])
        for path in sorted(replica.audit_path.parent.glob(replica.audit_path.name + "*")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(record, dict) and record.get("decision_id"):
                    records.append(record)
    return found


def by_decision(fleet: LocalFleet) -> dict[str, dict[str, Any]]:
    return {r["decision_id"]: r for records in audit_records(fleet).values() for r in records}


def wait_for_audit(fleet: LocalFleet, decision_id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = by_decision(fleet).get(decision_id)
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {decision_id}")


def chat(fleet: LocalFleet, org: str, ip: str, model: str = "example-small-1", *, xff: str | None = None,
         direct: bool = False) -> tuple[int, dict[str, str], bytes]:
    assert fleet.credentials is not None
    example = Example("", 0, "/v1/chat/completions",
                      {"Authorization": f"Bearer {fleet.credentials.keys[org]}", "X-Forwarded-For": xff or ip},
                      {"model": model, "messages": [{"role": "user", "content": "hi"}]}, direct=direct)
    return fleet.send(example)


def test_every_example_through_the_load_balancer(fleet: LocalFleet) -> None:
    results = fleet.check()
    assert [(example.title, got) for example, got in results] == [(example.title, example.expect) for example, _ in results]


def test_the_replicas_trust_only_the_load_balancer(fleet: LocalFleet) -> None:
    for replica in fleet.replicas:
        config = json.loads(replica.config_path.read_text())
        assert config["trusted_proxies"] == [f"{LB_SOURCE}/32"]
        assert config["redis"]["namespace"] == fleet.namespace


def test_client_address_comes_from_the_load_balancers_x_forwarded_for(fleet: LocalFleet) -> None:
    allowed = chat(fleet, "org-developer-us", US)
    denied = chat(fleet, "org-developer-us", IR)
    assert allowed[0] == 200 and denied[0] == 451, (allowed, denied)
    assert b"blocked-by" in denied[1].get("link", "").encode()
    record = wait_for_audit(fleet, denied[1]["x-gateway-decision-id"])
    assert (record["client_ip"], record["observed_country"], record["status"]) == (IR, "IR", 451)
    assert "jurisdiction_embargoed" in record["reasons"]
    record = wait_for_audit(fleet, allowed[1]["x-gateway-decision-id"])
    assert (record["client_ip"], record["observed_country"], record["decision"]) == (US, "US", "allow")
    # The header is appended to, not replaced: what the caller wrote left of its own address is never read.
    forged = chat(fleet, "org-developer-us", IR, xff=f"{US}, {IR}")
    assert forged[0] == 451
    assert wait_for_audit(fleet, forged[1]["x-gateway-decision-id"])["client_ip"] == IR
    # Bypassing the load balancer: 127.0.0.1 is no trusted proxy, the header is not believed: the
    # caller is 127.0.0.1, an unknown place (refused for every model), not the embargoed IR.
    direct = chat(fleet, "org-developer-us", IR, direct=True)
    assert direct[0] == 451
    record = wait_for_audit(fleet, direct[1]["x-gateway-decision-id"])
    assert (record["client_ip"], record["reasons"]) == ("127.0.0.1", ["jurisdiction_unknown"])


def test_load_is_spread_and_streams_pass_through(fleet: LocalFleet) -> None:
    ids = [chat(fleet, "org-partner-us", US, "example-frontier-1")[1]["x-gateway-decision-id"] for _ in range(10)]
    for decision_id in ids:
        wait_for_audit(fleet, decision_id)
    served = {name: {r["decision_id"] for r in records} & set(ids) for name, records in audit_records(fleet).items()}
    assert all(served.values()), f"one replica served nothing: { {k: len(v) for k, v in served.items()} }"
    stream = next(e for e in fleet.examples() if e.stream)
    status, headers, body = fleet.send(stream)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.count(b"data: ") > 2 and body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_replica_lost_mid_traffic(signum: int, tmp_path: Path) -> None:
    """One replica goes away while 6 clients send through the load balancer; the answers are
    reconciled with the audit records of both replicas (by X-Gateway-Decision-Id).

    SIGTERM (a rolling update, `docker compose stop`, a pod eviction): the replica finishes what
    it has in flight and writes its audit records: every answer is audited, exactly once, and
    nothing the replica admitted fails. What can fail (rarely) is a request the load balancer
    was sending on an idle keep-alive connection just as the replica closed it: never seen by
    a gateway, never decided, and not resent (a POST); on Kubernetes the preStop delay and
    /readyz take the pod out of the Service before that.

    SIGKILL (a crash, the OOM killer): what was in flight on it fails (at most one request per
    client: 502 from the load balancer) and the survivor takes everything after. The end of
    every answer waits for its audit record to reach the file, so no answered request is
    unrecorded; a request it recorded but could not finish answering may have a record.
    """
    fleet = start(tmp_path)
    try:
        outcomes: list[tuple[float, int, str | None]] = []
        lock = threading.Lock()
        stop = threading.Event()
        clients = 6

        def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, headers, _ = chat(fleet, "org-developer-us", US)
                    decision_id = headers.get("x-gateway-decision-id")
                except (OSError, http.client.HTTPException):
                    status, decision_id = -1, None
                with lock:
                    outcomes.append((started, status, decision_id))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        lost_at = time.monotonic()
        fleet.kill_replica(0, signum)
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert not any(thread.is_alive() for thread in threads)
        fleet.stop()  # the survivor writes what it has queued, as on any graceful stop
        records = audit_records(fleet)
    finally:
        fleet.stop()
    audited = {r["decision_id"]: r for rs in records.values() for r in rs}
    answered = [o for o in outcomes if o[1] == 200]
    failed = [o for o in outcomes if o[1] != 200]
    before = [o for o in outcomes if o[0] < lost_at]
    after = [o for o in outcomes if o[0] > lost_at + 0.5]
    missing = [(round(o[0] - lost_at, 3), o[2]) for o in answered if o[2] not in audited]
    unanswered = set(audited) - {o[2] for o in answered}
    print(f"\nreplica {signal.Signals(signum).name} mid-traffic: {len(outcomes)} requests ({len(before)} before), "
          f"{len(failed)} failed {sorted({o[1] for o in failed})}; audit records {len(audited)} "
          f"({', '.join(f'{k}: {len(v)}' for k, v in records.items())}), answered 200 without a record: {len(missing)}, "
          f"records of unanswered requests: {len(unanswered)}")
    assert len(before) > 20 and len(after) > 20, "too little traffic to say anything"
    assert all(o[1] == 200 for o in after), "requests failed after the load balancer should have moved on"
    assert sum(len(rs) for rs in records.values()) == len(audited), "a decision was audited twice"
    assert len(failed) <= clients, f"{len(failed)} requests failed, more than were in flight: {failed}"
    assert all(o[0] <= lost_at + 0.5 for o in failed)
    if signum == signal.SIGTERM:
        assert all(o[2] is None for o in failed), f"a request the gateway decided failed: {failed}"
        assert not missing, f"answered requests without an audit record: {missing}"
        assert not unanswered, f"audit records of requests never answered: {sorted(unanswered)[:5]}"
    else:
        assert not missing, f"answered requests without an audit record: {missing}"
        assert len(unanswered) <= clients


def test_python_load_balancer(tmp_path: Path) -> None:
    """The fallback for machines without nginx: same client-address rules, streaming, failover."""
    fleet = start(tmp_path, lb="python")
    try:
        assert fleet.lb_kind.startswith("python")
        results = fleet.check()
        assert [got for _, got in results] == [example.expect for example, _ in results], results
        denied = chat(fleet, "org-partner-jp", CN, "example-frontier-1")
        assert denied[0] == 451
        assert wait_for_audit(fleet, denied[1]["x-gateway-decision-id"])["client_ip"] == CN
        fleet.kill_replica(1, signal.SIGKILL)
        assert all(chat(fleet, "org-developer-us", US)[0] == 200 for _ in range(6))
    finally:
        fleet.stop()


def test_the_nginx_config_is_the_deployments(fleet: LocalFleet) -> None:
    if not fleet.lb_kind.startswith("nginx"):
        pytest.skip(f"nginx could not be had here; the fleet used {fleet.lb_kind}")
    config = (fleet.workdir / "nginx" / "nginx.conf").read_text()
    assert f"include {ROOT / 'deploy' / 'nginx' / 'proxy.conf'};" in config
    assert f"proxy_bind {LB_SOURCE};" in config


def test_make_fleet_runs_the_module() -> None:
    dry = subprocess.run(["make", "-n", "fleet", "REPLICAS=3"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"scripts/with-redis .*python -m devtools\.fleet_local --replicas 3", dry.stdout), dry.stdout


def test_command_line_check_and_ctrl_c(tmp_path: Path) -> None:
    """What `make fleet` runs: `--check` reports every example and exits 0; without it the fleet
    serves until SIGINT, then stops every process it started."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL is not set: run under scripts/with-redis")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base = [sys.executable, "-m", "devtools.fleet_local", "--port", "0", "--no-prometheus"]
    checked = subprocess.run(base + ["--check", "--workdir", str(tmp_path / "check")], capture_output=True, text=True,
                             timeout=110, env=environ, cwd=ROOT)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert checked.stdout.count("  ok ") == 9 and " BAD " not in checked.stdout, checked.stdout[-2000:]
    workdir = tmp_path / "serve"
    process = subprocess.Popen(base + ["--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=environ, cwd=ROOT)
    output: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("Press Ctrl-C" in line for line in list(output)) and time.monotonic() < deadline \
                and process.poll() is None:
            time.sleep(0.1)
        assert any("Press Ctrl-C" in line for line in output), "".join(output)[-3000:]
        lb_port = int(re.search(r"load balancer\s+http://127\.0\.0\.1:(\d+)", "".join(output)).group(1))
        process.send_signal(signal.SIGINT)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        reader.join(10)
    assert process.returncode == 0, "".join(output)[-3000:]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", lb_port)) != 0, "the load balancer still listens after Ctrl-C"
    for log in (workdir / "logs").glob("gateway-*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()[-3000:]

