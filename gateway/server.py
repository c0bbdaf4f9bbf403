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
from gateway.app import Gateway, PolicyState
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.geo import GeoIP
from gateway.geodata import default_country_db
from gateway.identity import Authenticator
from gateway.metrics import Metrics
from gateway.policy.issues import PolicyError
from gateway.policy.load import load_bundle
from gateway.proxy import Upstreams

log = logging.getLogger("gateway")


def split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the Service (two listeners, one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: object, listen: str) -> uvicorn.Config:
    host, port = split_host_port(listen)
    return uvicorn.Config(
        app, host=host, port=port, loop="none", http="httptools", lifespan="off",
        # The gateway reads X-Forwarded-For itself, from trusted peers only:
        # uvicorn must not rewrite the client address.
        proxy_headers=False, server_header=False, access_log=False, log_level="warning",
    )


class Service:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.state = PolicyState()
        self.geo: GeoIP | None = None
        self.upstreams = Upstreams(config.upstreams)
        self.audit = AuditLog(config.audit.path, self.metrics)
        self.servers: list[_Server] = []
        self.gateway: Gateway | None = None
        self.authenticator = Authenticator.from_config(config.identity, config.state_dir)

    def load_policy(self) -> None:
        try:
            loaded = load_bundle(self.config.policy_dir)
        except PolicyError as error:
            self.metrics.policy_reloads.labels("failure").inc()
            log.error("%s", error.report())
            return
        self.state.policy = loaded.policy
        self.metrics.policy_reloads.labels("success").inc()
        self.metrics.policy_loaded(loaded.policy.version)
        self.metrics.suspensions_active.set(len(loaded.policy.suspensions))

    def missing(self) -> list[str]:
        missing = []
        if self.state.policy is None:
            missing.append("policy")
        if self.geo is None:
            missing.append("geoip")
        if not self.audit.healthy:
            missing.append("audit")
        return missing

    async def start(self) -> None:
        config = self.config
        self.load_policy()
        self.geo = GeoIP(config.geoip.country_db or default_country_db(), config.geoip.anonymous_ip_db)
        await self.authenticator.start()
        await self.upstreams.start()
        self.audit.start()
        self.gateway = Gateway(config, self.state, self.authenticator, self.geo, self.upstreams, self.audit, self.metrics,
                               clock=self.clock)
        admin = create_admin_app(self.state, self.metrics, self.missing)
        self.servers = [_Server(_uvicorn_config(self.gateway, config.listen)),
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
        await self.audit.close()
        await self.upstreams.close()
        await self.authenticator.close()
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
        await stop.wait()
        await self.stop()


def serve(config: Config) -> None:
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(Service(config).run_forever())
