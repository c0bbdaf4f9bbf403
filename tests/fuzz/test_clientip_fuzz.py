"""Fuzzing the forwarding-header parser (gateway/request/clientip.py).

Peers and X-Forwarded-For headers are built from addresses in every notation
(IPv4, IPv6, mapped and compatible forms, brackets, ports, zone ids, leading
zeros, whitespace, garbage) over a set of trusted networks. An independent
reference walks the hops: the peer, then the entries from the right; an entry
is believable only if every hop to its right is one of our proxies.

The reference also says when a trusted proxy's header cannot be read as a
whole (too many entries or characters, an empty or unreadable entry anywhere,
the client-written ones included), which must be refused (issue 12).

Properties: raises nothing but ForwardedForError, and exactly when the
reference refuses; otherwise returns None or a canonical, unmapped address that
is exactly the reference's answer — in particular never an entry an untrusted
hop wrote.
"""

from __future__ import annotations

import functools
import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from gateway.request.clientip import MAX_FORWARDED_CHARS, MAX_FORWARDED_ENTRIES, ForwardedForError, TrustedProxies, client_ip

from .conftest import fuzz

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETWORKS = [
    "127.0.0.1/32", "10.0.0.0/8", "192.168.1.0/24", "::1/128", "fd00::/8", "::ffff:172.16.0.0/108",
    "2001:db8::/32", "0.0.0.0/0", "::/0", "100.64.0.0/10",
]
_V4 = st.sampled_from(["127.0.0.1", "10.1.2.3", "192.168.1.7", "172.16.5.4", "216.160.83.56", "175.16.199.1",
                       "89.160.20.112", "100.64.0.1", "8.8.8.8", "0.0.0.0", "255.255.255.255"])
_V6 = st.sampled_from(["::1", "fd00::5", "2001:db8::1", "2a02:cf40::", "::", "2001:4860:4860::8888", "fe80::1"])


def _forms(v4: str, v6: str) -> list[str]:
    """The ways an entry might be written, valid and not."""
    return [
        v4, v6, f"::ffff:{v4}", f"::FFFF:{v4}", f"[::ffff:{v4}]", f"{v4}:8080", f"[{v6}]", f"[{v6}]:443", f"{v6}%eth0",
        f"::{v4}", f"64:ff9b::{v4}", v6.upper(), f" {v4}", f"{v4} ", f"\t{v4}", f"{v4}\u00a0", f"0{v4}", f"{v4}.",
        f"{v4}:", f"{v4}:0", f"{v4}:65536", f"[{v4}]", f"{v6}:80", "unknown", "", "_hidden", "0x7f.0.0.1", "127.1",
        f"for={v4}", f'"{v4}"', "1.2.3.4/24", f"{v4}:80:80", f"[{v6}", f"{v6}]", "\x00", "１.２.３.４",
        # Whitespace tricks: obs-fold, other separators, long optional whitespace; zone ids, odd ports.
        f"\r\n {v4}", f"{v4}\r\n\t", f"\v{v4}", f"{v4}\u2028", f"\u3000{v4}", " " * 300 + v4, f"{v6}%25eth0",
        f"[{v6}%25eth0]:443", f"[{v6}]:+1", f"[{v6}]:00443", f"{v4}:４４３", f"[[{v6}]]", f"[ {v6} ]", f"{v4} :80",
        "[]", ":80",
    ]


_ENTRIES = st.builds(lambda v4, v6, i: _forms(v4, v6)[i % len(_forms(v4, v6))], _V4, _V6, st.integers(0, 200))
_VALUES = st.lists(st.lists(_ENTRIES, min_size=1, max_size=4).map(",".join), max_size=3)
# Padding as an attacker would send it: N empty entries or N copies before a real address,
# in one header line or many, around the entry cap.
_PADDED = st.builds(
    lambda n, filler, lines, real: ([filler] * n + [real]) if lines else [",".join([filler] * n + [real])],
    st.integers(MAX_FORWARDED_ENTRIES - 3, MAX_FORWARDED_ENTRIES + 3), st.sampled_from(["", " ", "10.1.2.3", "8.8.8.8"]),
    st.booleans(), _V4,
)
_HEADER_VALUES = st.one_of(_VALUES, _VALUES, _PADDED)
_PEERS = st.one_of(st.none(), _V4, _V6, _ENTRIES)


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.cache
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _trusted(address: Address, networks: list[str]) -> bool:
    """An IPv4 address belongs to an IPv6 network if its mapped form does."""
    for text in networks:
        network = _network(text)
        if address.version == network.version and address in network:
            return True
        if address.version == 4 and network.version == 6 and ipaddress.IPv6Address(f"::ffff:{address}") in network:
            return True
    return False


def _reference_entry(text: str) -> Address | None:
    text = text.strip(" \t")
    port = None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")) or ":" not in inner:
            return None
        text, port = inner, rest[1:] if rest else None
    elif text.count(":") == 1:
        text, port = text.split(":")
        if "." not in text:
            return None
    # Port 0 is accepted as gateway/request/clientip.py does: the port never matters, the address does.
    if port is not None and not (port.isascii() and port.isdigit() and int(port) <= 65535 and 0 < len(port) <= 5):
        return None
    if "%" in text or text != text.strip():
        return None
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


REFUSED = "refused"


def reference(peer: str | None, headers: list[str], networks: list[str]) -> Address | None | str:
    """The client address, None when unknown, or REFUSED when a trusted peer's header
    cannot be read as a whole."""
    if peer is None:
        return None
    try:
        address = _unmapped(ipaddress.ip_address(peer)) if peer == peer.strip() and "%" not in peer else None
    except ValueError:
        address = None
    if address is None:
        return None
    if not _trusted(address, networks):
        return address
    if not headers:
        return None
    entries = [entry for value in headers for entry in value.split(",")]
    if len(entries) > MAX_FORWARDED_ENTRIES or sum(map(len, headers)) > MAX_FORWARDED_CHARS:
        return REFUSED
    read = [_reference_entry(entry) for entry in entries]
    if any(hop is None for hop in read):
        return REFUSED
    for hop in reversed(read):
        if not _trusted(hop, networks):  # type: ignore[arg-type]
            return hop
    return read[0]


def _answer(peer: str | None, headers: list[str], networks: list[str]) -> str | None:
    try:
        return client_ip(peer, headers, TrustedProxies(networks))
    except ForwardedForError:
        return REFUSED


@fuzz(examples=500)
@given(_PEERS, _HEADER_VALUES, st.lists(st.sampled_from(_NETWORKS), max_size=3, unique=True))
def test_client_ip(peer: str | None, headers: list[str], networks: list[str]) -> None:
    answer = _answer(peer, headers, networks)
    expected = reference(peer, headers, networks)
    if answer is None or answer == REFUSED:
        assert answer == expected, (peer, headers, networks)
        return
    parsed = ipaddress.ip_address(answer)
    assert str(parsed) == answer and _unmapped(parsed) == parsed
    assert parsed == expected, (peer, headers, networks)


@fuzz(examples=300)
@given(st.one_of(st.none(), st.text(max_size=20)), st.lists(st.text(max_size=30), max_size=3),
       st.lists(st.sampled_from(_NETWORKS), max_size=3, unique=True))
def test_arbitrary_text(peer: str | None, headers: list[str], networks: list[str]) -> None:
    answer = _answer(peer, headers, networks)
    assert answer == (str(expected) if isinstance(expected := reference(peer, headers, networks), Address)
                      else expected), (peer, headers, networks)
    if answer not in (None, REFUSED):
        assert str(ipaddress.ip_address(answer)) == answer
