"""Client IP from the socket peer and X-Forwarded-For (SPEC §1.4), as a table in
the manner of uvicorn's tests/middleware/test_proxy_headers.py."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clientip import MAX_FORWARDED_ENTRIES, ClientLocator, TrustedProxies, client_ip
from gateway.geo import UNKNOWN, GeoIP, parse_ip
from gateway.geodata import default_country_db

TRUSTED = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48", "::1"])
NOBODY = TrustedProxies([])

# (peer, X-Forwarded-For headers, expected client)
CASES = [
    # An untrusted peer is the client, whatever it forwards.
    ("203.0.113.7", [], "203.0.113.7"),
    ("203.0.113.7", ["1.2.3.4"], "203.0.113.7"),
    ("203.0.113.7", ["garbage"], "203.0.113.7"),
    ("203.0.113.7", ["10.0.0.1"], "203.0.113.7"),
    ("2001:DB8::7", ["1.2.3.4"], "2001:db8::7"),
    ("::ffff:203.0.113.7", ["1.2.3.4"], "203.0.113.7"),
    ("192.168.1.1", ["1.2.3.4"], "192.168.1.1"),  # private: returned, geo calls it unknown
    ("11.0.0.1", ["1.2.3.4"], "11.0.0.1"),  # just outside 10.0.0.0/8
    # Peer that is not a plain address: unknown.
    (None, ["1.2.3.4"], None),
    ("", [], None),
    ("not-an-ip", [], None),
    (" 203.0.113.7", [], None),
    ("203.0.113.7:443", [], None),
    ("fe80::1%eth0", [], None),
    # Trusted peer: the rightmost untrusted entry.
    ("127.0.0.1", ["1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4, 10.0.0.2"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4,10.0.0.2,10.0.0.3"], "1.2.3.4"),
    ("127.0.0.1", ["8.8.8.8, 1.2.3.4"], "1.2.3.4"),  # spoofed left entry ignored
    ("127.0.0.1", ["evil, 1.2.3.4"], "1.2.3.4"),  # garbage left of the client is never read
    ("127.0.0.1", ["unknown, , 1.2.3.4, 10.0.0.2"], "1.2.3.4"),
    ("127.0.0.1", ["5.6.7.8", "1.2.3.4"], "1.2.3.4"),  # headers joined in order
    ("127.0.0.1", ["1.2.3.4", "10.0.0.2"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4, 10.0.0.9", "10.0.0.2"], "1.2.3.4"),
    ("10.1.2.3", ["1.2.3.4"], "1.2.3.4"),
    ("::ffff:127.0.0.1", ["1.2.3.4"], "1.2.3.4"),  # mapped peer matches the IPv4 network
    ("::1", ["1.2.3.4"], "1.2.3.4"),
    ("2001:db8:ffff:1::1", ["1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["192.168.0.5"], "192.168.0.5"),  # private client: an address like any other
    ("127.0.0.1", ["127.0.0.2"], "127.0.0.2"),  # loopback outside the /32 is not ours
    # All trusted: the leftmost.
    ("127.0.0.1", ["10.0.0.1"], "10.0.0.1"),
    ("127.0.0.1", ["10.0.0.1, 10.0.0.2"], "10.0.0.1"),
    ("127.0.0.1", ["::1, 10.0.0.2, 127.0.0.1"], "::1"),
    # Notations accepted, in canonical form.
    ("127.0.0.1", [" 1.2.3.4 "], "1.2.3.4"),
    ("127.0.0.1", ["\t1.2.3.4\t,\t10.0.0.1"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4:5678"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4:0"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4:65535"], "1.2.3.4"),
    ("127.0.0.1", ["2001:DB8:0:0::1"], "2001:db8::1"),
    ("127.0.0.1", ["[2001:db8::1]"], "2001:db8::1"),
    ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("127.0.0.1", ["::ffff:1.2.3.4"], "1.2.3.4"),
    ("127.0.0.1", ["::ffff:0102:0304"], "1.2.3.4"),
    ("127.0.0.1", ["[::ffff:1.2.3.4]:80"], "1.2.3.4"),
    ("127.0.0.1", ["1.2.3.4, ::ffff:10.0.0.1"], "1.2.3.4"),  # mapped trusted hop skipped
    ("127.0.0.1", ["1.2.3.4, [2001:db8:ffff::9]:8080"], "1.2.3.4"),
    ("127.0.0.1", ["2001:db8::1:443"], "2001:db8::1:443"),  # a valid IPv6 address, not a port
    # Where the client entry is needed and invalid: unknown, never the peer.
    ("127.0.0.1", [], None),
    ("127.0.0.1", [""], None),
    ("127.0.0.1", ["  "], None),
    ("127.0.0.1", [","], None),
    ("127.0.0.1", ["unknown"], None),
    ("127.0.0.1", ["1.2.3"], None),
    ("127.0.0.1", ["01.2.3.4"], None),
    ("127.0.0.1", ["1.2.3.04"], None),
    ("127.0.0.1", ["1.2.3.4.5"], None),
    ("127.0.0.1", ["0x7f.1"], None),
    ("127.0.0.1", ["0x7f000001"], None),
    ("127.0.0.1", ["2130706433"], None),
    ("127.0.0.1", ["256.1.1.1"], None),
    ("127.0.0.1", ["::ffff:999.1.1.1"], None),
    ("127.0.0.1", ["１.2.3.4"], None),  # fullwidth digit
    ("127.0.0.1", ["1.2.3.4\n"], None),
    ("127.0.0.1", ["\u00a01.2.3.4"], None),  # no-break space is not OWS
    ("127.0.0.1", ["1.2.3.4 5.6.7.8"], None),
    ("127.0.0.1", ["1.2.3.4;5.6.7.8"], None),
    ("127.0.0.1", ["fe80::1%eth0"], None),
    ("127.0.0.1", ["[fe80::1%eth0]:80"], None),
    ("127.0.0.1", ["1.2.3.4:"], None),
    ("127.0.0.1", ["1.2.3.4:65536"], None),
    ("127.0.0.1", ["1.2.3.4:-1"], None),
    ("127.0.0.1", ["1.2.3.4:http"], None),
    ("127.0.0.1", ["1.2.3.4:1:2"], None),
    ("127.0.0.1", ["[1.2.3.4]"], None),
    ("127.0.0.1", ["[1.2.3.4]:80"], None),
    ("127.0.0.1", ["[2001:db8::1]443"], None),
    ("127.0.0.1", ["[2001:db8::1"], None),
    ("127.0.0.1", ["2001:db8::1]"], None),
    ("127.0.0.1", ["[2001:db8::1]:"], None),
    ("127.0.0.1", ["2001:db8:::1"], None),
    ("127.0.0.1", ['"1.2.3.4"'], None),
    ("127.0.0.1", ["for=1.2.3.4"], None),  # RFC 7239 Forwarded syntax is another header
    ("127.0.0.1", ["1.2.3.4,"], None),  # empty rightmost entry
    ("127.0.0.1", ["1.2.3.4", ""], None),  # empty second header
    ("127.0.0.1", ["1.2.3.4,,5.6.7.8"], "5.6.7.8"),  # the empty entry is never reached
    ("127.0.0.1", ["1.2.3.4,,10.0.0.1"], None),  # ... unless it must be
    ("127.0.0.1", ["1.2.3.4, garbage, 10.0.0.1"], None),
    ("127.0.0.1", ["1.2.3.4, 10.0.0.1, garbage"], None),
]


@pytest.mark.parametrize("peer,headers,expected", CASES)
def test_client_ip(peer: str | None, headers: list[str], expected: str | None) -> None:
    assert client_ip(peer, headers, TRUSTED) == expected


def test_nobody_trusted_means_the_peer() -> None:
    assert client_ip("127.0.0.1", ["1.2.3.4"], NOBODY) == "127.0.0.1"


@pytest.mark.parametrize("count,expected", [
    (MAX_FORWARDED_ENTRIES, "1.2.3.4"),
    (MAX_FORWARDED_ENTRIES + 1, None),
])
def test_entry_cap(count: int, expected: str | None) -> None:
    entries = ["1.2.3.4"] + ["10.0.0.1"] * (count - 1)
    assert client_ip("127.0.0.1", [", ".join(entries)], TRUSTED) == expected
    # The cap counts entries across all headers.
    assert client_ip("127.0.0.1", entries, TRUSTED) == expected


@pytest.mark.parametrize("cidrs,address,expected", [
    (["10.0.0.0/8"], "10.255.255.255", True),
    (["10.0.0.0/8"], "11.0.0.0", False),
    (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # IPv4 network covers mapped forms
    (["10.0.0.0/8"], ipaddress.ip_address("::ffff:10.1.2.3"), True),
    (["10.0.0.0/8"], "::a01:203", False),  # IPv4-compatible is not mapped
    (["::ffff:10.0.0.0/104"], "10.1.2.3", True),  # mapped network covers IPv4
    (["::ffff:10.0.0.0/104"], "11.1.2.3", False),
    (["::/0"], "1.2.3.4", True),  # contains all of ::ffff:0:0/96
    (["::/0"], "2001:db8::1", True),
    (["0.0.0.0/0"], "2001:db8::1", False),
    (["2001:db8::/32"], "2001:db8:1::1", True),
    (["2001:db8::/32"], "2001:db9::1", False),
    (["192.0.2.1"], "192.0.2.1", True),  # a bare address is a /32
    (["192.0.2.1"], "192.0.2.2", False),
    ([" 192.0.2.0/24 "], "192.0.2.9", True),
    (["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8"], "203.0.113.200", True),
    ([], "127.0.0.1", False),
    (["127.0.0.0/8"], "not-an-ip", False),
])
def test_trusted_proxies_contains(cidrs: list[str], address: str, expected: bool) -> None:
    assert TrustedProxies(cidrs).contains(address) is expected


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "banana", "", "::1/129", "fe80::1%eth0/128", None])
def test_trusted_proxies_refuse_bad_config(cidr: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        TrustedProxies([cidr])


def test_many_networks_are_grouped_by_prefix_length() -> None:
    trusted = TrustedProxies([f"10.{a}.{b}.0/24" for a in range(16) for b in range(256)])
    assert trusted.contains("10.15.255.1")
    assert not trusted.contains("10.16.0.1")
    assert len(trusted._v4) == 1


# Property: the answer is None or the canonical form of the peer or an entry.

_ADDRESSES = st.sampled_from([
    "127.0.0.1", "10.0.0.1", "10.9.9.9", "::1", "::ffff:10.0.0.1", "1.2.3.4", "203.0.113.9",
    "2001:db8::1", "[2001:db8::1]:443", "1.2.3.4:80", "192.168.0.1", "2001:db8:ffff::1",
])
_ENTRY = st.one_of(_ADDRESSES, st.text(max_size=12), st.ip_addresses().map(str))
_HEADER = st.lists(_ENTRY, max_size=6).map(", ".join)


def _canonical_forms(text: str) -> set[str]:
    forms = set()
    for candidate in (text.strip(" \t"), text.strip(" \t").rpartition(":")[0].strip("[]")):
        address = parse_ip(candidate)
        if address is not None:
            forms.add(str(address))
    return forms


@settings(max_examples=500, deadline=None)
@given(peer=st.one_of(st.none(), _ADDRESSES, st.text(max_size=8)), headers=st.lists(_HEADER, max_size=3))
def test_result_comes_from_the_request(peer: str | None, headers: list[str]) -> None:
    result = client_ip(peer, headers, TRUSTED)
    if result is None:
        return
    entries = [entry for value in headers for entry in value.split(",")]
    sources = set().union(*map(_canonical_forms, entries + [peer or ""]))
    assert result in sources
    assert str(ipaddress.ip_address(result)) == result
    if not TRUSTED.contains(peer or ""):
        assert result == str(parse_ip(peer or ""))


class TestClientLocator:
    """The memoised path must answer exactly as the uncached one, however requests interleave."""

    @pytest.fixture(scope="class")
    def geo(self) -> GeoIP:
        return GeoIP(default_country_db())

    def test_memoised_answers_equal_fresh_ones_across_evictions(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo, size=4)
        cases = CASES + [("127.0.0.1", ["8.8.8.8"], "8.8.8.8"), ("127.0.0.1", ["8.8.8.8", "1.1.1.1"], "1.1.1.1")]
        for _ in range(3):
            for peer, forwarded, expected in cases:
                address, place = locator.locate(peer, forwarded)
                assert address == expected, (peer, forwarded)
                assert place == (geo.locate(expected) if expected else UNKNOWN), (peer, forwarded)
        assert len(locator._memo) <= 4

    def test_the_header_values_are_part_of_the_key(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo)
        assert locator.locate("127.0.0.1", ["8.8.8.8"])[1].country == "US"
        assert locator.locate("127.0.0.1", ["8.8.8.8", "9.9.9.9"])[0] == "9.9.9.9"
        assert locator.locate("127.0.0.1", ["8.8.8.8", "9.9.9.9,"])[0] is None  # an empty last entry
