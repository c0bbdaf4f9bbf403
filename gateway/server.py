"""`gateway serve`: build the gateway from its config and run both listeners.

Construction opens nothing (uvicorn's `Config` habit); `Service.start()` does the
I/O, so tests and the demo can run the same service inside their own loop.

`serve(config, workers=N)` with N > 1 forks N worker processes, each a whole
Service, sharing the public port through SO_REUSEPORT (the kernel spreads new
connections over the workers). Each worker is its own audit replica (file and
replica id suffixed `-w<k>`, so hash chains never interleave) and has its own
admin listener on the admin port + k (its own /metrics: scrape each). Workers
share quotas, suspensions and API keys only through Redis, so N > 1 needs fleet
mode: embedded, each would enforce the whole quota on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from gateway import logs
from gateway.admin.app import AdminRefusals, create_admin_app
from gateway.request.app import Gateway
from gateway.request.activity import Activity
from gateway.audit import AuditLogs
from gateway.audit.files import FileMode
from gateway.audit.chain import default_replica
from gateway.request.clientip import TrustedProxies
from gateway.config import Config, is_loopback
from gateway.console.app import create_console_app
from gateway.console.context import Console
from gateway.console.auth import Authority
from gateway.console.sessions import MemorySessions, RedisSessions, SessionStore
from gateway.export import record_export, tracing
from gateway.geo.files import UNENFORCED_ANONYMIZERS, LiveGeo, configured_files, unenforced_anonymizer_rules
from gateway.live.heartbeat import Heartbeats
from gateway.identity import Authenticator
from gateway.identity.apikeys import ApiKeyAdmin, ApiKeyStore
from gateway.identity.redis_keys import RedisApiKeyStore
from gateway.request.listener import protocol_for
from gateway.live.control import ChangeControl
from gateway.live.proposals import LocalProposals, RedisProposals
from gateway.live.state import LiveState, PolicyState, watch_sighup
from gateway.live.store import LocalStore, RedisStore, Store
from gateway.metrics import Metrics
from gateway.request.misuse import LocalSightings, RedisSightings, Sightings
from gateway.request.pool import PoolCollector
from gateway.request.proxy import Upstreams
from gateway.request.quota import LocalQuota, Quota, RedisQuota
from gateway.live.redis_connect import connect
from gateway.request.revocation import Revocations

log = logging.getLogger("gateway")


def split_host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the Service (two listeners, one process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: object, listen: str, http: type) -> uvicorn.Config:
    host, port = split_host_port(listen)
    return uvicorn.Config(
        app, host=host, port=port, loop="none", http=http, lifespan="off",
        # No WebSocket protocol: an upgrade request is an ordinary request to the app,
        # which refuses it in the API's own shape (the decision covers one request).
        ws="none",
        # The gateway reads X-Forwarded-For itself, from trusted peers only:
        # uvicorn must not rewrite the client address.
        proxy_headers=False, server_header=False, access_log=False, log_level="warning",
        # uvicorn's events go through the gateway's handler, in its format (gateway/logs.py).
        log_config=None,
    )


class Service:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 public_socket: socket.socket | None = None) -> None:
        check_admin(config)
        self.config = config
        self.clock = clock
        self.public_socket = public_socket  # pre-bound (a worker of `serve --workers N`), else bind config.listen
        fleet = config.redis.url is not None
        self.metrics = Metrics(fleet=fleet)
        self.state = PolicyState(max_staleness_s=config.redis.max_staleness_s if fleet else None)
        redis = config.redis
        self.store: Store = (RedisStore(client=connect(redis), namespace=redis.namespace) if redis.url
                             else LocalStore(config.state_dir, FileMode.for_group(config.audit.group)))
        self.quota: Quota = RedisQuota(self.store.redis, redis.namespace) if isinstance(self.store, RedisStore) else LocalQuota()
        revocation = config.revocation
        self.revocations = (Revocations(self.state, self.metrics, clock=clock, check_interval_s=revocation.check_interval_s)
                            if revocation.enabled else None)
        self.live = LiveState(self.state, self.store, self.metrics, config.policy_dir,
                              on_change=self.revocations.policy_changed if self.revocations else None)
        proposals = (RedisProposals(self.store.redis, redis.namespace) if isinstance(self.store, RedisStore)
                     else LocalProposals(config.state_dir))
        self.geo: LiveGeo | None = None
        self.upstreams = Upstreams(config.upstreams)
        self.metrics.registry.register(PoolCollector(self.upstreams.pools.values()))
        # The audit records, also as an OTLP log stream; the request path's spans (export.otlp).
        replica = self.replica = config.audit.replica or default_replica(config.audit.path)
        self.export = record_export(config.export.otlp, self.metrics, replica)
        self.tracing = tracing(config.export.otlp, replica)
        # Fleet mode: the audit stream goes through the store's Redis client.
        self.audit = AuditLogs.from_config(config.audit, self.metrics, state_dir=config.state_dir, namespace=redis.namespace,
                                           redis=self.store.redis if isinstance(self.store, RedisStore) else None,
                                           export=self.export)
        self.servers: list[_Server] = []
        self.gateway: Gateway | None = None
        # The last hour of requests for the console; in fleet mode shared through each replica's heartbeat.
        self.activity = Activity()
        self.heartbeats = (Heartbeats(self.store.redis, redis.namespace, replica, self.activity, self.policy_version,
                                      time.time, timeout_s=redis.timeout_s)
                           if isinstance(self.store, RedisStore) else None)
        # Fleet mode: API keys from Redis, so every replica accepts a key the CLI created anywhere.
        self.api_keys = (RedisApiKeyStore(redis.url, namespace=redis.namespace, timeout_s=redis.timeout_s, cluster=redis.cluster)
                         if redis.url and config.identity.api_keys else None)
        self.authenticator = Authenticator.from_config(config.identity, config.state_dir, api_keys=self.api_keys,
                                                       on_jwks_failure=self.metrics.jwks_failures.inc)
        # Keys created and revoked through the admin API go where the request path reads them.
        key_admin: ApiKeyAdmin | None = None
        if config.identity.api_keys:
            key_admin = self.api_keys if self.api_keys is not None else ApiKeyStore(config.state_dir)
        self.control = ChangeControl(self.live, proposals, config.change_control, self.metrics, config.audit.path,
                                     keys=key_admin)

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
        if not self.audit.writable:
            missing.append("audit")
        return missing

    async def start(self) -> None:
        config = self.config
        await self.live.start()
        self.geo = LiveGeo(configured_files(config.geoip), self.metrics, max_age_days=config.geoip.max_age_days)
        self.geo.report(self.clock())
        self._geo_watch = asyncio.ensure_future(self.geo.watch(self.clock))
        if self.state.policy is not None:
            for rule in unenforced_anonymizer_rules(self.state.policy, self.geo.has_anonymizer_database):
                log.warning("policy %s %s", rule, UNENFORCED_ANONYMIZERS)
        if self.api_keys is not None:
            await self.api_keys.start()
        await self.authenticator.start()
        await self.upstreams.start()
        if self.export is not None:
            self.export.start()
        await self.audit.start()
        self.gateway = self.request_path(
            config, self.state, self.authenticator, self.geo, self.upstreams, self.audit, self.metrics,
            quota=self.quota, sightings=self.sightings(), clock=self.clock, revocations=self.revocations,
            on_misuse=lambda credential, why: self.live.suspend_credential(credential, why, "misuse-detector"),
            activity=self.activity)
        if self.heartbeats is not None:
            self.heartbeats.start()
        if self.revocations is not None:
            self.revocations.start()
        self.control.start()
        signing_key = self.audit.signing_key
        admin = create_admin_app(self.state, self.metrics, self.missing, self.live, config.admin.tokens, config.audit.path,
                                 metrics_require_token=config.metrics_require_token, control=self.control,
                                 audit_public_key=signing_key.public if signing_key is not None else None,
                                 console=self.console_app() if config.console.enabled else None)
        if config.change_control.approvals == 0:
            log.warning("change_control.approvals is 0: one operator token can loosen the policy at once, "
                        "with no second person (docs/operators.md, \"Change control\")")
        if not config.metrics_require_token and not is_loopback(config.admin_listen):
            log.warning("admin.metrics_require_token is false: /metrics on %s is open to whoever reaches it",
                        config.admin_listen)
        limits = config.limits
        self.servers = [
            _Server(_uvicorn_config(self.gateway, config.listen, protocol_for(self.gateway, limits, limits.max_connections))),
            _Server(_uvicorn_config(admin, config.admin_listen, protocol_for(AdminRefusals(), limits, limits.admin_max_connections))),
        ]
        sockets = [[self.public_socket] if self.public_socket is not None else None, None]
        self._tasks = [asyncio.ensure_future(server.serve(sockets=bound)) for server, bound in zip(self.servers, sockets)]
        while not all(server.started for server in self.servers):
            if any(task.done() for task in self._tasks):
                raise RuntimeError("a listener failed to start (is the port in use?)")
            await asyncio.sleep(0.01)

    def console_app(self) -> ASGIApp:
        """The operator console (gateway/console/): sessions in Redis in fleet mode, so any
        replica serves them; in memory otherwise."""
        config = self.config
        sessions: SessionStore = (RedisSessions(self.store.redis, config.redis.namespace)
                                  if isinstance(self.store, RedisStore) else MemorySessions())
        authority = Authority(config.admin.tokens, sessions, config.console.session_ttl_s,
                              TrustedProxies(config.trusted_proxies), self.metrics, time.time,
                              jwt=self.authenticator.jwt, jwt_role_claim=config.console.jwt_role_claim)
        return create_console_app(Console(authority, self.state, self.live, self.control, self.metrics,
                                          config.audit.path, self.missing, self.clock, replica=self.replica,
                                          unauthenticated_audit_path=str(self.audit.unauthenticated.path),
                                          activity=self.activity, heartbeats=self.heartbeats, geo=lambda: self.geo,
                                          geoip_max_age_days=config.geoip.max_age_days))

    def policy_version(self) -> str | None:
        policy = self.state.policy
        return policy.version if policy is not None else None

    def request_path(self, *args: Any, **kwargs: Any) -> Gateway:
        """The Gateway; with tracing on, the one with spans (gateway/request/traced.py), imported
        only then: with it off, the request path has no tracing code at all."""
        if self.tracing is None:
            return Gateway(*args, **kwargs)
        from gateway.request.traced import TracedGateway

        return TracedGateway(*args, tracer=self.tracing.get_tracer("frontier-gateway"), **kwargs)

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
        if self.heartbeats is not None:
            await self.heartbeats.stop()
        await self.stop_export()
        await self.control.stop()
        await self.live.stop()
        await self.upstreams.close()
        await self.authenticator.close()
        if self.api_keys is not None:
            await self.api_keys.close()
        if self.geo is not None:
            self._geo_watch.cancel()
            self.geo.close()

    async def stop_export(self) -> None:
        """Send the last records and spans, for a bounded time (off the event loop)."""
        if self.export is not None:
            await asyncio.to_thread(self.export.close)
        if self.tracing is not None:
            from gateway.export.otlp import close_tracing

            await asyncio.to_thread(close_tracing, self.tracing)

    async def run_forever(self) -> None:
        # Handlers first: the listeners answer (and so look ready) before start() returns,
        # and a SIGTERM in between must still stop the service cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        public, admin = self.bound_ports()
        version = self.state.policy.version if self.state.policy else None
        log.warning("gateway listening on %s (admin on %s), policy %s", public, admin, version or "NOT LOADED",
                    extra={"policy_version": version})
        watch_sighup(self.live)
        await stop.wait()
        await self.stop()


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def serve(config: Config, workers: int = 1) -> int:
    """Run the gateway until SIGINT/SIGTERM; the exit status."""
    import uvloop

    logs.configure(config.logging)
    if workers == 1:
        try:
            uvloop.run(Service(config).run_forever())
        except Exception:
            # One event in the configured format, traceback included, not lines of its own.
            log.exception("gateway stopped by an error")
            return 1
        return 0
    check_workers(config, workers)
    return _supervise(config, workers)


def check_workers(config: Config, workers: int) -> None:
    """Raise ValueError when `workers` processes cannot serve `config` correctly."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and config.redis.url is None:
        raise ValueError(f"--workers {workers} needs fleet mode (redis.url): in embedded mode each worker would keep "
                         "its own quotas, suspensions and credential sightings, so limits would multiply by the "
                         "number of workers. Configure redis.url, or run one worker per gateway.")


def check_policy_dir(config: Config) -> None:
    """Raise ValueError when the configured policy directory is missing: the bundle an
    earlier run left in state_dir (or Redis) is not the policy this config names."""
    if not Path(config.policy_dir).is_dir():
        raise ValueError(f"policy_dir {config.policy_dir} is not a directory (to serve the policy last published "
                         "to the state instead, pass --serve-stored-policy)")


def check_listen(config: Config) -> None:
    """Raise ValueError naming the address when a listener could not bind it: before
    anything starts, so the cause is one line rather than a listener's traceback."""
    for key, listen in (("listen", config.listen), ("admin_listen", config.admin_listen)):
        host, port = split_host_port(listen)
        try:
            for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
                    probe.bind(address)
        except socket.gaierror as exc:
            raise ValueError(f"{key} {listen}: cannot resolve {host!r} ({exc.strerror})") from None
        except OSError as exc:
            raise ValueError(f"{key} {listen}: {_bind_failure(exc, host, port)}") from None


def _bind_failure(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use on {host}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"no permission to bind port {port}"
    return exc.strerror or str(exc)


def check_audit(config: Config) -> None:
    """Raise ValueError when the audit signing key or group cannot be used (before any listener starts)."""
    from gateway.audit.signing import SigningKey

    FileMode.for_group(config.audit.group)
    if config.audit.signing_key_file is not None:
        SigningKey.load(config.audit.signing_key_file)


def check_admin(config: Config) -> None:
    """Raise ValueError when the admin listener would show its metrics beyond this host
    to anyone, or ask for a token nobody has. Checked when serving, not when loading:
    other commands (`gateway keys`, the compose demo's credentials) read configs that name no tokens."""
    if config.metrics_require_token and not config.admin.tokens:
        if config.admin.metrics_require_token is None:
            raise ValueError(
                f"admin_listen {config.admin_listen} is not a loopback address, so /metrics needs an admin token, "
                "and admin.tokens is empty: add a viewer token for Prometheus (docs/operators.md, \"Metrics and the "
                "admin listener\"), bind admin_listen to 127.0.0.1, or set admin.metrics_require_token: false if the "
                "network already limits who reaches the port")
        raise ValueError("admin.metrics_require_token is true but admin.tokens is empty: add a viewer token for Prometheus")
    if config.console.jwt_role_claim is not None and config.identity.jwt is None:
        raise ValueError("console.jwt_role_claim is set but identity.jwt is not: the console cannot verify a JWT "
                         "without the API's issuer and keys")


def worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s config: its own audit file and replica id, its own admin port."""
    audit = config.audit
    path = Path(audit.path)
    replica = f"{audit.replica or default_replica(path)}-w{index}"
    host, port = split_host_port(config.admin_listen)
    admin_host = f"[{host}]" if ":" in host else host
    unauthenticated = audit.unauthenticated
    if unauthenticated.path is not None:
        other = Path(unauthenticated.path)
        unauthenticated = unauthenticated.model_copy(update={"path": str(other.with_name(f"{other.stem}-w{index}{other.suffix}"))})
    return config.model_copy(update={
        "audit": audit.model_copy(update={"path": str(path.with_name(f"{path.stem}-w{index}{path.suffix}")),
                                          "replica": replica, "unauthenticated": unauthenticated}),
        "admin_listen": f"{admin_host}:{port + index if port else 0}",
    })


def _reuseport_sockets(listen: str, count: int) -> list[socket.socket]:
    """`count` listening sockets on one address (the kernel balances connections over them)."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the first one's port
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _supervise(config: Config, workers: int) -> int:
    """Fork the workers, pass signals on, and stop them all when one dies."""
    import uvloop

    sockets = _reuseport_sockets(config.listen, workers)
    children: dict[int, int] = {}
    # Signals wait until every child exists and the parent's handlers are in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for signum in FORWARDED_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
                own = sockets[index]
                for other in sockets:
                    if other is not own:
                        other.close()  # a dead worker's queue must not stay open in the others
                logs.configure(config.logging, worker=index)
                uvloop.run(Service(worker_config(config, index), public_socket=own).run_forever())
                status = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = index
    for sock in sockets:
        sock.close()
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    log.warning("gateway: %d workers (pids %s) sharing %s", workers, " ".join(map(str, children)), config.listen)
    status = 0
    while children:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            status = 1
            log.error("worker %d (pid %d) exited with status %d: stopping the others", index, pid, code)
            if not stopping:
                forward(signal.SIGTERM, None)
    return status
