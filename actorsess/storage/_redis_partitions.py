"""Where partitioned ownership keeps its state in Redis, and the scripts it runs.

Under the namespace ``ns`` (``Partitions(namespace=...)``):

- ``ns + "members"``: a sorted set of the live workers' tokens, scored by the
  Redis time (ms) until which each one's heartbeat holds;
- ``ns + "count"``: the partition count the namespace's workers run with;
- ``ns + "lease:{<p>}"``: the token of the worker that owns partition ``p``, with a
  PX expiry (the partition lease);
- ``ns + "updates:{<p>}"``: partition ``p``'s stream of forwarded updates, one entry
  per receiver batch (fields ``"0"``, ``"1"``, ...: raw update JSON, in arrival
  order), trimmed by the owner once their effects are written; an entry with the
  one field ``"loan"`` asks the owner to lend a session (``actorsess._loans``);
- ``ns + "loan:{<id>}:<step>"``: the short-lived lists and marker of one loan
  (``claim``, ``ready``, ``change``, ``done``).

The stamp (``<entry id>-<index>``) of the last forwarded update whose change a
session's record holds is in the record's header (``actorsess._record``), so
that an update read again after a takeover changes no session twice.

On Redis Cluster a script may touch keys of one slot only, and a write checks
its sessions' partition lease in the same script. So everything of partition
``p`` hashes by the tag ``{<p>}``: its lease, its stream and, on a cluster, its
sessions' records (``Partitions.storage_keys``). Calls that span partitions go
out as one call per slot, pipelined per node; on one server, as one call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from actorsess._record import tombstone, with_stamp
from actorsess.storage import _redis_lua as lua
from actorsess.storage._redis_cluster import ClusterBatchScript, send_to_slot
from actorsess.storage._redis_script import Arg, BatchScript, Call, KeptConnection, send_commands
from actorsess.storage.base import BadValue, Conflict, LoadResult, WriteItem

_WRONG_TYPE = b"\x00actorsess:wrongtype"

# KEYS: members. ARGV: token, heartbeat ms. Records the heartbeat and drops members
# whose heartbeat lapsed. Returns the members.
_MEMBERS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS: lease keys this worker holds. ARGV: token, lease ms. Renews every lease still
# holding the token. Returns 1 or 0 per key.
_RENEW_LUA = """
local renewed = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
"""

# KEYS: a loan's claim marker, then the list its answer goes to. ARGV: marker, ms the
# keys live, answer. The first claim of a loan wins (its owner answering it, or its
# borrower giving up): a second one, from an owner that reads the loan's entry again
# after a takeover, finds the marker and does nothing. Returns 1 if claimed here.
_CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] ~= '' then
    redis.call('LPUSH', KEYS[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
"""

# KEYS: the count key. ARGV: count. Records the partition count unless one is; returns
# the one recorded.
_COUNT_LUA = """
local recorded = redis.call('GET', KEYS[1])
if recorded then return recorded end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# KEYS: lease keys. ARGV: token, lease ms. Takes each free lease (or keeps one it
# holds). Returns 1 or 0 per key.
_ACQUIRE_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local owner = redis.pcall('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  elseif redis.pcall('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease keys. ARGV: token. Frees each lease still holding the token. Returns
# 1 or 0 per key.
_RELEASE_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: records. Returns each (or the wrong-type mark); a record's header holds its stamp.
_LOAD_LUA = (
    lua.COMMON_LUA
    + """
local out = {}
for i, key in ipairs(KEYS) do out[i] = read_record(key) or false end
return out
"""
)

# KEYS: the lease keys of the batch's partitions, then its records. ARGV: token,
# TTL ms, tombstone ms, all or nothing (1/0), the number of partitions, then per
# record: its partition's place among them, version, record (stamp included),
# whether it is a tombstone (1/0). A record whose partition lease does not hold
# the token is refused (1); one older than what storage holds too (2). All or
# nothing: any refusal writes nothing. Each partition's lease is read once.
# Returns {position, code} pairs of refused records.
_WRITE_LUA = (
    lua.COMMON_LUA
    + """
local token, ttl, tomb, whole = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local parts = tonumber(ARGV[5])
local held = {}
for j = 1, parts do held[j] = redis.pcall('GET', KEYS[j]) == token end
local out = {}
local refused = {}
local records = #KEYS - parts
for i = 1, records do
  local a = 5 + 4 * (i - 1)
  if not held[tonumber(ARGV[a + 1])] then
    refused[i] = true
    out[#out + 1] = i
    out[#out + 1] = 1
  elseif whole then
    local stored = stored_version(KEYS[parts + i])
    if stored and vcmp(stored, ARGV[a + 2]) > 0 then
      refused[i] = true
      out[#out + 1] = i
      out[#out + 1] = 2
    end
  end
end
if whole and #out > 0 then return out end
for i = 1, records do
  if not refused[i] then
    local a = 5 + 4 * (i - 1)
    if not put(KEYS[parts + i], ARGV[a + 2], ARGV[a + 3], ttl, tomb, ARGV[a + 4] == '1') then
      out[#out + 1] = i
      out[#out + 1] = 2
    end
  end
end
return out
"""
)

# KEYS: (lease, stream) pairs. ARGV: token, then one min id per pair. Drops each
# stream's entries older than its min id where the lease still holds the token.
# Returns per pair how many were dropped, or -1 (not this worker's partition now).
_TRIM_LUA = """
local out = {}
for j = 1, #KEYS / 2 do
  if redis.pcall('GET', KEYS[2 * j - 1]) == ARGV[1] then
    out[j] = redis.call('XTRIM', KEYS[2 * j], 'MINID', ARGV[j + 1])
  else
    out[j] = -1
  end
end
return out
"""


class Heartbeat(NamedTuple):
    """What a heartbeat learnt: the live workers, and which leases it renewed."""

    members: list[str]
    renewed: list[bool]


class Entry(NamedTuple):
    """One stream entry: its id and the raw updates it carries, in arrival order, or
    the request of a loan (``actorsess._loans``)."""

    id: str
    updates: list[bytes]
    loan: bytes | None = None


_LOAN_FIELD = b"loan"
#: How long the keys of a loan live: far longer than a loan waits, and than a
#: partition takes to move after a crash (a replayed loan must find its claim).
LOAN_KEYS_MS = 600_000


class _Script:
    """A Lua script: one call per batch on one server, one per slot on a cluster."""

    __slots__ = ("_cluster", "_server")

    def __init__(self, client: Redis | RedisCluster, source: str) -> None:
        self._server = BatchScript(client, source) if isinstance(client, Redis) else None
        self._cluster = None if isinstance(client, Redis) else ClusterBatchScript(client, source)

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """The reply of each call (the keys of each in one slot on a cluster)."""
        if self._server is not None:
            return [await self._server(keys, args) for keys, args in calls]
        assert self._cluster is not None
        return await self._cluster.run(calls)

    async def per_key(self, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """Run a script that replies one item per key, with ``args`` for every slot."""
        if not keys:
            return []
        if self._server is not None:
            return list(await self._server(keys, args))
        assert self._cluster is not None
        out: list[Any] = [None] * len(keys)
        for positions, reply in await self._cluster(keys, lambda _: args):
            for position, item in zip(positions, reply, strict=True):
                out[position] = item
        return out


class RedisPartitionStore:
    """The Redis side of ``actorsess.Partitions`` (see the module docstring)."""

    __slots__ = (
        "_acquire",
        "_claim",
        "_client",
        "_count",
        "_forwarding",
        "_load",
        "_members",
        "_reading",
        "_release",
        "_renew",
        "_trim",
        "_write",
        "cluster",
        "namespace",
    )

    def __init__(self, client: Redis | RedisCluster, namespace: str) -> None:
        self._client = client
        #: Whether the client is a Redis Cluster's: sessions' records then carry their
        #: partition's hash tag, and reads go one slot at a time.
        self.cluster = isinstance(client, RedisCluster)
        self.namespace = namespace
        self._members = _Script(client, _MEMBERS_LUA)
        self._renew = _Script(client, _RENEW_LUA)
        self._acquire = _Script(client, _ACQUIRE_LUA)
        self._release = _Script(client, _RELEASE_LUA)
        self._load = _Script(client, _LOAD_LUA)
        self._write = _Script(client, _WRITE_LUA)
        self._trim = _Script(client, _TRIM_LUA)
        self._claim = _Script(client, _CLAIM_LUA)
        self._count = _Script(client, _COUNT_LUA)
        # The feeder reads and the forwarder sends one call at a time, many a second.
        self._reading = KeptConnection(client) if isinstance(client, Redis) else None
        self._forwarding = KeptConnection(client) if isinstance(client, Redis) else None

    @property
    def client(self) -> Redis | RedisCluster:
        return self._client

    # -- names ----------------------------------------------------------------

    @staticmethod
    def tag(partition: int) -> str:
        """The hash tag of everything of ``partition`` (one slot on a cluster)."""
        return f"{{{partition}}}"

    @property
    def members_key(self) -> str:
        return self.namespace + "members"

    @property
    def count_key(self) -> str:
        return self.namespace + "count"

    def lease_key(self, partition: int) -> str:
        return f"{self.namespace}lease:{self.tag(partition)}"

    def stream_key(self, partition: int) -> str:
        return f"{self.namespace}updates:{self.tag(partition)}"

    def read_group(self, partition: int) -> int:
        """Partitions whose streams one read can take together share a group: all of
        them on one server, those of one slot on a cluster."""
        return key_slot(self.stream_key(partition).encode()) if self.cluster else 0

    # -- calls ------------------------------------------------------------------------

    def _slot_groups(self, partitions: Sequence[int]) -> list[list[int]]:
        """Positions of ``partitions``: one group on one server, one per slot on a cluster."""
        if not self.cluster:
            return [list(range(len(partitions)))] if partitions else []
        groups: defaultdict[int, list[int]] = defaultdict(list)
        for position, partition in enumerate(partitions):
            groups[self.read_group(partition)].append(position)
        return list(groups.values())

    async def _send(
        self, key: str, commands: Sequence[Sequence[Arg]], kept: KeptConnection | None = None
    ) -> list[Any]:
        """Send ``commands`` (all on ``key``'s slot) in one write, on ``kept`` if given;
        an error reply comes back as its ``ResponseError``."""
        if isinstance(self._client, RedisCluster):
            return await send_to_slot(self._client, key, commands)
        if kept is not None:
            return await kept.send(commands)
        return await send_commands(self._client, commands)

    async def _send_all(
        self, key: str, commands: Sequence[Sequence[Arg]], kept: KeptConnection | None = None
    ) -> list[Any]:
        """``_send``, raising the first error reply."""
        replies = await self._send(key, commands, kept)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    # -- membership and leases --------------------------------------------------

    async def heartbeat(
        self, token: str, held: Sequence[int], heartbeat_ms: int, lease_ms: int
    ) -> Heartbeat:
        [members] = await self._members.run([([self.members_key], [token, heartbeat_ms])])
        return Heartbeat(
            sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members),
            await self.renew(token, held, lease_ms),
        )

    async def renew(self, token: str, held: Sequence[int], lease_ms: int) -> list[bool]:
        """Renew the leases of ``held`` that ``token`` still holds (True for those)."""
        renewed = await self._renew.per_key([self.lease_key(p) for p in held], [token, lease_ms])
        return [flag == 1 for flag in renewed]

    async def record_count(self, count: int) -> int:
        """Record ``count`` as the namespace's partition count, unless one is: the one
        recorded."""
        [recorded] = await self._count.run([([self.count_key], [count])])
        return int(recorded)

    async def acquire(self, token: str, partitions: Sequence[int], lease_ms: int) -> list[bool]:
        keys = [self.lease_key(p) for p in partitions]
        return [flag == 1 for flag in await self._acquire.per_key(keys, [token, lease_ms])]

    async def release(self, token: str, partitions: Sequence[int]) -> None:
        await self._release.per_key([self.lease_key(p) for p in partitions], [token])

    async def leave(self, token: str) -> None:
        await self._client.zrem(self.members_key, token)

    # -- sessions -------------------------------------------------------------------

    async def load(self, keys: Sequence[str]) -> list[LoadResult]:
        wrong = BadValue("the Redis key holds a non-string type")
        values = await self._load.per_key(keys, [])
        return [wrong if value == _WRONG_TYPE else value or None for value in values]

    async def write(
        self,
        token: str,
        items: Sequence[WriteItem],
        partitions: Sequence[int],
        stamps: Sequence[str],
        ttl_ms: int | None,
        tombstone_ms: int,
        *,
        whole: bool,
    ) -> list[Conflict]:
        """Write ``items`` fenced by their partitions' leases, each record (or a
        delete's tombstone) with its stamp in its header ("": none). All or nothing
        (``whole``) needs the items in one slot on a cluster (``atomic_problem``)."""
        if not items:
            return []
        groups = self._slot_groups(partitions)
        if whole and len(groups) > 1:
            raise ValueError("an all-or-nothing write spans slots of the cluster")
        calls = [
            self._write_call(
                token,
                [items[i] for i in group],
                [partitions[i] for i in group],
                [stamps[i] for i in group],
                [ttl_ms or 0, tombstone_ms, 1 if whole else 0],
            )
            for group in groups
        ]
        conflicts = []
        for group, reply in zip(groups, await self._write.run(calls), strict=True):
            conflicts += [
                Conflict(group[reply[j] - 1], lua.CONFLICT_REASONS.get(reply[j + 1], "refused"))
                for j in range(0, len(reply), 2)
            ]
        return sorted(conflicts)

    def _write_call(
        self,
        token: str,
        items: Sequence[WriteItem],
        partitions: Sequence[int],
        stamps: Sequence[str],
        settings: list[Arg],
    ) -> Call:
        places: dict[int, int] = {}
        for partition in partitions:
            places.setdefault(partition, len(places) + 1)
        keys = [self.lease_key(partition) for partition in places]
        args: list[Arg] = [token, *settings, len(places)]
        for item, partition, stamp in zip(items, partitions, stamps, strict=True):
            keys.append(item.key)
            if item.blob is None:
                args += (places[partition], item.version, tombstone(item.version, stamp), 1)
            else:
                record = with_stamp(item.blob, stamp) if stamp else item.blob
                args += (places[partition], item.version, record, 0)
        return keys, args

    # -- forwarded updates --------------------------------------------------------

    async def forward(self, batches: Mapping[int, Sequence[bytes]]) -> dict[int, Exception]:
        """Append each partition's updates to its stream, one entry per partition (those
        of one node in one write); what failed, by partition (the others are stored)."""
        by_node: dict[str, dict[int, list[Arg]]] = {}
        for partition, updates in batches.items():
            key = self.stream_key(partition)
            command: list[Arg] = ["XADD", key, "*"]
            for i, raw in enumerate(updates):
                command += (str(i), raw)
            by_node.setdefault(self._node_of(key), {})[partition] = command
        groups = list(by_node.values())
        sent = await asyncio.gather(
            *(
                self._send(self.stream_key(next(iter(g))), list(g.values()), self._forwarding)
                for g in groups
            ),
            return_exceptions=True,
        )
        failed: dict[int, Exception] = {}
        for group, replies in zip(groups, sent, strict=True):
            if isinstance(replies, BaseException):
                if not isinstance(replies, Exception):
                    raise replies  # cancelled
                failed.update(dict.fromkeys(group, replies))
            else:
                failed.update(
                    (p, reply)
                    for p, reply in zip(group, replies, strict=True)
                    if isinstance(reply, ResponseError)
                )
        return failed

    async def release_connections(self) -> None:
        """Give the connections kept for reading and forwarding back to the pool."""
        for kept in (self._reading, self._forwarding):
            if kept is not None:
                await kept.release()

    def _node_of(self, key: str) -> str:
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(key)
            return "" if node is None else node.name
        return ""

    async def read(
        self, after: Mapping[int, str], count: int, block_ms: int | None
    ) -> list[tuple[int, list[Entry]]]:
        """Entries after ``after[p]`` of each partition's stream (waiting up to
        ``block_ms`` for one when there is none; ``None``: not at all). On a cluster
        the partitions must share a ``read_group``."""
        streams = {self.stream_key(p): p for p in after}
        command: list[Arg] = ["XREAD", "COUNT", count]
        if block_ms is not None:
            command += ("BLOCK", block_ms)
        command.append("STREAMS")
        command += list(streams)
        command += list(after.values())
        [reply] = await self._send_all(next(iter(streams)), [command], self._reading)
        # A map under RESP3, a list of [stream, entries] pairs under RESP2.
        pairs = reply.items() if isinstance(reply, dict) else reply or ()
        return [
            (
                streams[_text(name)],
                [_entry(_text(entry_id), fields) for entry_id, fields in entries],
            )
            for name, entries in pairs
        ]

    # -- loans ---------------------------------------------------------------------

    def loan_key(self, loan: str, step: str) -> str:
        return f"{self.namespace}loan:{{{loan}}}:{step}"

    async def request_loan(self, partition: int, request: bytes) -> None:
        """Append a loan request to ``partition``'s stream, in line with its updates."""
        await self._client.xadd(self.stream_key(partition), {_LOAN_FIELD: request})

    async def claim_loan(self, loan: str, marker: str, answer: bytes) -> bool:
        """Claim ``loan`` (first claim only) and put ``answer`` (if any) in its ``ready``
        list; False if it was claimed before."""
        keys = [self.loan_key(loan, "claim"), self.loan_key(loan, "ready")]
        [claimed] = await self._claim.run([(keys, [marker, LOAN_KEYS_MS, answer])])
        return bool(claimed == 1)

    async def send_loan(self, loan: str, step: str, message: bytes) -> None:
        """Put ``message`` in ``loan``'s ``step`` list, for the other side to take."""
        key = self.loan_key(loan, step)
        await self._send_all(key, [["LPUSH", key, message], ["PEXPIRE", key, LOAN_KEYS_MS]])

    async def take_loan(self, loan: str, step: str, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds for the message in ``loan``'s ``step`` list."""
        reply = await self._client.blpop([self.loan_key(loan, step)], max(timeout, 0.001))
        if reply is None:
            return None
        value = reply[1]
        return value.encode() if isinstance(value, str) else bytes(value)

    async def trim(self, token: str, before: Mapping[int, str]) -> dict[int, int]:
        """Drop each partition's entries older than id ``before[p]`` where this worker
        still owns it: how many per partition (-1: not owned now)."""
        if not before:
            return {}
        partitions = list(before)
        groups = self._slot_groups(partitions)
        calls: list[Call] = []
        for group in groups:
            keys: list[str] = []
            for i in group:
                keys += (self.lease_key(partitions[i]), self.stream_key(partitions[i]))
            calls.append((keys, [token, *(before[partitions[i]] for i in group)]))
        out: dict[int, int] = {}
        for group, reply in zip(groups, await self._trim.run(calls), strict=True):
            out.update((partitions[i], int(n)) for i, n in zip(group, reply, strict=True))
        return out


def _entry(entry_id: str, fields: list[bytes]) -> Entry:
    # Fields come as [name, value, ...] in the order the receiver added them.
    if fields and fields[0] == _LOAN_FIELD:
        return Entry(entry_id, [], fields[1])
    return Entry(entry_id, fields[1::2])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
