"""Where partitioned ownership keeps its state in Redis, and the scripts it runs.

Under the namespace ``ns`` (``Partitions(namespace=...)``):

- ``ns + "members"``: a sorted set of the live workers' tokens, scored by the
  Redis time (ms) until which each one's heartbeat holds;
- ``ns + "lease:<p>"``: the token of the worker that owns partition ``p``, with a
  PX expiry (the partition lease);
- ``ns + "updates:<p>"``: partition ``p``'s stream of forwarded updates, one entry
  per receiver batch (fields ``"0"``, ``"1"``, ...: raw update JSON, in arrival
  order), trimmed by the owner once their effects are written; an entry with the
  one field ``"loan"`` asks the owner to lend a session (``actorsess._loans``);
- ``ns + "loan:<id>:<step>"``: the short-lived lists and marker of one loan
  (``claim``, ``ready``, ``change``, ``done``).

The stamp (``<entry id>-<index>``) of the last forwarded update whose change a
session's record holds is in the record's header (``actorsess._record``), so
that an update read again after a takeover changes no session twice.

A single Redis server only: a write touches sessions and their partitions'
leases in one script, which Redis Cluster allows only within one slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis

from actorsess._record import tombstone, with_stamp
from actorsess.storage import _redis_lua as lua
from actorsess.storage._redis_script import Arg, BatchScript, send_commands
from actorsess.storage.base import BadValue, Conflict, LoadResult, WriteItem

_WRONG_TYPE = b"\x00actorsess:wrongtype"

# KEYS: members, then the lease keys this worker holds. ARGV: token, heartbeat ms,
# lease ms. Records the heartbeat, drops members whose heartbeat lapsed, renews
# every lease still holding the token. Returns {members, {1|0 per lease}}.
_HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = {}
for i = 2, #KEYS do
  local owner = redis.pcall('GET', KEYS[i])
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
    renewed[i - 1] = 1
  else
    renewed[i - 1] = 0
  end
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), renewed}
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

# KEYS: lease keys. ARGV: token. Frees each lease still holding the token.
_RELEASE_LUA = """
for _, key in ipairs(KEYS) do
  if redis.pcall('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
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


class RedisPartitionStore:
    """The Redis side of ``actorsess.Partitions`` (see the module docstring)."""

    __slots__ = (
        "_acquire",
        "_claim",
        "_client",
        "_heartbeat",
        "_load",
        "_release",
        "_trim",
        "_write",
        "namespace",
    )

    def __init__(self, client: Redis, namespace: str) -> None:
        self._client = client
        self.namespace = namespace
        self._heartbeat = BatchScript(client, _HEARTBEAT_LUA)
        self._acquire = BatchScript(client, _ACQUIRE_LUA)
        self._release = BatchScript(client, _RELEASE_LUA)
        self._load = BatchScript(client, _LOAD_LUA)
        self._write = BatchScript(client, _WRITE_LUA)
        self._trim = BatchScript(client, _TRIM_LUA)
        self._claim = BatchScript(client, _CLAIM_LUA)

    @property
    def client(self) -> Redis:
        return self._client

    # -- names ----------------------------------------------------------------

    @property
    def members_key(self) -> str:
        return self.namespace + "members"

    def lease_key(self, partition: int) -> str:
        return f"{self.namespace}lease:{partition}"

    def stream_key(self, partition: int) -> str:
        return f"{self.namespace}updates:{partition}"

    # -- membership and leases --------------------------------------------------

    async def heartbeat(
        self, token: str, held: Sequence[int], heartbeat_ms: int, lease_ms: int
    ) -> Heartbeat:
        keys = [self.members_key, *(self.lease_key(p) for p in held)]
        members, renewed = await self._heartbeat(keys, [token, heartbeat_ms, lease_ms])
        return Heartbeat(
            sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members),
            [flag == 1 for flag in renewed],
        )

    async def acquire(self, token: str, partitions: Sequence[int], lease_ms: int) -> list[bool]:
        if not partitions:
            return []
        keys = [self.lease_key(p) for p in partitions]
        return [flag == 1 for flag in await self._acquire(keys, [token, lease_ms])]

    async def release(self, token: str, partitions: Sequence[int]) -> None:
        if partitions:
            await self._release([self.lease_key(p) for p in partitions], [token])

    async def leave(self, token: str) -> None:
        await self._client.zrem(self.members_key, token)

    # -- sessions -------------------------------------------------------------------

    async def load(self, keys: Sequence[str]) -> list[LoadResult]:
        wrong = BadValue("the Redis key holds a non-string type")
        values = await self._load(keys, [])
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
        delete's tombstone) with its stamp in its header ("": none)."""
        if not items:
            return []
        places: dict[int, int] = {}
        for partition in partitions:
            places.setdefault(partition, len(places) + 1)
        keys = [self.lease_key(partition) for partition in places]
        args: list[Any] = [token, ttl_ms or 0, tombstone_ms, 1 if whole else 0, len(places)]
        for item, partition, stamp in zip(items, partitions, stamps, strict=True):
            keys.append(item.key)
            if item.blob is None:
                args += (places[partition], item.version, tombstone(item.version, stamp), 1)
            else:
                record = with_stamp(item.blob, stamp) if stamp else item.blob
                args += (places[partition], item.version, record, 0)
        reply = await self._write(keys, args)
        return [
            Conflict(reply[j] - 1, lua.CONFLICT_REASONS.get(reply[j + 1], "refused"))
            for j in range(0, len(reply), 2)
        ]

    # -- forwarded updates --------------------------------------------------------

    async def forward(self, batches: Mapping[int, Sequence[bytes]]) -> None:
        """Append each partition's updates to its stream, one entry per partition."""
        commands = []
        for partition, updates in batches.items():
            command: list[Arg] = ["XADD", self.stream_key(partition), "*"]
            for i, raw in enumerate(updates):
                command += (str(i), raw)
            commands.append(command)
        await send_commands(self._client, commands)

    async def read(
        self, after: Mapping[int, str], count: int, block_ms: int | None
    ) -> list[tuple[int, list[Entry]]]:
        """Entries after ``after[p]`` of each partition's stream (waiting up to
        ``block_ms`` for one when there is none; ``None``: not at all)."""
        command: list[Arg] = ["XREAD", "COUNT", count]
        if block_ms is not None:
            command += ("BLOCK", block_ms)
        command.append("STREAMS")
        command += [self.stream_key(p) for p in after]
        command += list(after.values())
        [reply] = await send_commands(self._client, [command])
        # A map under RESP3, a list of [stream, entries] pairs under RESP2.
        streams = reply.items() if isinstance(reply, dict) else reply or ()
        out: list[tuple[int, list[Entry]]] = []
        for name, entries in streams:
            partition = int(_text(name).rsplit(":", 1)[1])
            out.append(
                (partition, [_entry(_text(entry_id), fields) for entry_id, fields in entries])
            )
        return out

    # -- loans ---------------------------------------------------------------------

    def loan_key(self, loan: str, step: str) -> str:
        return f"{self.namespace}loan:{loan}:{step}"

    async def request_loan(self, partition: int, request: bytes) -> None:
        """Append a loan request to ``partition``'s stream, in line with its updates."""
        await self._client.xadd(self.stream_key(partition), {_LOAN_FIELD: request})

    async def claim_loan(self, loan: str, marker: str, answer: bytes) -> bool:
        """Claim ``loan`` (first claim only) and put ``answer`` (if any) in its ``ready``
        list; False if it was claimed before."""
        keys = [self.loan_key(loan, "claim"), self.loan_key(loan, "ready")]
        return bool(await self._claim(keys, [marker, LOAN_KEYS_MS, answer]) == 1)

    async def send_loan(self, loan: str, step: str, message: bytes) -> None:
        """Put ``message`` in ``loan``'s ``step`` list, for the other side to take."""
        key = self.loan_key(loan, step)
        await send_commands(self._client, [["LPUSH", key, message], ["PEXPIRE", key, LOAN_KEYS_MS]])

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
        keys: list[str] = []
        for partition in before:
            keys += (self.lease_key(partition), self.stream_key(partition))
        reply = await self._trim(keys, [token, *before.values()])
        return {p: int(n) for p, n in zip(before, reply, strict=True)}


def _entry(entry_id: str, fields: list[bytes]) -> Entry:
    # Fields come as [name, value, ...] in the order the receiver added them.
    if fields and fields[0] == _LOAN_FIELD:
        return Entry(entry_id, [], fields[1])
    return Entry(entry_id, fields[1::2])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
