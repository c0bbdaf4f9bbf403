"""Where the caller is, as a caller might disguise it. The trusted proxy is
127.0.0.1 (its X-Forwarded-For is believed); 127.0.0.2 is any other peer.

frontier-5.6 is covered: an unknown country is denied (451). small-2 is not:
only embargoed countries are denied, and this suite's policy embargoes CN
(175.16.199.1 in the GeoIP test database), so a CN address in any disguise
must still come out as CN. US is 216.160.83.56, JP 2001:218::1."""

from __future__ import annotations

import ipaddress

import pytest

from .conftest import CN_IP, COVERED, PLAIN, US_IP, Probe, chat_body

UNTRUSTED_PEER = "127.0.0.2"
CN = ipaddress.IPv4Address(CN_IP)
US = ipaddress.IPv4Address(US_IP)


def teredo(client: ipaddress.IPv4Address, server: str = "65.54.227.120") -> str:
    """RFC 4380 §4: 2001:0::/32, server IPv4, flags, obfuscated port, obfuscated client IPv4."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | (0x8000 << 48) | (0xFFFF << 32)
    return str(ipaddress.IPv6Address(value | (int(client) ^ 0xFFFFFFFF)))


def nat64(address: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv6Address((0x0064FF9B << 96) | int(address)))  # RFC 6052 well-known prefix


# (X-Forwarded-For values as separate header lines, model, expected status); peer 127.0.0.1 (trusted).
FORWARDED: list[tuple[str, list[str], str, int]] = [
    # Spoofing and duplication: only the rightmost untrusted entry (our proxy's peer) counts.
    ("client-written US left of a CN hop", [f"{US_IP}, {CN_IP}"], PLAIN, 451),
    ("CN in a first header, US appended by the proxy in a second", [CN_IP, US_IP], COVERED, 200),
    ("US in a first header, CN in a second", [US_IP, CN_IP], PLAIN, 451),
    ("CN then our own proxy", [f"{CN_IP}, 127.0.0.1"], PLAIN, 451),
    ("everything ours: leftmost is loopback, unknown", ["127.0.0.1, 127.0.0.1"], COVERED, 451),
    ("empty header", [""], COVERED, 451),
    ("empty rightmost entry", [f"{US_IP},"], COVERED, 451),
    ("65 entries", [", ".join([US_IP] * 65)], COVERED, 451),
    ("65 header lines", [US_IP] * 65, COVERED, 451),
    # IPv6 spellings of a JP address (tier-1 ally: allowed for the covered model).
    ("IPv6 compressed", ["2001:218::1"], COVERED, 200),
    ("IPv6 expanded", ["2001:0218:0000:0000:0000:0000:0000:0001"], COVERED, 200),
    ("IPv6 upper-case", ["2001:218::1".upper()], COVERED, 200),
    ("IPv6 bracketed", ["[2001:218::1]"], COVERED, 200),
    ("IPv6 bracketed with port", ["[2001:218::1]:443"], COVERED, 200),
    ("IPv6 zone id", ["2001:218::1%eth0"], COVERED, 451),
    ("IPv6 bracketed zone id with port", ["[2001:218::1%25eth0]:443"], COVERED, 451),
    ("IPv6 port without brackets is another address", ["2001:218::1:443"], COVERED, 200),
    ("IPv6 bracket unclosed", ["[2001:218::1"], COVERED, 451),
    ("IPv6 bracketed IPv4", [f"[{US_IP}]"], COVERED, 451),
    ("IPv6 bad port", ["[2001:218::1]:99999"], COVERED, 451),
    # IPv4 embedded in IPv6: the address is where its IPv4 is.
    ("IPv4-mapped dotted", [f"::ffff:{CN_IP}"], PLAIN, 451),
    ("IPv4-mapped hex", ["::ffff:af10:c701"], PLAIN, 451),
    ("IPv4-mapped expanded", ["0:0:0:0:0:ffff:af10:c701"], PLAIN, 451),
    ("IPv4-mapped bracketed with port", [f"[::ffff:{CN_IP}]:80"], PLAIN, 451),
    ("IPv4-compatible (deprecated)", [f"::{CN_IP}"], PLAIN, 451),
    ("IPv4-translated (SIIT)", [f"::ffff:0:{CN_IP}"], PLAIN, 451),
    ("6to4", ["2002:af10:c701::1"], PLAIN, 451),
    ("NAT64 well-known prefix", [nat64(CN)], PLAIN, 451),
    ("NAT64 dotted", [f"64:ff9b::{CN_IP}"], PLAIN, 451),
    ("Teredo client", [teredo(CN)], PLAIN, 451),
    ("IPv4-mapped US for the covered model", [f"::ffff:{US_IP}"], COVERED, 200),
    ("NAT64 US for the covered model", [nat64(US)], COVERED, 200),
    ("Teredo US client for the covered model", [teredo(US)], COVERED, 200),
    # Notations some parsers accept and mean something else by: never read as the US address.
    ("octal", ["0330.0240.0123.070"], COVERED, 451),
    ("octal first octet", ["0216.160.83.56"], COVERED, 451),
    ("leading zeros", ["216.160.083.056"], COVERED, 451),
    ("hex", ["0xd8.0xa0.0x53.0x38"], COVERED, 451),
    ("hex whole", ["0xd8a05338"], COVERED, 451),
    ("decimal whole", [str(int(US))], COVERED, 451),
    ("short form a.b.c", ["216.160.21304"], COVERED, 451),
    ("short form a.b", ["216.10506040"], COVERED, 451),
    ("short form 8.8", ["8.8"], COVERED, 451),
    ("trailing dot", [f"{US_IP}."], COVERED, 451),
    ("octet over 255", ["216.160.83.256"], COVERED, 451),
    ("five octets", [f"{US_IP}.1"], COVERED, 451),
    ("space inside", ["216.160. 83.56"], COVERED, 451),
    ("two addresses with a space", [f"{US_IP} {US_IP}"], COVERED, 451),
    ("semicolon separated", [f"{CN_IP};{US_IP}"], COVERED, 451),
    ("IPv4 with port", [f"{US_IP}:8080"], COVERED, 200),
    ("IPv4 with empty port", [f"{US_IP}:"], COVERED, 451),
    ("surrounding whitespace", [f" \t{US_IP} \t"], COVERED, 200),
    ("quoted", [f'"{US_IP}"'], COVERED, 451),
    ("RFC 7239 syntax in XFF", [f"for={US_IP}"], COVERED, 451),
    ("obfuscated identifier", ["_hidden"], COVERED, 451),
    ("unknown", ["unknown"], COVERED, 451),
    ("hostname", ["localhost"], COVERED, 451),
    ("fullwidth digits", ["２１６.１６０.８３.５６"], COVERED, 451),
    ("CIDR", [f"{US_IP}/32"], COVERED, 451),
    # Ranges with no country: unknown, denied for the covered model.
    ("private 10/8", ["10.0.0.1"], COVERED, 451),
    ("private 192.168/16", ["192.168.1.1"], COVERED, 451),
    ("CGNAT 100.64/10", ["100.64.0.1"], COVERED, 451),
    ("link-local", ["169.254.169.254"], COVERED, 451),
    ("loopback other than the proxy", ["127.0.0.2"], COVERED, 451),
    ("unspecified", ["0.0.0.0"], COVERED, 451),
    ("broadcast", ["255.255.255.255"], COVERED, 451),
    ("multicast", ["224.0.0.1"], COVERED, 451),
    ("IPv6 loopback", ["::1"], COVERED, 451),
    ("IPv6 unspecified", ["::"], COVERED, 451),
    ("IPv6 link-local", ["fe80::1"], COVERED, 451),
    ("IPv6 unique local", ["fd00::1"], COVERED, 451),
    ("IPv6 documentation", ["2001:db8::1"], COVERED, 451),
    ("a record without a country", ["214.1.1.1"], COVERED, 451),
]


@pytest.mark.parametrize(("values", "model", "status"), [c[1:] for c in FORWARDED], ids=[c[0] for c in FORWARDED])
def test_forwarded_for(gw: Probe, values: list[str], model: str, status: int) -> None:
    reply = gw.send(body=chat_body(model), ip=None, headers=[("X-Forwarded-For", v) for v in values])
    if status == 200:
        gw.allowed(reply, model=model)
    else:
        gw.denied(reply, status)


# From a peer we do not trust, nothing the client writes about its address is believed:
# the peer (loopback, no country) is the client.
SPOOFED: list[tuple[str, list[tuple[str, str]]]] = [
    ("X-Forwarded-For", [("X-Forwarded-For", US_IP)]),
    ("two X-Forwarded-For", [("X-Forwarded-For", US_IP), ("X-Forwarded-For", US_IP)]),
    ("Forwarded", [("Forwarded", f"for={US_IP};proto=https")]),
    ("Forwarded IPv6", [("Forwarded", 'for="[2001:218::1]:443"')]),
    ("X-Real-IP", [("X-Real-IP", US_IP)]),
    ("True-Client-IP", [("True-Client-IP", US_IP)]),
    ("CF-Connecting-IP", [("CF-Connecting-IP", US_IP)]),
    ("X-Client-IP", [("X-Client-IP", US_IP)]),
    ("X-Cluster-Client-IP", [("X-Cluster-Client-IP", US_IP)]),
    ("X_Forwarded_For", [("X_Forwarded_For", US_IP)]),
    ("all of them", [("X-Forwarded-For", US_IP), ("Forwarded", f"for={US_IP}"), ("X-Real-IP", US_IP)]),
]


@pytest.mark.parametrize("headers", [c[1] for c in SPOOFED], ids=[c[0] for c in SPOOFED])
def test_untrusted_peer_cannot_name_its_address(gw: Probe, headers: list[tuple[str, str]]) -> None:
    gw.denied(gw.send(body=chat_body(COVERED), ip=None, headers=headers, source=UNTRUSTED_PEER), 451)


@pytest.mark.parametrize("headers", [c[1] for c in SPOOFED if "X-Forwarded-For" not in dict(c[1])],
                         ids=[c[0] for c in SPOOFED if "X-Forwarded-For" not in dict(c[1])])
def test_trusted_proxy_is_believed_only_through_x_forwarded_for(gw: Probe, headers: list[tuple[str, str]]) -> None:
    # A trusted proxy that sent no X-Forwarded-For tells us nothing: unknown, not its other headers.
    gw.denied(gw.send(body=chat_body(COVERED), ip=None, headers=headers), 451)


def test_untrusted_peer_is_located_for_a_plain_model(gw: Probe) -> None:
    # The control for the cases above: the same peer, its own (unknown) country, a model that allows it.
    gw.allowed(gw.send(body=chat_body(PLAIN), ip=CN_IP, source=UNTRUSTED_PEER))


def test_huge_forwarded_for_is_refused_without_500(gw: Probe) -> None:
    reply = gw.send(body=chat_body(COVERED), ip=", ".join(["10.0.0.1"] * 5000) + f", {US_IP}")
    gw.denied(reply, 431)  # 55 KB: over the head's limits (gateway/listener.py), before the address is read


ROUTES = [("/v1/chat/completions", "openai"), ("/v1/completions", "openai"), ("/v1/embeddings", "openai"),
          ("/v1/responses", "openai"), ("/v1/messages", "anthropic")]


@pytest.mark.parametrize(("path", "api"), ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("ip", [CN_IP, nat64(CN), teredo(CN), f"[::ffff:{CN_IP}]:443"])
def test_every_route_locates_the_caller_the_same_way(gw: Probe, path: str, api: str, ip: str) -> None:
    body = chat_body(PLAIN, input="x", prompt="x", max_tokens=5)
    gw.denied(gw.send(path=path, body=body, ip=ip), 451, api=api)


def test_models_listing_from_an_embargoed_country_is_not_forwarded(gw: Probe) -> None:
    gw.denied(gw.send("GET", "/v1/models", ip=nat64(CN)), 451)
