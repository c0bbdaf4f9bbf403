"""Known answers from MaxMind's test databases (tests/fixtures/geoip/README.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from conftest import GEOIP
from gateway.policy.countries import is_region
from gateway.geo.reader import REGION_ALIASES, GeoDatabaseError, GeoIP, Place
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


# --------------------------------------------------------------------------- region overlay

OVERLAY_TYPE = "DBIP-Region-Overlay"
# A City database (its own subdivisions) and an overlay laid over it.
OVERLAID_CITY = {
    "198.51.100.0/28": {"country": {"iso_code": "RU"}, "subdivisions": [{"iso_code": "KDA"}]},  # the overlay disagrees
    "198.51.100.16/28": {"country": {"iso_code": "RU"}, "subdivisions": [{"iso_code": "SEV"}]},  # only the database
    "198.51.100.32/28": {"country": {"iso_code": "UA"}},                                          # only the overlay
    "2a0c:4300::/32": {"country": {"iso_code": "RU"}},
}
OVERLAY = {
    "198.51.100.0/28": {"region": "UA-43"},
    "198.51.100.32/28": {"region": "UA-14"},
    "198.51.100.48/28": {"region": "UA-09"},  # no country record at all
    "2a0c:4300::/32": {"region": "UA-40"},
}


@pytest.fixture(scope="module")
def overlaid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoIP]:
    from gateway.geo.region_overlay import RegionOverlay

    directory = tmp_path_factory.mktemp("overlay")
    overlay = RegionOverlay(write(directory / "overlay.mmdb", OVERLAY, OVERLAY_TYPE))
    geo = GeoIP(write(directory / "City.mmdb", OVERLAID_CITY), overlay=overlay)
    yield geo
    geo.close()


@pytest.mark.parametrize("ip,place,source", [
    ("198.51.100.1", Place("RU", "UA-43"), "overlay"),    # the overlay's region over the database's RU-KDA
    ("198.51.100.17", Place("RU", "UA-40"), "database"),  # no overlay record: the database's (RU-SEV read as UA-40)
    ("198.51.100.33", Place("UA", "UA-14"), "overlay"),   # the country is the database's, the region the overlay's
    ("198.51.100.49", Place(None, "UA-09"), "overlay"),   # no country record: the region alone, country unknown
    ("2a0c:4300::1", Place("RU", "UA-40"), "overlay"),    # IPv6
    ("::ffff:198.51.100.1", Place("RU", "UA-43"), "overlay"),          # IPv4-mapped
    ("64:ff9b::198.51.100.1", Place("RU", "UA-43"), "overlay"),        # NAT64
    ("::ffff:0:c633:6401", Place("RU", "UA-43"), "overlay"),           # SIIT
    ("2002:c633:6421::1", Place("UA", "UA-14"), "overlay"),            # 6to4 of 198.51.100.33
    ("2001:0:4136:e378:8000:ffff:39cc:9bce", Place(None, "UA-09"), "overlay"),  # Teredo, client 198.51.100.49
    ("64:ff9b::198.51.100.60", Place(None, "UA-09"), "overlay"),
    ("216.160.83.56", Place(), None),
])
def test_the_overlay_adds_its_region_on_top(overlaid: GeoIP, ip: str, place: Place, source: str | None) -> None:
    found = overlaid.lookup(ip)
    assert (found.place, found.region_source) == (place, source)
    assert overlaid.locate(ip) == place


def test_region_overlay_false_keeps_the_database_regions(tmp_path) -> None:
    from gateway.config import GeoIPConfig
    from gateway.geo.files import build_geoip, configured_files

    city = write(tmp_path / "City.mmdb", OVERLAID_CITY)
    geo = build_geoip(configured_files(GeoIPConfig(country_db=str(city), region_overlay=False)))
    assert geo.locate("198.51.100.1") == Place("RU", "RU-KDA")
    assert geo.locate("198.51.100.33") == Place("UA", None)
    geo.close()


def test_the_embedded_overlay_applies_over_a_configured_database_unless_turned_off(tmp_path) -> None:
    import maxminddb

    from gateway.config import GeoIPConfig
    from gateway.geo.files import build_geoip, configured_files
    from gateway.geo.region_overlay import default_region_overlay

    with maxminddb.open_database(str(default_region_overlay())) as reader:
        network, record = next((n, r) for n, r in reader if r["region"] == "UA-43" and n.version == 4)
    address = str(network.network_address)
    city = write(tmp_path / "City.mmdb", {f"{address}/32": {"country": {"iso_code": "RU"},
                                                            "subdivisions": [{"iso_code": "KDA"}]}})
    on = build_geoip(configured_files(GeoIPConfig(country_db=str(city))))
    off = build_geoip(configured_files(GeoIPConfig(country_db=str(city), region_overlay=False)))
    assert (on.locate(address), off.locate(address)) == (Place("RU", "UA-43"), Place("RU", "RU-KDA"))
    on.close()
    off.close()


@pytest.mark.parametrize("records,database_type,complaint", [
    ({"198.51.100.0/28": {"region": "Crimea"}}, OVERLAY_TYPE, "ISO 3166-2"),
    ({"198.51.100.0/28": {"region": "ZZ-43"}}, OVERLAY_TYPE, "ISO 3166-2"),
    ({"198.51.100.0/28": {"iso_code": "UA-43"}}, OVERLAY_TYPE, "ISO 3166-2"),
    ({"198.51.100.0/28": {"region": "UA-43"}}, "GeoIP2-City", "expected 'DBIP-Region-Overlay'"),
])
def test_a_bad_overlay_is_refused_whole(tmp_path, records: dict, database_type: str, complaint: str) -> None:
    from gateway.geo.region_overlay import RegionOverlay

    path = write(tmp_path / "overlay.mmdb", {"198.51.100.128/28": {"region": "UA-09"}} | records, database_type)
    with pytest.raises(GeoDatabaseError, match=complaint):
        RegionOverlay(path)


def test_a_missing_overlay_is_refused(tmp_path) -> None:
    from gateway.geo.region_overlay import RegionOverlay

    with pytest.raises(GeoDatabaseError, match="region overlay"):
        RegionOverlay(tmp_path / "absent.mmdb")
