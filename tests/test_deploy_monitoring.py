"""deploy/: the Grafana dashboard and the Prometheus rules (docs/metrics.md) checked against
the metrics the gateway really exports, and the rules run through promtool: its
syntax check, and the unit tests in deploy/prometheus/alerts.test.yml that fire
every alert from synthetic series and keep it silent on healthy ones.

promtool comes from scripts/promtool (PATH, or Debian's prometheus package unpacked
into the venv); where it cannot be had, the promtool tests skip and say why."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import LoopCounter, Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "frontier-gateway.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts.test.yml"

# Labels Prometheus adds to every scraped series (deploy/prometheus/prometheus.yml).
TARGET_LABELS = frozenset({"job", "instance"})
# Series of Prometheus's own that rules may use besides the gateway's.
SCRAPE_SERIES = {"up": TARGET_LABELS}
# Registered by the audit logs (gateway/audit/log.py), so a bare Metrics() has none; the
# checkpoint age only with audit.signing_key_file.
CONDITIONAL: dict[str, frozenset[str]] = {"gateway_audit_checkpoint_age_seconds": TARGET_LABELS,
                                          "gateway_audit_writable": TARGET_LABELS}
SEVERITIES = {"critical", "warning", "info"}
# Grafana's built-in variables, replaced by plausible values for promtool's parser.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "15s"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


# What the gateway exports


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    """Every series name a gateway's /metrics can carry, with its label names
    (histograms: _bucket with le, _sum, _count; counters: _total)."""
    metrics = Metrics(fleet=True)
    for collector in vars(metrics).values():
        # A labelled metric shows no samples until a child exists; make one of each.
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*["x"] * len(collector._labelnames))
        elif isinstance(collector, LoopCounter):
            collector.labels(*["x"] * len(collector.labelnames))
    series: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) | TARGET_LABELS for name, labels in series.items()} | CONDITIONAL


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bgateway_[a-z0-9_]+\b|\bup\b", _STRING.sub('""', expr)))


def label_errors(expr: str, known: dict[str, frozenset[str]], *extra: str) -> list[str]:
    """Label names the expression (or a legend/annotation in `extra`) uses that none of
    its metrics carries."""
    names = metric_names(expr)
    errors = [f"unknown metric {name}" for name in sorted(names - known.keys())]
    for metric, matchers in _SELECTOR.findall(expr):
        if metric in known:
            errors += [f"{metric} has no label {label}" for label in _MATCHER.findall(matchers)
                       if label not in known[metric]]
    carried = frozenset().union(*(known.get(name, frozenset()) for name in names))
    grouped = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    legends = {label for text in extra for label in _LEGEND.findall(text)}
    errors += [f"no metric in the expression carries label {label}" for label in sorted((grouped | legends) - carried)]
    return errors


# promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:  # running from a venv: keep the tool beside it
        env["VENV"] = sys.prefix
    found = subprocess.run([str(ROOT / "scripts" / "promtool"), "--path"], capture_output=True, text=True, env=env,
                           timeout=100)
    if found.returncode == 127:
        pytest.skip(f"promtool cannot be obtained here: {found.stderr.strip()}")
    assert found.returncode == 0, found.stderr
    return found.stdout.strip().splitlines()[-1]


def run_promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    output = run_promtool(promtool, "check", "rules", ALERTS.name)
    assert "SUCCESS" in output


def test_alert_unit_tests_pass(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", ALERT_TESTS.name)


@pytest.mark.parametrize("config", [PROMETHEUS / "prometheus.yml", ROOT / "deploy" / "compose" / "prometheus.yml"])
def test_prometheus_configs_are_valid_and_send_a_token(promtool: str, config: Path, tmp_path: Path) -> None:
    """Each shipped scrape config authenticates to /metrics (admin.metrics_require_token) with a
    bearer token read from a file; promtool checks it with that file put where it points."""
    document = yaml.safe_load(config.read_text())
    (job,) = [job for job in document["scrape_configs"] if job["job_name"] == "frontier-gateway"]
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer" and "credentials" not in authorization
    (tmp_path / "token").write_text("a-viewer-token")
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    document["rule_files"] = [str(ALERTS)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(document))
    output = run_promtool(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert "1 rule files found" in output


def test_dashboard_queries_parse_as_promql(promtool: str, tmp_path: Path) -> None:
    """Each panel query, Grafana variables filled in, is a valid PromQL expression."""
    rules = [{"record": f"dashboard:panel_{panel['id']}_{target['refId']}:check", "expr": fill_variables(target["expr"])}
             for panel in panels(load_dashboard()) for target in panel.get("targets", [])]
    (tmp_path / "dashboard-queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", "dashboard-queries.yml", cwd=tmp_path)


def fill_variables(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?[a-zA-Z_]+\}?", ".*", expr)


# The alert rules


def load_alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_alerts_name_only_exported_metrics_and_labels(exported: dict[str, frozenset[str]]) -> None:
    known = {**exported, **SCRAPE_SERIES}
    problems = {rule["alert"]: errors for rule in load_alerts()
                if (errors := label_errors(rule["expr"], known))}
    assert problems == {}


def test_every_alert_is_labelled_and_explained() -> None:
    for rule in load_alerts():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), rule["alert"]


def test_alerts_cover_the_spec() -> None:
    """The alerts on docs/metrics.md's series, and the two metrics added with credential misuse and shadow rules."""
    exprs = {rule["alert"]: rule["expr"] for rule in load_alerts()}
    used = " ".join(exprs.values())
    assert 'reason="jurisdiction_embargoed"' in exprs["GatewayEmbargoedJurisdictionTraffic"]
    vetted = exprs["GatewayVettedCredentialFromDeniedCountry"]
    assert "gateway_requests_total" in vetted and "vetted_partner" in vetted and "jurisdiction_of_concern" in vetted
    for metric in ("gateway_policy_reloads_total", "gateway_redis_up", "gateway_audit_spooled", "gateway_audit_lost_total",
                   "gateway_upstream_errors_total", "gateway_policy_info", "gateway_credential_misuse_total",
                   "gateway_would_deny_total"):
        assert metric in used, metric


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in load_alerts()}
    assert names - firing == set(), "never shown firing"
    assert names - silent == set(), "never shown silent"


# The dashboard


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # inside a collapsed row


def test_dashboard_is_current_grafana_json() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39  # Grafana 11
    assert dashboard["uid"] and dashboard["title"]


def test_dashboard_datasource_is_a_variable() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    laid_out = list(panels(load_dashboard()))
    ids = [panel["id"] for panel in laid_out]
    assert len(ids) == len(set(ids))
    boxes = [(p["title"], p["gridPos"]) for p in laid_out]
    for i, (title, a) in enumerate(boxes):
        assert 0 <= a["x"] and a["x"] + a["w"] <= 24, title
        for other, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{title} overlaps {other}"


def test_every_panel_queries_exported_metrics(exported: dict[str, frozenset[str]]) -> None:
    problems: dict[str, list[str]] = {}
    for panel in panels(load_dashboard()):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        if not any(metric_names(t["expr"]) & exported.keys() for t in targets):
            problems[panel["title"]] = ["no query names an exported metric"]
        for target in targets:
            if errors := label_errors(target["expr"], exported, target.get("legendFormat", "")):
                problems.setdefault(panel["title"], []).extend(errors)
    assert problems == {}


def test_dashboard_variables_query_exported_metrics(exported: dict[str, frozenset[str]]) -> None:
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["definition"]
            assert metric_names(query) <= exported.keys(), query
            label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert label and label[2] in exported[next(iter(metric_names(query)))], query


def test_dashboard_shows_every_exported_metric(exported: dict[str, frozenset[str]]) -> None:
    def family(name: str) -> str:
        return re.sub(r"_(bucket|sum|count)$", "", name)

    shown = {family(name) for panel in panels(load_dashboard()) for target in panel.get("targets", [])
             for name in metric_names(target["expr"])}
    # The gateway's own; the standard process_* and python_info series have dashboards of their own.
    assert {family(name) for name in exported if name.startswith("gateway_")} - shown == set()


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "frontier-gateway.yml").read_text())
    assert [p["type"] for p in providers["providers"]] == ["file"]
