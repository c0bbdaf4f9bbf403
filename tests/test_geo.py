"""Known answers from MaxMind's test databases (tests/fixtures/geoip/README.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from conftest import GEOIP
from gateway.countries import is_region
from gateway.geo import REGION_ALIASES, GeoDatabaseError, GeoIP, Place
from mmdb import write

CITY = GEOIP / "GeoIP2-City-Test.mmdb"
COUNTRY = GEOIP / "GeoIP2-Country-Test.mmdb"
ANONYMOUS = GEOIP / "GeoIP2-Anonymous-IP-Test.mmdb"


@pytest.fixture(scope="module")
def city() -> Iterator[GeoIP]:
    geo = GeoIP(CITY, ANONYMOUS)
    yield geo
    geo.close()


@pytest.fixture(scope="module")
def country() -> Iterator[GeoIP]:
    geo = GeoIP(COUNTRY)
    yield geo
    geo.close()


@pytest.mark.parametrize("ip,expected", [
    ("81.2.69.160", Place("GB", "GB-ENG", True)),        # located country, not registered (US)
    ("::ffff:81.2.69.160", Place("GB", "GB-ENG", True)),  # IPv4-mapped IPv6 is unmapped
    ("2.125.160.216", Place("GB", "GB-WBK", False)),
    ("175.16.199.1", Place("CN", "CN-22", False)),
    ("216.160.83.56", Place("US", "US-WA", False)),
    ("2001:480:10::1", Place("US", "US-CA", False)),
    ("2.3.3.1", Place(None, None, False)),               # record without a country
    ("8.8.8.8", Place(None, None, False)),               # empty anonymous record, no city record
    ("1.124.213.1", Place(None, None, True)),            # Tor exit, no country
    # Transition addresses are where their IPv4 is (the database has no record for NAT64/SIIT
    # and places Teredo at its relay server, here 65.54.227.120 of no country).
    ("64:ff9b::af10:c701", Place("CN", "CN-22", False)),          # NAT64 of 175.16.199.1
    ("::ffff:0:af10:c701", Place("CN", "CN-22", False)),          # SIIT IPv4-translated
    ("2001:0:4136:e378:8000:ffff:50ef:38fe", Place("CN", "CN-22", False)),  # Teredo client 175.16.199.1
    ("2001:0:af10:c701:8000:ffff:f7ff:fffe", Place("CN", "CN-22", False)),  # Teredo, client 8.0.0.1 has no record: the server's
    ("2002:af10:c701::1", Place("CN", "CN-22", False)),           # 6to4
    ("64:ff9b::5102:45a0", Place("GB", "GB-ENG", True)),          # NAT64 of an anonymizer
    ("192.0.2.1", Place(None, None, False)),
    ("10.0.0.1", Place(None, None, False)),
    ("not-an-ip", Place(None, None, False)),
    ("", Place(None, None, False)),
    ("fe80::1%eth0", Place(None, None, False)),
    ("81.2.69.160:443", Place(None, None, False)),
])
def test_city_and_anonymizer(city: GeoIP, ip: str, expected: Place) -> None:
    assert city.locate(ip) == expected


@pytest.mark.parametrize("ip,expected", [
    ("81.2.69.160", "GB"),
    ("89.160.20.112", "SE"),
    ("67.43.156.1", "BT"),
    ("202.196.224.1", "PH"),   # represented_country US does not count
    ("2001:218::1", "JP"),
    ("214.1.1.1", None),       # anycast record with no country
    ("2a02:d500::1", None),    # continent only
    ("127.0.0.1", None),
])
def test_country_database_gives_no_region(country: GeoIP, ip: str, expected: str | None) -> None:
    assert country.locate(ip) == Place(expected, None, False)
    assert not country.has_regions


def test_wrong_database_type_is_refused() -> None:
    with pytest.raises(GeoDatabaseError, match="Anonymous-IP"):
        GeoIP(ANONYMOUS)
    with pytest.raises(GeoDatabaseError, match="expected Anonymous-IP"):
        GeoIP(CITY, CITY)


def test_missing_database_is_refused(tmp_path) -> None:
    with pytest.raises(GeoDatabaseError):
        GeoIP(tmp_path / "absent.mmdb")
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    with pytest.raises(GeoDatabaseError):
        GeoIP(tmp_path / "junk.mmdb")


# Regions a database files under another country (tests/mmdb.py writes the database).
# (network, country the database reports, its subdivision codes, the Place expected)
FILED_ELSEWHERE = [
    ("198.51.100.0/28", "RU", ["CR"], Place("RU", "UA-43")),            # Crimea, as Russian sources code it
    ("198.51.100.16/28", "RU", ["SEV"], Place("RU", "UA-40")),          # Sevastopol
    ("198.51.100.32/28", "RU", ["43"], Place("RU", "UA-43")),           # Ukraine's own codes under RU
    ("198.51.100.48/28", "RU", ["40"], Place("RU", "UA-40")),
    ("198.51.100.64/28", "RU", ["14"], Place("RU", "UA-14")),
    ("198.51.100.80/28", "RU", ["09"], Place("RU", "UA-09")),
    ("198.51.100.96/28", "RU", ["23"], Place("RU", "UA-23")),
    ("198.51.100.112/28", "RU", ["65"], Place("RU", "UA-65")),
    ("198.51.100.128/28", "RU", ["UA-43"], Place("RU", "UA-43")),       # a whole ISO code as the subdivision
    ("198.51.100.144/28", "RU", ["CR", "SIM"], Place("RU", "UA-43")),   # the alias at any level wins
    ("198.51.100.160/28", "UA", ["43"], Place("UA", "UA-43")),          # filed under Ukraine: as ever
    ("198.51.100.176/28", "RU", ["MOW"], Place("RU", "RU-MOW")),        # a Russian region stays Russian
    ("198.51.100.192/28", "RU", ["42"], Place("RU", "RU-42")),          # not in the table: as the database says
    ("198.51.100.208/28", "RU", [], Place("RU", None)),
    ("198.51.100.224/28", "GB", ["ENG", "WBK"], Place("GB", "GB-WBK")),  # otherwise the most specific level
]


@pytest.fixture(scope="module")
def filed_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoIP]:
    records = {net: {"country": {"iso_code": country}, "subdivisions": [{"iso_code": c} for c in codes]}
               for net, country, codes, _ in FILED_ELSEWHERE}
    geo = GeoIP(write(tmp_path_factory.mktemp("geo") / "City.mmdb", records))
    yield geo
    geo.close()


@pytest.mark.parametrize("network,country,codes,expected", FILED_ELSEWHERE, ids=[f"{c} {s}" for _, c, s, _ in FILED_ELSEWHERE])
def test_regions_filed_under_another_country(filed_elsewhere: GeoIP, network: str, country: str, codes: list[str],
                                             expected: Place) -> None:
    address = str(ipaddress.ip_network(network)[1])
    assert filed_elsewhere.locate(address) == expected
    # However the address is written: mapped, NAT64.
    assert filed_elsewhere.locate(f"::ffff:{address}") == expected
    assert filed_elsewhere.locate(f"64:ff9b::{address}") == expected


def test_every_alias_is_a_region_of_its_own_country() -> None:
    for alias, region in REGION_ALIASES.items():
        assert alias.startswith("RU-") and is_region(alias) and is_region(region) and region.startswith("UA-")
