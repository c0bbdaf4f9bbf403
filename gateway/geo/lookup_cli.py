"""`gateway geo lookup IP`: where the gateway places an address, and from which data.

Answers "why was this caller blocked?" with what the request path would see:
the country (from the country database), the region and where it came from
(the region overlay or the database's own subdivisions), the anonymizer flags,
and every database consulted with its build date, so an operator can tell a
stale or unexpected database from a wrong policy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb

from gateway.policy import countries
from gateway.geo import embedded as geodata
from gateway.geo import region_overlay
from gateway.geo.files import build_geoip, configured_files
from gateway.config import GeoIPConfig
from gateway.geo.reader import embedded_ipv4, parse_ip

ROLES = (("country", "country database"), ("anonymous_ip", "anonymous-IP database"),
         ("region_overlay", "region overlay"))


def lookup(config: GeoIPConfig, ip: str) -> dict[str, Any]:
    """The place of `ip` under `config`'s databases, as a JSON-ready report. Raises
    ValueError if `ip` is not an address, GeoDatabaseError if a database cannot be read."""
    address = parse_ip(ip)
    if address is None:
        raise ValueError(f"{ip!r} is not an IP address")
    files = configured_files(config)
    geo = build_geoip(files)
    try:
        found = geo.lookup(str(address))
        inner = embedded_ipv4(address)
        flags = {flag for a in (address, inner) if a is not None for flag in geo.anonymizer_flags(a)}
    finally:
        geo.close()
    place = found.place
    return {
        "ip": ip,
        "looked_up": str(found.address) if found.address is not None else None,
        "country": place.country,
        "region": place.region,
        "region_source": found.region_source,
        "anonymizer": place.anonymizer,
        "anonymizer_flags": sorted(flags),
        "databases": [describe(role, files[role]) for role, _ in ROLES if role in files],
        "attribution": _attribution(config),
    }


def describe(role: str, path: Path) -> dict[str, Any]:
    """A database's name, type and build time, from its own metadata."""
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
    return {
        "role": role,
        "path": str(path),
        "type": meta.database_type,
        "built": datetime.fromtimestamp(meta.build_epoch, UTC).isoformat().replace("+00:00", "Z"),
        "description": (meta.description or {}).get("en"),
    }


def _attribution(config: GeoIPConfig) -> list[str]:
    """DB-IP's licence asks for credit wherever its data's results are shown."""
    notices = [] if config.country_db else [geodata.ATTRIBUTION]
    return notices + ([region_overlay.ATTRIBUTION] if config.region_overlay else [])


def render(report: dict[str, Any]) -> str:
    sources = {"overlay": "from the region overlay", "database": "from the country database's subdivisions"}
    flags = ", ".join(report["anonymizer_flags"])
    anonymous_db = any(d["role"] == "anonymous_ip" for d in report["databases"])
    lines = [
        f"{report['ip']}" + (f" (looked up as {report['looked_up']})" if report["looked_up"] != report["ip"] else ""),
        f"  country     {countries.label(report['country']) if report['country'] else 'unknown (no record)'}",
        f"  region      {countries.label(report['region']) if report['region'] else 'none'}"
        + (f" ({sources[report['region_source']]})" if report["region_source"] else ""),
        f"  anonymizer  {'yes: ' + flags if report['anonymizer'] else 'no'}"
        + ("" if anonymous_db else " (no anonymous-IP database configured)"),
        "databases",
    ]
    names = dict(ROLES)
    for database in report["databases"]:
        lines.append(f"  {names[database['role']]:<22} {database['type']}, built {database['built'][:10]}")
        lines.append(f"  {'':<22} {database['path']}")
    lines += report["attribution"]
    return "\n".join(lines)
