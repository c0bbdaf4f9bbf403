"""The admin API's HTTP client for `gateway admin`, and the output helpers every
group of its verbs shares (gateway/admin/cli.py, admin_control_cli.py,
admin_keys_cli.py). HTTP is the standard library's urllib with a short timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_S = 10.0


class Unreachable(Exception):
    """The admin API did not answer (refused, timed out, bad address): exit status 2."""


class Failed(Exception):
    """Something this command cannot accept in an answer: printed, exit status 1."""


@dataclass
class Refused(Exception):
    """The admin API answered with an error status: exit status 1."""

    status: int
    body: Any  # the decoded JSON body, or the raw text when it was not JSON


@dataclass
class Client:
    url: str
    token: str | None
    timeout: float = DEFAULT_TIMEOUT_S

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        target = self.url + path
        if query:
            target += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "frontier-gateway-admin-cli"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            request = urllib.request.Request(target, data=data, method=method, headers=headers)
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as answer:
            raw = answer.read()
            raise Refused(answer.code, _decode(raw)) from None
        except urllib.error.URLError as failure:
            raise Unreachable(_reason(failure.reason)) from None
        except (TimeoutError, socket.timeout):
            raise Unreachable(f"no answer within {self.timeout:g}s") from None
        except (http.client.HTTPException, ConnectionError, OSError) as failure:
            raise Unreachable(_reason(failure)) from None
        except ValueError as failure:  # e.g. "unknown url type"
            raise Unreachable(str(failure)) from None
        decoded = _decode(raw)
        if isinstance(decoded, str) and decoded:
            raise Failed(f"the answer from {self.url} is not JSON (is this the admin listener?): {decoded[:200]}")
        return decoded


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text.strip()


def _reason(reason: object) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


# Output


def segment(value: str) -> str:
    """One path segment, every reserved character escaped."""
    return urllib.parse.quote(value, safe="")


def show(args: argparse.Namespace, body: Any, readable: Callable[[Any], Iterable[str]]) -> None:
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=False))
        return
    for line in readable(body):
        print(line)


def compact(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
