"""gateway/request/listener.py subclasses uvicorn's HttpToolsProtocol and relies on its private
attributes and hooks, which uvicorn may change in any release. pyproject.toml pins uvicorn
below its next minor version; these tests fail when the installed uvicorn is outside that
range, or when something the listener uses from uvicorn is gone, so an upgrade is a
deliberate change with its own review instead of a silent break of the listener's limits."""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.server import _uvicorn_config

ROOT = Path(__file__).resolve().parent.parent
LISTENER = ROOT / "gateway" / "request" / "listener.py"
# Hooks the listener overrides that uvicorn itself calls (the parser callbacks are httptools'
# public interface): an override of a hook uvicorn no longer calls would silently do nothing.
UVICORN_HOOKS = ("send_400_response", "on_response_complete", "_unsupported_upgrade_warning")
# What the listener reads and sets on a request's RequestResponseCycle.
CYCLE_ATTRIBUTES = ("scope", "keep_alive", "message_event", "response_complete", "disconnected")


def declared(name: str) -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (found,) = [Requirement(line) for line in dependencies if Requirement(line).name == name]
    return found


def test_uvicorn_has_an_upper_bound_below_its_next_minor_version() -> None:
    specifier = declared("uvicorn").specifier
    uppers = [Version(spec.version) for spec in specifier if spec.operator == "<"]
    lowers = [Version(spec.version) for spec in specifier if spec.operator == ">="]
    assert uppers and lowers, f"uvicorn{specifier}: give both bounds"
    assert (min(uppers).major, min(uppers).minor) <= (max(lowers).major, max(lowers).minor + 1), (
        f"uvicorn{specifier} spans more than one minor version")


def test_installed_uvicorn_is_the_one_the_listener_was_written_for() -> None:
    requirement = declared("uvicorn")
    installed = version("uvicorn")
    assert requirement.specifier.contains(installed), (
        f"uvicorn {installed} is installed, the listener is written for uvicorn{requirement.specifier}: "
        "review gateway/request/listener.py against the new HttpToolsProtocol, then move the bound")


def test_uvloop_and_httptools_are_declared_themselves() -> None:
    assert not declared("uvicorn").extras, "declare uvloop and httptools, not uvicorn's extras"
    for name in ("uvloop", "httptools"):
        assert declared(name).specifier.contains(version(name)), name


def listener_names() -> tuple[set[str], set[str]]:
    """(names the listener's protocol uses on `self` but does not define; fields it adds itself).

    Its own fields are its class attributes and the ones it sets in connection_made (except
    the transport, which it replaces: that one is uvicorn's)."""
    tree = ast.parse(LISTENER.read_text())
    (protocol,) = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == "GatewayProtocol"]
    defined = {node.name for node in protocol.body if isinstance(node, ast.FunctionDef)}  # overrides among them
    (made,) = [node for node in protocol.body if isinstance(node, ast.FunctionDef) and node.name == "connection_made"]
    fields = {node.attr for node in ast.walk(made) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Name) and node.value.id == "self" and isinstance(node.ctx, ast.Store)}
    used = {node.attr for node in ast.walk(protocol) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}
    fields -= {"transport"}
    fields |= {target.id for node in protocol.body if isinstance(node, ast.Assign)
               for target in node.targets if isinstance(target, ast.Name)}
    return used - defined - fields, fields


async def served_by_uvicorn() -> Any:
    """uvicorn's own HttpToolsProtocol, configured as the listeners are, after one real request over a socket pair."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = _uvicorn_config(app, "127.0.0.1:0", HttpToolsProtocol)
    made: list[HttpToolsProtocol] = []

    def factory() -> HttpToolsProtocol:
        made.append(HttpToolsProtocol(config=config, server_state=ServerState(), app_state={}))
        return made[-1]

    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(factory, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 204"), answer
    protocol = made[0]
    writer.close()
    transport.close()
    return protocol


def test_what_the_listener_uses_from_uvicorn_exists_and_its_own_fields_do_not_clash() -> None:
    protocol = asyncio.run(served_by_uvicorn())
    inherited, fields = listener_names()
    assert {"loop", "parser", "connections", "cycle", "server_state", "client", "url", "headers"} <= inherited
    missing = sorted(name for name in inherited if not hasattr(protocol, name))
    assert not missing, f"uvicorn's HttpToolsProtocol no longer has {missing}"
    assert {"head_left", "deadline", "reading", "lingering"} <= fields
    clashing = sorted(name for name in fields if hasattr(protocol, name))
    assert not clashing, f"uvicorn's HttpToolsProtocol now has attributes of its own named {clashing}"
    missing = [name for name in CYCLE_ATTRIBUTES if not hasattr(protocol.cycle, name)]
    assert not missing, f"uvicorn's RequestResponseCycle no longer has {missing}"
    assert isinstance(protocol.server_state.default_headers, list)


@pytest.mark.parametrize("hook", UVICORN_HOOKS)
def test_the_hooks_the_listener_overrides_are_still_called_by_uvicorn(hook: str) -> None:
    base = HttpToolsProtocol
    assert callable(getattr(base, hook, None)), f"HttpToolsProtocol.{hook} is gone"
    callers = [name for name, method in inspect.getmembers(base, inspect.isfunction)
               if name != hook and f"self.{hook}" in inspect.getsource(method)]
    assert callers, f"uvicorn no longer calls {hook}"
