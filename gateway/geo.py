"""Where a client IP is: country, ISO 3166-2 region, anonymizer (SPEC §1.4).

Reads GeoIP2/GeoLite2-format `.mmdb` files with the maxminddb C extension (the
reader geoip2 is built on, without geoip2's per-lookup model objects). Anything
that cannot be established is unknown, never a guess: an unparsable address, an
address with no record, or a record without a country gives `country=None`.

An IPv6 address of a transition mechanism is where the IPv4 address inside it
is: the databases alias 6to4 and IPv4-mapped space to the IPv4 tree, but they
have no record for NAT64 or SIIT addresses, and place a Teredo address where its
relay server is, not its client. Left alone, any of these would turn an
embargoed IPv4 address into an unknown (or another) country.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

# Flags of the GeoIP2 Anonymous-IP database; any one marks an anonymizer.
ANONYMIZER_FLAGS = (
    "is_anonymous",
    "is_anonymous_vpn",
    "is_hosting_provider",
    "is_public_proxy",
    "is_residential_proxy",
    "is_tor_exit_node",
)


class GeoDatabaseError(Exception):
    """A database is missing, unreadable or of the wrong type."""


@dataclass(frozen=True, slots=True)
class Place:
    country: str | None = None
    region: str | None = None
    anonymizer: bool = False


UNKNOWN = Place()

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 §2.1 well-known prefix
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 §2.1 IPv4-translated addresses


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, with IPv4-mapped IPv6 unmapped; None if it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64, SIIT, Teredo (its client, RFC 4380 §4) or 6to4 address carries."""
    if address.version == 4:
        return None
    if address in _NAT64 or address in _SIIT:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.teredo is not None:
        return address.teredo[1]
    return address.sixtofour


def _open(path: str | Path, accepted: tuple[str, ...], role: str) -> tuple[Any, str]:
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoDatabaseError(f"{role} database {path}: {exc}") from None
    kind = reader.metadata().database_type
    if not any(word in kind for word in accepted):
        reader.close()
        raise GeoDatabaseError(f"{role} database {path} is a {kind!r} database; expected {' or '.join(accepted)}")
    return reader, kind


class GeoIP:
    """Country (and region, from a City database) plus the optional anonymizer flag."""

    def __init__(self, country_db: str | Path, anonymous_ip_db: str | Path | None = None) -> None:
        self._places, self.database_type = _open(country_db, ("City", "Country", "Enterprise"), "country")
        self.has_regions = "Country" not in self.database_type
        self._anonymous = None
        if anonymous_ip_db is not None:
            self._anonymous, _ = _open(anonymous_ip_db, ("Anonymous-IP",), "anonymous-IP")

    def locate(self, ip: str) -> Place:
        address = parse_ip(ip)
        if address is None:
            return UNKNOWN
        inner = embedded_ipv4(address)
        if inner is None:
            return Place(*self._country(address), self._is_anonymizer(address))
        country, region = self._country(inner)
        if country is None:  # e.g. a private address inside: what the database says of the outer one
            country, region = self._country(address)
        return Place(country, region, self._is_anonymizer(inner) or self._is_anonymizer(address))

    def _country(self, address: Address) -> tuple[str | None, str | None]:
        record = self._places.get(address)
        if not isinstance(record, dict):
            return None, None
        country = (record.get("country") or {}).get("iso_code")
        if not isinstance(country, str):
            return None, None
        subdivisions = record.get("subdivisions") or ()
        # The most specific subdivision is the last one (GeoIP2 City layout).
        code = subdivisions[-1].get("iso_code") if subdivisions else None
        return country, f"{country}-{code}" if isinstance(code, str) else None

    def _is_anonymizer(self, address: Address) -> bool:
        if self._anonymous is None:
            return False
        record = self._anonymous.get(address)
        # No record and an empty record both mean "not anonymous".
        return isinstance(record, dict) and any(record.get(flag) is True for flag in ANONYMIZER_FLAGS)

    def close(self) -> None:
        self._places.close()
        if self._anonymous is not None:
            self._anonymous.close()
