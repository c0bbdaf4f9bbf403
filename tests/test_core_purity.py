"""The decision core does no I/O: it imports no clock, file, network or framework
module (STYLE.md §1), so its answer depends on its arguments alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

CORE = ["policy/decision.py", "policy/reasons.py", "policy/explain.py", "policy/snapshot.py", "policy/schema.py",
        "policy/provenance.py"]
FORBIDDEN = {"os", "time", "socket", "random", "subprocess", "pathlib", "starlette", "uvicorn", "redis", "geoip2",
             "maxminddb", "authlib", "joserfc", "aiohttp", "httpx", "prometheus_client", "asyncio", "logging",
             # the gateway's I/O: the places, the request path, live state, the CLI, reading policy files
             "gateway.geo", "gateway.request", "gateway.live", "gateway.cli", "gateway.policy.load"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_that_does_io(module: str) -> None:
    imported = imported_modules(Path(gateway.__file__).parent / module)
    bad = {name for name in imported if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad


def test_core_does_not_read_the_clock() -> None:
    source = (Path(gateway.__file__).parent / "policy" / "decision.py").read_text()
    assert "datetime.now" not in source and "utcnow" not in source and "today(" not in source
