"""Batch script calls on Redis Cluster: one call per hash slot, pipelined per node.

A Lua script may only touch keys of one slot, so a batch is split by slot and
each part becomes one ``EVALSHA`` in a cluster pipeline (redis-py routes each
to the node serving its slot). Sessions whose keys share a hash tag
(``{...}`` in ``key_prefix`` or the key) share a slot and so a call; without
tags, keys spread over the cluster and a batch costs about one call per key.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actorsess.storage._redis_script import Arg, Call, exchange

#: Builds the script arguments for the given positions of the batch.
ArgsFor = Callable[[list[int]], Sequence[Arg]]


def slot_groups(keys: Sequence[str]) -> dict[int, list[int]]:
    """Positions of ``keys`` grouped by hash slot."""
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        groups[key_slot(key.encode())].append(position)
    return groups


class ClusterBatchScript:
    """A Lua script run once per slot of a batch, loaded on demand on every primary."""

    __slots__ = ("_client", "_sha", "_source")

    def __init__(self, client: RedisCluster, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args_for: ArgsFor) -> list[tuple[list[int], Any]]:
        """``(positions, reply)`` for each slot group of ``keys``."""
        groups = list(slot_groups(keys).values())
        calls = [([keys[p] for p in positions], args_for(positions)) for positions in groups]
        return list(zip(groups, await self.run(calls), strict=True))

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """The reply of each call (the keys of each in one slot), pipelined per node."""
        async with refreshing_slots(self._client):
            try:
                return await self._run(calls)
            except NoScriptError:
                # A node restarted or failed over has an empty script cache.
                await self._client.script_load(self._source)
                return await self._run(calls)

    async def _run(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute()
        return replies


@contextlib.asynccontextmanager
async def refreshing_slots(client: RedisCluster) -> AsyncIterator[None]:
    """Refresh ``client``'s slot map when what runs inside fails for a node's sake.

    redis-py's cluster pipeline, and commands sent on a node's own connection, do not
    refresh the slot map after a node failure or a slot moving: without this every
    retry would go to the dead primary even after its replica took over. The caller
    retries later."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError):
        await _refresh(client)
        raise
    except ResponseError as exc:
        if moved(exc):
            await _refresh(client)
        raise


def moved(reply: object) -> bool:
    """Whether ``reply`` is an error saying the slot is served elsewhere (or not now)."""
    return isinstance(reply, ResponseError) and str(reply).startswith(
        ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
    )


async def _refresh(client: RedisCluster) -> None:
    with contextlib.suppress(Exception):
        await client.nodes_manager.initialize()


async def send_to_slot(
    client: RedisCluster, key: str, commands: Sequence[Sequence[Arg]]
) -> list[Any]:
    """Send ``commands`` (all on ``key``'s slot) in one write to the node serving it, and
    read their replies (``send_commands`` of a cluster node: an error reply comes back
    as its ``ResponseError``)."""
    async with refreshing_slots(client):
        node = client.get_node_from_key(key)
        assert node is not None  # get_node_from_key raises for a slot no node serves
        connection = node.acquire_connection()
        try:
            replies = await exchange(connection, commands)
        except BaseException:
            # Failed, timed out or cancelled mid-reply: not for another command.
            await connection.disconnect()
            raise
        finally:
            node.release(connection)
    if any(map(moved, replies)):
        await _refresh(client)  # the caller's retry goes to the slot's new node
    return replies
