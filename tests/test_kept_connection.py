"""KeptConnection: the partition feeder's reads and the forwarder's batches keep one
connection between calls, instead of taking one from the pool for each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

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


@pytest.fixture
async def kept(private_redis: RedisServer) -> AsyncIterator[tuple[Redis, KeptConnection]]:
    """A client on the private server, and a KeptConnection of its pool."""
    storage = RedisStorage.from_url(private_redis.url)
    client = storage.client
    assert isinstance(client, Redis)
    connection = KeptConnection(client)
    yield client, connection
    await connection.release()
    await storage.close()


def in_use(client: Redis) -> int:
    return len(client.connection_pool._in_use_connections)


async def test_calls_one_at_a_time_share_one_connection_and_release_gives_it_back(
    kept: tuple[Redis, KeptConnection],
) -> None:
    client, connection = kept
    for n in range(5):
        assert await connection.send([["INCR", "n"], ["GET", "n"]]) == [n + 1, b"%d" % (n + 1)]
    assert in_use(client) == 1  # kept between the calls
    await connection.release()
    assert in_use(client) == 0


async def test_a_call_made_while_one_is_out_takes_a_pooled_connection(
    kept: tuple[Redis, KeptConnection],
) -> None:
    client, connection = kept
    blocking = asyncio.ensure_future(connection.send([["BLPOP", "wake", 5]]))
    await asyncio.sleep(0.05)
    # Not queued behind the blocked read: its own connection, and it wakes the first.
    assert await asyncio.wait_for(connection.send([["LPUSH", "wake", "x"]]), 2) == [1]
    assert await asyncio.wait_for(blocking, 2) == [[b"wake", b"x"]]
    assert in_use(client) == 1


async def test_a_call_that_fails_drops_the_connection_and_the_next_one_works(
    kept: tuple[Redis, KeptConnection], private_redis: RedisServer
) -> None:
    """Redis restarted: the kept connection is dead; the call on it fails (the caller
    retries, as with a pooled one), and the next call takes a fresh connection."""
    client, connection = kept
    assert await connection.send([["SET", "k", "1"]]) == [b"OK"]
    private_redis.stop()
    with pytest.raises(RedisConnectionError):
        await connection.send([["GET", "k"]])
    assert in_use(client) == 0  # dropped, and given back to the pool
    private_redis.start()
    assert await connection.send([["SET", "k", "2"], ["GET", "k"]]) == [b"OK", b"2"]


async def test_a_cancelled_call_drops_the_connection_mid_reply(
    kept: tuple[Redis, KeptConnection],
) -> None:
    """Cancelled while its reply is out (the feeder cuts a blocking read short): the
    connection's state is unknown, so it is not used again."""
    client, connection = kept
    blocking = asyncio.ensure_future(connection.send([["BLPOP", "never", 5]]))
    await asyncio.sleep(0.05)
    blocking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocking
    assert in_use(client) == 0
    await client.lpush("never", "late")  # the cancelled BLPOP's reply never comes back
    assert await connection.send([["LLEN", "never"]]) == [1]
