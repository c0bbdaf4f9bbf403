"""Where a client IP is: country, ISO 3166-2 region, anonymizer (docs/operators.md, "Client addresses").

Reads GeoIP2/GeoLite2-format `.mmdb` files with the maxminddb C extension (the
reader geoip2 is built on, without geoip2's per-lookup model objects). Anything
that cannot be established is unknown, never a guess: an unparsable address, an
address with no record, or a record without a country gives `country=None`.

An IPv6 address of a transition mechanism is where the IPv4 address inside it
is: the databases alias 6to4 and IPv4-mapped space to the IPv4 tree, but they
have no record for NAT64 or SIIT addresses, and place a Teredo address where its
relay server is, not its client. Left alone, any of these would turn an
embargoed IPv4 address into an unknown (or another) country.

A region is an ISO 3166-2 code, which names its own country; the country is
what the database reports. They can disagree: some databases file Crimea and
Sevastopol, and other occupied parts of Ukraine, under RU, with codes ISO does
not have (RU-CR, RU-SEV) or with Ukraine's own subdivision codes. REGION_ALIASES
turns those into the ISO region a sanctions program names, so that a policy's
UA-43 matches whatever country the database says (the decision core reads both;
see gateway/policy/snapshot.py GroupSet).

A region overlay (gateway/geo/region_overlay.py) may add a region on top: where it
has one for an address, that is the region, whatever the country database (or
City database) said; the country is always the country database's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import maxminddb

from gateway.policy import countries

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


class RegionSource(Protocol):
    """Regions laid over a country database (gateway.geo.region_overlay.RegionOverlay)."""

    def region(self, address: Address) -> str | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Lookup:
    """A place and how it was found: which address answered (the IPv4 inside a
    transition address, or the address itself) and where the region came from."""

    place: Place
    address: Address | None = None
    region_source: Literal["overlay", "database"] | None = None


# Subdivision codes that some databases file under RU, and the ISO 3166-2 region
# they are (ISO 3166-2:UA). Kept small and explicit: only places a sanctions
# program names by region.
# - RU-CR, RU-SEV: the codes Russian sources (and OpenStreetMap's Russian-side
#   boundaries) give Crimea and Sevastopol; ISO 3166-2:RU has neither.
# - RU-43, RU-40, RU-14, RU-09, RU-23, RU-65: Ukraine's own numeric codes under
#   RU, as a database that refiles a UA record keeps them; ISO 3166-2:RU codes
#   are all alphabetic, so these can only be Ukrainian. (Russia's federal-subject
#   numbers reuse some of them, e.g. 43 for Kirov; a database writing those
#   instead of ISO codes is misread as Ukraine, which denies rather than admits.)
REGION_ALIASES: dict[str, str] = {
    "RU-CR": "UA-43",  # Autonomous Republic of Crimea
    "RU-SEV": "UA-40",  # Sevastopol
    "RU-43": "UA-43",
    "RU-40": "UA-40",
    "RU-14": "UA-14",  # Donetsk
    "RU-09": "UA-09",  # Luhansk
    "RU-23": "UA-23",  # Zaporizhzhia
    "RU-65": "UA-65",  # Kherson
}

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


def _region(country: str, subdivisions: Any) -> str | None:
    """The ISO 3166-2 region of a record: the most specific subdivision (the last,
    in the GeoIP2 City layout), unless some level is one a database files under
    another country (REGION_ALIASES, or a whole ISO code such as "UA-43" given as
    the subdivision code): then that one, since it is the one a program names."""
    if not isinstance(subdivisions, list) or not subdivisions:
        return None
    codes = [s.get("iso_code") if isinstance(s, dict) else None for s in subdivisions]
    for code in codes:
        if not isinstance(code, str):
            continue
        region = f"{country}-{code}"
        if region in REGION_ALIASES:
            return REGION_ALIASES[region]
        if countries.is_region(code):
            return code  # already a whole ISO 3166-2 code, naming its own country
    code = codes[-1]
    return f"{country}-{code}" if isinstance(code, str) else None


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
    """Country (and region, from a City database or a region overlay) plus the optional anonymizer flag.
    The overlay, if given, is GeoIP's to close."""

    def __init__(self, country_db: str | Path, anonymous_ip_db: str | Path | None = None,
                 overlay: RegionSource | None = None) -> None:
        self._places, self.database_type = _open(country_db, ("City", "Country", "Enterprise"), "country")
        self.has_regions = "Country" not in self.database_type
        # Each database's build date (Unix time), by name: how old it is (gateway/geo/files.py).
        self.built = {"country": self._places.metadata().build_epoch}
        self._anonymous = None
        if anonymous_ip_db is not None:
            self._anonymous, _ = _open(anonymous_ip_db, ("Anonymous-IP",), "anonymous-IP")
            self.built["anonymous_ip"] = self._anonymous.metadata().build_epoch
        # The overlay's build date is not in `built`: it only adds regions programs name, so its
        # age must not refuse requests (`gateway geo lookup` shows it).
        self._overlay = overlay

    def locate(self, ip: str) -> Place:
        return self.lookup(ip).place

    def lookup(self, ip: str) -> Lookup:
        address = parse_ip(ip)
        if address is None:
            return Lookup(UNKNOWN)
        inner = embedded_ipv4(address)
        if inner is None:
            return self._where(address, self._is_anonymizer(address))
        anonymizer = self._is_anonymizer(inner) or self._is_anonymizer(address)
        found = self._where(inner, anonymizer)
        if found.place.country is None and found.place.region is None:
            # e.g. a private address inside: what the databases say of the outer one
            found = self._where(address, anonymizer)
        return found

    def _where(self, address: Address, anonymizer: bool) -> Lookup:
        country, region = self._country(address)
        source: Literal["overlay", "database"] | None = "database" if region is not None else None
        overlaid = self._overlay.region(address) if self._overlay is not None else None
        if overlaid is not None:
            region, source = overlaid, "overlay"
        return Lookup(Place(country, region, anonymizer), address, source)

    def _country(self, address: Address) -> tuple[str | None, str | None]:
        record = self._places.get(address)
        if not isinstance(record, dict):
            return None, None
        country = (record.get("country") or {}).get("iso_code")
        if not isinstance(country, str):
            return None, None
        return country, _region(country, record.get("subdivisions"))

    def _is_anonymizer(self, address: Address) -> bool:
        if self._anonymous is None:
            return False
        record = self._anonymous.get(address)
        # No record and an empty record both mean "not anonymous".
        return isinstance(record, dict) and any(record.get(flag) is True for flag in ANONYMIZER_FLAGS)

    def anonymizer_flags(self, address: Address) -> tuple[str, ...]:
        """The Anonymous-IP flags set for `address` (what `gateway geo lookup` shows)."""
        record = self._anonymous.get(address) if self._anonymous is not None else None
        return tuple(flag for flag in ANONYMIZER_FLAGS if isinstance(record, dict) and record.get(flag) is True)

    def close(self) -> None:
        self._places.close()
        if self._anonymous is not None:
            self._anonymous.close()
        if self._overlay is not None:
            self._overlay.close()
