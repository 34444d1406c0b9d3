"""`REDIS_URL` in its three deployment shapes: one server, a Redis Cluster, or Sentinel.

    redis://[user:pass@]host:6379/0                   one server (also rediss://, unix://)
    redis+cluster://[user:pass@]host:7000,host:7001   a cluster, from any of its nodes
    redis+sentinel://[user:pass@]host:26379,host:26380/mymaster/0
                                                      the primary Sentinel names `mymaster`

`rediss+cluster://` and `rediss+sentinel://` speak TLS to the data servers. Credentials are
the data servers'; `?sentinel_password=` is the sentinels' own, if they ask for one.
With Sentinel, every write waits (WAIT) until `?replicas=N` replicas have it (default 1;
0 turns it off), so a failover cannot lose a write the service acknowledged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection
from redis.exceptions import RedisClusterException

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES


@dataclass(frozen=True)
class RedisTarget:
    shape: str  # "single", "cluster" or "sentinel"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seed nodes, or the sentinels
    master: str = ""  # the name Sentinel monitors the primary under
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_password: str | None = None
    replicas: int = 0  # Sentinel: replicas that must confirm each write before it counts


def parse_redis_url(raw: str) -> RedisTarget:
    """The deployment shape a REDIS_URL names; ValueError says what is wrong with it."""
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme not in SCHEMES:
        raise ValueError("must start with " + " or ".join(s + "://" for s in SCHEMES))
    if scheme in SINGLE_SCHEMES:
        return RedisTarget("single", raw)
    parts = urlsplit(raw)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = tuple(_host_port(item, 26379 if scheme in SENTINEL_SCHEMES else 6379)
                  for item in hosts.split(","))
    query = parse_qs(parts.query)
    common: dict[str, Any] = dict(url=raw, nodes=nodes, username=unquote(username) or None,
                  password=unquote(password) if userinfo else None,
                  tls=scheme.startswith("rediss"))
    if scheme in CLUSTER_SCHEMES:
        if parts.path not in ("", "/", "/0"):
            raise ValueError("a cluster has only database 0: leave the path out")
        return RedisTarget("cluster", **common)
    master, _, db = parts.path.strip("/").partition("/")
    if not master:
        raise ValueError("name the primary: redis+sentinel://host:26379/<master name>/<db>")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    replicas = query.get("replicas", ["1"])[0]
    if not replicas.isdigit():
        raise ValueError(f"replicas={replicas!r} is not a number")
    return RedisTarget("sentinel", master=master, db=int(db or 0), replicas=int(replicas),
                       sentinel_password=query.get("sentinel_password", [None])[0], **common)


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    host, _, port = item.strip().rpartition(":") if ":" in item else (item.strip(), "", "")
    if not host:
        raise ValueError(f"{item!r} is not host:port")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{item!r}: port must be between 1 and 65535")
    return host, int(port) if port else default_port


def client_for(url: str, **options: Any) -> "redis.Redis | RedisCluster":
    """redis-py's client for a REDIS_URL of any shape, for everything off the hot path."""
    target = parse_redis_url(url)
    if target.shape == "single":
        return redis.from_url(url, **options)
    auth: dict[str, Any] = dict(username=target.username, password=target.password, ssl=target.tls)
    if target.shape == "cluster":
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        options.pop("health_check_interval", None)
        return RedisCluster(startup_nodes=nodes, **auth, **options)
    sentinels = Sentinel(list(target.nodes), sentinel_kwargs={
        "password": target.sentinel_password, "socket_timeout": options.get("socket_timeout")})
    if auth.pop("ssl"):
        options["connection_class"] = SentinelManagedSSLConnection
    return sentinels.master_for(target.master, db=target.db, **auth, **options)


# On a cluster, every instance publishes and listens on the primary that owns this key's slot,
# so a frame never depends on the cluster bus forwarding PUBLISH between nodes (best effort:
# a link being re-established drops what it carried).
BUS_HOME_KEY = "sb:{bus}"


def subscriber_for(client: "redis.Redis | RedisCluster") -> Callable[[], redis.Redis]:
    """Where to listen for pub/sub: the client itself, or on a cluster the bus's home primary
    first and, after it fails, one node after another (a plain PUBLISH reaches every node)."""
    if not isinstance(client, RedisCluster):
        return lambda: client
    turn = itertools.count()

    def next_node() -> redis.Redis:
        attempt = next(turn)  # the home first, then home and another node in turn
        node = _home_node(client) if attempt % 2 == 0 else _any_node(client, attempt // 2)
        kwargs = node.connection_kwargs
        return redis.Redis(host=node.host, port=int(node.port), username=kwargs.get("username"),
                           password=kwargs.get("password"), ssl=bool(kwargs.get("ssl")),
                           socket_connect_timeout=2)

    return next_node


def publisher_for(client: "redis.Redis | RedisCluster") -> Callable[[str, str], Any]:
    """How to PUBLISH: on a cluster, on the bus's home primary (where listeners are)."""
    if not isinstance(client, RedisCluster):
        return client.publish

    async def publish(channel: str, data: str) -> Any:
        return await client.execute_command("PUBLISH", channel, data,
                                            target_nodes=_home_node(client))

    return publish


def _home_node(client: RedisCluster) -> ClusterNode:
    try:
        return client.get_node_from_key(BUS_HOME_KEY) or _any_node(client, 0)
    except RedisClusterException:  # slots not known yet
        return _any_node(client, 0)


def _any_node(client: RedisCluster, turn: int) -> ClusterNode:
    nodes = client.get_primaries() or list(client.nodes_manager.startup_nodes.values())
    return nodes[turn % len(nodes)]


async def close_client(client: "redis.Redis | RedisCluster") -> None:
    """Close a client of client_for(), with the connections it keeps to the sentinels."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    for sentinel in manager.sentinels if manager else ():
        await sentinel.aclose()
