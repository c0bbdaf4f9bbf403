"""`gateway serve`: build the gateway from its config and run both listeners.

Construction opens nothing (uvicorn's `Config` habit); `Service.start()` does the
I/O, so tests and the demo can run the same service inside their own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator

import uvicorn

from gateway.admin import create_admin_app
from gateway.app import Gateway
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.geo import GeoIP
from gateway.geodata import default_country_db
from gateway.identity import Authenticator
from gateway.identity.redis_keys import RedisApiKeyStore
from gateway.listener import protocol_for
from gateway.live.state import LiveState, PolicyState, watch_sighup
from gateway.live.store import LocalStore, RedisStore, Store
from gateway.metrics import Metrics
from gateway.misuse import LocalSightings, RedisSightings, Sightings
from gateway.proxy import Upstreams
from gateway.quota import LocalQuota, Quota, RedisQuota
from gateway.redis_connect import connect
from gateway.revocation import Revocations

log = logging.getLogger("gateway")


def split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the Service (two listeners, one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: object, listen: str, http: str | type = "httptools") -> uvicorn.Config:
    host, port = split_host_port(listen)
    return uvicorn.Config(
        app, host=host, port=port, loop="none", http=http, lifespan="off",
        # No WebSocket protocol: an upgrade request is an ordinary request to the app,
        # which refuses it in the API's own shape (the decision covers one request).
        ws="none",
        # The gateway reads X-Forwarded-For itself, from trusted peers only:
        # uvicorn must not rewrite the client address.
        proxy_headers=False, server_header=False, access_log=False, log_level="warning",
    )


class Service:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        fleet = config.redis.url is not None
        self.state = PolicyState(max_staleness_s=config.redis.max_staleness_s if fleet else None)
        redis = config.redis
        self.store: Store = (RedisStore(client=connect(redis), namespace=redis.namespace) if redis.url
                             else LocalStore(config.state_dir))
        self.quota: Quota = RedisQuota(self.store.redis, redis.namespace) if isinstance(self.store, RedisStore) else LocalQuota()
        revocation = config.revocation
        self.revocations = (Revocations(self.state, self.metrics, clock=clock, check_interval_s=revocation.check_interval_s)
                            if revocation.enabled else None)
        self.live = LiveState(self.state, self.store, self.metrics, config.policy_dir,
                              on_change=self.revocations.policy_changed if self.revocations else None)
        self.geo: GeoIP | None = None
        self.upstreams = Upstreams(config.upstreams)
        # Fleet mode: the audit stream goes through the store's Redis client.
        self.audit = AuditLog.from_config(config.audit, self.metrics, state_dir=config.state_dir, namespace=redis.namespace,
                                          redis=self.store.redis if isinstance(self.store, RedisStore) else None)
        self.servers: list[_Server] = []
        self.gateway: Gateway | None = None
        # Fleet mode: API keys from Redis, so every replica accepts a key the CLI created anywhere.
        self.api_keys = (RedisApiKeyStore(redis.url, namespace=redis.namespace, timeout_s=redis.timeout_s, cluster=redis.cluster)
                         if redis.url and config.identity.api_keys else None)
        self.authenticator = Authenticator.from_config(config.identity, config.state_dir, api_keys=self.api_keys)

    def sightings(self) -> Sightings:
        window = self.config.credential_misuse.window_s
        if isinstance(self.store, RedisStore):
            return RedisSightings(self.store.redis, self.config.redis.namespace, window)
        return LocalSightings(window)

    def missing(self) -> list[str]:
        missing = []
        if self.state.policy is None:
            missing.append("policy")
        elif not self.state.usable():
            missing.append("shared state (redis)")
        if self.geo is None:
            missing.append("geoip")
        if not self.audit.healthy:
            missing.append("audit")
        return missing

    async def start(self) -> None:
        config = self.config
        await self.live.start()
        self.geo = GeoIP(config.geoip.country_db or default_country_db(), config.geoip.anonymous_ip_db)
        if self.api_keys is not None:
            await self.api_keys.start()
        await self.authenticator.start()
        await self.upstreams.start()
        await self.audit.start()
        self.gateway = Gateway(config, self.state, self.authenticator, self.geo, self.upstreams, self.audit, self.metrics,
                               quota=self.quota, sightings=self.sightings(), clock=self.clock, revocations=self.revocations,
                               on_misuse=lambda credential, why: self.live.suspend_credential(credential, why, "misuse-detector"))
        if self.revocations is not None:
            self.revocations.start()
        admin = create_admin_app(self.state, self.metrics, self.missing, self.live, config.admin.tokens, config.audit.path)
        self.servers = [_Server(_uvicorn_config(self.gateway, config.listen, protocol_for(self.gateway))),
                        _Server(_uvicorn_config(admin, config.admin_listen))]
        self._tasks = [asyncio.ensure_future(server.serve()) for server in self.servers]
        while not all(server.started for server in self.servers):
            if any(task.done() for task in self._tasks):
                raise RuntimeError("a listener failed to start (is the port in use?)")
            await asyncio.sleep(0.01)

    def bound_ports(self) -> tuple[int, int]:
        """The public and admin ports actually bound (useful with port 0)."""
        return tuple(s.servers[0].sockets[0].getsockname()[1] for s in self.servers)  # type: ignore[return-value]

    async def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.revocations is not None:  # after the listeners: requests still draining stay revocable
            await self.revocations.stop()
        await self.audit.close()  # before live.stop(), which closes the Redis client the audit stream uses
        await self.live.stop()
        await self.upstreams.close()
        await self.authenticator.close()
        if self.api_keys is not None:
            await self.api_keys.close()
        if self.geo is not None:
            self.geo.close()

    async def run_forever(self) -> None:
        await self.start()
        public, admin = self.bound_ports()
        log.warning("gateway listening on %s (admin on %s), policy %s", public, admin,
                    self.state.policy.version if self.state.policy else "NOT LOADED")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        watch_sighup(self.live)
        await stop.wait()
        await self.stop()


def serve(config: Config) -> None:
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(Service(config).run_forever())
