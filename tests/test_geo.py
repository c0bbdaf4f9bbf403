"""Known answers from MaxMind's test databases (tests/fixtures/geoip/README.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import GEOIP
from gateway.geo import GeoDatabaseError, GeoIP, Place

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
