"""A minimal MaxMind DB writer, for tests that need a database saying something the
fixtures in tests/fixtures/geoip do not (e.g. Crimea filed under RU).

The format is the MaxMind DB File Format Specification 2.0
(https://maxmind.github.io/MaxMind-DB/): a binary search tree of 24-bit records
over IPv6 (IPv4 networks live at ::/96, where readers look them up), 16 zero
bytes, a data section, then "\\xab\\xcd\\xefMaxMind.com" and a metadata map. The
venv has a reader (maxminddb) but no writer, and scripts/build-geoip-db installs
its writer only into a throwaway venv; this one is enough for a few networks
that do not overlap.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path
from typing import Any

_METADATA_START = b"\xab\xcd\xefMaxMind.com"
_STRING, _UINT16, _UINT32, _MAP, _UINT64, _ARRAY, _BOOLEAN = 2, 5, 6, 7, 9, 11, 14


class _Uint:
    def __init__(self, kind: int, value: int) -> None:
        self.kind, self.value = kind, value


def _control(kind: int, size: int) -> bytes:
    if size < 29:
        head, extra = size, b""
    elif size < 285:
        head, extra = 29, bytes([size - 29])
    elif size < 65821:
        head, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        head, extra = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | head]) + extra
    return bytes([head, kind - 7]) + extra  # extended type: type bits 0, then the type - 7


def encode(value: Any) -> bytes:
    """One data field: str, bool, int (uint32), dict (map), list (array) or _Uint."""
    if isinstance(value, bool):
        return _control(_BOOLEAN, int(value))
    if isinstance(value, int):
        value = _Uint(_UINT32, value)
    if isinstance(value, _Uint):
        payload = value.value.to_bytes((value.value.bit_length() + 7) // 8, "big")
        return _control(value.kind, len(payload)) + payload
    if isinstance(value, str):
        payload = value.encode()
        return _control(_STRING, len(payload)) + payload
    if isinstance(value, dict):
        return _control(_MAP, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _control(_ARRAY, len(value)) + b"".join(map(encode, value))
    raise TypeError(f"cannot encode {value!r}")


def write(path: Path, records: dict[str, dict[str, Any]], database_type: str = "GeoIP2-City",
          build_epoch: int = 1_767_225_600) -> Path:
    """A database of `records` ({network: record}) at `path`, built at `build_epoch`
    (Unix time; 2026-01-01 by default)."""
    nodes: list[list[Any]] = [[None, None]]
    data = bytearray()
    for network, record in records.items():
        net = ipaddress.ip_network(network)
        value = int(net.network_address)
        bits = net.prefixlen + (96 if net.version == 4 else 0)
        offset = len(data)
        data += encode(record)
        node = 0
        for depth in range(bits):
            bit = (value >> (127 - depth)) & 1
            if depth == bits - 1:
                nodes[node][bit] = ("data", offset)
                break
            if nodes[node][bit] is None:
                nodes.append([None, None])
                nodes[node][bit] = ("node", len(nodes) - 1)
            node = nodes[node][bit][1]
    count = len(nodes)

    def number(record: Any) -> int:
        if record is None:
            return count
        return record[1] if record[0] == "node" else count + 16 + record[1]

    tree = b"".join(struct.pack(">I", number(r))[1:] for left_right in nodes for r in left_right)
    metadata = {
        "binary_format_major_version": _Uint(_UINT16, 2),
        "binary_format_minor_version": _Uint(_UINT16, 0),
        "build_epoch": _Uint(_UINT64, build_epoch),
        "database_type": database_type,
        "description": {"en": "test database written by tests/mmdb.py"},
        "ip_version": _Uint(_UINT16, 6),
        "languages": ["en"],
        "node_count": _Uint(_UINT32, count),
        "record_size": _Uint(_UINT16, 24),
    }
    path.write_bytes(tree + bytes(16) + bytes(data) + _METADATA_START + encode(metadata))
    return path
