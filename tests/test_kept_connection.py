"""KeptConnection: the partition feeder's reads and the forwarder's batches keep one
connection between calls, instead of taking one from the pool for each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from actorsess.storage import RedisStorage
from actorsess.storage._redis_script import KeptConnection
from actorsess.testing import RedisServer

# Starts private servers and stops one: -m 'not process' skips it.
pytestmark = pytest.mark.process


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def in_use(client: Redis) -> int:
    return len(client.connection_pool._in_use_connections)


async def test_calls_one_at_a_time_share_one_connection_and_release_gives_it_back(
    private_redis: RedisServer,
) -> None:
    storage = RedisStorage.from_url(private_redis.url)
    client = storage.client
    assert isinstance(client, Redis)
    kept = KeptConnection(client)
    try:
        for n in range(5):
            assert await kept.send([["INCR", "n"], ["GET", "n"]]) == [n + 1, b"%d" % (n + 1)]
        assert in_use(client) == 1  # kept between the calls
        await kept.release()
        assert in_use(client) == 0
    finally:
        await storage.close()


async def test_a_call_made_while_one_is_out_takes_a_pooled_connection(
    private_redis: RedisServer,
) -> None:
    storage = RedisStorage.from_url(private_redis.url)
    client = storage.client
    assert isinstance(client, Redis)
    kept = KeptConnection(client)
    try:
        blocking = asyncio.ensure_future(kept.send([["BLPOP", "wake", 5]]))
        await asyncio.sleep(0.05)
        # Not queued behind the blocked read: its own connection, and it wakes the first.
        assert await asyncio.wait_for(kept.send([["LPUSH", "wake", "x"]]), 2) == [1]
        assert await asyncio.wait_for(blocking, 2) == [[b"wake", b"x"]]
        assert in_use(client) == 1
    finally:
        await kept.release()
        await storage.close()


async def test_a_call_that_fails_drops_the_connection_and_the_next_one_works(
    private_redis: RedisServer,
) -> None:
    """Redis restarted: the kept connection is dead; the call on it fails (the caller
    retries, as with a pooled one), and the next call takes a fresh connection."""
    storage = RedisStorage.from_url(private_redis.url)
    client = storage.client
    assert isinstance(client, Redis)
    kept = KeptConnection(client)
    try:
        assert await kept.send([["SET", "k", "1"]]) == [b"OK"]
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await kept.send([["GET", "k"]])
        assert in_use(client) == 0  # dropped, and given back to the pool
        private_redis.start()
        assert await kept.send([["SET", "k", "2"], ["GET", "k"]]) == [b"OK", b"2"]
    finally:
        await kept.release()
        await storage.close()


async def test_a_cancelled_call_drops_the_connection_mid_reply(
    private_redis: RedisServer,
) -> None:
    """Cancelled while its reply is out (the feeder cuts a blocking read short): the
    connection's state is unknown, so it is not used again."""
    storage = RedisStorage.from_url(private_redis.url)
    client = storage.client
    assert isinstance(client, Redis)
    kept = KeptConnection(client)
    try:
        blocking = asyncio.ensure_future(kept.send([["BLPOP", "never", 5]]))
        await asyncio.sleep(0.05)
        blocking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocking
        assert in_use(client) == 0
        await client.lpush("never", "late")  # the cancelled BLPOP's reply never comes back
        assert await kept.send([["LLEN", "never"]]) == [1]
    finally:
        await kept.release()
        await storage.close()
