"""RedisStorage: one Lua call per batch for loads and for writes.

Why Lua rather than a pipeline: a pipeline of ``SET PX`` costs one command
parse and reply per key on both sides (~19k keys/s here); one ``EVALSHA`` with
all keys and values packed as arguments costs a single round trip and reply,
keeps TTL, and lets the load path tell a wrong-typed key (which ``MGET``
would silently report as missing, and a later write would destroy) from an
absent one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis_asyncio
from redis.asyncio import BlockingConnectionPool, Redis

from actorsess._redact import redact_url
from actorsess.storage._redis_script import BatchScript
from actorsess.storage.base import BadValue, LoadResult, WriteItem

_WRONG_TYPE = b"\x00actorsess:wrongtype"

_LOAD_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    value = '\\0actorsess:wrongtype'
  end
  out[i] = value
end
return out
"""

# ARGV[1] is the TTL in ms ("0": none); ARGV[2] the fence of each key, packed as
# "v1,-,v3,...": a version to check, or "-" for none ("" when no key has one);
# ARGV[i + 2] is KEYS[i]'s
# record, where an empty string (never a valid record: records start with
# "as1:") deletes the key.
#
# The version fence: a fenced record is written only if the stored one is not
# newer. A write that timed out may still sit in the server's socket buffer and
# run after a later write sent on another connection; without the fence it
# would overwrite newer data with older. It costs a GET, so the flusher asks for
# it only for keys whose earlier write had an unknown outcome.
# Returns how many writes were fenced off.
_WRITE_LUA = """
local ttl = ARGV[1]
local call, pcall = redis.call, redis.pcall
local fences = nil
if ARGV[2] ~= '' then
  fences = {}
  local i = 0
  for v in string.gmatch(ARGV[2], '[^,]+') do i = i + 1; fences[i] = tonumber(v) end
end
local fenced = 0
for i = 1, #KEYS do
  local key, value = KEYS[i], ARGV[i + 2]
  local fence = fences and fences[i]
  local stale = false
  if fence then
    local stored = pcall('GET', key)
    if type(stored) == 'string' then
      stale = (tonumber(string.match(stored, '^as1:(%d+):')) or -1) > fence
    end
  end
  if stale then
    fenced = fenced + 1
  elseif value == '' then
    call('DEL', key)
  elseif ttl ~= '0' then
    call('SET', key, value, 'PX', ttl)
  else
    call('SET', key, value)
  end
end
return fenced
"""

DEFAULT_MAX_CONNECTIONS = 32


class RedisStorage:
    """Sessions in Redis (standalone, TLS ``rediss://`` and ACL URLs accepted)."""

    def __init__(self, client: Redis, *, owns_client: bool = False, url: str | None = None) -> None:
        kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
        if kwargs.get("decode_responses"):
            raise ValueError(
                "RedisStorage needs a client with decode_responses=False: records are bytes"
            )
        self._client = client
        self._owns_client = owns_client
        self._label = redact_url(url) if url else _describe(kwargs)
        self._load = BatchScript(client, _LOAD_LUA)
        self._write = BatchScript(client, _WRITE_LUA)
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = 10.0,
        **client_kwargs: Any,
    ) -> RedisStorage:
        """A storage with its own bounded, blocking connection pool.

        redis-py's default pool raises ``MaxConnectionsError`` when more
        connections are wanted than allowed; a blocking pool makes callers wait
        (up to ``pool_timeout``) instead.
        """
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=pool_timeout, **client_kwargs
        )
        return cls(redis_asyncio.Redis(connection_pool=pool), owns_client=True, url=url)

    @property
    def client(self) -> Redis:
        return self._client

    def __repr__(self) -> str:
        return f"<RedisStorage {self._label}>"

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        if not keys:
            return []
        values: list[bytes | None] = await self._load(keys, ())
        return [
            BadValue("the Redis key holds a non-string type") if v == _WRONG_TYPE else v
            for v in values
        ]

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> None:
        if not items:
            return
        keys = [item.key for item in items]
        # An empty fence list (the usual case) spares the script parsing one.
        fences = (
            ",".join(str(i.version) if i.fenced else "-" for i in items)
            if any(i.fenced for i in items)
            else ""
        )
        args: list[bytes | int | str] = [str(ttl_ms or 0), fences]
        args.extend(b"" if item.blob is None else item.blob for item in items)
        await self._write(keys, args)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            await self._client.delete(*keys)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.aclose()
            # A client built on an explicit pool leaves the pool open on aclose().
            await self._client.connection_pool.disconnect()


def _describe(kwargs: dict[str, Any]) -> str:
    if "path" in kwargs:
        return f"unix://{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
