"""The GeoIP databases in force, and how old they are (issue 13).

Address blocks change hands every month, so a place read from an old database
may be wrong, and a wrong place is a wrong export-control fact. Each database's
age is counted from its build date (the `build_epoch` of its metadata), the
embedded default's too, against `geoip.max_age_days`:

- past it, `gateway_geoip_database_age_seconds{database}` shows it and the
  GatewayGeoIPDatabaseOld alert fires (deploy/prometheus/alerts.yml); requests
  are served as before and /readyz stays ready;
- past twice it, the place is no longer trusted for covered models: the request
  path passes `Facts.geo_expired` to the decision core, which refuses them with
  503 state_unavailable until a fresh database is in place. Other models keep
  working.

`LiveGeo` holds the `GeoIP` built from named database files ("country",
"anonymous_ip", "region_overlay"; any other a `build` function knows how to open) and answers
lookups with it. The files are polled (stat every POLL_S, as the policy files
are): when one is replaced on disk, a new GeoIP is built from the files and
probed beside the running one, then swapped in by one assignment, so a lookup
sees the old databases or the new, never a mix. A replacement that cannot be
opened, is of the wrong type or fails a probe lookup is refused and the running
databases stay; either way `gateway_geoip_reloads_total{database,result}` counts
it and the log says so.

A policy that denies anonymizers needs the anonymous-IP database: without one no
request is known to come through an anonymizer, and the rule denies nothing.
Nothing may look enforced that is not, so `unenforced_anonymizer_rules` names
such rules for the startup log and `gateway policy validate --config`, and
`gateway_geoip_anonymizer_database_loaded` is 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.config import GeoIPConfig
from gateway.geo.reader import GeoDatabaseError, GeoIP, Place
from gateway.geo.embedded import default_country_db
from gateway.geo.region_overlay import RegionOverlay, default_region_overlay
from gateway.metrics import Metrics
from gateway.policy.snapshot import Policy

log = logging.getLogger("gateway.geo")

DAY_S = 86_400.0
POLL_S = 1.0  # as the policy files (gateway/live/state.py)

# Addresses looked up in a new database before it is used: a damaged tree or data
# section fails here rather than in a request.
PROBES = ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888")

Build = Callable[[Mapping[str, Path]], GeoIP]
Stamp = tuple[int, int, int, int] | None


def configured_files(config: GeoIPConfig) -> dict[str, Path]:
    """The database files the config names, by name; the embedded country database by default,
    and the embedded region overlay unless `geoip.region_overlay` is false."""
    files = {"country": Path(config.country_db) if config.country_db else default_country_db()}
    if config.anonymous_ip_db:
        files["anonymous_ip"] = Path(config.anonymous_ip_db)
    if config.region_overlay:
        files["region_overlay"] = default_region_overlay()
    return files


UNENFORCED_ANONYMIZERS = ("denies anonymizers, but no anonymous-IP database is configured (geoip.anonymous_ip_db): "
                          "no request is known to come through an anonymizer, so this rule denies nothing")


def unenforced_anonymizer_rules(policy: Policy, has_anonymizer_database: bool) -> list[str]:
    """The policy's `deny_anonymizers` rules that nothing enforces: all of them, without
    an anonymous-IP database."""
    if has_anonymizer_database:
        return []
    rule_sets = (("all_models", policy.all_models), ("covered_models", policy.covered_models))
    return [f"rules.{name}.deny_anonymizers" for name, rules in rule_sets if rules.deny_anonymizers]


def build_geoip(files: Mapping[str, Path]) -> GeoIP:
    """The GeoIP of the configured files: a country database, maybe an anonymous-IP one
    and a region overlay."""
    overlay = RegionOverlay(files["region_overlay"]) if "region_overlay" in files else None
    try:
        return GeoIP(files["country"], files.get("anonymous_ip"), overlay)
    except GeoDatabaseError:
        if overlay is not None:
            overlay.close()
        raise


class LiveGeo:
    """The GeoIP in force, with the age of each of its databases."""

    def __init__(self, files: Mapping[str, Path], metrics: Metrics, *, max_age_days: int,
                 build: Build = build_geoip) -> None:
        self.files = dict(files)
        self.metrics = metrics
        self.max_age_s = max_age_days * DAY_S
        self.build = build
        self._stamps = _stamps(self.files)  # before opening: a change in between is seen at the next check
        self.geo = build(self.files)
        self._oldest = min(self.geo.built.values())
        self._conditions: dict[str, str] = {}
        self._on_swap: list[Callable[[], None]] = []
        metrics.geoip_max_age.set(self.max_age_s)

    def locate(self, ip: str) -> Place:
        return self.geo.locate(ip)

    @property
    def has_anonymizer_database(self) -> bool:
        return "anonymous_ip" in self.geo.built

    def expired(self, now: float) -> bool:
        """Whether some database is older than twice the maximum age at `now`."""
        return now - self._oldest > 2 * self.max_age_s

    def ages(self, now: float) -> dict[str, float]:
        """Each database's age in seconds at `now` (never negative: a build date ahead
        of the clock is no age at all)."""
        return {name: max(0.0, now - built) for name, built in self.geo.built.items()}

    def report(self, now: float) -> None:
        """Set the age metrics for `now`, and log each database that has become old or expired."""
        for name, age in self.ages(now).items():
            self.metrics.geoip_age.labels(name).set(age)
            condition = "expired" if age > 2 * self.max_age_s else "old" if age > self.max_age_s else "fresh"
            if condition != self._conditions.get(name, "fresh"):
                self._log_condition(name, condition, age)
            self._conditions[name] = condition
        self.metrics.geoip_anonymizer_loaded.set(1 if self.has_anonymizer_database else 0)

    def _log_condition(self, name: str, condition: str, age: float) -> None:
        path, days, limit = self.files[name], age / DAY_S, self.max_age_s / DAY_S
        if condition == "expired":
            log.error("GeoIP %s database %s is %.0f days old (over twice geoip.max_age_days = %.0f): requests for "
                      "covered models are refused until a fresh database is in place", name, path, days, limit)
        elif condition == "old":
            log.warning("GeoIP %s database %s is %.0f days old (geoip.max_age_days = %.0f): install a fresh one; "
                        "at twice that age covered models are refused", name, path, days, limit)
        else:
            log.warning("GeoIP %s database %s is fresh again (%.0f days old)", name, path, days)

    def on_swap(self, callback: Callable[[], None]) -> None:
        """Call `callback` after new databases are swapped in (to drop what was worked out with the old)."""
        self._on_swap.append(callback)

    def check_files(self) -> None:
        """Swap in the databases if a file changed on disk and the new ones are sound."""
        stamps = _stamps(self.files)
        changed = [name for name in self.files if stamps[name] != self._stamps[name]]
        if not changed:
            return
        self._stamps = stamps  # a refused file is tried again when it changes again
        try:
            geo = self.build(self.files)
            for address in PROBES:
                geo.locate(address)
        except Exception as error:  # GeoDatabaseError, or whatever a damaged file raises on lookup
            self._count(changed, "refused")
            log.error("GeoIP %s refused, the running databases stay: %s", _listing(self.files, changed), error)
            return
        # The old readers are not closed: a lookup still holding one (from another
        # thread, say) must not find it closed; they go when the last reference does.
        self.geo, self._oldest = geo, min(geo.built.values())
        for callback in self._on_swap:
            callback()
        self._count(changed, "success")
        log.info("GeoIP %s reloaded (%s)", _listing(self.files, changed), geo.database_type)

    def _count(self, names: list[str], result: str) -> None:
        for name in names:
            self.metrics.geoip_reloads.labels(name, result).inc()

    async def watch(self, clock: Callable[[], float]) -> None:
        """Pick up replaced files and keep the age metrics current, until cancelled."""
        while True:
            await asyncio.sleep(POLL_S)
            self.check_files()
            self.report(clock())

    def close(self) -> None:
        self.geo.close()


def _stamps(files: Mapping[str, Path]) -> dict[str, Stamp]:
    return {name: _stamp(path) for name, path in files.items()}


def _stamp(path: Path) -> Stamp:
    """What changes when a file is replaced (renamed over: the inode) or rewritten (size,
    time); stat follows symlinks, so switching a link to another file counts too."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def _listing(files: Mapping[str, Path], names: list[str]) -> str:
    return ", ".join(f"{name} database {files[name]}" for name in names)
