"""RedisStorage: one Lua call per batch for loads and for writes.

Why Lua rather than a pipeline: a pipeline of ``SET PX`` costs one command
parse and reply per key on both sides (~19k keys/s here); one ``EVALSHA`` with
all keys and values packed as arguments costs a single round trip and reply,
keeps TTL, and lets the load path tell a wrong-typed key (which ``MGET``
would silently report as missing, and a later write would destroy) from an
absent one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as redis_asyncio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from actorsess._record import TOMBSTONE_TTL_MS
from actorsess._redact import redact_url
from actorsess.storage import _redis_lua as lua
from actorsess.storage._redis_cluster import ArgsFor, ClusterBatchScript
from actorsess.storage._redis_lease import CHANNEL_PREFIX, lease_key, owner_marker
from actorsess.storage._redis_script import Arg, BatchScript
from actorsess.storage.base import (
    AskAgain,
    AtomicStorage,
    BadValue,
    ClaimableStorage,
    Claimant,
    Conflict,
    HandedOver,
    HandoverAsked,
    LeaseStorage,
    LoadResult,
    Notice,
    Owned,
    PreparableStorage,
    Release,
    Resubscribed,
    ScannableStorage,
    WriteItem,
)

_WRONG_TYPE = b"\x00actorsess:wrongtype"
#: Characters with a meaning in a SCAN MATCH pattern, escaped in a literal prefix.
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")


def prefix_pattern(prefix: str) -> str:
    """The SCAN MATCH pattern of the keys that start with ``prefix``, taken literally."""
    return _GLOB_SPECIAL.sub(r"\\\g<0>", prefix) + "*"


DEFAULT_MAX_CONNECTIONS = 32
#: Connections ``prepare()`` opens: two flush rounds and loads can be in flight at once.
PREPARED_CONNECTIONS = 4


class RedisStorage(
    LeaseStorage, AtomicStorage, ScannableStorage, ClaimableStorage, PreparableStorage
):
    """Sessions in Redis: standalone or Cluster, TLS ``rediss://`` and ACL URLs accepted."""

    def __init__(
        self, client: Redis | RedisCluster, *, owns_client: bool = False, url: str | None = None
    ) -> None:
        """Keep sessions in the Redis that ``client`` talks to (``from_url`` makes one).

        Args:
            client: A redis-py asyncio ``Redis`` or ``RedisCluster`` with
                ``decode_responses=False`` (records are bytes).
            owns_client: Close the client in ``close()`` (True when this storage
                made it).
            url: Where it points, for reprs and log lines (its password redacted).
        """
        self._cluster = isinstance(client, RedisCluster)
        kwargs: dict[str, Any] = (
            client.get_connection_kwargs()
            if isinstance(client, RedisCluster)
            else client.connection_pool.connection_kwargs
        )
        if kwargs.get("decode_responses"):
            raise ValueError(
                "RedisStorage needs a client with decode_responses=False: records are bytes"
            )
        self._client = client
        self._owns_client = owns_client
        self._label = redact_url(url) if url else _describe(kwargs)
        #: Every script this storage calls, for ``prepare()`` to load ahead of use.
        self.script_sources: list[str] = []
        self._load = self._script(lua.LOAD_LUA)
        self._write = self._script(lua.WRITE_LUA)
        self._write_all = self._script(lua.WRITE_ALL_LUA)
        self._acquire = self._script(lua.ACQUIRE_LUA)
        self._renew = self._script(lua.RENEW_LUA)
        self._release = self._script(lua.RELEASE_LUA)
        self._write_leased = self._script(lua.WRITE_LEASED_LUA)
        self._write_leased_all = self._script(lua.WRITE_LEASED_ALL_LUA)
        self._claim = self._script(lua.CLAIM_LUA)
        self._unclaim = self._script(lua.UNCLAIM_LUA)

    def _script(self, source: str) -> BatchCall:
        self.script_sources.append(source)
        if isinstance(self._client, RedisCluster):
            return ClusterBatchScript(self._client, source)
        return _WholeBatch(BatchScript(self._client, source))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = 10.0,
        **client_kwargs: Any,
    ) -> RedisStorage:
        """A storage with its own bounded connection pool.

        redis-py's default pool raises ``MaxConnectionsError`` when more
        connections are wanted than allowed; a blocking pool makes callers wait
        (up to ``pool_timeout``) instead. ``cluster=True`` connects to Redis
        Cluster through any of its nodes (the URL names one).
        """
        # redis-py would give up on a reply after its own socket timeout (5 s), before
        # and apart from the documented load_timeout / write_timeout, which bound every
        # call the core makes; so by default it waits as long as those allow.
        client_kwargs.setdefault("socket_timeout", None)
        client: Redis | RedisCluster | None = None
        try:
            if cluster:
                client = RedisCluster.from_url(
                    url, max_connections=max_connections, **client_kwargs
                )
            else:
                pool = BlockingConnectionPool.from_url(
                    url, max_connections=max_connections, timeout=pool_timeout, **client_kwargs
                )
                client = redis_asyncio.Redis(connection_pool=pool)
        except ValueError:
            pass
        if client is not None:
            return cls(client, owns_client=True, url=url)
        # Raised out here, so that redis-py's error is not even kept as the context: its
        # message may quote a piece of the password (a '/' or '#' in it makes the URL
        # parser read the rest as the port).
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: characters such as '/', '#', '?' "
            "and '@' in a password must be percent-encoded"
        )

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client this storage calls."""
        return self._client

    def __repr__(self) -> str:
        kind = "RedisStorage cluster" if self._cluster else "RedisStorage"
        return f"<{kind} {self._label}>"

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        if not keys:
            return []
        results: list[LoadResult] = [None] * len(keys)
        for positions, values in await self._load(keys, _no_args):
            for position, value in zip(positions, values, strict=True):
                results[position] = _loaded(value)
        return results

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        return await self._fenced_write(self._write, items, ttl_ms)

    # -- several sessions at once (AtomicStorage) -----------------------------

    def atomic_problem(self, keys: Sequence[str]) -> str | None:
        if not self._cluster or len({key_slot(key.encode()) for key in keys}) <= 1:
            return None
        return (
            f"on Redis Cluster, sessions written together must share a hash slot, and "
            f"{', '.join(repr(key) for key in keys)} do not: give them a common hash tag "
            "(a part in braces, e.g. 'transfer:{42}:from' and 'transfer:{42}:to')"
        )

    async def write_all(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        problem = self.atomic_problem([item.key for item in items])
        if problem is not None:
            raise ValueError(problem)
        return await self._fenced_write(self._write_all, items, ttl_ms)

    async def _fenced_write(
        self, script: BatchCall, items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        if not items:
            return []
        ttl = str(ttl_ms or 0)

        def args_for(positions: list[int]) -> list[Arg]:
            args: list[Arg] = [ttl, TOMBSTONE_TTL_MS]
            for p in positions:
                item = items[p]
                args += (item.version, b"" if item.blob is None else item.blob)
            return args

        replies = await script([item.key for item in items], args_for)
        return _conflicts(replies, stride=1)

    # -- shared ownership (LeaseStorage) ------------------------------------
    #
    # Scripts that need the record and its lease take KEYS as (record, lease)
    # pairs; both hash to one slot, so a slot group's positions come in pairs
    # and ``positions[0::2]`` are the records, at twice their item index.

    async def acquire_many(
        self, keys: Sequence[str], tokens: Sequence[str], manager_id: str, lease_ms: int
    ) -> list[LoadResult | Owned]:
        results: list[LoadResult | Owned] = [None] * len(keys)

        def args_for(positions: list[int]) -> list[Arg]:
            return [lease_ms, manager_id, CHANNEL_PREFIX, *(tokens[p // 2] for p in positions[::2])]

        for positions, reply in await self._acquire(_with_leases(keys), args_for):
            for j, position in enumerate(positions[::2]):
                taken, value = reply[2 * j], reply[2 * j + 1]
                if taken == 2:
                    results[position // 2] = BadValue(lua.CONFLICT_REASONS[3])
                elif taken:
                    results[position // 2] = _loaded(value)
                else:
                    results[position // 2] = Owned(value.decode())
        return results

    async def renew_many(
        self,
        keys: Sequence[str],
        tokens: Sequence[str],
        lease_ms: int,
        expected: Sequence[int],
    ) -> list[bool]:
        results = [False] * len(keys)

        def args_for(positions: list[int]) -> list[Arg]:
            args: list[Arg] = [lease_ms]
            for p in positions[::2]:
                args += (tokens[p // 2], expected[p // 2])
            return args

        for positions, reply in await self._renew(_with_leases(keys), args_for):
            for j, position in enumerate(positions[::2]):
                results[position // 2] = reply[j] == 1
        return results

    async def release_many(
        self, releases: Sequence[Release], lease_ms: int, ttl_ms: int | None
    ) -> list[Conflict]:
        def args_for(positions: list[int]) -> list[Arg]:
            args: list[Arg] = [CHANNEL_PREFIX, lease_ms, ttl_ms or 0, TOMBSTONE_TTL_MS]
            for p in positions[::2]:
                release = releases[p // 2]
                final = release.final
                args += (release.token, " ".join(release.waiters))
                if final is None:
                    args += ("", "", "")
                else:
                    args += (
                        final.version,
                        "" if final.expected is None else final.expected,
                        b"" if final.blob is None else final.blob,
                    )
            return args

        if not releases:
            return []
        replies = await self._release(_with_leases([r.key for r in releases]), args_for)
        return _conflicts(replies, stride=2)

    async def write_leased(
        self, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        return await self._leased_write(self._write_leased, items, ttl_ms, lease_ms)

    async def write_leased_all(
        self, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        problem = self.atomic_problem([item.key for item in items])
        if problem is not None:
            raise ValueError(problem)
        return await self._leased_write(self._write_leased_all, items, ttl_ms, lease_ms)

    async def _leased_write(
        self, script: BatchCall, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        ttl = str(ttl_ms or 0)

        def args_for(positions: list[int]) -> list[Arg]:
            args: list[Arg] = [ttl, lease_ms, TOMBSTONE_TTL_MS]
            for p in positions[::2]:
                item = items[p // 2]
                expected = "" if item.expected is None else item.expected
                blob = b"" if item.blob is None else item.blob
                args += (item.lease or "", item.version, expected, blob)
            return args

        if not items:
            return []
        replies = await script(_with_leases([i.key for i in items]), args_for)
        return _conflicts(replies, stride=2)

    async def lease_hazard(self) -> str | None:
        """Why leases may vanish on this server (eviction under ``maxmemory``), or None.

        A server that hides its configuration (``CONFIG`` disabled, as on some
        managed services) cannot be checked and passes.
        """
        client = self._client
        try:
            if isinstance(client, RedisCluster):
                replies: dict[Any, Any] = await client.config_get(
                    "maxmemory*", target_nodes=RedisCluster.PRIMARIES
                )
                # One answer per node, or (one node) the answer itself.
                configs = [r for r in replies.values() if isinstance(r, dict)] or [replies]
            else:
                configs = [await client.config_get("maxmemory*")]
        except RedisError:
            return None
        for config in configs:
            policy = _text(config.get("maxmemory-policy", "noeviction"))
            if int(_text(config.get("maxmemory", "0")) or 0) and policy != "noeviction":
                return (
                    f"the server evicts keys under maxmemory (maxmemory-policy {policy}), "
                    "which can drop lease keys and hand a live session to another process; "
                    "set maxmemory-policy noeviction for a Redis used with ownership='shared'"
                )
        return None

    # -- key space claims (ClaimableStorage) ----------------------------------

    async def claim(self, space: str, claimant: Claimant, ttl_ms: int) -> Claimant | str | None:
        marker = [owner_marker(space)]
        [(_, holder)] = await self._claim(marker, lambda _: [_encode(claimant), ttl_ms])
        return None if holder is None else _decode_claimant(holder)

    async def unclaim(self, space: str, claimant: Claimant) -> None:
        await self._unclaim([owner_marker(space)], lambda _: [_encode(claimant)])

    async def listen(self, manager_id: str, on_notice: Callable[[Notice], None]) -> None:
        subscriber = await self._subscriber_client()
        try:
            while True:
                pubsub = subscriber.pubsub()
                try:
                    await pubsub.subscribe(CHANNEL_PREFIX + manager_id)
                    on_notice(Resubscribed())
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            notice = _parse_notice(message["data"])
                            if notice is not None:
                                on_notice(notice)
                except (ConnectionError, OSError, RedisError):
                    await asyncio.sleep(0.1)  # the server restarts or fails over; resubscribe
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            await subscriber.aclose()

    async def _subscriber_client(self) -> Redis:
        """A client for pub/sub: the storage's own, or one to a cluster node (a message
        published on any cluster node reaches subscribers on every node)."""
        client = self._client
        if isinstance(client, RedisCluster):
            await client.initialize()
            kwargs = client.get_connection_kwargs()
            node = client.get_random_node()
            return Redis(
                host=node.host,
                port=int(node.port),
                username=kwargs.get("username"),
                password=kwargs.get("password"),
            )
        return Redis(connection_pool=client.connection_pool)

    async def prepare(self) -> None:
        """Open a few pooled connections and load the scripts.

        A connection opened on demand costs the batch that needs it several round
        trips (connect, CLIENT SETINFO), and on a busy event loop each round trip
        waits for a full turn of the loop: measured at about 250 ms for the second
        concurrent load of a bot's first second, against 35 ms on an open connection.
        """
        client = self._client
        if isinstance(client, RedisCluster):
            await client.initialize()
            return
        pool = client.connection_pool
        wanted = min(PREPARED_CONNECTIONS, pool.max_connections)
        opened = await asyncio.gather(
            *(pool.get_connection() for _ in range(wanted)),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        for connection in opened:
            if not isinstance(connection, BaseException):
                await pool.release(connection)
        for connection in opened:
            if isinstance(connection, BaseException):
                raise connection
        async with client.pipeline(transaction=False) as pipe:
            for source in self.script_sources:
                pipe.script_load(source)
            await pipe.execute()

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            await self._client.delete(*keys)  # split by slot on a cluster client

    async def scan_keys(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        # SCAN (on a cluster: on every primary in turn) walks the keyspace a slice at a
        # time without blocking the server; MATCH leaves only the prefix's keys.
        keys: list[str] = []
        async for raw in self._client.scan_iter(match=prefix_pattern(prefix), count=batch):
            try:
                key = raw.decode()
            except UnicodeDecodeError:
                continue  # never a session key: they are valid UTF-8
            if "\x00" in key:
                continue  # a lease key or key space marker, never a session
            keys.append(key)
            if len(keys) >= batch:
                yield keys
                keys = []
        if keys:
            yield keys

    async def close(self) -> None:
        """Close the connections this storage opened. Safe twice; a storage used again
        after close() reconnects (a manager started again)."""
        if self._owns_client:
            await self._client.aclose()
            if isinstance(self._client, Redis):
                # A client built on an explicit pool leaves the pool open on aclose().
                await self._client.connection_pool.disconnect()


class BatchCall(Protocol):
    async def __call__(
        self, keys: Sequence[str], args_for: ArgsFor
    ) -> list[tuple[list[int], Any]]: ...


class _WholeBatch:
    """A standalone server takes the whole batch in one script call."""

    __slots__ = ("_script",)

    def __init__(self, script: BatchScript) -> None:
        self._script = script

    async def __call__(self, keys: Sequence[str], args_for: ArgsFor) -> list[tuple[list[int], Any]]:
        positions = list(range(len(keys)))
        return [(positions, await self._script(keys, args_for(positions)))]


def _no_args(positions: list[int]) -> list[Arg]:
    return []


def _loaded(value: bytes | None) -> LoadResult:
    return BadValue("the Redis key holds a non-string type") if value == _WRONG_TYPE else value


def _conflicts(replies: list[tuple[list[int], Any]], stride: int) -> list[Conflict]:
    """The ``{position, reason}`` pairs of the write scripts, as Conflicts indexed into
    the whole batch (``stride`` KEYS per item: 2 for the (record, lease) scripts)."""
    conflicts: list[Conflict] = []
    for positions, reply in replies:
        for j in range(0, len(reply), 2):
            index = positions[stride * (reply[j] - 1)] // stride
            reason = lua.CONFLICT_REASONS.get(reply[j + 1], "refused")
            conflicts.append(Conflict(index, reason))
    return sorted(conflicts)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(claimant: Claimant) -> str:
    return f"{claimant.mode}|{claimant.host}|{claimant.pid}|{claimant.nonce}"


def _decode_claimant(value: bytes) -> Claimant | str:
    mode, _, rest = value.decode(errors="replace").partition("|")
    host, _, rest = rest.partition("|")
    pid, _, nonce = rest.partition("|")
    if mode in ("local", "shared", "partitioned") and pid.isdigit():
        return Claimant(mode, host, int(pid), nonce)
    return f"an unknown owner ({value[:40]!r})"


def _parse_notice(data: bytes) -> Notice | None:
    """A notice as the scripts in ``_redis_lua`` publish it; None for anything else."""
    kind, rest = data[:2], data[2:]
    try:
        if kind == b"w ":
            token, _, key = rest.partition(b" ")
            return HandoverAsked(token.decode(), key.decode())
        if kind == b"g ":
            # "g <token> <key length> <key><record>": the key is framed by its length.
            token, _, rest = rest.partition(b" ")
            length, _, rest = rest.partition(b" ")
            size = int(length)
            return HandedOver(token.decode(), rest[:size].decode(), rest[size:] or None)
        if kind == b"f ":
            return AskAgain(rest.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return None


def _with_leases(keys: Sequence[str]) -> list[str]:
    """``[k1, lease(k1), k2, lease(k2), ...]``: the KEYS of the pairwise scripts."""
    pairs: list[str] = []
    for key in keys:
        pairs += (key, lease_key(key))
    return pairs


def _describe(kwargs: dict[str, Any]) -> str:
    if "path" in kwargs:
        return f"unix://{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
