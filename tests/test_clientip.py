"""Client IP from the socket peer and X-Forwarded-For (docs/operators.md), as a table in
the manner of uvicorn's tests/middleware/test_proxy_headers.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.request.clientip import (MAX_FORWARDED_CHARS, MAX_FORWARDED_ENTRIES, ClientLocator, ForwardedForError,
                              TrustedProxies, client_ip)
from gateway.geo.reader import UNKNOWN, GeoIP, parse_ip
from gateway.geo.embedded import default_country_db

TRUSTED = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:ffff::/48", "::1"])
NOBODY = TrustedProxies([])
REFUSED = "refused: ForwardedForError"

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
    # A trusted proxy that sent no X-Forwarded-For: unknown, never the proxy itself.
    ("127.0.0.1", [], None),
    # A header that cannot be read as a whole: refused (a 400), never unknown and never the peer.
    ("127.0.0.1", [""], REFUSED),
    ("127.0.0.1", ["  "], REFUSED),
    ("127.0.0.1", [","], REFUSED),
    ("127.0.0.1", ["unknown"], REFUSED),
    ("127.0.0.1", ["1.2.3"], REFUSED),
    ("127.0.0.1", ["01.2.3.4"], REFUSED),
    ("127.0.0.1", ["1.2.3.04"], REFUSED),
    ("127.0.0.1", ["1.2.3.4.5"], REFUSED),
    ("127.0.0.1", ["0x7f.1"], REFUSED),
    ("127.0.0.1", ["0x7f000001"], REFUSED),
    ("127.0.0.1", ["2130706433"], REFUSED),
    ("127.0.0.1", ["256.1.1.1"], REFUSED),
    ("127.0.0.1", ["::ffff:999.1.1.1"], REFUSED),
    ("127.0.0.1", ["１.2.3.4"], REFUSED),  # fullwidth digit
    ("127.0.0.1", ["1.2.3.4\n"], REFUSED),
    ("127.0.0.1", ["\u00a01.2.3.4"], REFUSED),  # no-break space is not OWS
    ("127.0.0.1", ["1.2.3.4 5.6.7.8"], REFUSED),
    ("127.0.0.1", ["1.2.3.4;5.6.7.8"], REFUSED),
    ("127.0.0.1", ["fe80::1%eth0"], REFUSED),
    ("127.0.0.1", ["[fe80::1%eth0]:80"], REFUSED),
    ("127.0.0.1", ["1.2.3.4:"], REFUSED),
    ("127.0.0.1", ["1.2.3.4:65536"], REFUSED),
    ("127.0.0.1", ["1.2.3.4:-1"], REFUSED),
    ("127.0.0.1", ["1.2.3.4:http"], REFUSED),
    ("127.0.0.1", ["1.2.3.4:1:2"], REFUSED),
    ("127.0.0.1", ["[1.2.3.4]"], REFUSED),
    ("127.0.0.1", ["[1.2.3.4]:80"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]443"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1"], REFUSED),
    ("127.0.0.1", ["2001:db8::1]"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]:"], REFUSED),
    ("127.0.0.1", ["2001:db8:::1"], REFUSED),
    ("127.0.0.1", ['"1.2.3.4"'], REFUSED),
    ("127.0.0.1", ["for=1.2.3.4"], REFUSED),  # RFC 7239 Forwarded syntax is another header
    ("127.0.0.1", ["1.2.3.4,"], REFUSED),  # empty rightmost entry
    ("127.0.0.1", ["1.2.3.4", ""], REFUSED),  # empty second header
    # Client-written entries left of the client are read too: padding must not make the header unreadable
    # and so the country unknown (issue 12), and garbage there is garbage.
    ("127.0.0.1", ["1.2.3.4,,5.6.7.8"], REFUSED),
    ("127.0.0.1", ["1.2.3.4,,10.0.0.1"], REFUSED),
    ("127.0.0.1", ["evil, 1.2.3.4"], REFUSED),
    ("127.0.0.1", ["unknown, , 1.2.3.4, 10.0.0.2"], REFUSED),
    ("127.0.0.1", ["," * 64 + "1.2.3.4"], REFUSED),
    ("127.0.0.1", ["", "1.2.3.4"], REFUSED),
    # Whitespace other than SP and HTAB (RFC 9110 §5.6.3 OWS), and obs-fold if a parser let it through.
    ("127.0.0.1", ["1.2.3.4\r\n 10.0.0.1"], REFUSED),
    ("127.0.0.1", ["1.2.3.4,\r\n 10.0.0.1"], REFUSED),
    ("127.0.0.1", ["\v1.2.3.4"], REFUSED),
    ("127.0.0.1", ["1.2.3.4\x00"], REFUSED),
    ("127.0.0.1", ["1.2.3.4\u2028"], REFUSED),
    ("127.0.0.1", ["\u30001.2.3.4"], REFUSED),  # ideographic space
    # Zone ids, brackets, ports.
    ("127.0.0.1", ["fe80::1%25eth0"], REFUSED),
    ("127.0.0.1", ["[fe80::1%25eth0]"], REFUSED),
    ("127.0.0.1", ["[[2001:db8::1]]"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]:443:443"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]:+443"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]:４４３"], REFUSED),
    ("127.0.0.1", ["[2001:db8::1]:000443"], REFUSED),
    ("127.0.0.1", ["[ 2001:db8::1 ]"], REFUSED),
    ("127.0.0.1", ["1.2.3.4 :80"], REFUSED),
    ("127.0.0.1", ["1.2.3.4: 80"], REFUSED),
    ("127.0.0.1", ["[]"], REFUSED),
    ("127.0.0.1", ["[]:80"], REFUSED),
    ("127.0.0.1", [":80"], REFUSED),
    # Too many entries or characters, however spread over header lines.
    ("127.0.0.1", [", ".join(["1.2.3.4"] * (MAX_FORWARDED_ENTRIES + 1))], REFUSED),
    ("127.0.0.1", ["1.2.3.4"] * (MAX_FORWARDED_ENTRIES + 1), REFUSED),
    ("127.0.0.1", [" " * MAX_FORWARDED_CHARS + "1.2.3.4"], REFUSED),
    ("127.0.0.1", ["\t" * (MAX_FORWARDED_CHARS // 2), "\t" * (MAX_FORWARDED_CHARS // 2) + "1.2.3.4"], REFUSED),
    ("127.0.0.1", ["1.2.3.4, garbage, 10.0.0.1"], REFUSED),
    ("127.0.0.1", ["1.2.3.4, 10.0.0.1, garbage"], REFUSED),
]


@pytest.mark.parametrize("peer,headers,expected", CASES)
def test_client_ip(peer: str | None, headers: list[str], expected: str | None) -> None:
    if expected is REFUSED:
        with pytest.raises(ForwardedForError):
            client_ip(peer, headers, TRUSTED)
    else:
        assert client_ip(peer, headers, TRUSTED) == expected


def test_refusal_messages_say_why_without_repeating_the_header() -> None:
    for headers, why in [(["x" * (MAX_FORWARDED_CHARS + 1)], "longer than"), (["," * 64 + "1.2.3.4"], "more than 64"),
                         (["1.2.3.4, <script>"], "not an IP address")]:
        with pytest.raises(ForwardedForError, match=why) as raised:
            client_ip("127.0.0.1", headers, TRUSTED)
        assert "<script>" not in str(raised.value) and "xxx" not in str(raised.value)


def test_nobody_trusted_means_the_peer() -> None:
    assert client_ip("127.0.0.1", ["1.2.3.4"], NOBODY) == "127.0.0.1"


def test_entry_cap() -> None:
    entries = ["1.2.3.4"] + ["10.0.0.1"] * (MAX_FORWARDED_ENTRIES - 1)
    assert client_ip("127.0.0.1", [", ".join(entries)], TRUSTED) == "1.2.3.4"
    assert client_ip("127.0.0.1", entries, TRUSTED) == "1.2.3.4"
    # One more is refused, however the entries are spread over header lines.
    for headers in ([", ".join(entries + ["10.0.0.1"])], entries + ["10.0.0.1"], [", ".join(entries), "10.0.0.1"]):
        with pytest.raises(ForwardedForError, match="entries"):
            client_ip("127.0.0.1", headers, TRUSTED)


def test_the_longest_real_chain_fits() -> None:
    longest = "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535"
    header = ", ".join(["1.2.3.4", *[longest] * (MAX_FORWARDED_ENTRIES - 1)])
    assert len(header) <= MAX_FORWARDED_CHARS
    assert client_ip("127.0.0.1", [header], TrustedProxies(["::/0", "127.0.0.1"])) == "1.2.3.4"


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
    try:
        result = client_ip(peer, headers, TRUSTED)
    except ForwardedForError:
        assert TRUSTED.contains(peer or "")  # only a trusted peer's header is ever read
        return
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
    @classmethod
    def geo(cls) -> GeoIP:
        return GeoIP(default_country_db())

    def test_memoised_answers_equal_fresh_ones_across_evictions(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo, size=4)
        cases = CASES + [("127.0.0.1", ["8.8.8.8"], "8.8.8.8"), ("127.0.0.1", ["8.8.8.8", "1.1.1.1"], "1.1.1.1")]
        for _ in range(3):
            for peer, forwarded, expected in cases:
                if expected is REFUSED:
                    with pytest.raises(ForwardedForError):
                        locator.locate(peer, forwarded)
                    continue
                address, place = locator.locate(peer, forwarded)
                assert address == expected, (peer, forwarded)
                assert place == (geo.locate(expected) if expected else UNKNOWN), (peer, forwarded)
        assert len(locator._memo) <= 4

    def test_the_header_values_are_part_of_the_key(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo)
        assert locator.locate("127.0.0.1", ["8.8.8.8"])[1].country == "US"
        assert locator.locate("127.0.0.1", ["8.8.8.8", "9.9.9.9"])[0] == "9.9.9.9"
        with pytest.raises(ForwardedForError):
            locator.locate("127.0.0.1", ["8.8.8.8", "9.9.9.9,"])  # an empty last entry
        assert locator.locate("127.0.0.1", [])[0] is None  # no header: unknown, not refused

    def test_a_remembered_refusal_is_refused_again_and_stays_one(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo)
        padded = ["," * 64 + "8.8.8.8"]
        for _ in range(100):
            with pytest.raises(ForwardedForError, match="more than") as raised:
                locator.locate("127.0.0.1", padded)
        # Each refusal is a fresh exception: one remembered object re-raised would grow its traceback.
        assert len(list(_frames(raised.value.__traceback__))) < 10
        # The same header from a peer that is not trusted is not read at all.
        assert locator.locate("203.0.113.7", padded) == ("203.0.113.7", geo.locate("203.0.113.7"))
        with pytest.raises(ForwardedForError):
            locator.locate("127.0.0.1", padded)

    def test_memory_is_bounded_by_entries_and_key_size(self, geo: GeoIP) -> None:
        locator = ClientLocator(TRUSTED, geo, size=8)
        for n in range(50):
            locator.locate("127.0.0.1", [f"8.8.{n}.8"])
            with pytest.raises(ForwardedForError):
                locator.locate("127.0.0.1", [f"8.8.{n}.8,"])
            # Many header lines or long values: answered, never kept.
            assert locator.locate("127.0.0.1", [f"8.8.{n}.8"] * 10)[0] == f"8.8.{n}.8"
            assert locator.locate("127.0.0.1", [" " * 600 + f"8.8.{n}.8"])[0] == f"8.8.{n}.8"
        assert len(locator._memo) <= 8
        assert all(len(key) <= 1 + ClientLocator.MAX_KEY_VALUES for key in locator._memo)
        assert all(sum(map(len, key[1:])) <= ClientLocator.MAX_KEY_CHARS for key in locator._memo)


def _frames(traceback: Any) -> Any:
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next
