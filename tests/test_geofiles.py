"""GeoIP databases that cannot silently age (issue 13): each database's age from its
build date, reported; past twice `geoip.max_age_days`, covered models refused with
503 while the others are served. A database replaced on disk is used without a
restart; a damaged replacement is refused and the running one kept. Real gateways
on loopback, real database files (tests/mmdb.py writes them with a chosen build date)."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e import DECISION_TIME, US_IP, Stack
from gateway.config import GeoIPConfig
from gateway.geo.files import DAY_S, LiveGeo, configured_files
from gateway.metrics import Metrics
from gateway.geo.region_overlay import default_region_overlay
from mmdb import write

US_NETWORK = "216.160.83.0/24"  # US_IP's network
COVERED, NOT_COVERED = "frontier-5.6", "small-2"


def country_db(path: Path, *, days_old: float, country: str = "US") -> Path:
    """A City database placing US_IP in `country`, built `days_old` days before DECISION_TIME."""
    return write(path, {US_NETWORK: {"country": {"iso_code": country}}},
                 build_epoch=int(DECISION_TIME - days_old * DAY_S))


def anonymous_db(path: Path, *, days_old: float) -> Path:
    return write(path, {"1.2.3.0/24": {"is_anonymous": True}}, "GeoIP2-Anonymous-IP",
                 build_epoch=int(DECISION_TIME - days_old * DAY_S))


def replace(path: Path, write_new: Callable[[Path], object]) -> None:
    """Replace `path` the way an update should: write beside it, rename over it."""
    staged = path.with_name(path.name + ".new")
    write_new(staged)
    os.replace(staged, path)


def garbage(path: Path) -> None:
    path.write_bytes(b"not a MaxMind database\n" * 100)


def wait_for(stack: Stack, database: str, result: str, count: float = 1) -> None:
    key = (("database", database), ("result", result))
    deadline = time.monotonic() + 10
    while samples(stack, "gateway_geoip_reloads_total").get(key, 0) < count:
        assert time.monotonic() < deadline, f"no {result} reload of {database}"
        time.sleep(0.1)


def samples(stack: Stack, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    with urllib.request.urlopen(stack.admin_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples if sample.name == name}


def chat(stack: Stack, model: str, org: str = "org-acme") -> tuple[int, dict[str, object]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(stack.url + "/v1/chat/completions", body, {
        "Authorization": f"Bearer {stack.api_key(org)}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ready(stack: Stack) -> bool:
    try:
        with urllib.request.urlopen(stack.admin_url + "/readyz", timeout=5) as response:
            return bool(json.loads(response.read())["ready"])
    except urllib.error.HTTPError:
        return False


def audit_reasons(stack: Stack) -> list[list[str]]:
    return [record["reasons"] for record in stack.audit_records() if record.get("requested_model")]


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway whose country database is 60 days old: past 45, not past 90."""
    directory = tmp_path_factory.mktemp("old")
    stack = Stack(directory, country_db=country_db(directory / "City.mmdb", days_old=60),
                  anonymous_ip_db=anonymous_db(directory / "Anon.mmdb", days_old=10), geoip_max_age_days=45)
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway whose country database is 100 days old: past twice 45."""
    directory = tmp_path_factory.mktemp("expired")
    stack = Stack(directory, country_db=country_db(directory / "City.mmdb", days_old=100), anonymous_ip_db=None,
                  geoip_max_age_days=45)
    yield stack
    stack.close()


class TestOld:
    def test_the_age_of_each_database_is_exported(self, old: Stack) -> None:
        ages = samples(old, "gateway_geoip_database_age_seconds")
        assert ages[(("database", "country"),)] == pytest.approx(60 * DAY_S, abs=1)
        assert ages[(("database", "anonymous_ip"),)] == pytest.approx(10 * DAY_S, abs=1)
        assert samples(old, "gateway_geoip_max_age_seconds") == {(): 45 * DAY_S}

    def test_requests_are_still_served_and_the_gateway_stays_ready(self, old: Stack) -> None:
        assert chat(old, COVERED)[0] == 200
        assert chat(old, NOT_COVERED)[0] == 200
        assert ready(old)


class TestExpired:
    def test_a_covered_model_is_refused_with_503_state_unavailable(self, expired: Stack) -> None:
        status, body = chat(expired, COVERED)
        assert status == 503
        assert body["error"]["code"] == "service_unavailable"
        assert expired.received == []
        assert ["state_unavailable"] in audit_reasons(expired)

    def test_a_model_that_is_not_covered_is_served(self, expired: Stack) -> None:
        status, body = chat(expired, NOT_COVERED)
        assert status == 200 and body["model"] == NOT_COVERED

    def test_other_denials_keep_their_own_reason(self, expired: Stack) -> None:
        assert chat(expired, COVERED, org="org-not-in-policy")[0] == 403

    def test_the_gateway_stays_ready(self, expired: Stack) -> None:
        assert ready(expired)


@pytest.fixture(scope="module")
def swapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    """A gateway and its country database file, which TestHotSwap replaces in turn."""
    directory = tmp_path_factory.mktemp("swap")
    path = country_db(directory / "City.mmdb", days_old=1)
    stack = Stack(directory, country_db=path, anonymous_ip_db=None, geoip_max_age_days=45)
    yield stack, path
    stack.close()


class TestHotSwap:
    def test_a_replaced_database_is_used_without_a_restart(self, swapped: tuple[Stack, Path],
                                                             caplog: pytest.LogCaptureFixture) -> None:
        stack, path = swapped
        caplog.set_level(logging.INFO, logger="gateway.geo")
        assert chat(stack, COVERED)[0] == 200
        replace(path, lambda staged: country_db(staged, days_old=0, country="IR"))
        wait_for(stack, "country", "success")
        status, body = chat(stack, COVERED)  # the same client address: nothing remembered from before
        assert status == 451 and "jurisdiction_embargoed" in audit_reasons(stack)[-1]
        assert any("reloaded" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)

    def test_a_corrupt_replacement_is_refused_and_the_running_database_kept(
            self, swapped: tuple[Stack, Path], caplog: pytest.LogCaptureFixture) -> None:
        stack, path = swapped
        caplog.set_level(logging.INFO, logger="gateway.geo")
        before = chat(stack, NOT_COVERED)[0]
        replace(path, garbage)
        wait_for(stack, "country", "refused")
        assert chat(stack, NOT_COVERED)[0] == before == 451  # still the IR database of the test before
        assert ready(stack)
        assert any(r.levelno == logging.ERROR and "refused" in r.getMessage() for r in caplog.records)

    def test_a_sound_file_after_a_refused_one_is_taken(self, swapped: tuple[Stack, Path]) -> None:
        stack, path = swapped
        replace(path, lambda staged: country_db(staged, days_old=0, country="US"))
        wait_for(stack, "country", "success", 2)
        assert chat(stack, COVERED)[0] == 200

    def test_an_expired_database_replaced_by_a_fresh_one_serves_covered_models_again(self, tmp_path: Path) -> None:
        path = country_db(tmp_path / "City.mmdb", days_old=100)
        stack = Stack(tmp_path, country_db=path, anonymous_ip_db=None, geoip_max_age_days=45)
        try:
            assert chat(stack, COVERED)[0] == 503
            replace(path, lambda staged: country_db(staged, days_old=2))
            wait_for(stack, "country", "success")
            assert chat(stack, COVERED)[0] == 200
            assert samples(stack, "gateway_geoip_database_age_seconds")[(("database", "country"),)] == \
                pytest.approx(2 * DAY_S, abs=1)
        finally:
            stack.close()


class TestReplacementChecks:
    """What LiveGeo.check_files refuses, on its own."""

    @pytest.mark.parametrize("bad", ["garbage", "wrong type", "removed", "truncated"])
    def test_a_bad_replacement_is_refused(self, tmp_path: Path, bad: str) -> None:
        path = country_db(tmp_path / "City.mmdb", days_old=0, country="US")
        metrics = Metrics()
        geo = LiveGeo({"country": path}, metrics, max_age_days=45)
        original = path.read_bytes()
        if bad == "garbage":
            replace(path, garbage)
        elif bad == "wrong type":
            replace(path, lambda staged: anonymous_db(staged, days_old=0))
        elif bad == "removed":
            path.unlink()
        else:
            replace(path, lambda staged: staged.write_bytes(original[: len(original) // 2]))
        geo.check_files()
        assert geo.locate(US_IP).country == "US"
        assert metrics.geoip_reloads.labels("country", "refused")._value.get() == 1
        geo.check_files()  # the same bad file is not tried again
        assert metrics.geoip_reloads.labels("country", "refused")._value.get() == 1
        geo.close()

    def test_an_unchanged_file_is_not_reopened(self, tmp_path: Path) -> None:
        geo = LiveGeo({"country": country_db(tmp_path / "City.mmdb", days_old=0)}, Metrics(), max_age_days=45)
        running = geo.geo
        geo.check_files()
        assert geo.geo is running
        geo.close()


class TestAge:
    """LiveGeo's arithmetic, at chosen times."""

    def test_expired_only_past_twice_the_maximum_age(self, tmp_path: Path) -> None:
        geo = LiveGeo({"country": country_db(tmp_path / "City.mmdb", days_old=0)}, Metrics(), max_age_days=10)
        assert not geo.expired(DECISION_TIME + 20 * DAY_S)
        assert geo.expired(DECISION_TIME + 20 * DAY_S + 1)
        geo.close()

    def test_the_oldest_database_counts(self, tmp_path: Path) -> None:
        anonymous = anonymous_db(tmp_path / "Anon.mmdb", days_old=30)
        geo = LiveGeo({"country": country_db(tmp_path / "City.mmdb", days_old=0), "anonymous_ip": anonymous},
                      Metrics(), max_age_days=10)
        assert geo.expired(DECISION_TIME)
        assert geo.ages(DECISION_TIME) == {"country": 0.0, "anonymous_ip": 30 * DAY_S}
        geo.close()

    def test_the_region_overlay_is_used_but_its_age_does_not_count(self, tmp_path: Path) -> None:
        # The embedded overlay was built in 2026-06, six months before DECISION_TIME: an old
        # overlay only adds regions programs name, so it must not refuse covered models.
        files = configured_files(GeoIPConfig(country_db=str(country_db(tmp_path / "City.mmdb", days_old=0))))
        assert files["region_overlay"] == default_region_overlay()
        geo = LiveGeo(files, Metrics(), max_age_days=10)
        assert geo.ages(DECISION_TIME) == {"country": 0.0}
        assert not geo.expired(DECISION_TIME)
        geo.close()
        assert "region_overlay" not in configured_files(GeoIPConfig(region_overlay=False))

    def test_a_build_date_ahead_of_the_clock_is_no_age(self, tmp_path: Path) -> None:
        geo = LiveGeo({"country": country_db(tmp_path / "City.mmdb", days_old=-3)}, Metrics(), max_age_days=10)
        assert geo.ages(DECISION_TIME) == {"country": 0.0}
        assert not geo.expired(DECISION_TIME)
        geo.close()


class TestAnonymizerDatabase:
    """The reference policy denies anonymizers for covered models."""

    @staticmethod
    def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "no anonymous-IP database" in r.getMessage()]

    def test_without_one_the_rule_is_warned_of_and_the_gauge_is_0(self, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="gateway")
        stack = Stack(tmp_path, anonymous_ip_db=None)
        try:
            assert samples(stack, "gateway_geoip_anonymizer_database_loaded") == {(): 0.0}
            [message] = self.warned(caplog)
            assert message.startswith("policy rules.covered_models.deny_anonymizers denies anonymizers")
        finally:
            stack.close()

    def test_with_one_the_gauge_is_1_and_nothing_is_warned(self, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="gateway")
        stack = Stack(tmp_path)
        try:
            assert samples(stack, "gateway_geoip_anonymizer_database_loaded") == {(): 1.0}
            assert self.warned(caplog) == []
        finally:
            stack.close()
