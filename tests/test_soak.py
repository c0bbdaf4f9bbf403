"""bench/soak.py, bounded: the soak harness runs the fleet for ~12 s with one Redis restart and
two policy reloads (one through the files and SIGHUP, one through the admin API), and its
checks hold. The full run is `make soak` (bench/SOAK.md); this keeps the harness from rotting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.fleet_local import find_nginx

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(90)


def test_a_short_soak_with_a_redis_restart_and_reloads(tmp_path: Path) -> None:
    if not (os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")):
        pytest.skip("no redis-server: run under scripts/with-redis")
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.2", "--rate", "20",
            "--lb", "nginx" if find_nginx() else "python", "--warmup", "3", "--rss-every", "2",
            "--rss-tolerance", "0.25", "--reload-every", "4", "--faults", "redis_restart", "--fault-offset", "2",
            "--redis-down", "1", "--out", str(out), "--workdir", str(tmp_path / "work")]
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
    assert audit["answers_with_id"] == report["requests"] - report["by_status"].get("no_answer", 0)
    assert audit["stream_records"] >= audit["answers_with_id"] > 0
    assert all(v["samples"] >= 2 for v in report["rss"].values()) and len(report["rss"]) == 2


def test_the_checks_catch_what_they_are_for() -> None:
    """The verdicts the soak's acceptance rests on, on records that must fail them."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import soak
    finally:
        sys.path.remove(str(ROOT / "bench"))
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
