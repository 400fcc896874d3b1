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
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int
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
        try:
            replies = await self._run(keys, groups, args_for)
        except NoScriptError:
            # A node restarted or failed over has an empty script cache.
            await self._client.script_load(self._source)
            replies = await self._run(keys, groups, args_for)
        except (RedisConnectionError, RedisTimeoutError):
            # redis-py's cluster pipeline does not refresh the slot map after a node
            # failure, so without this every retry would go to the dead primary even
            # after its replica has taken over. The caller retries later.
            with contextlib.suppress(Exception):
                await self._client.nodes_manager.initialize()
            raise
        return list(zip(groups, replies, strict=True))

    async def _run(
        self, keys: Sequence[str], groups: list[list[int]], args_for: ArgsFor
    ) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for positions in groups:
            part = [keys[p] for p in positions]
            pipe.execute_command("EVALSHA", self._sha, len(part), *part, *args_for(positions))
        replies: list[Any] = await pipe.execute()
        return replies
