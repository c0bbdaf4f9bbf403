"""Redis deployments the fleet runs on (docs/operators.md): one server, Sentinel, Cluster.

`gateway/live/redis_connect.py` turns `redis.url` (+ `redis.cluster`) into clients. The
topology tests start real servers from the shipped configs in deploy/redis/ (a primary,
a replica and a sentinel; three cluster primaries joined by `redis-cli --cluster create`,
or by CLUSTER ADDSLOTSRANGE/MEET when redis-cli is missing) on free loopback ports, run
every Redis-backed component against them (live state with its WATCH/MULTI writes, API
keys, quotas, credential sightings) and two `gateway serve` processes, force a Sentinel
failover, and check that every key written together shares one Cluster slot. Every
server is killed at the end; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import AUDIENCE, ISSUER, SigningKey
from fleet import US_IP, Upstream, request as http
from gateway.config import ConfigError, load_config
from gateway.identity.redis_keys import RedisApiKeyStore
from gateway.live.overlay import Overlay
from gateway.live.store import RedisStore, Shared, StoreConflict, keys as store_keys
from gateway.request.misuse import RedisSightings
from gateway.request.quota import HELD_RETRY_S, RedisQuota, Reservation
from gateway.live.redis_connect import connect, connect_sync, connect_url, describe, parse

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_REDIS = ROOT / "deploy" / "redis"
START_TIMEOUT_S = 15.0


# ---------------------------------------------------------------- URLs (no server)


@pytest.mark.parametrize("url, cluster, expected", [
    ("redis://127.0.0.1:6379/0", False, ("standalone", (("127.0.0.1", 6379),), None, 0)),
    ("redis://redis", False, ("standalone", (("redis", 6379),), None, 0)),
    ("rediss://:s3cret@cache.example:6380/2", False, ("standalone", (("cache.example", 6380),), None, 2)),
    ("redis+sentinel://s1:26379,s2,[::1]:26380/fgw", False,
     ("sentinel", (("s1", 26379), ("s2", 26379), ("::1", 26380)), "fgw", 0)),
    ("redis+sentinel://user:p%40ss@s1/mymaster/3", False, ("sentinel", (("s1", 26379),), "mymaster", 3)),
    ("rediss+sentinel://s1:26379/fgw?sentinel_password=x", False, ("sentinel", (("s1", 26379),), "fgw", 0)),
    ("redis://n1:7000,n2:7001", True, ("cluster", (("n1", 7000), ("n2", 7001)), None, 0)),
    ("redis://n1", True, ("cluster", (("n1", 6379),), None, 0)),
    ("unix:///run/redis.sock", False, ("standalone", (), None, 0)),
])
def test_parse_accepts(url: str, cluster: bool, expected: tuple[Any, ...]) -> None:
    target = parse(url, cluster=cluster)
    assert (target.kind, target.hosts, target.service_name, target.db) == expected


def test_parse_credentials_and_tls() -> None:
    sentinel = parse("rediss+sentinel://user:p%40ss@s1/mymaster?sentinel_username=sa&sentinel_password=sp")
    assert (sentinel.username, sentinel.password, sentinel.ssl) == ("user", "p@ss", True)
    assert (sentinel.sentinel_username, sentinel.sentinel_password) == ("sa", "sp")
    assert parse("redis://secret@h").password == "secret"
    assert parse("rediss://n1:7000", cluster=True).ssl


@pytest.mark.parametrize("url, cluster, message", [
    ("http://h:6379", False, "unknown scheme"),
    ("127.0.0.1:6379", False, "unknown scheme"),
    ("redis+sentinel://s1:26379", False, "service_name"),
    ("redis+sentinel://s1:26379/a/b/c", False, "service_name"),
    ("redis+sentinel://s1/fgw/x", False, "must be a number"),
    ("redis+sentinel://s1/fgw?password=x", False, "unknown Sentinel URL option"),
    ("redis+sentinel://s1/fgw", True, "cannot be combined"),
    ("redis://n1:7000/1", True, "only database 0"),
    ("redis://n1:7000?ssl_cert_reqs=none", True, "not supported"),
    ("redis://a:1,b:2", False, "one server"),
    ("redis://h:99999", False, "bad port"),
    ("redis://h:port", False, "bad port"),
    ("redis://", False, "no host"),
    ("redis://a,,b", True, "empty host"),
    ("redis://::1:6379", False, "brackets"),
    ("unix:///tmp/s", True, "unix"),
])
def test_parse_refuses(url: str, cluster: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(url, cluster=cluster)


def test_describe_never_shows_a_password() -> None:
    assert describe("redis://:hunter2@db:6380/1") == "db:6380"
    assert describe("redis+sentinel://u:hunter2@s1,s2:26380/fgw?sentinel_password=hunter3") == \
        "sentinel s1:26379,s2:26380/fgw"
    assert describe("redis://:hunter2@n1:7000,n2:7000") == "cluster n1:7000,n2:7000"
    assert describe("nonsense://hunter2") == "(unparsable Redis URL)"


def test_config_takes_cluster_and_checks_the_url(tmp_path: Path) -> None:
    config = load_config(None, {"GATEWAY_REDIS__URL": "redis://n1:7000,n2:7000", "GATEWAY_REDIS__CLUSTER": "true"})
    assert config.redis.cluster and config.redis.url == "redis://n1:7000,n2:7000"
    for environ, message in [
        ({"GATEWAY_REDIS__URL": "redis+sentinel://s1:26379"}, "service_name"),
        ({"GATEWAY_REDIS__CLUSTER": "true"}, "needs redis.url"),
        ({"GATEWAY_REDIS__URL": "redis+sentinel://s/fgw", "GATEWAY_REDIS__CLUSTER": "true"}, "cannot be combined"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, environ)


def test_clients_are_the_right_kind_and_open_nothing() -> None:
    from redis.asyncio.sentinel import SentinelConnectionPool

    class Section:
        url, cluster, timeout_s = "redis+sentinel://127.0.0.1:1,127.0.0.1:2/fgw/4", False, 0.25

    sentinel = connect(Section())
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "fgw"
    assert sentinel.connection_pool.connection_kwargs["db"] == 4
    assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    assert [(s.connection_pool.connection_kwargs["port"]) for s in sentinel.connection_pool.sentinel_manager.sentinels] == [1, 2]
    cluster = connect_url("redis://127.0.0.1:1,127.0.0.1:2", cluster=True, decode_responses=False)
    assert isinstance(cluster, RedisCluster)
    standalone = connect_url("redis://127.0.0.1:1/3")
    assert isinstance(standalone, aioredis.Redis) and standalone.connection_pool.connection_kwargs["db"] == 3
    Section.url = "redis://127.0.0.1:1"
    assert isinstance(connect_sync(Section()), redis.Redis)


# ---------------------------------------------------------------- real servers


def redis_server_binary() -> str:
    found = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not found or not os.access(found, os.X_OK):
        pytest.skip("no redis-server binary: set REDIS_SERVER_BIN or run under scripts/with-redis")
    return found


def free_port(limit: int = 65535) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port <= limit:
            return port


class Servers:
    """redis-server processes started by one fixture; `close()` kills every one of them."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, name: str, config: Path, *args: str, sentinel: bool = False, cluster_bus: bool = False) -> int:
        """Start a server on a free port (and cluster-bus port); its port once it answers PING.
        Other test runs may share this machine: a port taken between picking and binding is
        retried, and the server answering must be this process (INFO's process_id)."""
        for attempt in range(5):
            port = free_port()
            extra = ["--cluster-port", str(free_port())] if cluster_bus else []
            try:
                return self._start(f"{name}-{attempt}" if attempt else name, config, port, [*extra, *args], sentinel)
            except PortTaken:
                continue
        raise StartFailed(f"{name}: no free port after 5 attempts")

    def _start(self, name: str, config: Path, port: int, args: list[str], sentinel: bool) -> int:
        home = self.directory / name
        home.mkdir(parents=True, exist_ok=True)
        log = home / "server.log"
        # A copy: CONFIG REWRITE (which Sentinel runs on the servers it reconfigures) rewrites the file.
        config = Path(shutil.copyfile(config, home / config.name))
        argv = [self.binary, str(config)] + (["--sentinel"] if sentinel else [])
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(home), "--logfile", str(log),
                 "--daemonize", "no", *args]
        with (home / "stdout.log").open("wb") as out:  # config errors go to stdout, before the logfile opens
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.processes[port] = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = "".join(path.read_text(errors="replace")[-1500:] for path in (home / "stdout.log", log) if path.exists())
                if "already in use" in tail:
                    raise PortTaken(port)
                raise StartFailed(f"{name}: `{' '.join(argv)}` exited {process.returncode}:\n{tail}")
            try:
                info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).info("server")
                if info.get("process_id") == process.pid:
                    return port
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise StartFailed(f"{name} did not answer PING within {START_TIMEOUT_S} s")

    def kill(self, port: int) -> None:
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def close(self) -> None:
        for port in list(self.processes):
            try:
                self.kill(port)
            except Exception:
                pass


class StartFailed(Exception):
    pass


class PortTaken(Exception):
    pass


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (redis.RedisError, OSError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def rendered_sentinel_conf(directory: Path, master_port: int, service: str) -> Path:
    """deploy/redis/sentinel.conf watching the test's primary, with a quorum of one sentinel and
    short timeouts; Sentinel rewrites its file, so it gets a copy."""
    text = (DEPLOY_REDIS / "sentinel.conf").read_text()
    monitor = re.compile(r"^sentinel monitor (\S+) \S+ \d+ \d+$", re.M)
    names = monitor.findall(text)
    assert names, "deploy/redis/sentinel.conf has no `sentinel monitor` line"
    text = monitor.sub(f"sentinel monitor {service} 127.0.0.1 {master_port} 1", text)
    text = text.replace(f" {names[0]} ", f" {service} ")
    text = re.sub(rf"^sentinel down-after-milliseconds {service} \d+$", f"sentinel down-after-milliseconds {service} 1000", text, flags=re.M)
    text = re.sub(rf"^sentinel failover-timeout {service} \d+$", f"sentinel failover-timeout {service} 10000", text, flags=re.M)
    target = directory / "sentinel.conf"
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target  # Servers.start copies it again; this one stays as rendered


class SentinelTopology:
    service = "fgw-test"

    def __init__(self, servers: Servers, directory: Path) -> None:
        self.servers = servers
        self.master = servers.start("primary", DEPLOY_REDIS / "redis.conf", "--appendonly", "no", "--save", "",
                                    "--repl-diskless-sync-delay", "0")
        self.replica = servers.start("replica", DEPLOY_REDIS / "redis.conf", "--appendonly", "no", "--save", "",
                                     "--repl-diskless-sync-delay", "0", "--replicaof", "127.0.0.1", str(self.master))
        wait_until(lambda: redis.Redis(host="127.0.0.1", port=self.replica).info("replication").get("master_link_status") == "up",
                   START_TIMEOUT_S, "replica in sync")
        config = rendered_sentinel_conf(directory / "sentinel-conf", self.master, self.service)
        try:
            self.sentinel = servers.start("sentinel", config, sentinel=True)
        except StartFailed as error:
            pytest.skip(f"this redis-server cannot run as a sentinel (--sentinel): {error}")
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel}/{self.service}"
        wait_until(self.replica_known, START_TIMEOUT_S, "the sentinel to discover the replica")

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel, socket_timeout=1, decode_responses=True)

    def master_port(self) -> int:
        host, port = self.sentinel_client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(port)

    def replica_known(self) -> bool:
        replicas = self.sentinel_client().execute_command("SENTINEL", "REPLICAS", self.service)
        for entry in replicas:
            fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else entry
            if "slave" in fields.get("flags", "") and "s_down" not in fields.get("flags", "") \
                    and fields.get("master-link-status") == "ok":
                return True
        return False


class ClusterTopology:
    def __init__(self, servers: Servers, directory: Path) -> None:
        self.servers = servers
        # Each node also listens on a cluster-bus port (default: port + 10000); pick both.
        self.ports = []
        for index in range(3):
            try:
                port = servers.start(f"node-{index}", DEPLOY_REDIS / "cluster-node.conf", "--appendonly", "no", "--save", "",
                                     "--cluster-node-timeout", "2000", cluster_bus=True)
            except StartFailed as error:
                pytest.skip(f"this redis-server cannot run in cluster mode: {error}")
            self.ports.append(port)
        self.created_with = self.create()
        wait_until(self.healthy, START_TIMEOUT_S * 2, "cluster_state:ok on every node")
        self.url = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        self.url = f"redis://{self.url}"

    def create(self) -> str:
        cli = shutil.which("redis-cli")
        if cli is not None:
            done = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                return "redis-cli --cluster create"
            # An older redis-cli may not know nodes with their own cluster-port: join them by hand.
        nodes = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=2) for p in self.ports]
        if nodes[0].execute_command("CLUSTER", "INFO").decode().find("cluster_slots_assigned:0") < 0:
            raise AssertionError("redis-cli --cluster create failed half-way")
        bounds = [0, 5461, 10923, 16384]
        for index, node in enumerate(nodes):
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1)
        bus = int(nodes[0].config_get("cluster-port")["cluster-port"])
        for node in nodes[1:]:
            node.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0], bus)
        return "CLUSTER ADDSLOTSRANGE + CLUSTER MEET"

    def healthy(self) -> bool:
        for port in self.ports:
            node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
            info = node.execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in info or "cluster_known_nodes:3" not in info:
                return False
        return True

    def keys_by_node(self, pattern: str) -> dict[int, list[str]]:
        found = {}
        for port in self.ports:
            node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
            found[port] = sorted(node.scan_iter(match=pattern, count=1000))
        return found


@pytest.fixture(scope="module")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    directory = tmp_path_factory.mktemp("sentinel")
    servers = Servers(redis_server_binary(), directory)
    try:
        yield SentinelTopology(servers, directory)
    finally:
        servers.close()


@pytest.fixture(scope="module")
def cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    directory = tmp_path_factory.mktemp("cluster")
    servers = Servers(redis_server_binary(), directory)
    try:
        yield ClusterTopology(servers, directory)
    finally:
        servers.close()


def test_shipped_configs_are_pristine() -> None:
    """Redis rewrites the file it was started with (CONFIG REWRITE, also run by Sentinel): the
    servers here start from copies, and the shipped files keep the deployment's values."""
    for path in DEPLOY_REDIS.glob("*.conf"):
        text = path.read_text()
        assert "CONFIG REWRITE" not in text.replace("on CONFIG REWRITE", ""), f"{path} was rewritten by a Redis server"
        assert re.search(r"^bind 0\.0\.0\.0$", text, re.M) and re.search(r"^port (6379|26379)$", text, re.M), path
        assert "/tmp/" not in text and "pytest" not in text, path
    for name in ("redis.conf", "cluster-node.conf"):
        text = (DEPLOY_REDIS / name).read_text()
        for line in ("appendonly yes", "maxmemory-policy noeviction", "client-output-buffer-limit pubsub 32mb 8mb 60"):
            assert re.search(rf"^{re.escape(line)}$", text, re.M), f"{name}: {line}"


def test_shipped_standalone_config_starts(tmp_path: Path) -> None:
    servers = Servers(redis_server_binary(), tmp_path)
    try:
        port = servers.start("standalone", DEPLOY_REDIS / "redis.conf")
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        servers.close()


Topology = tuple[str, bool]  # (url, cluster)


@pytest.fixture(params=["standalone", "sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Topology:
    if request.param == "standalone":
        url = os.environ.get("REDIS_URL")
        if not url:
            pytest.skip("REDIS_URL is not set: run under scripts/with-redis")
        return url, False
    if request.param == "sentinel":
        return request.getfixturevalue("sentinel_topology").url, False
    return request.getfixturevalue("cluster_topology").url, True


def namespace() -> str:
    return f"topo-{uuid.uuid4().hex[:10]}"


def change(action: str) -> dict[str, Any]:
    return {"actor": "test", "action": action, "time": "2026-11-27T00:00:00Z"}


def test_live_store_transactions(topology: Topology) -> None:
    """Every WATCH/MULTI of the live state (write, conflict, restore, read) and its pub/sub."""
    url, cluster = topology
    ns = namespace()

    async def run() -> None:
        writer = RedisStore(client=connect_url(url, cluster=cluster, timeout_s=2), namespace=ns)
        other = RedisStore(url, namespace=ns, timeout_s=2, cluster=cluster)
        try:
            heard = asyncio.Event()

            async def listen() -> None:
                async for _ in other.notifications():
                    heard.set()

            listener = asyncio.ensure_future(listen())
            await asyncio.sleep(0.3)  # subscribed
            revision = await writer.write(set_fields={"susp:s1": json.dumps({"models": ["m"]})}, delete_fields=[],
                                          bundle={"files": {"a.yaml": "x: 1\n"}, "version": "v1", "files_version": "v1"},
                                          change=change("create"), epoch=None)
            assert revision == 1
            epoch, revision = await other.stamp()
            assert epoch and revision == 1
            with pytest.raises(StoreConflict):  # the epoch exists now: a writer that thinks it is new is refused
                await other.write(set_fields={}, delete_fields=[], bundle=None, change=change("stale"), epoch=None)
            assert await other.write(set_fields={"org:o1:status": '"suspended"'}, delete_fields=["susp:s1"], bundle=None,
                                     change=change("update"), epoch=epoch) == 2
            shared = await writer.read()
            assert (shared.epoch, shared.revision, shared.bundle, shared.bundle_version) == (epoch, 2, {"a.yaml": "x: 1\n"}, "v1")
            assert shared.overlay.organizations == {"o1": {"status": "suspended"}} and not shared.overlay.suspensions
            assert [c["action"] for c in await writer.changes(10)] == ["update", "create"]
            await asyncio.wait_for(heard.wait(), 5)
            # A Redis that lost its state is restored from a mirror, in one transaction.
            assert not await writer.restore(shared, change("restore"))  # not needed: same revision
            for key in store_keys(ns).values():
                await writer.redis.delete(key)
            mirror = Shared(epoch, 2, {"a.yaml": "x: 1\n"}, "v1", "v1", Overlay(organizations={"o1": {"status": "suspended"}}))
            assert await writer.restore(mirror, change("restore"))
            assert await writer.stamp() == (epoch, 2)
            assert (await other.read()).overlay.organizations == {"o1": {"status": "suspended"}}
            listener.cancel()
            await asyncio.wait([listener], timeout=3)
        finally:
            await writer.close()
            await other.close()

    asyncio.run(run())


def test_api_keys(topology: Topology) -> None:
    """The CLI's blocking WATCH/MULTI writes and the replicas' mirror, through each topology."""
    url, cluster = topology
    ns = namespace()
    admin = RedisApiKeyStore(url, namespace=ns, timeout_s=2, cluster=cluster)

    async def run() -> None:
        key_id, secret = await asyncio.to_thread(admin.create, "org-a", "label")
        replica = RedisApiKeyStore(url, namespace=ns, timeout_s=2, cluster=cluster, resync_s=0.2)
        await replica.start()
        try:
            assert replica.find(secret).org_id == "org-a"
            other_id, other_secret = await asyncio.to_thread(admin.create, "org-b")
            await asyncio.wait_for(_until(lambda: replica.find(other_secret) is not None), 5)
            assert await asyncio.to_thread(admin.revoke, key_id)
            await asyncio.wait_for(_until(lambda: replica.find(secret) is None), 5)
            assert {k.key_id for k in await asyncio.to_thread(admin.list)} == {key_id, other_id}
        finally:
            await replica.close()
            await admin.close()

    asyncio.run(run())


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.05)


def test_quotas_and_sightings(topology: Topology) -> None:
    url, cluster = topology
    ns = namespace()

    async def run() -> None:
        client = connect_url(url, cluster=cluster, timeout_s=2)
        try:
            quota = RedisQuota(client, ns)
            now = time.time()
            admitted = [await quota.admit("org-q", 3, 100, now) for _ in range(5)]
            assert admitted[:3] == [None] * 3 and all(wait is not None for wait in admitted[3:])
            assert await quota.admit("org-q", None, 100, now, reserve=70) is None
            assert await quota.admit("org-q", None, 100, now, reserve=30) is None
            assert await quota.admit("org-q", None, 100, now) == HELD_RETRY_S  # held by requests in flight
            await quota.settle(Reservation("org-q", 70, now), 20)
            assert await quota.admit("org-q", None, 100, now) is None
            await quota.settle(Reservation("org-q", 30, now), 80)
            assert await quota.admit("org-q", None, 100, now) > HELD_RETRY_S  # tokens spent, whatever the minute
            here, there = RedisSightings(client, ns, 60), RedisSightings(client, ns, 60)  # two replicas
            assert await here.observe("key_1", "US", now) == {"US"}
            assert await there.observe("key_1", "CN", now + 1) == {"US", "CN"}
            assert await here.observe("key_1", "DE", now + 2) == {"US", "CN", "DE"}  # a new country: at once
            assert await there.observe("key_1", "CN", now + 3) == {"US", "CN"}  # written 2 s ago: not again
            assert await there.observe("key_1", "CN", now + 7) == {"US", "CN", "DE"}
            assert await here.observe("key_1", "US", now + 70) == {"US"}  # the others are out of the window
        finally:
            await client.aclose()

    asyncio.run(run())


def test_every_shared_key_is_in_one_cluster_slot(cluster_topology: ClusterTopology) -> None:
    """The keys written together (live state, API keys) carry the `{namespace}` hash tag: one
    slot, so one primary holds them all and each MULTI is a single-slot transaction."""
    ns = namespace()
    url = cluster_topology.url

    async def run() -> None:
        store = RedisStore(url, namespace=ns, cluster=True, timeout_s=2)
        admin = RedisApiKeyStore(url, namespace=ns, cluster=True, timeout_s=2)
        try:
            await store.write(set_fields={"lift:x": "1"}, delete_fields=[], bundle={"files": {}, "version": "v"},
                              change=change("c"), epoch=None)
            await asyncio.to_thread(admin.create, "org-a")
        finally:
            await store.close()
            await admin.close()

    asyncio.run(run())
    print(f"cluster joined with {cluster_topology.created_with}")
    by_node = cluster_topology.keys_by_node("{" + ns + "}*")
    holders = {port: keys for port, keys in by_node.items() if keys}
    assert len(holders) == 1, f"the namespace's keys are spread over several nodes: {holders}"
    keys = next(iter(holders.values()))
    assert {"{%s}:%s" % (ns, name) for name in ("bundle", "overlay", "epoch", "revision", "changes",
                                                 "apikeys", "apikey-ids", "apikeys-version")} <= set(keys)
    node = redis.Redis(host="127.0.0.1", port=cluster_topology.ports[0])
    slots = {node.execute_command("CLUSTER", "KEYSLOT", key) for key in keys}
    assert len(slots) == 1


def test_sentinel_failover(sentinel_topology: SentinelTopology) -> None:
    """The primary dies; the sentinel promotes the replica; the same client follows it, and what
    was written (and replicated) before is still there. Runs last of the Sentinel store tests:
    the topology keeps one server afterwards."""
    topo = sentinel_topology
    ns = namespace()

    async def run() -> None:
        store = RedisStore(topo.url, namespace=ns, timeout_s=1)
        try:
            await store.write(set_fields={"lift:a": "1"}, delete_fields=[], bundle=None, change=change("before"), epoch=None)
            epoch, _ = await store.stamp()
            before = topo.master_port()
            assert before == topo.master
            await asyncio.to_thread(wait_until, lambda: redis.Redis(host="127.0.0.1", port=topo.replica).get(store_keys(ns)["revision"]) == b"1",
                                    10, "replication of the write")
            topo.servers.kill(topo.master)
            after = await asyncio.to_thread(wait_until, lambda: topo.master_port() != before and topo.master_port(),
                                            30, "the sentinel to promote the replica")
            assert after == topo.replica
            deadline = time.monotonic() + 30
            while True:  # pooled connections to the dead primary fail, and are re-made to the new one
                try:
                    revision = await store.write(set_fields={"lift:b": "1"}, delete_fields=[], bundle=None,
                                                 change=change("after"), epoch=epoch)
                    break
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert revision == 2
            assert (await store.read()).overlay.lifted == {"a", "b"}
            assert redis.Redis(host="127.0.0.1", port=after).get(store_keys(ns)["revision"]) == b"2"
        finally:
            await store.close()

    asyncio.run(run())


# ---------------------------------------------------------------- gateway processes


class Serve:
    """`python -m gateway serve` with a config of the test's making (as tests/fleet.py's Replica)."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True)
        self.config_path = directory / "gateway.yaml"
        self.config_path.write_text(json.dumps(config))
        self.log_path = directory / "gateway.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                                            env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        self.url = self.admin_url = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n{self.log()[-3000:]}")
            found = re.search(r"gateway listening on (\d+) \(admin on (\d+)\)", self.log())
            if found:
                self.url, self.admin_url = (f"http://127.0.0.1:{found.group(i)}" for i in (1, 2))
                try:
                    if http("GET", self.admin_url + "/readyz", timeout=1).status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


OPERATOR = "operator-" + uuid.uuid4().hex


@pytest.mark.parametrize("kind", ["sentinel", "cluster"])
def test_gateway_fleet_on(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two `gateway serve` replicas on Sentinel / Cluster: a key made by `gateway keys create`
    works on both, a suspension made on one is in force on the other, every request is audited."""
    topo = request.getfixturevalue(f"{kind}_topology")
    redis_section = {"url": topo.url, "namespace": namespace(), "cluster": kind == "cluster", "timeout_s": 1}
    signing = SigningKey()
    (tmp_path / "jwks.json").write_text(json.dumps(signing.jwks()))
    upstream = Upstream()
    replicas: list[Serve] = []
    try:
        def config(index: int) -> dict[str, Any]:
            return {
                "listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "policy_dir": str(REFERENCE_POLICY),
                "state_dir": str(tmp_path / f"state-{index}"),
                "upstreams": {"default": {"url": upstream.url, "connect_timeout_s": 2, "read_timeout_s": 10}},
                "trusted_proxies": ["127.0.0.1/32"],
                "geoip": {"country_db": str(GEOIP / "GeoIP2-City-Test.mmdb"), "max_age_days": GEOIP_MAX_AGE_DAYS},
                "identity": {"jwt": {"jwks_file": str(tmp_path / "jwks.json"), "issuer": ISSUER, "audience": AUDIENCE,
                                     "algorithms": ["RS256"]}},
                "redis": redis_section, "audit": {"path": str(tmp_path / f"audit-{index}.jsonl")},
                "admin": {"tokens": [{"name": "ops", "role": "operator",
                                      "sha256": hashlib.sha256(OPERATOR.encode()).hexdigest()}]},
            }

        replicas = [Serve(tmp_path / f"replica-{i}", config(i)) for i in range(2)]
        deadline = time.monotonic() + 30
        for replica in replicas:
            replica.wait_ready(deadline)
        created = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--config", str(replicas[0].config_path),
                                  "--org", "org-caisi", "--json"], capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")})
        assert created.returncode == 0, created.stderr
        secret = json.loads(created.stdout)["secret"]

        def chat(replica: Serve, ip: str = US_IP) -> Any:
            return http("POST", replica.url + "/v1/chat/completions",
                           {"model": "small-2", "messages": [{"role": "user", "content": "hi"}]},
                           {"Authorization": f"Bearer {secret}", "X-Forwarded-For": ip})

        wait_until(lambda: all(chat(r).status == 200 for r in replicas), 10, "the new key on every replica")
        suspended = http("POST", replicas[0].admin_url + "/admin/suspensions",
                            {"models": ["small-2"], "deny_in": ["us"], "reason": "topology test"},
                            {"Authorization": f"Bearer {OPERATOR}"})
        assert suspended.status == 201, suspended
        wait_until(lambda: chat(replicas[1]).status == 451, 10, "the suspension on the other replica")
        for replica in replicas:
            assert http("GET", replica.admin_url + "/readyz").status == 200, replica.log()[-2000:]
            assert "CROSSSLOT" not in replica.log() and "Traceback" not in replica.log(), replica.log()[-4000:]
    finally:
        for replica in replicas:
            replica.stop()
        upstream.close()
    for index in range(2):
        records = [json.loads(line) for line in (tmp_path / f"audit-{index}.jsonl").read_text().splitlines()
                   if line.strip().startswith("{")]
        assert records, f"replica {index} wrote no audit record"
