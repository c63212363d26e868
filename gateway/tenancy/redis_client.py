"""The Redis client a ``store.redis_url`` names: one server, or a Redis Cluster.

``redis://`` and ``rediss://`` (and ``unix://``) name one server. ``redis+cluster://`` and
``rediss+cluster://`` name a cluster by one or more of its nodes,
``redis+cluster://[user:password@]host:port[,host:port...][?option=value]``; the client learns
the rest of the cluster from them and follows its slot map through failovers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
# Everything a call to Redis may raise when the store cannot answer. A cluster whose nodes are
# all unreachable raises ``RedisClusterException``, which is not a ``RedisError``.
UNREACHABLE: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
# A cluster client opens one connection per command in flight on a node and refuses the next
# beyond this (it does not queue); a single server's pool has no bound either.
_CLUSTER_CONNECTIONS_PER_NODE = 1 << 16

Client = aioredis.Redis | RedisCluster


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.partition("://")[0] in CLUSTER_SCHEMES


def check_url(url: str) -> str:
    """``url`` if its scheme is one the store knows, else ``ValueError`` (for config checks)."""
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in SCHEMES:
        raise ValueError(f"redis_url must start with one of {', '.join(SCHEMES)} (got {url!r})")
    if scheme in CLUSTER_SCHEMES and parse_url(cluster_seeds(url)[0]).get("db", 0):
        raise ValueError("a Redis Cluster has database 0 only")
    return url


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The single-node URL that carries a cluster URL's options, and its seed nodes."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if not slash:
        netloc, mark, query = rest.partition("?")
        tail = mark + query
    userinfo, at, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for host in hosts.split(","):
        try:
            parts = urlsplit(f"//{host}")
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"a cluster node must be host:port (got {host!r})") from exc
        if not parts.hostname or port is None:
            raise ValueError(f"a cluster node must be host:port (got {host!r})")
        seeds.append((parts.hostname, port))
    single = f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{hosts.split(',')[0]}/{tail}"
    return single, seeds


def connect(url: str) -> Client:
    """A client for ``url`` with the store's timeouts and retry rules (see the module doc)."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 0.5,
        "socket_timeout": 2.0,
        "health_check_interval": 5,  # an idle connection is PINGed before it is used again
    }
    if not is_cluster(url):
        return aioredis.Redis.from_url(
            url,
            # One retry, on a fresh connection, for a connection that broke: after a Redis
            # restart every pooled connection is dead, and the command never reached the new
            # server. A timeout is not retried (the command may have run twice).
            retry=Retry(
                ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(RedisConnectionError,)
            ),
            **common,
        )
    single, seeds = cluster_seeds(url)
    options: dict[str, Any] = dict(parse_url(single))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:  # only rediss:// sets one
        options["ssl"] = True
    cluster: dict[str, Any] = {
        # One retry, after the client has re-read the slot map: a node that went away, a
        # failover under way, or a timeout. The request path's scripts may run twice (ADMIT
        # finds its own hold, SETTLE its record, CHECKPOINT books differences); a window
        # flush that timed out may count twice, as its batch put back may on one server.
        # Redirections (MOVED, ASK, TRYAGAIN) are followed without counting; past the retry,
        # the store's outage rules take over.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
        "max_connections": _CLUSTER_CONNECTIONS_PER_NODE,
        **common,
        **options,  # the URL's own options win, as they do for one server
    }
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in seeds], **cluster)


def _torn_transport(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py 8.1 writing on a connection whose transport was torn down
    (the peer closed it, or a cluster failover reset the node's connections mid-connect):
    the transport's own ``AttributeError``/``TypeError`` ("'NoneType' object has no attribute
    'writelines'"), raised past every retry layer instead of a ``ConnectionError``
    (redis/redis-py#4287). Only errors raised inside redis-py or asyncio count: the scripts
    are safe to run twice (see ``connect``'s retry), our own bugs are not to be retried."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return f"{os.sep}redis{os.sep}" in where or f"{os.sep}asyncio{os.sep}" in where


class Script:
    """A Lua script run by its SHA1, or by its text on a node that has not cached it yet.

    A restarted server or a replica just promoted lacks the scripts. Sending the text (EVAL)
    caches it on whichever node owns the keys' slot, where a SCRIPT LOAD would go to the
    primaries the client believes in, which during a failover may be the wrong ones.
    """

    def __init__(self, client: Client, script: str) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    async def __call__(self, *, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script on the node owning its keys' slot (all one slot); once more where
        the connection was torn down under the write (see ``_torn_transport``)."""
        torn: BaseException | None = None
        for _ in range(2):
            try:
                return await self._run(keys, args)
            except (AttributeError, TypeError) as exc:
                if not _torn_transport(exc):
                    raise
                torn = exc
        raise RedisConnectionError(f"connection torn down under a write: {torn}") from torn

    async def _run(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.execute_command(*self.command(keys, args))
        except NoScriptError:
            return await self.client.execute_command(*self.command(keys, args, text=True))

    def command(self, keys: Sequence[Any], args: Sequence[Any], *, text: bool = False) -> list[Any]:
        """The EVALSHA (or EVAL) command line, for a pipeline; both are routed by key slot."""
        name, body = ("EVAL", self.script) if text else ("EVALSHA", self.sha)
        return [name, body, len(keys), *keys, *args]
