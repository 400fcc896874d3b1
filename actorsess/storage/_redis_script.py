"""One Lua script call per batch, packed by hiredis.

redis-py's asyncio connection packs commands in pure Python: for a batch of
1,000 records that costs about 1.5 ms, longer than Redis takes to run the
script. hiredis (a declared dependency) packs the same command in about
0.2 ms, so batch calls are packed here and sent on a connection taken from
the client's own pool.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Arg = str | bytes | int
#: One script call: its keys (on a cluster, all in one slot) and its arguments.
Call = tuple[Sequence[str], Sequence[Arg]]


@contextlib.asynccontextmanager
async def borrowed(client: Redis) -> AsyncIterator[Any]:
    """A connection of ``client``'s pool, for commands packed by hiredis."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield connection
    except BaseException:
        await _discard(client, connection)
        raise
    await pool.release(connection)


async def _discard(client: Redis, connection: Any) -> None:
    """Failed, timed out or cancelled mid-reply: the connection's state is unknown, so
    it must not serve another command; closed, it goes back to the pool."""
    await connection.disconnect()
    await client.connection_pool.release(connection)


async def exchange(connection: Any, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """Send ``commands`` on ``connection`` in one write (packed by hiredis) and read
    their replies; an error reply comes back as its ``ResponseError`` (read whole, so
    the connection stays in step for the replies after it)."""
    packed = b"".join(hiredis.pack_command(tuple(command)) for command in commands)  # type: ignore[arg-type]
    await connection.send_packed_command(packed)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def send_commands(client: Redis, commands: Sequence[Sequence[Arg]]) -> list[Any]:
    """Send ``commands`` in one write and read their replies (a pipeline without
    redis-py's per-command Python packing and reply callbacks: replies as hiredis
    parses them, an error reply as its ``ResponseError``)."""
    async with borrowed(client) as connection:
        return await exchange(connection, commands)


class KeptConnection:
    """A connection kept between the calls of one caller that sends one call at a
    time (the partition feeder's reads, the forwarder's batches): taking a
    connection from redis-py's pool and giving it back costs about as much CPU as
    a small exchange on it (``benchmarks/kept_connection.py``: 92-95 µs per
    ``XREAD`` through the pool, 54-64 µs on a kept connection). A call made while
    another is out takes a pooled connection.
    A call that fails drops the kept connection (its state is unknown); the next
    one takes another."""

    __slots__ = ("_busy", "_client", "_connection")

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._connection: Any = None
        self._busy = False

    async def send(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """``send_commands`` on the kept connection."""
        if self._busy:
            return await send_commands(self._client, commands)
        self._busy = True
        try:
            if self._connection is None:
                pool = self._client.connection_pool
                self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            connection = self._connection
            try:
                return await exchange(connection, commands)
            except BaseException:
                self._connection = None
                await _discard(self._client, connection)
                raise
        finally:
            self._busy = False

    async def release(self) -> None:
        """Give the kept connection back to the pool (unless a call is out on it)."""
        connection = self._connection
        if connection is not None and not self._busy:
            self._connection = None
            await self._client.connection_pool.release(connection)


class BatchScript:
    """A Lua script called by SHA, loaded on the first NOSCRIPT (``EVAL`` caches it)."""

    __slots__ = ("_client", "_sha", "_source")

    def __init__(self, client: Redis, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self._call_once(keys, args)
        except RedisConnectionError:
            # A pooled connection may have died with a server restart; one fresh
            # attempt tells that apart from a server that is really gone. Safe to
            # repeat: loads read, and writes are whole versioned records.
            return await self._call_once(keys, args)

    async def _call_once(self, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        async with borrowed(self._client) as connection:
            try:
                return await self._send(connection, "EVALSHA", self._sha, keys, args)
            except NoScriptError:
                return await self._send(connection, "EVAL", self._source, keys, args)

    @staticmethod
    async def _send(
        connection: Any, verb: str, script: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        command = (verb, script, len(keys), *keys, *args)
        # hiredis's stub types the tuple as one element long; any length is accepted.
        await connection.send_packed_command(hiredis.pack_command(command))  # type: ignore[arg-type]
        return await connection.read_response()
