"""Where the caller is, as a caller might disguise it. The trusted proxy is
127.0.0.1 (its X-Forwarded-For is believed); 127.0.0.2 is any other peer.

An unknown place is denied (451 jurisdiction_unknown) for every model; an
X-Forwarded-For from the trusted proxy that cannot be read as a whole is a 400
(gateway/request/clientip.py). frontier-5.6 is covered; small-2 is not, and only
embargoed countries are denied it: this suite's policy embargoes CN
(175.16.199.1 in the GeoIP test database), so a CN address in any disguise
must still come out as CN. US is 216.160.83.56, JP 2001:218::1."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from .conftest import CN_IP, COVERED, PLAIN, US_IP, Probe, Reply, chat_body

UNTRUSTED_PEER = "127.0.0.2"
CN = ipaddress.IPv4Address(CN_IP)
US = ipaddress.IPv4Address(US_IP)


# An unknown place and an embargoed one are both a 451; the audit record tells them apart,
# and only "embargoed" shows that a disguised CN address was really located.
EMBARGOED, UNKNOWN = "jurisdiction_embargoed", "jurisdiction_unknown"


def audit_record(gw: Probe, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    return record


def located(gw: Probe, reply: Reply, reason: str, api: str = "openai") -> None:
    """Denied 451 for `reason` first: the place the gateway established."""
    gw.denied(reply, 451, api=api)
    assert audit_record(gw, reply)["reasons"][0] == reason


def teredo(client: ipaddress.IPv4Address, server: str = "65.54.227.120") -> str:
    """RFC 4380 §4: 2001:0::/32, server IPv4, flags, obfuscated port, obfuscated client IPv4."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | (0x8000 << 48) | (0xFFFF << 32)
    return str(ipaddress.IPv6Address(value | (int(client) ^ 0xFFFFFFFF)))


def nat64(address: ipaddress.IPv4Address) -> str:
    return str(ipaddress.IPv6Address((0x0064FF9B << 96) | int(address)))  # RFC 6052 well-known prefix


# (X-Forwarded-For values as separate header lines, model, expected status); peer 127.0.0.1 (trusted).
FORWARDED: list[tuple[str, list[str], str, int | str]] = [
    # Spoofing and duplication: only the rightmost untrusted entry (our proxy's peer) counts.
    ("client-written US left of a CN hop", [f"{US_IP}, {CN_IP}"], PLAIN, EMBARGOED),
    ("CN in a first header, US appended by the proxy in a second", [CN_IP, US_IP], COVERED, 200),
    ("US in a first header, CN in a second", [US_IP, CN_IP], PLAIN, EMBARGOED),
    ("CN then our own proxy", [f"{CN_IP}, 127.0.0.1"], PLAIN, EMBARGOED),
    ("everything ours: leftmost is loopback, unknown", ["127.0.0.1, 127.0.0.1"], COVERED, UNKNOWN),
    ("everything ours, a plain model: unknown is denied it too", ["127.0.0.1, 127.0.0.1"], PLAIN, UNKNOWN),
    # Unreadable: a 400, never an unknown country (which was allowed for plain models before issue 12).
    ("empty header", [""], COVERED, 400),
    ("empty rightmost entry", [f"{US_IP},"], COVERED, 400),
    ("65 entries", [", ".join([US_IP] * 65)], COVERED, 400),
    ("65 header lines", [US_IP] * 65, COVERED, 400),
    ("64 empty entries padded before CN", ["," * 64 + CN_IP], PLAIN, 400),
    ("64 padding entries, then CN", [", ".join(["10.0.0.1"] * 64 + [CN_IP])], PLAIN, 400),
    ("63 empty entries before CN", ["," * 63 + CN_IP], PLAIN, 400),
    ("padding over header lines, then CN", [""] * 64 + [CN_IP], PLAIN, 400),
    ("garbage left of CN", [f"garbage, {CN_IP}"], PLAIN, 400),
    ("a huge single entry", ["10.0.0.1," + " " * 5000 + CN_IP], PLAIN, 400),  # leading OWS is the parser's
    ("IPv6 zone id percent-encoded", ["2001:218::1%25eth0"], PLAIN, 400),
    ("IPv4 port with a sign", [f"{CN_IP}:+80"], PLAIN, 400),
    ("IPv6 double brackets", ["[[2001:218::1]]"], PLAIN, 400),
    ("no-break space", [f"\u00a0{CN_IP}"], PLAIN, 400),
    ("vertical tab", [f"\v{CN_IP}"], PLAIN, 400),
    # IPv6 spellings of a JP address (tier-1 ally: allowed for the covered model).
    ("IPv6 compressed", ["2001:218::1"], COVERED, 200),
    ("IPv6 expanded", ["2001:0218:0000:0000:0000:0000:0000:0001"], COVERED, 200),
    ("IPv6 upper-case", ["2001:218::1".upper()], COVERED, 200),
    ("IPv6 bracketed", ["[2001:218::1]"], COVERED, 200),
    ("IPv6 bracketed with port", ["[2001:218::1]:443"], COVERED, 200),
    ("IPv6 zone id", ["2001:218::1%eth0"], COVERED, 400),
    ("IPv6 bracketed zone id with port", ["[2001:218::1%25eth0]:443"], COVERED, 400),
    ("IPv6 port without brackets is another address", ["2001:218::1:443"], COVERED, 200),
    ("IPv6 bracket unclosed", ["[2001:218::1"], COVERED, 400),
    ("IPv6 bracketed IPv4", [f"[{US_IP}]"], COVERED, 400),
    ("IPv6 bad port", ["[2001:218::1]:99999"], COVERED, 400),
    # IPv4 embedded in IPv6: the address is where its IPv4 is.
    ("IPv4-mapped dotted", [f"::ffff:{CN_IP}"], PLAIN, EMBARGOED),
    ("IPv4-mapped hex", ["::ffff:af10:c701"], PLAIN, EMBARGOED),
    ("IPv4-mapped expanded", ["0:0:0:0:0:ffff:af10:c701"], PLAIN, EMBARGOED),
    ("IPv4-mapped bracketed with port", [f"[::ffff:{CN_IP}]:80"], PLAIN, EMBARGOED),
    ("IPv4-compatible (deprecated)", [f"::{CN_IP}"], PLAIN, EMBARGOED),
    ("IPv4-translated (SIIT)", [f"::ffff:0:{CN_IP}"], PLAIN, EMBARGOED),
    ("6to4", ["2002:af10:c701::1"], PLAIN, EMBARGOED),
    ("NAT64 well-known prefix", [nat64(CN)], PLAIN, EMBARGOED),
    ("NAT64 dotted", [f"64:ff9b::{CN_IP}"], PLAIN, EMBARGOED),
    ("Teredo client", [teredo(CN)], PLAIN, EMBARGOED),
    ("IPv4-mapped US for the covered model", [f"::ffff:{US_IP}"], COVERED, 200),
    ("NAT64 US for the covered model", [nat64(US)], COVERED, 200),
    ("Teredo US client for the covered model", [teredo(US)], COVERED, 200),
    # Notations some parsers accept and mean something else by: never read as the US address.
    ("octal", ["0330.0240.0123.070"], COVERED, 400),
    ("octal first octet", ["0216.160.83.56"], COVERED, 400),
    ("leading zeros", ["216.160.083.056"], COVERED, 400),
    ("hex", ["0xd8.0xa0.0x53.0x38"], COVERED, 400),
    ("hex whole", ["0xd8a05338"], COVERED, 400),
    ("decimal whole", [str(int(US))], COVERED, 400),
    ("short form a.b.c", ["216.160.21304"], COVERED, 400),
    ("short form a.b", ["216.10506040"], COVERED, 400),
    ("short form 8.8", ["8.8"], COVERED, 400),
    ("trailing dot", [f"{US_IP}."], COVERED, 400),
    ("octet over 255", ["216.160.83.256"], COVERED, 400),
    ("five octets", [f"{US_IP}.1"], COVERED, 400),
    ("space inside", ["216.160. 83.56"], COVERED, 400),
    ("two addresses with a space", [f"{US_IP} {US_IP}"], COVERED, 400),
    ("semicolon separated", [f"{CN_IP};{US_IP}"], COVERED, 400),
    ("IPv4 with port", [f"{US_IP}:8080"], COVERED, 200),
    ("IPv4 with empty port", [f"{US_IP}:"], COVERED, 400),
    ("surrounding whitespace", [f" \t{US_IP} \t"], COVERED, 200),
    ("quoted", [f'"{US_IP}"'], COVERED, 400),
    ("RFC 7239 syntax in XFF", [f"for={US_IP}"], COVERED, 400),
    ("obfuscated identifier", ["_hidden"], COVERED, 400),
    ("unknown", ["unknown"], COVERED, 400),
    ("hostname", ["localhost"], COVERED, 400),
    ("fullwidth digits", ["２１６.１６０.８３.５６"], COVERED, 400),
    ("CIDR", [f"{US_IP}/32"], COVERED, 400),
    # Ranges with no country: unknown, denied for every model.
    ("private 10/8, a plain model", ["10.0.0.1"], PLAIN, UNKNOWN),
    ("a record without a country, a plain model", ["214.1.1.1"], PLAIN, UNKNOWN),
    ("private 10/8", ["10.0.0.1"], COVERED, UNKNOWN),
    ("private 192.168/16", ["192.168.1.1"], COVERED, UNKNOWN),
    ("CGNAT 100.64/10", ["100.64.0.1"], COVERED, UNKNOWN),
    ("link-local", ["169.254.169.254"], COVERED, UNKNOWN),
    ("loopback other than the proxy", ["127.0.0.2"], COVERED, UNKNOWN),
    ("unspecified", ["0.0.0.0"], COVERED, UNKNOWN),
    ("broadcast", ["255.255.255.255"], COVERED, UNKNOWN),
    ("multicast", ["224.0.0.1"], COVERED, UNKNOWN),
    ("IPv6 loopback", ["::1"], COVERED, UNKNOWN),
    ("IPv6 unspecified", ["::"], COVERED, UNKNOWN),
    ("IPv6 link-local", ["fe80::1"], COVERED, UNKNOWN),
    ("IPv6 unique local", ["fd00::1"], COVERED, UNKNOWN),
    ("IPv6 documentation", ["2001:db8::1"], COVERED, UNKNOWN),
    ("a record without a country", ["214.1.1.1"], COVERED, UNKNOWN),
]


@pytest.mark.parametrize(("values", "model", "expected"), [c[1:] for c in FORWARDED], ids=[c[0] for c in FORWARDED])
def test_forwarded_for(gw: Probe, values: list[str], model: str, expected: int | str) -> None:
    reply = gw.send(body=chat_body(model), ip=None, headers=[("X-Forwarded-For", v) for v in values])
    if expected == 200:
        gw.allowed(reply, model=model)
    elif expected == 400:
        gw.denied(reply, 400)
    else:
        located(gw, reply, expected)  # type: ignore[arg-type]


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
    located(gw, gw.send(body=chat_body(PLAIN), ip=None, headers=headers, source=UNTRUSTED_PEER), UNKNOWN)


@pytest.mark.parametrize("headers", [c[1] for c in SPOOFED if "X-Forwarded-For" not in dict(c[1])],
                         ids=[c[0] for c in SPOOFED if "X-Forwarded-For" not in dict(c[1])])
def test_trusted_proxy_is_believed_only_through_x_forwarded_for(gw: Probe, headers: list[tuple[str, str]]) -> None:
    # A trusted proxy that sent no X-Forwarded-For tells us nothing: unknown, not its other headers.
    located(gw, gw.send(body=chat_body(PLAIN), ip=None, headers=headers), UNKNOWN)


def test_untrusted_peer_is_located_for_a_plain_model(gw: Probe) -> None:
    # The control for the cases above: the peer itself (loopback: no country) is the client, so
    # the request is refused as unknown, not embargoed as the CN address it wrote.
    reply = gw.send(body=chat_body(PLAIN), ip=CN_IP, source=UNTRUSTED_PEER)
    located(gw, reply, UNKNOWN)
    record = audit_record(gw, reply)
    assert (record["client_ip"], record["observed_country"], record["reasons"]) == (UNTRUSTED_PEER, None, [UNKNOWN])


def test_huge_forwarded_for_is_refused_without_500(gw: Probe) -> None:
    reply = gw.send(body=chat_body(COVERED), ip=", ".join(["10.0.0.1"] * 5000) + f", {US_IP}")
    gw.denied(reply, 431)  # 55 KB: over the head's limits (gateway/request/listener.py), before the address is read


ROUTES = [("/v1/chat/completions", "openai"), ("/v1/completions", "openai"), ("/v1/embeddings", "openai"),
          ("/v1/responses", "openai"), ("/v1/messages", "anthropic")]


@pytest.mark.parametrize(("path", "api"), ROUTES, ids=[r[0] for r in ROUTES])
@pytest.mark.parametrize("ip", [CN_IP, nat64(CN), teredo(CN), f"[::ffff:{CN_IP}]:443"])
def test_every_route_locates_the_caller_the_same_way(gw: Probe, path: str, api: str, ip: str) -> None:
    body = chat_body(PLAIN, input="x", max_tokens=5, **({"prompt": "x"} if path == "/v1/completions" else {}))
    located(gw, gw.send(path=path, body=body, ip=ip), EMBARGOED, api=api)


def test_models_listing_from_an_embargoed_country_is_not_forwarded(gw: Probe) -> None:
    located(gw, gw.send("GET", "/v1/models", ip=nat64(CN)), EMBARGOED)


@pytest.mark.parametrize("ip", [None, "10.0.0.1", "214.1.1.1", "127.0.0.1"], ids=["no header", "private", "no country", "ours"])
def test_models_listing_from_an_unknown_place_is_not_forwarded(gw: Probe, ip: str | None) -> None:
    located(gw, gw.send("GET", "/v1/models", ip=ip), UNKNOWN)
