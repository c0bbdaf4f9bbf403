"""Prometheus metrics (docs/metrics.md). Labels are bounded: reason codes, stage and tier
names, canonical model ids from the policy, ISO country codes — never IPs, org
ids or free text. Each gateway owns a registry, so several can share a process.

A model the policy conceals is never a label value (issue 12): /metrics reaches
monitoring systems, dashboards and their viewers, who may not know of a model
that callers get a 404 for. While a model is not yet released, in its
`internal` stage, or in any stage but `general` with `conceal_unreleased` on,
its series say `model="unreleased"` (`model_label`); the audit records keep the
real id for those who may read them."""

from __future__ import annotations

import math
import platform
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import (CollectorRegistry, Counter, Gauge, PlatformCollector, ProcessCollector,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway.policy import countries

if TYPE_CHECKING:
    from gateway.policy.decision import Decision

UNRELEASED = "unreleased"  # the model label of every concealed model
NO_MODEL = "none"          # no model was established (or the policy does not know it)
UNKNOWN_COUNTRY = "unknown"  # no country was established, or not an ISO 3166-1 code

# The *_created series double the exposition for no use in dashboards or alerts.
disable_created_metrics()

# Decisions take microseconds; requests through an upstream take milliseconds to minutes.
DECISION_BUCKETS = (2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025)
REQUEST_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, *, fleet: bool = False) -> None:
        """`fleet`: the gateway shares state through Redis, so gateway_redis_up means something."""
        self.registry = registry = CollectorRegistry()
        # The standard process_* (CPU, memory, file descriptors) and python_info series.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.build_info = Gauge("gateway_build_info", "The gateway's version and Python's (value 1).",
                                ["version", "python"], registry=registry)
        self.build_info.labels(build_version(), platform.python_version()).set(1)
        self.requests = LoopCounter("gateway_requests", "Requests by decision.",
                                    ["decision", "reason", "model", "stage", "tier"], registry)
        self.denials = LoopCounter("gateway_denials", "Denied requests.", ["reason", "country", "model"], registry)
        self.decision_seconds = LoopHistogram("gateway_decision_seconds", "Time to decide.", DECISION_BUCKETS, registry)
        self.upstream_seconds = LoopHistogram("gateway_upstream_seconds", "Upstream time to response headers.",
                                              REQUEST_BUCKETS, registry)
        self.request_seconds = LoopHistogram("gateway_request_seconds", "Whole request time.", REQUEST_BUCKETS, registry)
        self.inflight = LoopGauge("gateway_inflight_requests", "Requests in progress.", registry)
        self.upstream_errors = Counter("gateway_upstream_errors", "Upstream failures.", ["kind"], registry=registry)
        self.policy_info = Gauge("gateway_policy_info", "The policy version in force (value 1).", ["version"], registry=registry)
        self.policy_reloads = Counter("gateway_policy_reloads", "Policy reloads.", ["result"], registry=registry)
        self.suspensions_active = Gauge("gateway_suspensions_active", "Suspensions in force.", registry=registry)
        self.changes_awaiting_countersign = Gauge(
            "gateway_changes_awaiting_countersign", "Tightenings applied on one operator's word, not yet countersigned.",
            registry=registry)
        self.changes_countersign_overdue = Gauge(
            "gateway_changes_countersign_overdue", "Of those, the ones past change_control.countersign_within.",
            registry=registry)
        self.proposals_open = Gauge("gateway_proposals_open", "Loosening changes waiting for approval.", registry=registry)
        # Embedded mode has no Redis: the series would say 0, and GatewayRedisDown would fire.
        self.redis_up = Gauge("gateway_redis_up", "1 when Redis answers (fleet mode).",
                              registry=registry if fleet else None)
        self.audit_spooled = Gauge("gateway_audit_spooled", "Audit records waiting to be written.", registry=registry)
        self.audit_lost = Counter("gateway_audit_lost", "Audit records that could not be written.", registry=registry)
        self.credential_misuse = Counter("gateway_credential_misuse", "Requests whose credential was seen from one more "
                                         "country than the misuse threshold allows.", ["tier"], registry=registry)
        self.would_deny = LoopCounter("gateway_would_deny", "Requests shadow-mode rules would have denied.", ["reason"],
                                      registry)
        self.revocations = Counter("gateway_revocations", "Requests ended while being answered because the policy "
                                   "came to deny them (reason: the first new reason).", ["reason"], registry=registry)
        self.geoip_age = Gauge("gateway_geoip_database_age_seconds", "Age of each GeoIP database in use, from its "
                               "build date.", ["database"], registry=registry)
        self.geoip_max_age = Gauge("gateway_geoip_max_age_seconds", "geoip.max_age_days in seconds: older databases "
                                   "are reported; at twice it, covered models are refused.", registry=registry)
        self.geoip_reloads = Counter("gateway_geoip_reloads", "GeoIP database files replaced on disk: picked up "
                                     "(success) or refused, the running one kept (refused).", ["database", "result"],
                                     registry=registry)
        self.geoip_anonymizer_loaded = Gauge("gateway_geoip_anonymizer_database_loaded", "1 when an anonymous-IP "
                                             "database is loaded (else no request is known to be an anonymizer).",
                                             registry=registry)
        self.admin_changes = Counter("gateway_admin_changes", "Changes asked of the admin API or the console, by action and result "
                                     "(ok, proposed, refused, forbidden, failed).", ["action", "result"],
                                     registry=registry)
        self.admin_auth_failures = Counter("gateway_admin_auth_failures", "Admin requests without a valid admin token "
                                           "(reason: missing, invalid).", ["reason"], registry=registry)
        self.requests_by_country = LoopCounter("gateway_requests_by_country", "Requests by the caller's observed "
                                               "country (ISO 3166-1 alpha-2, or unknown) and decision.",
                                               ["country", "decision"], registry)
        self.jwks_failures = Counter("gateway_jwks_fetch_failures", "JWKS fetches (jwks_url) or re-reads (jwks_file) "
                                     "that failed; the last good key set stays in use.", registry=registry)
        self._by_country: dict[tuple[str | None, str], Tally] = {}
        self.export_dropped = Counter("gateway_export_dropped", "Audit records not delivered to the OTLP collector "
                                      "(export.otlp): queue_full, export_failed, shutdown, unreadable.", ["reason"],
                                      registry=registry)
        self._policy_version: str | None = None
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: prometheus-client's labels() is costly, and
        label sets are few (see the module doc)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def count_country(self, country: str | None, decision: str) -> None:
        """One request in gateway_requests_by_country_total. The label child is kept per
        (country, decision) as given, so a request costs a dict lookup; the countries a
        GeoIP database returns are few, and anything not ISO 3166-1 is `unknown`."""
        key = (country, decision)
        tally = self._by_country.get(key)
        if tally is None:
            label = country if country is not None and countries.is_country(country) else UNKNOWN_COUNTRY
            tally = self._by_country[key] = self.requests_by_country.labels(label, decision)
        tally.inc()

    def policy_loaded(self, version: str) -> None:
        if self._policy_version is not None:
            self.policy_info.remove(self._policy_version)
        self.policy_info.labels(version).set(1)
        self._policy_version = version

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Tally:
    """One series of a `LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _LoopMetric:
    """A series family the event loop updates and a scrape reads (see the module doc)."""

    kind = ""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        registry.register(self)

    def describe(self) -> list[Metric]:
        """The names it exports, so the registry refuses another metric of the same name."""
        return [Metric(self.name, self.documentation, self.kind)]


class LoopCounter(_LoopMetric):
    """A labelled counter, exposed as prometheus-client's Counter exposes one."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], Tally] = {}  # in the order they were first counted, as Counter's
        super().__init__(name, documentation, registry)

    def labels(self, *values: str) -> Tally:
        tally = self._series.get(values)
        if tally is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            tally = self._series[values] = Tally()
        return tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self._series.items()):
            family.add_metric(values, tally.value)
        yield family


class LoopGauge(_LoopMetric):
    kind = "gauge"

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.value = 0.0
        super().__init__(name, documentation, registry)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class LoopHistogram(_LoopMetric):
    """A histogram, exposed as prometheus-client's Histogram exposes one: an observation
    counts in the first bucket whose bound it does not exceed."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.bounds = (*map(float, buckets), math.inf)
        self.counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self._le = [floatToGoString(bound) for bound in self.bounds]
        super().__init__(name, documentation, registry)

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0.0
        for le, count in zip(self._le, list(self.counts)):
            total += count
            cumulative.append((le, total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


def model_label(decision: Decision | None, conceal_unreleased: bool) -> str:
    """The `model` label of a decided request: its canonical id, unless the model is
    concealed at the time of the decision (see the module doc)."""
    if decision is None or decision.model is None:
        return NO_MODEL
    stage = decision.stage
    if stage is None or stage == "internal" or (conceal_unreleased and stage != "general"):
        return UNRELEASED
    return decision.model


def build_version() -> str:
    try:
        return metadata.version("frontier-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
