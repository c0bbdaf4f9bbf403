"""A region that a geolocation database files under another country. Some databases
place Crimea and Sevastopol (and other occupied parts of Ukraine) under RU, with
codes ISO 3166-2 does not have (RU-CR, RU-SEV) or with Ukraine's own subdivision
codes; the reference policy embargoes UA-43, UA-40, UA-14 and UA-09. The gateway
must recognise the region whatever country the database reports
(gateway/geo/reader.py REGION_ALIASES) and deny, for every route and the model list.

The database is written by tests/mmdb.py; the policy is the reference bundle, in
which RU is not denied for small-2 (not covered), so only the region can deny.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import US_IP, Stack
from mmdb import write

from .conftest import PLAIN, Probe, Reply, chat_body

CRIMEA_CR, SEVASTOPOL_SEV, CRIMEA_43, DONETSK_14, LUHANSK_UA = (
    "198.51.100.1", "198.51.100.17", "198.51.100.33", "198.51.100.49", "198.51.100.65")
MOSCOW, KHERSON_65 = "198.51.100.81", "198.51.100.97"


def _city(country: str, *codes: str) -> dict[str, Any]:
    return {"country": {"iso_code": country}, "subdivisions": [{"iso_code": code} for code in codes]}


RECORDS = {
    "198.51.100.0/28": _city("RU", "CR"),
    "198.51.100.16/28": _city("RU", "SEV"),
    "198.51.100.32/28": _city("RU", "43"),
    "198.51.100.48/28": _city("RU", "14"),
    "198.51.100.64/28": _city("RU", "UA-09"),
    "198.51.100.80/28": _city("RU", "MOW"),
    "198.51.100.96/28": _city("RU", "65"),
    "216.160.83.56/29": _city("US", "WA"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("regions")
    stack = Stack(directory, country_db=write(Path(directory) / "City.mmdb", RECORDS))
    yield stack
    stack.close()


def audit_record(gw: Probe, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    return record


EMBARGOED = [(CRIMEA_CR, "UA-43"), (SEVASTOPOL_SEV, "UA-40"), (CRIMEA_43, "UA-43"), (DONETSK_14, "UA-14"),
             (LUHANSK_UA, "UA-09")]


@pytest.mark.parametrize(("ip", "region"), EMBARGOED, ids=[f"{ip} {region}" for ip, region in EMBARGOED])
def test_an_embargoed_region_reported_under_russia_is_denied(gw: Probe, ip: str, region: str) -> None:
    reply = gw.send(body=chat_body(PLAIN), ip=ip)
    gw.denied(reply, 451)
    record = audit_record(gw, reply)
    assert (record["observed_country"], record["observed_region"], record["reasons"]) == (
        "RU", region, ["jurisdiction_embargoed"])


@pytest.mark.parametrize("ip", [CRIMEA_CR, f"::ffff:{CRIMEA_CR}", f"64:ff9b::{CRIMEA_CR}", f"[::ffff:{CRIMEA_CR}]:443"])
def test_every_route_and_the_model_list(gw: Probe, ip: str) -> None:
    gw.denied(gw.send(path="/v1/messages", body=chat_body(PLAIN, max_tokens=5), ip=ip), 451, api="anthropic")
    gw.denied(gw.send("GET", "/v1/models", ip=ip), 451)


def test_a_region_not_named_by_the_policy_is_served(gw: Probe) -> None:
    # The controls: Kherson (UA-65) is recognised but not embargoed by the reference policy,
    # Moscow is Russian; small-2 is not denied in RU. Both are served, so the denials above
    # come from the region alone.
    for ip, region in [(KHERSON_65, "UA-65"), (MOSCOW, "RU-MOW")]:
        gw.stack.upstream.app.reset()
        reply = gw.send(body=chat_body(PLAIN), ip=ip)
        gw.allowed(reply)
        assert audit_record(gw, reply)["observed_region"] == region


def test_a_located_us_caller_is_served(gw: Probe) -> None:
    gw.allowed(gw.send(body=chat_body(PLAIN), ip=US_IP))
