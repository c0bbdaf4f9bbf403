"""Upstream pools: the URLs of one `upstreams.NAME`, which of them serves a request,
and which are out (docs/operators.md, "Upstream pools").

- A request goes to the healthy URL with the fewest requests in progress (ties taken
  in turn), below `max_concurrent` if set. None healthy: `NoHealthyMember`; all
  healthy ones at their limit: `AtCapacity`. Both end the request with a 503.
- A URL that refuses the connection, or does not accept it in `connect_timeout_s`, is
  ejected and the request tried on another: nothing reached the first. Any later
  failure is not retried, since the upstream may have acted on the request, and a
  stream already begun is never restarted elsewhere.
- An ejected URL comes back when an active health check passes, or without
  `health_check` after `eject_s`.

Counts are plain attributes read by `PoolCollector` at scrape time, so the request
path pays no metric call for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import Upstream

log = logging.getLogger("gateway")

# Failures before a byte of the request was sent: the request may go to another URL.
NOTHING_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
UNLIMITED = 1 << 62


class PoolUnavailable(Exception):
    """No URL of the pool can take the request; `code` is the denial's code."""

    code: str


class NoHealthyMember(PoolUnavailable):
    code = "no_healthy_upstream"


class AtCapacity(PoolUnavailable):
    code = "upstream_at_capacity"


class Member:
    """One URL of a pool, its session and its counts."""

    __slots__ = ("url", "label", "session", "healthy", "outstanding", "requests", "connect_failures", "ejections")

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = _without_userinfo(url)
        self.session: aiohttp.ClientSession | None = None
        self.healthy = True  # until a check or a connection says otherwise
        self.outstanding = 0
        self.requests = 0
        self.connect_failures = 0
        self.ejections = 0


class Pool:
    """The URLs of one upstream, with their sessions and health checks."""

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.config = upstream
        self.members = tuple(Member(url) for url in upstream.members)
        self.limit = upstream.max_concurrent or UNLIMITED
        self.retries = 0
        self.unavailable = 0
        self.at_capacity = 0
        self._turn = 0
        self._checks: asyncio.Task[None] | None = None

    async def start(self) -> None:
        upstream = self.config
        for member in self.members:
            member.session = aiohttp.ClientSession(
                base_url=member.url,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True),
                auto_decompress=False,  # bytes pass through as the upstream sent them
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=upstream.connect_timeout_s, sock_read=upstream.read_timeout_s
                ),
            )
        if upstream.health_check is not None:
            self._checks = asyncio.create_task(self._check_forever(), name=f"health-check:{self.name}")

    async def close(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            await asyncio.gather(self._checks, return_exceptions=True)
        for member in self.members:
            if member.session is not None:
                await member.session.close()

    def request(self, method: str, path: str, **options: Any) -> Lease:
        """`async with pool.request(...) as response`: as aiohttp's session.request, on the
        URL `choose` picks, tried elsewhere while nothing was sent."""
        return Lease(self, method, path, options)

    def choose(self, tried: tuple[Member, ...] = ()) -> Member:
        """The healthy member with the fewest requests in progress, below the limit."""
        members = self.members
        count = len(members)
        start = self._turn
        self._turn = start + 1 if start + 1 < count else 0
        best: Member | None = None
        busy = False
        for offset in range(count):
            member = members[(start + offset) % count]
            if not member.healthy or member in tried:
                continue
            if member.outstanding >= self.limit:
                busy = True
            elif best is None or member.outstanding < best.outstanding:
                best = member
        if best is not None:
            return best
        if busy:
            self.at_capacity += 1
            raise AtCapacity(f"every healthy URL of upstream {self.name!r} has {self.limit} requests in progress")
        self.unavailable += 1
        raise NoHealthyMember(f"upstream {self.name!r} has no healthy URL")

    def eject(self, member: Member) -> None:
        """Leave a member out after a failed connection: until a health check passes, or
        without health checks for `eject_s`."""
        member.connect_failures += 1
        if not member.healthy:
            return
        member.healthy = False
        member.ejections += 1
        log.warning("upstream %s: %s ejected (connection failed)", self.name, member.label)
        if self.config.health_check is None:
            asyncio.get_running_loop().call_later(self.config.eject_s, self._readmit, member)

    def _readmit(self, member: Member) -> None:
        if not member.healthy:
            member.healthy = True
            log.info("upstream %s: %s back in the pool", self.name, member.label)

    async def _check_forever(self) -> None:
        check = self.config.health_check
        if check is None:
            return
        timeout = aiohttp.ClientTimeout(total=check.timeout_s)
        headers = {**self.config.headers, "Accept-Encoding": "identity"}
        while True:
            await asyncio.gather(*(self._check(member, check.path, headers, timeout) for member in self.members))
            await asyncio.sleep(check.interval_s)

    async def _check(self, member: Member, path: str, headers: dict[str, str], timeout: aiohttp.ClientTimeout) -> None:
        assert member.session is not None
        try:
            async with member.session.get(path, headers=headers, timeout=timeout, allow_redirects=False) as answer:
                healthy = 200 <= answer.status < 300
        except (aiohttp.ClientError, TimeoutError):
            healthy = False
        if healthy:
            self._readmit(member)
        elif member.healthy:
            member.healthy = False
            member.ejections += 1
            log.warning("upstream %s: %s ejected (health check failed)", self.name, member.label)


class Lease:
    """One request to a pool: the member it went to is counted busy until the response is
    released."""

    __slots__ = ("pool", "method", "path", "options", "member", "response")

    def __init__(self, pool: Pool, method: str, path: str, options: dict[str, Any]) -> None:
        self.pool, self.method, self.path, self.options = pool, method, path, options
        self.member: Member | None = None
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        pool = self.pool
        tried: tuple[Member, ...] = ()
        while True:
            member = pool.choose(tried)
            member.outstanding += 1
            member.requests += 1
            session = member.session
            assert session is not None, "the pool was not started"
            try:
                self.response = await session.request(self.method, self.path, **self.options)
            except NOTHING_SENT:
                member.outstanding -= 1
                pool.eject(member)
                tried += (member,)
                if not any(other.healthy and other not in tried for other in pool.members):
                    raise
                pool.retries += 1
                continue
            except BaseException:
                member.outstanding -= 1
                raise
            self.member = member
            return self.response

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        member, response = self.member, self.response
        if member is None or response is None:
            return
        self.member = None
        member.outstanding -= 1
        await response.__aexit__(kind, error, traceback)


class PoolCollector(Collector):
    """Per-URL series of every pool, read from the members' counts at scrape time."""

    def __init__(self, pools: Iterable[Pool]) -> None:
        self.pools = tuple(pools)

    def collect(self) -> Iterator[Metric]:
        by_url = ["upstream", "url"]
        healthy = GaugeMetricFamily("gateway_upstream_healthy", "1 while the URL is in its pool (not ejected).",
                                    labels=by_url)
        outstanding = GaugeMetricFamily("gateway_upstream_outstanding", "Requests in progress at the URL.",
                                        labels=by_url)
        requests = CounterMetricFamily("gateway_upstream_url_requests", "Requests sent to the URL (each try).",
                                       labels=by_url)
        failures = CounterMetricFamily("gateway_upstream_connect_failures", "Connections to the URL that failed.",
                                       labels=by_url)
        ejections = CounterMetricFamily("gateway_upstream_ejections", "Times the URL was taken out of its pool "
                                        "(failed connection or health check).", labels=by_url)
        retries = CounterMetricFamily("gateway_upstream_retries", "Requests tried on another URL after a failed "
                                      "connection.", labels=["upstream"])
        refused = CounterMetricFamily("gateway_upstream_unavailable", "Requests answered 503 because no URL of the "
                                      "pool could take them (code: no_healthy_upstream, upstream_at_capacity).",
                                      labels=["upstream", "code"])
        for pool in self.pools:
            for member in pool.members:
                labels = [pool.name, member.label]
                healthy.add_metric(labels, 1 if member.healthy else 0)
                outstanding.add_metric(labels, member.outstanding)
                requests.add_metric(labels, member.requests)
                failures.add_metric(labels, member.connect_failures)
                ejections.add_metric(labels, member.ejections)
            retries.add_metric([pool.name], pool.retries)
            refused.add_metric([pool.name, NoHealthyMember.code], pool.unavailable)
            refused.add_metric([pool.name, AtCapacity.code], pool.at_capacity)
        yield from (healthy, outstanding, requests, failures, ejections, retries, refused)


def _without_userinfo(url: str) -> str:
    """The URL as a metric label and in logs: credentials in it stay out of both."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
