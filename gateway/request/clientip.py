"""The client's IP address: the socket peer, or X-Forwarded-For behind a trusted proxy
(docs/operators.md, "Client addresses and unknown places").

X-Forwarded-For is a list each proxy appends its peer to, so only the entries
our own proxies added can be believed: walking from the right, every trusted
address is one of ours, and the first untrusted one is the address our
outermost proxy saw — the client. Everything to its left was written by the
client and is never read (uvicorn's ProxyHeadersMiddleware does the same).

A client address the gateway cannot establish must never widen access (issue
12), so there are two kinds of "no address", kept apart:

- unknown (None): the peer is not a plain address, or a trusted proxy sent no
  X-Forwarded-For. The decision core refuses an unknown place for every model
  unless the policy allows unknown places.
- unreadable (ForwardedForError, a 400): a trusted proxy sent X-Forwarded-For
  that is not plainly readable as a whole — more than MAX_FORWARDED_ENTRIES
  entries, longer than MAX_FORWARDED_CHARS, an empty entry, or an entry that is
  not an address (zone ids, brackets around IPv4, obs-fold or other whitespace,
  octal or short forms...). Every entry is read, the client-written ones to the
  left included: a header padded so that the gateway would give up on it (64
  commas before the real address) must be refused, not turned into "unknown".

Never a guess, and never the proxy's own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol

from gateway.geo.reader import UNKNOWN, Address, Place, parse_ip


class PlaceLookup(Protocol):
    """Where an address is: a GeoIP, or the databases in force (gateway/geo/files.py)."""

    def locate(self, ip: str) -> Place: ...


# More hops than any real proxy chain; a longer header is someone's fabrication.
MAX_FORWARDED_ENTRIES = 64
# 64 of the longest entries, `[ffff:...:255.255.255.255]:65535, `, fit in well under this.
MAX_FORWARDED_CHARS = 4096

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_OWS = " \t"  # RFC 9110 §5.6.3 optional whitespace


class ForwardedForError(ValueError):
    """X-Forwarded-For from a trusted proxy that cannot be read: the request is a 400.
    The message is for the caller and never repeats the header."""


def parse_network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A network in CIDR notation with no host bits set; ValueError naming `cidr` otherwise."""
    try:
        if "%" in cidr:
            raise ValueError("zone ids are not addresses")  # as parse_ip refuses them
        return ipaddress.ip_network(cidr.strip(), strict=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{cidr!r} is not a network in CIDR notation ({exc})") from None


class TrustedProxies:
    """A set of networks, tested by prefix length: one set lookup per distinct
    length, however many networks share it. Addresses are compared unmapped, so
    an IPv4 network also covers its IPv4-mapped IPv6 forms, and an IPv6 network
    inside ::ffff:0:0/96 covers the IPv4 addresses it maps."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for cidr in cidrs:
            try:
                networks.extend(_unmapped(parse_network(cidr)))
            except ValueError as exc:
                raise ValueError(f"trusted_proxies: {exc}") from None
        self.networks = tuple(networks)
        self._v4 = _by_prefix_length(n for n in networks if n.version == 4)
        self._v6 = _by_prefix_length(n for n in networks if n.version == 6)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, address: str | Address) -> bool:
        if isinstance(address, str):
            parsed = parse_ip(address)
            if parsed is None:
                return False
            address = parsed
        elif address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        groups = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any(value >> shift in prefixes for shift, prefixes in groups)


def client_ip(peer: str | None, forwarded_for: list[str], trusted: TrustedProxies) -> str | None:
    """The client address in canonical form, or None when it is unknown.

    `forwarded_for` holds every X-Forwarded-For header value in the order
    received (RFC 9110 §5.3: repeated field lines are one comma-separated list).
    The peer is the answer unless it is a trusted proxy; then it is the rightmost
    untrusted entry, or the leftmost if all are trusted. Raises ForwardedForError
    when the peer is trusted and the header cannot be read as a whole.
    """
    if peer is None:
        return None
    address = _plain(peer)
    if address is None:
        return None
    if not trusted.contains(address):
        return str(address)
    # A trusted proxy that forwards no header tells us nothing about the client.
    if not forwarded_for:
        return None
    entries = _entries(forwarded_for)
    for address in reversed(entries):
        if not trusted.contains(address):
            return str(address)
    # Every hop is ours (a request from inside): the origin is the leftmost.
    return str(entries[0])


def _entries(forwarded_for: list[str]) -> list[Address]:
    """Every entry of the header, read; sizes are checked before any splitting."""
    if sum(map(len, forwarded_for)) > MAX_FORWARDED_CHARS:
        raise ForwardedForError(f"The X-Forwarded-For header is longer than {MAX_FORWARDED_CHARS} characters.")
    if sum(value.count(",") for value in forwarded_for) + len(forwarded_for) > MAX_FORWARDED_ENTRIES:
        raise ForwardedForError(f"The X-Forwarded-For header has more than {MAX_FORWARDED_ENTRIES} entries.")
    entries = []
    for value in forwarded_for:
        for text in value.split(","):
            address = _entry(text)
            if address is None:
                raise ForwardedForError("The X-Forwarded-For header has an entry that is not an IP address.")
            entries.append(address)
    return entries


def _plain(text: str) -> Address | None:
    """A bare address, exactly: no surrounding whitespace, port or zone id."""
    if not text or text != text.strip():
        return None
    return parse_ip(text)


def _entry(text: str) -> Address | None:
    """One X-Forwarded-For entry: an address, optionally `v4:port` or
    `[v6]` / `[v6]:port`, between optional whitespace."""
    text = text.strip(_OWS)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and _port(rest[1:]))):
            return None
        # Brackets hold IPv6 notation only (RFC 3986 §3.2.2), mapped or not.
        return _plain(host) if ":" in host else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        address = _plain(host) if _port(port) else None
        return address if address is not None and address.version == 4 else None
    return _plain(text)


def _port(text: str) -> bool:
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit() and int(text) <= 65535


def _unmapped(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The network as addresses are compared: unmapped, since client addresses are."""
    if isinstance(network, ipaddress.IPv4Network):
        return [network]
    if network.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return [ipaddress.IPv4Network((base, network.prefixlen - 96))]
    if _MAPPED.subnet_of(network):
        # Covers all of ::ffff:0:0/96 and so every IPv4 address as well.
        return [network, ipaddress.IPv4Network("0.0.0.0/0")]
    return [network]


def _by_prefix_length(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple[tuple[int, frozenset[int]], ...]:
    groups: dict[int, set[int]] = {}
    for network in networks:
        shift = network.max_prefixlen - network.prefixlen
        groups.setdefault(shift, set()).add(int(network.network_address) >> shift)
    return tuple((shift, frozenset(prefixes)) for shift, prefixes in sorted(groups.items()))


class ClientLocator:
    """The client address and where it is, for a peer and its X-Forwarded-For values.

    Memoised: both are pure functions of those inputs (trusted proxies are fixed for
    the life of the process; when the GeoIP databases are replaced, `forget()` drops
    every memo), and a client sends the same ones request after request. A refusal
    is remembered as its message and raised afresh each time (re-raising one
    exception object would grow its traceback without end). Bounded, oldest entry out first: at most `size` entries, each
    keyed by at most MAX_KEY_VALUES header lines of MAX_KEY_CHARS in all; anything
    larger is worked out every time, never kept."""

    MAX_KEY_CHARS = 512
    MAX_KEY_VALUES = 4

    def __init__(self, trusted: TrustedProxies, geo: PlaceLookup, size: int = 4096) -> None:
        self.trusted = trusted
        self.geo = geo
        self.size = size
        self._memo: dict[tuple[str | None, ...], tuple[str | None, Place] | str] = {}

    def forget(self) -> None:
        """Drop every memo: the places in it came from databases no longer in use."""
        self._memo = {}

    def locate(self, peer: str | None, forwarded_for: list[str]) -> tuple[str | None, Place]:
        """Raises ForwardedForError as client_ip() does."""
        key = (peer, *forwarded_for)
        found = self._memo.get(key)
        if found is None:
            found = self._work_out(peer, forwarded_for)
            if len(forwarded_for) <= self.MAX_KEY_VALUES and sum(map(len, forwarded_for)) <= self.MAX_KEY_CHARS:
                if len(self._memo) >= self.size:
                    del self._memo[next(iter(self._memo))]
                self._memo[key] = found
        if isinstance(found, str):
            raise ForwardedForError(found)
        return found

    def _work_out(self, peer: str | None, forwarded_for: list[str]) -> tuple[str | None, Place] | str:
        try:
            address = client_ip(peer, forwarded_for, self.trusted)
        except ForwardedForError as error:
            return str(error)
        return address, self.geo.locate(address) if address else UNKNOWN
