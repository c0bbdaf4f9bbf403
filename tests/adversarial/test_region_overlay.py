"""A default install (no GeoIP database configured) refuses callers in the regions
the shipped policy embargoes. The embedded DB-IP Country Lite database gives no
region; the embedded region overlay (gateway/geo/region_overlay.py) adds it, also for
the networks DB-IP files under RU. Without the overlay these callers were judged
by country alone, and RU is not denied for an uncovered model.

The addresses are taken from the shipped overlay file itself: for each region,
one network per country the country database reports and per IP version.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from e2e import Stack
from gateway.geo.reader import GeoIP
from gateway.geo.embedded import default_country_db
from gateway.geo.region_overlay import default_region_overlay

from .conftest import Probe, Reply, chat_body

SHIPPED_POLICY = Path(__file__).resolve().parents[2] / "policies"
ORG, MODEL = "org-developer-us", "example-small-1"  # a standard org, an uncovered model: only an embargo denies
EMBARGOED = ("UA-43", "UA-40", "UA-14", "UA-09")  # policies/jurisdictions.yaml ofac_comprehensive


def overlay_samples() -> list[tuple[str, str, str | None]]:
    """(address, region, country the country database reports): the first network of each
    (region, country, IP version) in the shipped overlay, an address inside it."""
    geo = GeoIP(default_country_db())
    chosen: dict[tuple[str, str | None, int], str] = {}
    with maxminddb.open_database(str(default_region_overlay())) as overlay:
        for network, record in overlay:
            address = str(network.network_address + (1 if network.num_addresses > 1 else 0))
            key = (record["region"], geo.locate(address).country, network.version)
            if key[0] in EMBARGOED:
                chosen.setdefault(key, address)
    geo.close()
    return [(address, region, country) for (region, country, _), address in sorted(chosen.items(), key=str)]


SAMPLES = overlay_samples()


def test_the_samples_cover_every_embargoed_region_and_networks_filed_under_russia() -> None:
    found = {(region, country) for _, region, country in SAMPLES}
    assert {region for region, _ in found} == set(EMBARGOED)
    assert {("UA-43", "RU"), ("UA-40", "RU")} <= found, found
    assert any(ipaddress.ip_address(address).version == 6 for address, *_ in SAMPLES)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("overlay")
    stack = Stack(directory, policy_dir=SHIPPED_POLICY, country_db=None, anonymous_ip_db=None, orgs=[ORG])
    yield stack
    stack.close()


def send(gw: Probe, ip: str) -> Reply:
    return gw.send(body=chat_body(MODEL), ip=ip, credential=gw.key(ORG))


def audit_record(gw: Probe, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    return record


@pytest.mark.parametrize(("ip", "region", "country"), SAMPLES, ids=[f"{r} {c} {ip}" for ip, r, c in SAMPLES])
def test_a_caller_in_an_embargoed_region_is_refused(gw: Probe, ip: str, region: str, country: str | None) -> None:
    reply = send(gw, ip)
    gw.denied(reply, 451)
    record = audit_record(gw, reply)
    assert (record["observed_country"], record["observed_region"]) == (country, region)
    assert "jurisdiction_embargoed" in record["reasons"]


def test_inside_a_transition_address_too(gw: Probe) -> None:
    ipv4 = next(ip for ip, region, country in SAMPLES if (region, country) == ("UA-43", "RU") and "." in ip)
    packed = ipaddress.IPv4Address(ipv4).packed.hex()
    for ip in (f"::ffff:{ipv4}", f"64:ff9b::{ipv4}", f"2002:{packed[:4]}:{packed[4:]}::1"):
        reply = send(gw, ip)
        gw.denied(reply, 451)
        assert audit_record(gw, reply)["observed_region"] == "UA-43"


@pytest.mark.parametrize("ip", ["77.88.8.8", "91.198.174.192"])
def test_the_controls_are_served(gw: Probe, ip: str) -> None:
    # A Russian address outside the overlay, and a non-Russian one: the same org and model
    # are served, so the refusals above are the regions' doing.
    reply = send(gw, ip)
    gw.allowed(reply, org=ORG, model=MODEL)
