"""One factory for every Redis client the gateway makes (standalone, Sentinel or Cluster: docs/operators.md).

The config's `redis` section names the deployment:

  redis://[[user]:password@]host[:port][/db]          one server (also `rediss://` for TLS, `unix://`)
  redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]
                                                       the master of `service_name`, found through
                                                       Sentinel (default port 26379); `rediss+sentinel://`
                                                       speaks TLS to the sentinels and the servers
  redis://host:port[,host:port...]  with `redis.cluster: true`
                                                       a Redis Cluster, reached through any of these nodes

Credentials in a Sentinel URL are those of the Redis servers; sentinels that require their
own take `?sentinel_username=...&sentinel_password=...`. Percent-encode reserved characters.

`connect(config.redis)` gives the asyncio client, `connect_sync(config.redis)` the blocking one
(the `gateway keys` CLI). Every key the gateway writes with others in one transaction shares the
`{namespace}` hash tag, so each MULTI touches one Cluster slot; redis-py's Cluster pipeline runs
WATCH/MULTI/EXEC on that slot's node. `describe(url)` names the servers without any password,
for logs and error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SENTINEL_QUERY = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class Target:
    """What a `redis.url` (with `redis.cluster`) names."""

    kind: str  # "standalone" | "sentinel" | "cluster"
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse(url: str, *, cluster: bool = False) -> Target:
    """Check a `redis.url` and say what it names; ValueError with the reason if it is not usable."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("must be a redis://, rediss://, unix:// or redis+sentinel:// URL")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in STANDALONE_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError(f"unknown scheme {scheme + '://' if sep else url!r}: use redis://, rediss://, unix:// "
                         "or redis+sentinel://host:port[,host:port]/service_name[/db]")
    if scheme in SENTINEL_SCHEMES:
        if cluster:
            raise ValueError("redis.cluster cannot be combined with a redis+sentinel:// URL")
        return _parse_sentinel(url, scheme, rest)
    if scheme == "unix":
        if cluster:
            raise ValueError("a Redis Cluster is not reached through a unix:// socket")
        return Target("standalone", url)
    netloc, path, query = _split(rest)
    userinfo, hosts = _hosts(netloc, DEFAULT_PORT)
    db = _db(path.strip("/"))
    username, password = _credentials(userinfo)
    if cluster:
        if db != 0:
            raise ValueError("a Redis Cluster has only database 0")
        if query:
            raise ValueError("URL options (?...) are not supported with redis.cluster")
        return Target("cluster", url, hosts, None, 0, username, password, scheme == "rediss")
    if len(hosts) != 1:
        raise ValueError("several hosts are a Sentinel (redis+sentinel://) or Cluster (redis.cluster: true) "
                         "deployment; a redis:// URL names one server")
    return Target("standalone", url, hosts, None, db, username, password, scheme == "rediss")


def _parse_sentinel(url: str, scheme: str, rest: str) -> Target:
    netloc, path, query = _split(rest)
    userinfo, hosts = _hosts(netloc, DEFAULT_SENTINEL_PORT)
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError("a Sentinel URL is redis+sentinel://host:port[,host:port...]/service_name[/db]")
    db = _db(parts[1]) if len(parts) == 2 else 0
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"unknown Sentinel URL option(s) {', '.join(unknown)}; known: {', '.join(SENTINEL_QUERY)}")
    username, password = _credentials(userinfo)
    return Target("sentinel", url, hosts, parts[0], db, username, password, scheme.startswith("rediss"),
                  options.get("sentinel_username") or None, options.get("sentinel_password") or None)


def _split(rest: str) -> tuple[str, str, str]:
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise ValueError("a Redis URL has no #fragment")
    head, _, query = rest.partition("?")
    netloc, slash, path = head.partition("/")
    return netloc, slash + path, query


def _hosts(netloc: str, default_port: int) -> tuple[str | None, tuple[tuple[str, int], ...]]:
    userinfo, at, hostlist = netloc.rpartition("@")
    hosts = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise ValueError("the URL names no host" if not hostlist.strip() else f"empty host in {hostlist!r}")
        if item.startswith("["):
            host, bracket, tail = item[1:].partition("]")
            if not bracket or (tail and not tail.startswith(":")):
                raise ValueError(f"malformed IPv6 host {item!r}")
            port_text = tail[1:] if tail else ""
        else:
            if item.count(":") > 1:
                raise ValueError(f"write an IPv6 address in brackets: [{item}]")
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"empty host in {item!r}")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad port {port_text!r}")
            port = int(port_text)
        else:
            port = default_port
        hosts.append((host, port))
    return (userinfo if at else None), tuple(hosts)


def _credentials(userinfo: str | None) -> tuple[str | None, str | None]:
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:  # redis://secret@host: the password (Redis before ACLs had no users)
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def describe(url: str | None, *, cluster: bool = False) -> str:
    """The servers a URL names, never its credentials: `host:port`, `sentinel h:p,h:p/service`, ..."""
    if not url:
        return "(no redis.url)"
    try:
        target = parse(url, cluster=cluster)
    except ValueError:
        try:  # several hosts in a redis:// URL: a cluster's nodes
            target = parse(url, cluster=True)
        except ValueError:
            return "(unparsable Redis URL)"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in target.hosts)
    if target.kind == "sentinel":
        return f"sentinel {hosts}/{target.service_name}"
    if target.kind == "cluster":
        return f"cluster {hosts}"
    if url.lower().startswith("unix://"):
        return "unix socket " + urlsplit(url).path
    return hosts


def _settings(config: Any) -> tuple[str, bool, float]:
    url = getattr(config, "url", None)
    if not url:
        raise ValueError("redis.url is not set")
    return url, bool(getattr(config, "cluster", False)), float(getattr(config, "timeout_s", 0.5))


def connect(config: Any, *, decode_responses: bool = True, **options: Any) -> Any:
    """An asyncio client for the config's `redis` section (anything with `url`, `cluster`, `timeout_s`)."""
    url, cluster, timeout_s = _settings(config)
    return connect_url(url, cluster=cluster, timeout_s=timeout_s, decode_responses=decode_responses, **options)


def connect_sync(config: Any, *, decode_responses: bool = True, **options: Any) -> Any:
    """The blocking client for the same deployment (for CLIs)."""
    url, cluster, timeout_s = _settings(config)
    return connect_url(url, cluster=cluster, timeout_s=timeout_s, decode_responses=decode_responses,
                       asyncio=False, **options)


def connect_url(url: str, *, cluster: bool = False, timeout_s: float = 0.5, decode_responses: bool = True,
                asyncio: bool = True, **options: Any) -> Any:
    """A redis-py client (asyncio unless `asyncio=False`) for `url`; creating it opens no connection."""
    target = parse(url, cluster=cluster)
    common = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
              "decode_responses": decode_responses, **options}
    if target.kind != "cluster":  # a cluster client retries (and re-maps the slots) itself
        common.setdefault("retry", _reconnect_once(asyncio))
    if target.kind == "standalone":
        if asyncio:
            import redis.asyncio as aioredis

            return aioredis.Redis.from_url(url, **common)
        import redis

        return redis.Redis.from_url(url, **common)
    auth = {k: v for k, v in (("username", target.username), ("password", target.password)) if v is not None}
    if target.ssl:
        common["ssl"] = True
    if target.kind == "cluster":
        if asyncio:
            from redis.asyncio.cluster import ClusterNode, RedisCluster
        else:
            from redis.cluster import ClusterNode, RedisCluster  # type: ignore[assignment]
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in target.hosts], **auth, **common)
    sentinel_kwargs = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if target.ssl:
        sentinel_kwargs["ssl"] = True
    if target.sentinel_username:
        sentinel_kwargs["username"] = target.sentinel_username
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if asyncio:
        from redis.asyncio.sentinel import Sentinel

        master_class: Any = _async_sentinel_client()
    else:
        from redis.sentinel import Sentinel  # type: ignore[assignment]

        master_class = _sync_sentinel_client()
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.service_name, redis_class=master_class, db=target.db, **auth, **common)


_ASYNC_SENTINEL_CLIENT: Any = None
_SYNC_SENTINEL_CLIENT: Any = None


def _async_sentinel_client() -> Any:
    """redis.asyncio.Redis that also closes the clients of the sentinels it was found through."""
    global _ASYNC_SENTINEL_CLIENT
    if _ASYNC_SENTINEL_CLIENT is None:
        import redis.asyncio as aioredis

        class SentinelMasterClient(aioredis.Redis):  # type: ignore[misc]
            async def aclose(self, close_connection_pool: bool | None = None) -> None:
                manager = getattr(self.connection_pool, "sentinel_manager", None)
                await super().aclose(close_connection_pool)
                for client in getattr(manager, "sentinels", ()):
                    await client.aclose()

        _ASYNC_SENTINEL_CLIENT = SentinelMasterClient
    return _ASYNC_SENTINEL_CLIENT


def _sync_sentinel_client() -> Any:
    global _SYNC_SENTINEL_CLIENT
    if _SYNC_SENTINEL_CLIENT is None:
        import redis

        class SentinelMasterClient(redis.Redis):  # type: ignore[misc]
            def close(self) -> None:
                manager = getattr(self.connection_pool, "sentinel_manager", None)
                super().close()
                for client in getattr(manager, "sentinels", ()):
                    client.close()

        _SYNC_SENTINEL_CLIENT = SentinelMasterClient
    return _SYNC_SENTINEL_CLIENT


async def before_pubsub(client: Any) -> None:
    """Call before `client.pubsub().subscribe(...)`: redis-py's Cluster pub/sub picks its node
    from the slot map without loading it first (a KeyError on a client that has run no command
    yet). Harmless for other clients; raises the usual connection errors when Redis is down."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        await client.initialize()


def _reconnect_once(asyncio: bool) -> Any:
    """Retry a command once, at once, on a broken connection: after Redis restarts every
    pooled connection is dead, and one used only now and then (a quota script, say) would
    otherwise fail its first command long after Redis is back. Only ConnectionError: after
    a timeout the command may have run, and the scripts are not idempotent."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    if asyncio:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry  # type: ignore[assignment]
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))

