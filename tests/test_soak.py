"""bench/soak.py, bounded: the soak harness runs the fleet for ~12 s with one Redis restart and
two policy reloads (one through the files and SIGHUP, one through the admin API), and two of
its flood classes in one flood window; its checks hold. The full run is `make soak`
(bench/SOAK.md); this keeps the harness from rotting. The other flood classes fail until the
defenses they test are in (bench/SOAK.md lists them): the short run leaves them out, and the
verdicts they rest on are checked here on records that must pass and fail them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.fleet_local import find_nginx

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)
# Every flood class whose outcome a 12-second run can see: the slow ones are closed only at the
# head and body deadlines (10 s and 60 s by default), which `make soak` runs long enough to reach.
HOLDING_FLOODS = ("flood_xff_padded", "flood_xff_malformed", "flood_connection_header", "flood_underscore_headers",
                  "flood_multi_model", "flood_quota_gzip", "flood_quota_stream_no_usage", "flood_quota_disconnect",
                  "flood_big_headers", "flood_long_path", "flood_endless_header", "flood_denied_org_4mb",
                  "flood_unauthenticated", "flood_models_probe")


def _bench(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_a_short_soak_with_a_redis_restart_and_reloads(tmp_path: Path) -> None:
    if not (os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")):
        pytest.skip("no redis-server: run under scripts/with-redis")
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.2", "--rate", "20",
            "--lb", "nginx" if find_nginx() else "python", "--warmup", "3", "--rss-every", "2",
            "--rss-tolerance", "0.25", "--reload-every", "4", "--faults", "redis_restart", "--fault-offset", "2",
            "--redis-down", "1", "--floods", ",".join(HOLDING_FLOODS), "--flood-rate", "10", "--flood-window", "4",
            "--out", str(out), "--workdir", str(tmp_path / "work")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=80, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["passed"] and all(report["acceptance"].values())
    by_class = report["by_class"]
    # Every class was sent; the allowed ones got through, the denied ones were denied as they should be.
    assert all(sum(counts.values()) > 0 for counts in by_class.values()), by_class
    for name, status in (("denied_embargoed_country", "451"), ("denied_unknown_org", "403"),
                         ("denied_bad_token", "401"), ("denied_unvetted_covered_model", "404")):
        assert set(by_class[name]) <= {status, "503"}, (name, by_class[name])
    assert by_class["allowed_chat"].get("200") and by_class["allowed_stream"].get("200")
    assert report["denied"]["in_upstream_journal"] == 0 and report["upstream_journal"]["requests"] > 0
    assert [w["kind"] for w in report["fault_windows"]] == ["redis_restart"]
    assert {r["kind"] for r in report["reloads"]} == {"files+SIGHUP", "admin API"}
    audit = report["audit"]
    assert audit["stream_records"] >= audit["answers_with_id"] > 0
    assert all(v["samples"] >= 2 for v in report["rss"].values()) and len(report["rss"]) == 2
    # The floods ran in their window, from their own process, and were answered as their class must be.
    floods = report["floods"]
    assert floods["windows"] == [[4.0, 8.0]] and report["flood_requests"] > 10
    assert floods["by_class"]["flood_unauthenticated"].get("401") and not floods["wrong"]
    assert set(floods["by_class"]["flood_models_probe"]) <= {"200", "404", "503"}
    # Every answer has a decision id; a flood client that left before its answer (a quota
    # flood's abandoned stream) saw none.
    unanswered = sum(n for counts in floods["by_class"].values() for status, n in counts.items() if not status.isdigit())
    assert audit["answers_with_id"] == (report["requests"] + report["flood_requests"]
                                        - report["by_status"].get("no_answer", 0) - unanswered)
    assert report["harness"]["floods"]["cpu_s"] >= 0 and report["legit_latency"]["allowed"]["samples_off"] > 0


def test_the_checks_catch_what_they_are_for() -> None:
    """The verdicts the soak's acceptance rests on, on records that must fail them."""
    soak = _bench("soak")
    # A stream without its [DONE], or JSON cut short, is not a whole answer.
    assert soak.complete(b'data: {"a": 1}\n\ndata: [DONE]\n\n', stream=True)
    assert not soak.complete(b'data: {"a": 1}\n\n', stream=True)
    assert soak.complete(b'{"id": "x"}', stream=False) and not soak.complete(b'{"id": "x', stream=False)
    # A policy denial reaching the upstream is caught; a forwarded request that then failed is not one.
    assert not soak.forwarded({"decision": "deny", "reasons": ["jurisdiction_embargoed"], "status": 451})
    assert not soak.forwarded({"decision": "deny", "reasons": [], "error": "state_unavailable", "status": 503})
    assert not soak.forwarded(None)
    assert soak.forwarded({"decision": "deny", "reasons": [], "error": "upstream_timeout", "status": 504})
    assert soak.forwarded({"decision": "allow", "reasons": [], "status": 200})
    exposition = 'gateway_audit_lost_total 2.0\ngateway_upstream_errors_total{kind="timeout"} 3.0\n' \
                 'gateway_upstream_errors_total{kind="connect"} 1.0\n'
    assert soak.metric(exposition, "gateway_audit_lost_total") == 2
    assert soak.metric(exposition, "gateway_upstream_errors_total") == 4
    # A request counts in a fault window if it overlapped it, grace included.
    windows = [soak.Window("redis_restart", 10.0, 18.0)]
    assert soak.in_window(soak.Result("allowed_chat", 23.0, 23.1, 503, "ok", "d", None), windows, grace=6)
    assert not soak.in_window(soak.Result("allowed_chat", 24.5, 24.6, 503, "ok", "d", None), windows, grace=6)


def _record(cls: str, status: int | None, outcome: str = "answered", **extra: object) -> dict[str, object]:
    return {"cls": cls, "variant": "", "started": 1.0, "ended": 1.1, "status": status, "outcome": outcome,
            "decision_id": "d" if status else None, "server": None, "sent": 0, "detail": "", **extra}


def test_flood_verdicts() -> None:
    """Each flood class's outcome is judged by what the issue requires of it, not by what the
    gateway happens to do: a request that must be refused and was served fails, a connection
    the gateway left open fails, a 503 counts as a refusal only inside a fault window."""
    floods = _bench("soak_floods")
    by = floods.BY_NAME
    verdict = floods.verdict
    # Refused as required, or served (a bypass), or refused the wrong way (after parsing 4 MB).
    assert verdict(by["flood_xff_padded"], _record("flood_xff_padded", 400), False) is None
    assert verdict(by["flood_xff_padded"], _record("flood_xff_padded", 451), False) is None
    assert verdict(by["flood_xff_padded"], _record("flood_xff_padded", 200), False) == "answered 200"
    assert verdict(by["flood_denied_org_4mb"], _record("flood_denied_org_4mb", 400), False) == "answered 400"
    assert verdict(by["flood_denied_org_4mb"], _record("flood_denied_org_4mb", 503), False) == "answered 503"
    assert verdict(by["flood_denied_org_4mb"], _record("flood_denied_org_4mb", 503), True) is None
    # No answer is a failure for an ordinary request; a head too big to read may be cut off.
    assert verdict(by["flood_unauthenticated"], _record("flood_unauthenticated", None, "closed"), False)
    assert verdict(by["flood_big_headers"], _record("flood_big_headers", None, "reset"), False) is None
    assert verdict(by["flood_big_headers"], _record("flood_big_headers", 200), False) == "answered 200"
    # An answer from the load balancer is not the gateway's refusal.
    assert verdict(by["flood_xff_padded"], _record("flood_xff_padded", 400, decision_id=None, server="nginx"), False)
    # Slow and idle connections: closed by the gateway (with or without a 408/431/503) passes;
    # left open fails; cut by the end of the run before its deadline is no verdict at all.
    for outcome, status in (("closed", None), ("reset", None), ("answered", 408), ("refused", None)):
        assert verdict(by["flood_slow_head"], _record("flood_slow_head", status, outcome), False) is None
    assert verdict(by["flood_slow_head"], _record("flood_slow_head", None, "open", detail="after 65 s"), False)
    assert verdict(by["flood_connections"], _record("flood_connections", None, "undecided"), False) is None
    assert verdict(by["flood_slow_body"], _record("flood_slow_body", 200), False) == "answered 200"
    # Only the abandoned quota stream may end on the client's side; a listing must not name a concealed model.
    assert verdict(by["flood_quota_disconnect"], _record("flood_quota_disconnect", None, "client_closed"), False) is None
    assert verdict(by["flood_quota_gzip"], _record("flood_quota_gzip", None, "client_closed"), False)
    assert verdict(by["flood_models_probe"], _record("flood_models_probe", 200, variant="list"), False) is None
    assert verdict(by["flood_models_probe"], _record("flood_models_probe", 200, variant="get_internal"), False)
    assert verdict(by["flood_models_probe"], _record("flood_models_probe", 200, variant="list",
                                                      detail="leak: the listing names example-frontier-3"), False)
    # A harness error is never a pass.
    assert verdict(by["flood_unauthenticated"], _record("flood_unauthenticated", None, "error"), False)


def test_what_may_reach_the_upstream() -> None:
    floods = _bench("soak_floods")
    ok = {"org": "org-developer-us", "content_type": "application/json", "method": "POST", "path": "/v1/chat/completions"}
    journal = [
        {"tag": "allowed_chat"},
        {"tag": "denied_bad_token"},  # a denied class of the normal mix
        {},  # untagged: a tag lost on the way
        {"tag": "flood_xff_padded"},  # must never be forwarded
        {"tag": "flood_connection_header", **ok},  # forwarded intact
        {"tag": "flood_connection_header", **ok, "content_type": None},  # the content type dropped on the way
        {"tag": "flood_underscore_headers", **ok, "underscored": ["content_type"]},
        {"tag": "flood_models_probe", "method": "GET", "path": "/v1/models"},  # the catalogue fetch of a listing
        {"tag": "flood_models_probe", "method": "GET", "path": "/v1/models/example-frontier-3"},
        {"tag": "flood_quota_gzip"},  # judged by the token budget instead
    ]
    found = floods.journal_violations(journal, {"allowed_chat"})
    assert {k: len(v) for k, v in found.items()} == {
        "denied_or_untagged": 2, "flood_xff_padded": 1, "flood_connection_header": 1, "flood_underscore_headers": 1,
        "flood_models_probe": 1}


def test_the_token_budget_check() -> None:
    floods = _bench("soak_floods")
    cost = {"flood_quota_gzip": 9, "flood_quota_disconnect": 19}
    day = 86_400 * 20_000
    within = [{"tag": "flood_quota_gzip", "time": day + 1}] * 50 + [{"tag": "flood_quota_disconnect", "time": day + 2}] * 4
    assert floods.quota_check(within, 500, 2, cost, 19)["held"]  # 526 <= 500 + 2 x 19
    over = within + [{"tag": "flood_quota_disconnect", "time": day + 3}]
    assert not floods.quota_check(over, 500, 2, cost, 19)["held"]  # 545
    # Each UTC day has its own budget; other tags do not count.
    next_day = [{**e, "time": e["time"] + 86_400} for e in within] + [{"tag": "allowed_chat", "time": day}] * 100
    assert floods.quota_check(within + next_day, 500, 2, cost, 19)["held"]


def test_windows_phases_and_the_latency_comparison() -> None:
    floods = _bench("soak_floods")
    assert floods.windows_for(100, 20) == [(20, 40), (60, 80)]
    assert floods.windows_for(50, 20) == [(20, 40)] and floods.windows_for(30, 0) == []
    windows = [(20.0, 40.0), (60.0, 80.0)]
    # Off before the first window, on inside one after the settle time, neither while it settles.
    assert [floods.phase(t, windows, 3) for t in (5, 21, 24, 39.9, 41, 44, 61)] == ["off", None, "on", "on", None,
                                                                                    "off", None]
    off = [0.010] * 990 + [0.020] * 10
    assert floods.p99_check([0.011] * 990 + [0.039] * 10, off, 2.0, 200)["held"]
    worse = floods.p99_check([0.011] * 980 + [0.050] * 20, off, 2.0, 200)
    assert not worse["held"] and worse["ratio"] == 5.0 and worse["measured"]  # 50 ms against 10 ms
    few = floods.p99_check([0.5] * 10, off, 2.0, 200)
    assert not few["measured"] and not few["held"]


def test_the_flood_client_tells_a_closed_connection_from_one_left_open() -> None:
    """The raw flood clients against two loopback servers: one that refuses an unfinished or
    oversized head in time (a 408 or 431, then closes), one that reads forever. The first
    must pass every slow class's verdict, the second fail it."""
    floods = _bench("soak_floods")

    async def strict(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        try:
            while len(received) < 32 * 1024:
                received += await asyncio.wait_for(reader.read(65536), 0.3)
            status = b"431 Request Header Fields Too Large"
        except TimeoutError:
            status = b"408 Request Timeout"
        body = b'{"error": {}}'
        writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\nx-gateway-decision-id: d\r\nconnection: close\r\n\r\n%s"
                     % (status, len(body), body))
        writer.close()

    async def lenient(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    async def run() -> dict[str, list[dict[str, object]]]:
        found = {}
        for name, handler in (("strict", strict), ("lenient", lenient)):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            spec = floods.Spec(t0=time.monotonic(), duration=5, windows=[], rate=0, classes=[], lb_url="",
                               replicas=[("127.0.0.1", port)], source="127.0.0.2", keys={"developer": "k"},
                               us="8.8.8.8", ir="217.218.0.1", head_deadline=0.5, body_deadline=0.5, slack=0.7,
                               endless_bytes=256 * 1024)
            client = floods.Floods(spec)
            records = await asyncio.gather(client.slow_head(), client.slow_body(), client.idle_connection(),
                                           client.endless_header())
            found[name] = [dataclasses.asdict(r) for r in records]
            server.close()
        return found

    found = asyncio.run(run())
    by = floods.BY_NAME
    for record in found["strict"]:
        assert floods.verdict(by[record["cls"]], record, False) is None, record
        assert record["status"] in (408, 431) and record["decision_id"] == "d", record
    assert [r["status"] for r in found["strict"]] == [408, 408, 408, 431]
    for record in found["lenient"]:
        assert record["outcome"] == "open" and floods.verdict(by[record["cls"]], record, False), record
