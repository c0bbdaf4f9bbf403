"""The decision core does no I/O: it imports no clock, file, network or framework
module (STYLE.md §1), so its answer depends on its arguments alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

CORE = ["decision.py", "reasons.py", "explain.py", "policy/snapshot.py", "policy/schema.py", "policy/provenance.py"]
FORBIDDEN = {"os", "time", "socket", "random", "subprocess", "pathlib", "starlette", "uvicorn", "redis", "geoip2",
             "maxminddb", "authlib", "joserfc", "aiohttp", "httpx", "prometheus_client", "asyncio", "logging", "gateway.geo",
             "gateway.cli", "gateway.policy.load"}


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
    bad = {name for name in imported if name in FORBIDDEN or name.split(".")[0] in FORBIDDEN}
    assert not bad


def test_core_does_not_read_the_clock() -> None:
    source = (Path(gateway.__file__).parent / "decision.py").read_text()
    assert "datetime.now" not in source and "utcnow" not in source and "today(" not in source
