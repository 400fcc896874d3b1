"""Partitioned ownership in one process, on a real Redis: placement, fencing, replays,
hand-off between two workers' ``Partitions``, and the errors of a wrong setup."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as redis_asyncio
from aiogram import Bot, Dispatcher
from aiogram.fsm.storage.base import StorageKey
from aiogram.types import ErrorEvent, Message, Poll, Update
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel
from redis.crc import key_slot

from actorsess import (
    ConfigError,
    InvalidKeyError,
    LeaseTimeoutError,
    MemoryStorage,
    PartitionCountError,
    PartitionNotOwnedError,
    Partitions,
    RedisStorage,
    SessionConfig,
    SessionConflictError,
    SessionManager,
    StorageError,
)
from actorsess._partitions import DELIVERY, FEEDING, Delivery, Stamp
from actorsess.aiogram import ActorFSMStorage, ForwardingRequestHandler, SessionMiddleware
from actorsess.aiogram._feeder import UpdateFeeder
from actorsess.testing import LocalRedisCluster, RedisServer, message_update
from harness.webhook_bot import OFFLINE_TOKEN
from tests.aiogram_helpers import poll_update
from tests.conftest import Events

#: A stream's entries as redis-py's XRANGE gives them.
Entries = list[tuple[bytes, dict[bytes, bytes]]]

PARTITIONED = SessionConfig(ownership="partitioned", flush_interval=0.05, lease_time=2)


def counter() -> dict[str, Any]:
    return {"n": 0}


@pytest.fixture(params=["redis", "cluster"])
async def storage(
    request: pytest.FixtureRequest, redis_client: redis_asyncio.Redis, redis_url: str
) -> AsyncIterator[RedisStorage]:
    """A fresh RedisStorage: on one server, and on a Redis Cluster (each partition's
    keys in one slot)."""
    if request.param == "redis":
        storage = RedisStorage.from_url(redis_url)
    else:
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        storage = RedisStorage.from_url(cluster.url, cluster=True)
        await storage.client.flushall()
    yield storage
    await storage.close()


async def keys_like(storage: RedisStorage, pattern: str) -> list[bytes]:
    """The keys matching ``pattern`` (on every primary of a cluster)."""
    client = storage.client
    if isinstance(client, redis_asyncio.RedisCluster):
        return cast(list[bytes], await client.keys(pattern, target_nodes=client.PRIMARIES))
    return cast(list[bytes], await client.keys(pattern))


def stored_key(storage: RedisStorage, key: str, count: int = 8) -> str:
    """Where a partitioned manager with the default ``key_prefix`` keeps ``key``'s record
    (with ``count`` partitions: on a cluster the partition's tag follows the key)."""
    return Partitions(storage, count=count).storage_keys("actorsess:").of(key)


async def pause_writes(storage: RedisStorage, key: str, ms: int, mode: str = "WRITE") -> None:
    """``CLIENT PAUSE ms WRITE`` (or ``mode``) on the server holding ``key``."""
    client = storage.client
    if isinstance(client, redis_asyncio.RedisCluster):
        node = client.get_node_from_key(key)
        await client.execute_command("CLIENT", "PAUSE", ms, mode, target_nodes=node)
    else:
        await client.execute_command("CLIENT", "PAUSE", ms, mode)  # type: ignore[no-untyped-call]


def add_one(session: dict[str, Any]) -> None:
    session["n"] += 1


async def delivered(stamp: Stamp | None, step: Awaitable[Any]) -> None:
    """Await ``step`` as the handler of the forwarded update ``stamp`` does (None: as
    for an update received here)."""
    token = DELIVERY.set(None if stamp is None else Delivery(stamp))
    try:
        await step
    finally:
        DELIVERY.reset(token)


def worker(storage: RedisStorage, count: int = 8) -> tuple[Partitions, SessionManager[Any]]:
    partitions = Partitions(storage, count=count, lease_time=2)
    manager = SessionManager(storage, initial=counter, config=PARTITIONED, partitions=partitions)
    return partitions, manager


def chats_in(partitions: Partitions, partition: int, count: int = 1, start: int = 1) -> list[int]:
    """The first ``count`` chats from ``start`` on whose sessions are in ``partition``."""
    chats: list[int] = []
    chat = start
    while len(chats) < count:
        if partitions.partition_of(str(chat)) == partition:
            chats.append(chat)
        chat += 1
    return chats


def key_in(partitions: Partitions, partition: int, start: int = 1) -> str:
    """A session key (as SessionMiddleware makes them) of a chat in ``partition``."""
    [chat] = chats_in(partitions, partition, start=start)
    return f"session:42:{chat}:{chat}"


async def test_a_lone_worker_owns_every_partition_and_serves_its_sessions(
    storage: RedisStorage,
) -> None:
    partitions, manager = worker(storage)
    await partitions.start()
    async with manager:
        assert sorted(partitions.until) == list(range(8))
        await manager.update("session:42:7:7", lambda s: s.update(n=s["n"] + 1))
        assert await manager.get("session:42:7:7") == {"n": 1}
    await partitions.stop()
    assert await keys_like(storage, "actorsess:partitions:lease:*") == []


async def test_a_session_nobody_lends_times_out_naming_it_and_is_not_lent_later(
    storage: RedisStorage,
) -> None:
    """A process that holds no partition borrows; while no owner reads the partition's
    stream, the block gives up after ``lease_wait_timeout`` naming the key. An owner
    that reads the request later skips it (the borrower gave it up): it neither
    waits for a change nobody sends nor holds the chat up."""
    key = "session:42:5:5"
    async with admin(storage, count=1, lease_wait_timeout=0.3) as other:
        with pytest.raises(LeaseTimeoutError, match="session:42:5:5.*partition 0"):
            await other.update(key, add_one)
    partitions, sessions, dp = await counting_bot(storage, count=1)
    handler, _ = forwarding_app(partitions, dp)
    async with sessions:
        handler.feeder.start()
        try:
            for _ in range(100):
                if handler.feeder._progress[0].done_upto is not None:
                    break
                await asyncio.sleep(0.01)
            assert handler.feeder._progress[0].done_upto is not None  # the request: ended
            [claim] = await keys_like(storage, "actorsess:partitions:loan:*:claim")
            assert await storage.client.get(claim) == b"given up"
            assert await keys_like(storage, "actorsess:partitions:loan:*:ready") == []
            assert await sessions.get(key) == {"n": 0}
        finally:
            await handler.feeder.stop()


async def test_a_key_without_a_chat_part_is_refused_by_name(storage: RedisStorage) -> None:
    partitions, manager = worker(storage)
    await partitions.start()
    try:
        async with manager:
            with pytest.raises(InvalidKeyError, match="'nochat'.*chat part"):
                await manager.get("nochat")
    finally:
        await partitions.stop()


async def test_a_replayed_update_changes_a_session_no_second_time(storage: RedisStorage) -> None:
    """A worker handles forwarded updates 1 and 2 of a chat, writes, and dies before
    trimming its stream; the next owner reads both again and then update 3: only 3
    changes the session."""
    partitions, manager = worker(storage)
    await partitions.start()
    key = "session:42:9:9"

    async def handle(stamp: Stamp, on: SessionManager[Any]) -> None:
        await delivered(stamp, on.update(key, add_one))

    async with manager:
        await handle((100, 0, 0), manager)
        await handle((100, 0, 1), manager)
        await manager.flush()
    await partitions.stop()  # writes, and releases the leases

    partitions2, manager2 = worker(storage)
    await partitions2.start()
    try:
        async with manager2:
            await handle((100, 0, 0), manager2)  # read again
            await handle((100, 0, 1), manager2)  # read again
            assert await manager2.get(key) == {"n": 2}
            await handle((101, 0, 0), manager2)
            assert await manager2.get(key) == {"n": 3}
    finally:
        await partitions2.stop()
    raw = await storage.client.get(stored_key(storage, key))
    assert isinstance(raw, bytes) and raw.endswith(b'{"n":3}')


async def test_a_session_carries_the_stamp_of_its_last_forwarded_update_in_its_record(
    storage: RedisStorage,
) -> None:
    """The stamp goes in the record's header, written with it in one command (no hash
    beside the records, nothing left behind when a session expires); a change from
    an update received here keeps it, also after the session was loaded again; a
    delete leaves it in the tombstone, so the deleting update and those before it,
    read again after a takeover, change nothing."""
    partitions, manager = worker(storage)
    await partitions.start()
    key = "session:42:9:9"
    stored = stored_key(storage, key)

    async def handle(stamp: Stamp | None, on: SessionManager[Any]) -> None:
        await delivered(stamp, on.update(key, add_one))

    async def delete(stamp: Stamp, on: SessionManager[Any]) -> None:
        await delivered(stamp, on.delete(key))

    try:
        async with manager:
            await handle((100, 0, 0), manager)
            await manager.flush()
            assert await storage.client.get(stored) == b'as1:1/100-0-0:{"n":1}'
            await handle(None, manager)  # received here: the stamp stays
            await manager.flush()
            assert await storage.client.get(stored) == b'as1:2/100-0-0:{"n":2}'
        async with SessionManager(
            storage, initial=counter, config=PARTITIONED, partitions=partitions
        ) as again:
            await handle(None, again)  # loaded again first
            await again.flush()
            assert await storage.client.get(stored) == b'as1:3/100-0-0:{"n":3}'
            await handle((100, 0, 1), again)
            await delete((100, 0, 2), again)
            await again.flush()
            assert await storage.client.get(stored) == b"as1:5/100-0-2:"
        assert await keys_like(storage, "actorsess:partitions:stamps:*") == []
    finally:
        await partitions.stop()

    partitions2, manager2 = worker(storage)
    await partitions2.start()
    try:
        async with manager2:
            await handle((100, 0, 1), manager2)  # read again
            await delete((100, 0, 2), manager2)  # read again
            assert await storage.client.get(stored) == b"as1:5/100-0-2:"
            await handle((101, 0, 0), manager2)
            assert await manager2.get(key) == {"n": 1}
    finally:
        await partitions2.stop()


async def test_a_job_run_in_every_worker_touches_each_session_once(storage: RedisStorage) -> None:
    """Outside updates, a job runs in every worker and opens only the sessions whose
    partition its worker holds (``holds_key``): together the two workers touch
    every session, none twice, and neither meets ``PartitionNotOwnedError``."""
    first, first_sessions = worker(storage)
    second, second_sessions = worker(storage)
    await first.start()
    await second.start()
    keys = [f"session:42:{chat}:{chat}" for chat in range(1, 41)]
    try:
        for _ in range(100):  # until the two have split the partitions
            if len(first.until) + len(second.until) == 8 and first.settled and second.settled:
                break
            await asyncio.sleep(0.05)
        assert first.until and second.until

        async def job(partitions: Partitions, sessions: SessionManager[Any]) -> int:
            touched = 0
            for key in keys:
                if partitions.holds_key(key):
                    await sessions.update(key, add_one)
                    touched += 1
            return touched

        async with first_sessions, second_sessions:
            counts = await asyncio.gather(job(first, first_sessions), job(second, second_sessions))
            assert 0 < counts[0] < len(keys) and sum(counts) == len(keys)
            await first_sessions.flush()
            await second_sessions.flush()
        stored = [await storage.client.get(stored_key(storage, key)) for key in keys]
        assert all(isinstance(raw, bytes) and raw.endswith(b'{"n":1}') for raw in stored)
    finally:
        await first.stop()
        await second.stop()


async def test_a_write_after_the_partition_moved_is_refused(storage: RedisStorage) -> None:
    """A worker whose partition lease another worker took cannot write (the fence)."""
    partitions, manager = worker(storage)
    await partitions.start()
    key = key_in(partitions, 3)
    async with manager:
        await manager.update(key, lambda s: s.update(n=1))
        await manager.flush()
        # Another worker takes partition 3 behind this one's back (its lease lapsed).
        await storage.client.set("actorsess:partitions:lease:{3}", "someone-else", px=60_000)
        await manager.update(key, lambda s: s.update(n=99))
        with pytest.raises(SessionConflictError, match="lease is held by another process"):
            await manager.flush()
        assert manager.stats().conflicts == 1
    raw = await storage.client.get(stored_key(storage, key))
    assert isinstance(raw, bytes) and raw.endswith(b'{"n":1}')
    await partitions.stop()


async def test_a_joining_worker_gets_a_share_with_the_sessions_written_before(
    storage: RedisStorage,
) -> None:
    first, first_manager = worker(storage)
    second, second_manager = worker(storage)
    await first.start()
    keys = [key_in(first, p) for p in range(8)]
    async with first_manager, second_manager:
        for key in keys:
            await first_manager.update(key, lambda s: s.update(n=s["n"] + 5))
        await second.start()
        for _ in range(100):  # heartbeats move the second's share over
            if len(first.until) + len(second.until) == 8 and second.until:
                break
            await first._beat()
            await second._beat()
        moved = [key for key in keys if second.partition_of_key(key) in second.until]
        assert moved, "the second worker got no partition"
        for key in moved:
            assert await second_manager.get(key) == {"n": 5}
            assert not first.holds_key(key)  # (its sessions there would be borrowed)
            assert first_manager._registry.peek(key) is None  # written and forgotten
    await first.stop()
    await second.stop()


def test_partitioned_ownership_without_partitions_is_a_config_error() -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="ownership.*Partitions"):
        SessionManager(storage, initial=counter, config=SessionConfig(ownership="partitioned"))


def test_partitions_with_another_ownership_are_a_config_error() -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="partitions= is for ownership='partitioned'"):
        SessionManager(storage, initial=counter, partitions=Partitions(storage))


def test_partitions_need_a_redis_storage_and_sane_numbers() -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="RedisStorage"):
        Partitions(MemoryStorage())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        Partitions(storage, count=0)
    with pytest.raises(ValueError, match="lease_time"):
        Partitions(storage, lease_time=0)


async def test_a_worker_with_another_partition_count_is_refused_by_name(
    storage: RedisStorage, events: Events
) -> None:
    """Two counts would place one chat in two partitions, each served under its own
    lease: the count is recorded by the namespace's first worker, and a worker with
    another one does not join, whether Redis was up when it started or came later."""
    first, _ = worker(storage, count=8)
    await first.start()
    other = Partitions(storage, count=16, lease_time=0.3, logger=events.logger)
    try:
        with pytest.raises(
            PartitionCountError, match=r"count=16.*count=8.*'actorsess:partitions:count'"
        ):
            await other.start()
        assert not other.running and other.until == {}
        assert first.members == [first.token]
        # One that started while Redis was away finds out at its first heartbeat.
        other._task = asyncio.get_running_loop().create_task(other._beat_forever())
        for _ in range(50):
            if events.named("partition.count_mismatch"):
                break
            await asyncio.sleep(0.02)
        assert events.named("partition.count_mismatch")
        assert other.until == {} and other.token.encode() not in await first.store.client.zrange(
            first.store.members_key, 0, -1
        )
        same = Partitions(storage, count=8)
        await same.start()
        await same.stop()
    finally:
        await other.stop()
        await first.stop()


def test_a_namespace_holding_a_hash_tag_is_refused_by_name() -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match=r"namespace '\{bot\}:'.*hash tag"):
        Partitions(storage, namespace="{bot}:")


async def test_on_a_cluster_a_partitions_sessions_lease_and_stream_share_a_slot(
    redis_cluster: LocalRedisCluster,
) -> None:
    """A session's record carries its partition's hash tag after its key, so the write
    script that checks the partition's lease may touch it; a scan gives the keys back
    as they were given."""
    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    await storage.client.flushall()
    partitions, manager = worker(storage, count=8)
    await partitions.start()
    try:
        keys = [key_in(partitions, p) for p in range(8)]
        async with manager:
            for key in keys:
                await manager.update(key, add_one)
            await manager.flush()
            for key in keys:
                partition = partitions.partition_of_key(key)
                stored = stored_key(storage, key)
                assert stored == f"actorsess:{key}{{{partition}}}"
                assert await storage.client.get(stored) is not None
                slot = key_slot(stored.encode())
                assert slot == key_slot(partitions.store.lease_key(partition).encode())
                assert slot == key_slot(partitions.store.stream_key(partition).encode())
            assert len({key_slot(stored_key(storage, k).encode()) for k in keys}) == 8
            assert sorted([key async for key, _ in manager.scan()]) == sorted(keys)
            assert await manager.get_many(keys) == {key: {"n": 1} for key in keys}
    finally:
        await partitions.stop()
        await storage.close()


async def test_on_a_cluster_a_key_prefix_or_key_with_a_hash_tag_is_refused_by_name(
    redis_cluster: LocalRedisCluster, redis_url: str
) -> None:
    """The partition's tag must be the first in a record's key: a ``key_prefix`` or a
    session key holding ``{`` would place the record away from its lease. One server
    has no slots, and takes both."""
    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    await storage.client.flushall()
    tagged = SessionConfig(ownership="partitioned", key_prefix="{bot}:")
    with pytest.raises(ConfigError, match=r"key_prefix.*'\{bot\}:'.*hash tag"):
        SessionManager(storage, initial=counter, config=tagged, partitions=Partitions(storage))
    partitions, manager = worker(storage, count=1)
    await partitions.start()
    try:
        async with manager:
            with pytest.raises(InvalidKeyError, match=r"session:42:\{7\}:7"):
                await manager.update("session:42:{7}:7", add_one)
            await manager.update("session:42:7:7", add_one)
            assert await manager.get("session:42:7:7") == {"n": 1}
    finally:
        await partitions.stop()
        await storage.close()
    one_server = RedisStorage.from_url(redis_url)
    try:
        tagged_partitions = Partitions(one_server)
        SessionManager(one_server, initial=counter, config=tagged, partitions=tagged_partitions)
    finally:
        await one_server.close()


async def owning_partition(storage: RedisStorage, count: int, partition: int = 0) -> Partitions:
    """A worker's Partitions holding ``partition``'s lease, with no heartbeat (the test
    decides when the lease is trusted)."""
    partitions = Partitions(storage, count=count, lease_time=60)
    assert await partitions.store.acquire(partitions.token, [partition], 60_000) == [True]
    partitions.until[partition] = math.inf
    return partitions


async def counting_bot(
    storage: RedisStorage, count: int
) -> tuple[Partitions, SessionManager[Any], Dispatcher]:
    """``owning_partition`` (0), a partitioned manager and a dispatcher whose message
    handler counts in the session."""
    partitions = await owning_partition(storage, count)
    sessions = SessionManager(storage, initial=counter, config=PARTITIONED, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)

    @dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        session["n"] += 1

    return partitions, sessions, dp


def forwarding_app(
    partitions: Partitions, dp: Dispatcher
) -> tuple[ForwardingRequestHandler, web.Application]:
    """A ForwardingRequestHandler for ``dp`` on ``POST /webhook`` of a new app."""
    handler = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions)
    app = web.Application()
    app.router.add_post("/webhook", handler.handle)
    return handler, app


async def post_after(client: TestClient[Any, Any], delay: float, chat: int) -> int:
    """After ``delay`` seconds (so each post starts in its own turn of the loop), post a
    message of ``chat`` to the webhook; its status."""
    await asyncio.sleep(delay)
    return (await client.post("/webhook", json=message_update(chat, "hi"))).status


async def test_the_forwarding_handler_serves_its_partitions_and_forwards_the_others(
    storage: RedisStorage,
) -> None:
    """A real aiohttp app with ForwardingRequestHandler, owning partition 0 of 2 (no
    heartbeat: the test holds the lease): an update of partition 0 is handled here,
    one of partition 1 is acknowledged and waits in its stream for an owner, an
    update with no chat or user runs where it arrives, and a body that is not an
    update is refused with 400 naming that."""
    partitions, sessions, dp = await counting_bot(storage, count=2)
    polls: list[str] = []

    @dp.poll()
    async def on_poll(poll: Poll) -> None:
        polls.append(poll.id)

    handler, app = forwarding_app(partitions, dp)
    handler.feeder.start()
    [mine], [other] = chats_in(partitions, 0), chats_in(partitions, 1)
    async with TestClient(TestServer(app)) as client, sessions:
        try:
            response = await client.post("/webhook", json=message_update(mine, "hi"))
            assert response.status == 200
            key = f"session:{OFFLINE_TOKEN.split(':')[0]}:{mine}:{mine}"
            for _ in range(100):  # handled here, directly or through its own stream
                if (await sessions.get(key))["n"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert await sessions.get(key) == {"n": 1}

            response = await client.post("/webhook", json=message_update(other, "hi"))
            assert response.status == 200 and await response.json() == {}
            assert await storage.client.xlen("actorsess:partitions:updates:{1}") == 1

            poll = poll_update().model_dump(mode="json", exclude_none=True)
            response = await client.post("/webhook", json=poll)
            assert response.status == 200 and polls == ["p1"]

            # Read off its raw JSON and forwarded unparsed: its owner finds it invalid.
            hollow = {"update_id": 5, "message": {"chat": {"id": other}, "from": {"id": other}}}
            response = await client.post("/webhook", json=hollow)
            assert response.status == 200
            assert await storage.client.xlen("actorsess:partitions:updates:{1}") == 2

            response = await client.post("/webhook", data=b'{"update_id": "x"}')
            assert response.status == 400
            assert "not a Telegram update" in await response.text()
            assert "update_id" in await response.text()  # what was wrong
        finally:
            await handler.feeder.stop()  # before the manager closes Redis


async def test_forwards_arriving_while_one_is_being_stored_go_in_one_entry(
    storage: RedisStorage,
) -> None:
    """Group commit: while a forward's XADD is out (held here by pausing writes on the
    server), the updates to forward that arrive go in the next XADD, sent once it
    is back, instead of one XADD each; every one is acknowledged once stored."""
    partitions, sessions, dp = await counting_bot(storage, count=2)
    _, app = forwarding_app(partitions, dp)
    others = chats_in(partitions, 1, count=6)
    stream = "actorsess:partitions:updates:{1}"
    async with TestClient(TestServer(app)) as client, sessions:
        await pause_writes(storage, stream, 400)
        posts = (post_after(client, 0.03 * i, chat) for i, chat in enumerate(others))
        statuses = await asyncio.gather(*posts)
        assert statuses == [200] * len(others)
        entries = cast(Entries, await storage.client.xrange(stream))
        assert [len(fields) for _, fields in entries] == [1, len(others) - 1]
        raws = [raw for _, fields in entries for raw in fields.values()]
        assert [orjson.loads(raw)["message"]["chat"]["id"] for raw in raws] == others  # in order


async def test_a_forward_that_fails_is_not_acknowledged_and_the_next_batch_still_goes(
    storage: RedisStorage,
) -> None:
    """A batch whose XADD fails (partition 1's stream key holds a string) is answered
    503, so Telegram sends its update again; an update that waited behind it (for
    partition 2) goes in the next batch and is acknowledged once stored."""
    partitions, sessions, dp = await counting_bot(storage, count=3)
    _, app = forwarding_app(partitions, dp)
    [first], [second] = chats_in(partitions, 1), chats_in(partitions, 2)
    await storage.client.set("actorsess:partitions:updates:{1}", "not a stream")
    async with TestClient(TestServer(app)) as client, sessions:
        await pause_writes(storage, "actorsess:partitions:updates:{2}", 300)
        posts = await asyncio.gather(post_after(client, 0, first), post_after(client, 0.1, second))
        assert list(posts) == [503, 200]
        assert await storage.client.xlen("actorsess:partitions:updates:{2}") == 1


async def test_in_a_batch_only_the_updates_whose_append_failed_go_unacknowledged(
    storage: RedisStorage,
) -> None:
    """A batch holds updates of several partitions (on a cluster, of several nodes):
    the one whose stream cannot take it (partition 1's key holds a string) is
    answered 503, and the update of partition 2 in the same batch is acknowledged."""
    partitions, sessions, dp = await counting_bot(storage, count=3)
    _, app = forwarding_app(partitions, dp)
    [bad], [first, second] = chats_in(partitions, 1), chats_in(partitions, 2, count=2)
    await storage.client.set("actorsess:partitions:updates:{1}", "not a stream")
    async with TestClient(TestServer(app)) as client, sessions:
        # The first batch is held by the pause: the next two go out together.
        await pause_writes(storage, "actorsess:partitions:updates:{2}", 300)
        posts = await asyncio.gather(
            post_after(client, 0, first),
            post_after(client, 0.05, bad),
            post_after(client, 0.1, second),
        )
        assert list(posts) == [200, 503, 200]
        entries = cast(Entries, await storage.client.xrange("actorsess:partitions:updates:{2}"))
        assert len(entries) == 2


@pytest.mark.process  # faults a private server
async def test_a_worker_started_while_redis_is_down_joins_once_it_is_back() -> None:
    """Partitions.start() against a stopped Redis logs and returns; the heartbeat takes
    the partitions once Redis answers."""
    with RedisServer() as server:
        storage = RedisStorage.from_url(server.url, socket_connect_timeout=0.5)
        partitions = Partitions(storage, count=4, lease_time=0.6)
        server.stop()
        await partitions.start()
        assert partitions.until == {}
        server.start()
        for _ in range(100):
            if len(partitions.until) == 4:
                break
            await asyncio.sleep(0.05)
        assert sorted(partitions.until) == [0, 1, 2, 3]
        await partitions.stop()
        await storage.close()


#: The session key of chat 5, as SessionMiddleware makes it for the offline bot.
CHAT_5 = f"session:{OFFLINE_TOKEN.split(':')[0]}:5:5"


async def forward_to_0(partitions: Partitions, *texts: str) -> None:
    """Append messages of chat 5 to partition 0's stream, as a receiver would."""
    updates = [orjson.dumps(message_update(5, text)) for text in texts]
    assert await partitions.store.forward({0: updates}) == {}


@dataclass
class CutShort:
    """A worker owning partition 0 whose first update's handler is held (``seen``: the
    texts its handler started on), with its feeder running."""

    partitions: Partitions
    sessions: SessionManager[Any]
    feeder: UpdateFeeder
    seen: list[str]
    key: str = CHAT_5

    async def forward(self, *texts: str) -> None:
        await forward_to_0(self.partitions, *texts)

    async def lose_and_take_again(self) -> None:
        """Once the held first update runs and the reader waits in a blocking read past
        it: partition 0 lost (the update is cut short) and taken again at once."""
        for _ in range(200):
            if self.seen and self.feeder._fed[0].blocking:
                break
            await asyncio.sleep(0.01)
        assert self.seen == ["first"] and self.feeder._fed[0].blocking
        self.partitions.drop(0, "its lease lapsed (the test says so)")
        self.partitions.until[0] = math.inf  # taken again (as a heartbeat would)
        self.feeder.gained(0)

    async def counted(self, n: int) -> None:
        for _ in range(300):
            if (await self.sessions.get(self.key))["n"] == n:
                break
            await asyncio.sleep(0.01)
        assert await self.sessions.get(self.key) == {"n": n}


@contextlib.asynccontextmanager
async def first_update_cut_short(storage: RedisStorage) -> AsyncIterator[CutShort]:
    partitions = await owning_partition(storage, 1)
    sessions = SessionManager(storage, initial=counter, config=PARTITIONED, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)
    seen: list[str] = []

    @dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        seen.append(str(message.text))
        if len(seen) == 1:
            await asyncio.Event().wait()  # the first run: cut short by the loss
        session["n"] += 1

    feeder = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions).feeder
    async with sessions:
        feeder.start()
        try:
            yield CutShort(partitions, sessions, feeder, seen)
        finally:
            await feeder.stop()


async def test_a_read_out_while_its_partition_was_lost_and_taken_again_is_not_used(
    storage: RedisStorage,
) -> None:
    """The partition is lost while an update of it runs (cut short, nothing written) and
    taken again while a blocking read of its stream is out. That read started past the
    cut-short update: were its entries used, the feeder would go on from there and
    never read that update again. It reads from what is left instead."""
    async with first_update_cut_short(storage) as worker:
        await worker.forward("first")
        await worker.lose_and_take_again()
        await worker.forward("second")  # the read that is out returns this
        await worker.counted(2)
        assert worker.seen == ["first", "first", "second"]


# A cluster's reader waits in blocking reads, when an update received here goes through
# the stream instead.
@pytest.mark.parametrize("storage", ["redis"], indirect=True)
async def test_an_update_received_here_waits_for_a_read_of_its_partition_taken_again(
    storage: RedisStorage,
) -> None:
    """An update received here for an owned partition waits for the next read, so the
    updates acknowledged before it run first. That read is held on the server (``CLIENT
    PAUSE ... ALL``) while the partition is lost (its running update cut short) and taken
    again: its entries are not used, and the update received here waits for the read
    that starts over from what is left, which runs the cut-short update first."""
    async with first_update_cut_short(storage) as worker:
        await worker.forward("first")
        for _ in range(200):
            if worker.seen and worker.feeder._fed[0].blocking:
                break
            await asyncio.sleep(0.01)
        reader = worker.feeder._fed[0]
        here = asyncio.ensure_future(
            worker.feeder.run_here(0, "5", Update.model_validate(message_update(5, "here")))
        )
        await pause_writes(storage, "actorsess:partitions:updates:{0}", 800, "ALL")
        for _ in range(200):  # the read that took the update received here is out
            if reader.reading is not None and not reader.blocking and not reader.arrived:
                break
            await asyncio.sleep(0.005)
        assert reader.reading is not None and not reader.blocking and not reader.arrived
        worker.partitions.drop(0, "its lease lapsed (the test says so)")
        worker.partitions.until[0] = math.inf  # taken again (as a heartbeat would)
        worker.feeder.gained(0)
        await here
        await worker.counted(2)
        assert worker.seen == ["first", "first", "here"]


async def test_a_chats_waiting_updates_do_not_start_once_its_partition_is_lost(
    storage: RedisStorage,
) -> None:
    """Three updates of one chat are read at once; the first is held, the other two
    wait behind it. The partition is lost: the first is cut short and the two behind it
    never start (the lease is not this worker's to rely on). Taken again, the stream is
    read anew and the three run once each, in order."""
    async with first_update_cut_short(storage) as worker:
        await worker.forward("first", "second", "third")
        await worker.lose_and_take_again()
        await worker.counted(3)
        assert worker.seen == ["first", "first", "second", "third"]


@pytest.mark.parametrize("storage", ["redis"], indirect=True)
async def test_an_update_received_here_waiting_behind_one_cut_short_is_forwarded(
    storage: RedisStorage,
) -> None:
    """An update received here waits behind its chat's forwarded update, which the loss
    of the partition cuts short. It never started, and its sender had not answered: it
    is refused with ``PartitionNotOwnedError``, so that the sender forwards it (to the
    stream, behind the update cut short) instead of dropping the request."""
    async with first_update_cut_short(storage) as worker:
        await worker.forward("first")
        for _ in range(200):
            if worker.seen:
                break
            await asyncio.sleep(0.01)
        here = asyncio.ensure_future(
            worker.feeder.run_here(0, "5", Update.model_validate(message_update(5, "here")))
        )
        # Past the next read (a blocking one ends within 0.25 s): it waits behind "first".
        await asyncio.sleep(0.5)
        assert not here.done() and not worker.feeder._fed[0].arrived
        worker.partitions.drop(0, "its lease lapsed (the test says so)")
        with pytest.raises(PartitionNotOwnedError):
            await here
        assert worker.seen == ["first"]


async def test_a_chats_forwarded_updates_run_in_order_and_other_chats_meanwhile(
    storage: RedisStorage,
) -> None:
    """Forwarded updates of one chat, each handler awaiting less than the one before,
    still run one after another in stream order; an update of another chat in the same
    partition runs meanwhile, without waiting for them."""
    partitions = await owning_partition(storage, 1)
    sessions = SessionManager(storage, initial=counter, config=PARTITIONED, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)
    runs: list[tuple[str, str]] = []

    @dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        runs.append(("began", str(message.text)))
        await asyncio.sleep(0.1 / len(runs))
        session["n"] += 1
        runs.append(("ended", str(message.text)))

    feeder = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions).feeder
    texts = [f"m{i}" for i in range(5)]
    updates = [orjson.dumps(message_update(5, text)) for text in texts]
    updates.insert(1, orjson.dumps(message_update(6, "other")))
    async with sessions:
        feeder.start()
        try:
            assert await partitions.store.forward({0: updates}) == {}
            for _ in range(300):
                if len(runs) == 12:
                    break
                await asyncio.sleep(0.01)
        finally:
            await feeder.stop()
        assert await sessions.get(CHAT_5) == {"n": 5}
    mine = [run for run in runs if run[1] != "other"]
    assert mine == [(step, text) for text in texts for step in ("began", "ended")]
    assert runs.index(("ended", "other")) < runs.index(("ended", "m0"))


async def test_a_partition_taken_again_while_its_reader_waits_is_read_at_once(
    storage: RedisStorage,
) -> None:
    """Taken again while its reader waits in a blocking read (up to 2 s on a cluster,
    where a reader serves one slot): the wait is cut short, and the update the loss
    cut short runs again at once, not once the wait would have ended."""
    async with first_update_cut_short(storage) as worker:
        await worker.forward("first")
        await worker.lose_and_take_again()
        taken_again = time.monotonic()
        await worker.counted(1)
        assert time.monotonic() - taken_again < 1.0
        assert worker.seen == ["first", "first"]


async def test_an_update_that_finds_its_lease_lapsed_is_read_again_not_trimmed(
    storage: RedisStorage,
) -> None:
    """A forwarded update whose turn finds the partition's lease lapsed (here: the local
    trust ran out while the lease in Redis is still this worker's) does not count as
    handled: the partition is dropped, nothing of its stream is trimmed, and once the
    lease is taken again the update is read again and changes the session once."""
    partitions, sessions, dp = await counting_bot(storage, count=1)
    handler = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions)
    feeder = UpdateFeeder(dp, Bot(OFFLINE_TOKEN), partitions, handler.chat_of, trim_interval=0.02)
    key = f"session:{OFFLINE_TOKEN.split(':')[0]}:5:5"
    async with sessions:
        feeder.start()
        try:
            partitions.until[0] = 0.0  # lapsed here; still ours in Redis
            assert (
                await partitions.store.forward({0: [orjson.dumps(message_update(5, "hi"))]}) == {}
            )
            for _ in range(100):
                if 0 not in partitions.until and feeder.fed:
                    break
                await asyncio.sleep(0.01)
            assert feeder.fed == 1 and 0 not in partitions.until  # dropped, not handled
            await asyncio.sleep(0.1)  # trims would have run meanwhile
            assert await storage.client.xlen("actorsess:partitions:updates:{0}") == 1

            partitions.until[0] = math.inf  # taken again (as a heartbeat would)
            feeder.gained(0)
            for _ in range(100):
                if (await sessions.get(key))["n"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert await sessions.get(key) == {"n": 1}
            for _ in range(100):  # handled and written: now it is trimmed
                if await storage.client.xlen("actorsess:partitions:updates:{0}") == 0:
                    break
                await asyncio.sleep(0.02)
            assert await storage.client.xlen("actorsess:partitions:updates:{0}") == 0
        finally:
            await feeder.stop()


async def test_a_forwarded_body_that_is_no_update_is_logged_and_skipped_by_its_owner(
    storage: RedisStorage, events: Events
) -> None:
    """A well-formed body that is not a valid update, forwarded unparsed, is logged
    (``forward.bad_update``, naming what was wrong) and skipped; the update after it
    in the same entry runs, and the entry counts as done."""
    partitions, sessions, dp = await counting_bot(storage, count=1)
    partitions.log = events.logger
    handler, _ = forwarding_app(partitions, dp)
    hollow = orjson.dumps({"update_id": 5, "message": {"chat": {"id": 5}, "from": {"id": 5}}})
    key = f"session:{OFFLINE_TOKEN.split(':')[0]}:5:5"
    async with sessions:
        assert (
            await partitions.store.forward({0: [hollow, orjson.dumps(message_update(5, "hi"))]})
            == {}
        )
        handler.feeder.start()
        try:
            for _ in range(100):
                if handler.feeder._progress[0].done_upto is not None:
                    break
                await asyncio.sleep(0.01)
            assert handler.feeder._progress[0].done_upto is not None
            assert await sessions.get(key) == {"n": 1}
            [bad] = events.named("forward.bad_update")
            assert bad["partition"] == 0 and "date" in bad["error"]
        finally:
            await handler.feeder.stop()


@dataclass
class SeenWorker:
    """A worker owning partition 0 of 1 whose handlers record each message's text in
    the session (``seen``), with a feeder not yet started."""

    partitions: Partitions
    sessions: SessionManager[Any]
    dp: Dispatcher
    feeder: UpdateFeeder
    key: str = CHAT_5

    async def forward(self, *texts: str) -> None:
        await forward_to_0(self.partitions, *texts)

    async def seen_once_paused(self, expected: list[str]) -> None:
        """Once a pause of the server (0.7 s) is over, ``seen`` becomes ``expected``."""
        await asyncio.sleep(0.8)  # (a load before would fail too)
        for _ in range(300):
            if (await self.sessions.get(self.key)).get("seen") == expected:
                break
            await asyncio.sleep(0.01)
        assert (await self.sessions.get(self.key)).get("seen") == expected


async def seen_worker(storage: RedisStorage, events: Events, **config: Any) -> SeenWorker:
    partitions = await owning_partition(storage, 1)
    partitions.log = events.logger
    settings = dataclasses.replace(PARTITIONED, **config)
    sessions = SessionManager(storage, initial=counter, config=settings, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)
    feeder = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions).feeder
    return SeenWorker(partitions, sessions, dp, feeder)


@pytest.mark.parametrize("errors_handler", [False, True], ids=["raised", "caught"])
async def test_a_forwarded_update_whose_session_could_not_be_loaded_runs_again_in_its_place(
    storage: RedisStorage, events: Events, errors_handler: bool
) -> None:
    """Two forwarded updates of one chat are read, but the server holds scripts (``CLIENT
    PAUSE ... WRITE``; reads still answer) past ``load_timeout``: the first one's session
    cannot be loaded. It was acknowledged, and nothing of it ran, so it is neither
    dropped nor overtaken: it runs again once storage answers, then the second. So too
    when the bot's errors handler catches the error (aiogram then reports no error)."""
    worker = await seen_worker(storage, events, load_timeout=0.2)

    @worker.dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        session["seen"] = [*session.get("seen", []), message.text]

    if errors_handler:

        @worker.dp.errors()
        async def on_error(event: ErrorEvent) -> bool:
            return True

    async with worker.sessions:
        await worker.forward("first", "second")
        await pause_writes(storage, "actorsess:partitions:updates:{0}", 700)
        worker.feeder.start()
        try:
            await worker.seen_once_paused(["first", "second"])
        finally:
            await worker.feeder.stop()
    [retry, *_] = events.named("forward.update_retry")
    assert retry["partition"] == 0 and "load timed out" in retry["error"]
    assert not events.named("forward.update_failed")


async def test_a_forwarded_update_whose_change_was_kept_but_not_written_is_not_run_again(
    storage: RedisStorage, events: Events
) -> None:
    """Write-through: the first update's handler changes its session, but the write of
    the change times out (the server holds scripts past ``write_timeout``). The change
    is kept and written once storage answers; the update is not run again (its change
    would be made twice), and the chat's next update runs after it."""
    worker = await seen_worker(storage, events, flush_interval=0, write_timeout=0.2)

    @worker.dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        session["seen"] = [*session.get("seen", []), message.text]
        if message.text == "first":  # its change is written after this
            await pause_writes(storage, "actorsess:partitions:updates:{0}", 700)

    async with worker.sessions:
        await worker.forward("first", "second")
        worker.feeder.start()
        try:
            await worker.seen_once_paused(["first", "second"])
        finally:
            await worker.feeder.stop()
    failed = events.named("forward.update_failed")  # the second's write may time out too
    assert failed and all("write timed out" in event["error"] for event in failed)
    assert not events.named("forward.update_retry")


async def test_a_worker_stopping_keeps_its_leases_while_its_last_updates_end(
    storage: RedisStorage, events: Events
) -> None:
    """``stop()`` gives the partitions up once their running updates have ended and
    their sessions are written. One update here takes longer than the lease (0.6 s):
    the leases are renewed meanwhile, so its change is written (not refused by the
    lease fence), and its stream entry trimmed only then."""
    partitions = Partitions(storage, count=1, lease_time=0.6)
    partitions.log = events.logger
    sessions = SessionManager(storage, initial=counter, config=PARTITIONED, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)
    began = asyncio.Event()

    @dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        began.set()
        await asyncio.sleep(1.0)
        session["n"] += 1

    handler = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions)
    stream = "actorsess:partitions:updates:{0}"
    async with sessions:
        await handler.start()
        await forward_to_0(partitions, "hi")
        await asyncio.wait_for(began.wait(), 5)
        await handler.stop()
    assert not events.named("partition.lost")
    assert [e["partition"] for e in events.named("partition.released")] == [0]
    record = await storage.client.get(stored_key(storage, CHAT_5, count=1))
    assert record is not None and b'"n":1' in record
    assert await storage.client.xlen(stream) == 0


async def test_a_trim_planned_before_a_partition_was_lost_is_not_carried_out(
    storage: RedisStorage,
) -> None:
    """The trim loop takes its marks, then waits for the sessions to be written; if the
    partition was lost and taken again meanwhile (same worker, same lease token), the
    old marks may cover updates cut short by the loss: nothing is trimmed."""
    partitions = await owning_partition(storage, count=1)
    feeder = UpdateFeeder(Dispatcher(), Bot(OFFLINE_TOKEN), partitions, lambda _: None)
    assert await partitions.store.forward({0: [b"{}"]}) == {}
    [(_, [entry])] = await partitions.store.read({0: "0-0"}, 10, None)
    feeder.gained(0)
    before_loss = feeder._progress[0]
    feeder.lost(0)
    feeder.gained(0)
    await feeder._trim({0: (before_loss, entry.id)})
    assert await storage.client.xlen("actorsess:partitions:updates:{0}") == 1
    await feeder._trim({0: (feeder._progress[0], entry.id)})
    assert await storage.client.xlen("actorsess:partitions:updates:{0}") == 0


def test_a_forwarding_handler_with_a_bad_trim_interval_is_refused_by_name() -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="trim_interval must be > 0 seconds, got 0"):
        ForwardingRequestHandler(
            Dispatcher(), Bot(OFFLINE_TOKEN), Partitions(storage), trim_interval=0
        )


def admin(
    storage: RedisStorage, count: int, logger: Any = None, **config: Any
) -> SessionManager[Any]:
    """A partitioned manager of a process that is no worker: its ``Partitions`` is never
    started, so it holds no partition and borrows every session from its owner."""
    settings = {"ownership": "partitioned", "flush_interval": 0.05, "lease_time": 2, **config}
    return SessionManager(
        storage,
        initial=counter,
        config=SessionConfig(**settings),
        partitions=Partitions(storage, count=count, lease_time=2),
        logger=logger,
    )


@contextlib.asynccontextmanager
async def lending_owner(
    storage: RedisStorage, count: int = 1
) -> AsyncIterator[tuple[Partitions, SessionManager[Any]]]:
    """``counting_bot`` (owning partition 0 of ``count``) with its feeder running: it
    serves the loans asked of partition 0."""
    partitions, sessions, dp = await counting_bot(storage, count)
    handler, _ = forwarding_app(partitions, dp)
    async with sessions:
        handler.feeder.start()
        try:
            yield partitions, sessions
        finally:
            await handler.feeder.stop()


async def test_a_process_that_owns_no_partition_borrows_a_session_from_its_owner(
    storage: RedisStorage, events: Events
) -> None:
    """The admin's ``update`` goes through the partition's owner: the owner writes its
    unwritten change first (so the admin sees it), lends the session in its turn,
    writes the admin's change under its lease and loads it back; ``get`` and
    ``delete`` go the same way. Every manager of the owner with the key prefix lends
    (here two), and none is left with a stale copy."""
    key = "session:42:7:7"
    stored = stored_key(storage, key, count=1)
    async with (
        lending_owner(storage) as (partitions, sessions),
        admin(storage, count=1, logger=events.logger) as other,
    ):
        slow = SessionManager(
            storage,
            initial=counter,
            config=SessionConfig(ownership="partitioned", flush_interval=60, lease_time=2),
            partitions=partitions,
        )
        async with slow:
            await slow.update(key, add_one)  # dirty here, not written for a minute
            assert await storage.client.get(stored) is None
            assert await other.update(key, lambda s: s.update(n=s["n"] + 10) or s["n"]) == 11
            assert await slow.get(key) == {"n": 11}  # loaded back by the owner
            assert await sessions.get(key) == {"n": 11}  # (the other lender too)
            await slow.update(key, add_one)
            assert await other.get(key) == {"n": 12}
            await other.delete(key)
            assert await slow.get(key) == {"n": 0}
            record = await storage.client.get(stored)
            assert isinstance(record, bytes) and record.endswith(b":")  # a tombstone
    borrowed = events.named("session.borrowed")
    assert len(borrowed) == 3 and borrowed[0]["key"] == key and borrowed[0]["partition"] == 0


class Profile(BaseModel):
    """A typed session another manager of the owner keeps under the same key prefix."""

    name: str


async def test_a_manager_of_the_owner_whose_sessions_are_of_another_shape_does_not_lend(
    storage: RedisStorage,
) -> None:
    """Managers often share a key prefix and keep different keys (a typed session and
    the FSM): a loan is served by those that can read the record, and one whose codec
    cannot (the record is not of its making) takes no part, instead of failing it."""
    key = "session:42:7:7"
    async with lending_owner(storage) as (partitions, sessions), admin(storage, count=1) as other:
        typed = SessionManager(
            storage,
            initial=lambda: Profile(name="?"),
            config=PARTITIONED,
            partitions=partitions,
        )
        async with typed:
            await sessions.update(key, add_one)
            assert await other.update(key, lambda s: s.update(n=s["n"] + 1) or s["n"]) == 2
            assert await sessions.get(key) == {"n": 2}


async def test_an_admin_process_sets_a_users_fsm_state_through_the_owner(
    storage: RedisStorage,
) -> None:
    """aiogram's FSM on ``ActorFSMStorage`` borrows as sessions do: an admin process
    resets a user's state, and the worker that owns the chat reads it back."""
    key = StorageKey(bot_id=42, chat_id=7, user_id=7)
    async with lending_owner(storage) as (partitions, _), admin(storage, count=1) as other:
        owned = ActorFSMStorage(
            SessionManager(storage, initial=dict, config=PARTITIONED, partitions=partitions)
        )
        async with owned.manager:
            await owned.set_state(key, "Form:name")
            await owned.set_data(key, {"step": 1})
            borrowing = ActorFSMStorage(other)  # the admin's manager, as a dict one works
            assert await borrowing.get_state(key) == "Form:name"
            await borrowing.set_state(key, None)
            assert await owned.get_state(key) is None
            assert await owned.get_data(key) == {"step": 1}


async def test_a_borrowed_block_that_raises_changes_nothing_and_frees_the_owner_at_once(
    storage: RedisStorage,
) -> None:
    key = "session:42:7:7"
    async with (
        lending_owner(storage) as (_, sessions),
        admin(storage, count=1, lease_wait_timeout=30) as other,
    ):
        with pytest.raises(RuntimeError, match="boom"):
            async with other.session(key) as session:
                session["n"] = 99
                raise RuntimeError("boom")
        async with asyncio.timeout(5):  # not the 30 s the owner would wait for a change
            await sessions.update(key, add_one)
            assert await other.get(key) == {"n": 1}


async def test_a_borrowed_change_is_refused_if_the_owner_lost_its_lease_meanwhile(
    storage: RedisStorage,
) -> None:
    """The owner writes a borrowed change fenced by its partition lease, as its own:
    if the lease is gone by then, the block's exit raises SessionConflictError and
    nothing is written."""
    key = "session:42:7:7"
    async with lending_owner(storage), admin(storage, count=1) as other:
        with pytest.raises(SessionConflictError, match="session:42:7:7"):
            async with other.session(key) as session:
                session["n"] = 5
                await storage.client.delete("actorsess:partitions:lease:{0}")
        assert await storage.client.get(stored_key(storage, key, count=1)) is None


async def test_a_borrowed_block_held_past_the_owners_patience_is_dropped(
    storage: RedisStorage,
) -> None:
    key = "session:42:7:7"
    async with (
        lending_owner(storage) as (_, sessions),
        admin(storage, count=1, lease_wait_timeout=0.3) as other,
    ):
        with pytest.raises(SessionConflictError, match="longer than its owner lends it"):
            async with other.session(key) as session:
                session["n"] = 5
                await asyncio.sleep(0.4)
        assert await sessions.get(key) == {"n": 0}
        assert await storage.client.get(stored_key(storage, key, count=1)) is None


async def test_a_loan_read_again_by_the_next_owner_is_not_served_twice(
    storage: RedisStorage,
) -> None:
    """An owner crashes after a loan, before trimming; the next owner reads the request
    again and skips it (its claim is there): the borrowed change counts once."""
    key = "session:42:7:7"
    async with admin(storage, count=1) as other:
        async with lending_owner(storage):
            await other.update(key, add_one)
        assert await storage.client.xlen("actorsess:partitions:updates:{0}") == 1  # untrimmed
        await storage.client.delete("actorsess:partitions:lease:{0}")  # as it lapses
        async with lending_owner(storage) as (_, sessions):
            await other.update(key, add_one)
            assert await sessions.get(key) == {"n": 2}


async def test_an_owner_with_no_manager_of_the_key_prefix_says_so(storage: RedisStorage) -> None:
    async with lending_owner(storage), admin(storage, count=1, key_prefix="elsewhere:") as other:
        with pytest.raises(
            StorageError, match="no partitioned manager with key_prefix 'elsewhere:'"
        ):
            await other.get("session:42:7:7")


@pytest.mark.parametrize("errors_handler", [False, True], ids=["raised", "caught"])
async def test_a_forwarded_update_whose_borrow_timed_out_runs_again_in_its_place(
    storage: RedisStorage, events: Events, errors_handler: bool
) -> None:
    """A forwarded update's handler borrows another chat's session, but nobody owns
    that chat's partition yet: the borrow times out (``LeaseTimeoutError``). The
    update changed nothing and was acknowledged, so it runs again in its place once
    the partition has an owner, and changes both sessions once; so too when the
    bot's errors handler catches the error."""
    partitions = await owning_partition(storage, 2, partition=1)
    partitions.log = events.logger
    config = dataclasses.replace(PARTITIONED, lease_wait_timeout=0.3)
    sessions = SessionManager(storage, initial=counter, config=config, partitions=partitions)
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)
    [here], [there] = chats_in(partitions, 1), chats_in(partitions, 0)
    bot_id = OFFLINE_TOKEN.split(":")[0]
    own_key, other_key = f"session:{bot_id}:{here}:{here}", f"session:{bot_id}:{there}:{there}"

    @dp.message()
    async def on_message(message: Message, session: dict[str, Any]) -> None:
        session["n"] += 1
        await sessions.update(other_key, add_one)  # borrowed from partition 0's owner

    if errors_handler:

        @dp.errors()
        async def on_error(event: ErrorEvent) -> bool:
            return True

    feeder = ForwardingRequestHandler(dp, Bot(OFFLINE_TOKEN), partitions).feeder
    async with sessions:
        feeder.start()
        try:
            update = orjson.dumps(message_update(here, "hi"))
            assert await partitions.store.forward({1: [update]}) == {}
            for _ in range(200):  # the first borrow times out
                if events.named("forward.update_retry"):
                    break
                await asyncio.sleep(0.01)
            async with lending_owner(storage, count=2) as (_, owner):
                for _ in range(500):
                    if (await sessions.get(own_key))["n"] == 1:
                        break
                    await asyncio.sleep(0.01)
                assert await owner.get(other_key) == {"n": 1}
            assert await sessions.get(own_key) == {"n": 1}
        finally:
            await feeder.stop()
    [retry, *_] = events.named("forward.update_retry")
    assert "LeaseTimeoutError" in retry["error"] and other_key in retry["error"]
    assert not events.named("forward.update_failed")


async def test_a_handler_borrows_another_chats_session_but_not_one_of_its_own_partition(
    storage: RedisStorage,
) -> None:
    """Inside an update, a session of another partition (owned by another worker) is
    borrowed from its owner; a session of the update's own partition is not, even
    if the partition moved meanwhile: that raises PartitionNotOwnedError as before,
    and the update is read again by the partition's next owner."""
    async with lending_owner(storage, count=2) as (partitions, sessions):
        [here] = chats_in(partitions, 1)
        [there] = chats_in(partitions, 0)
        other_key = f"session:42:{there}:{there}"
        own_key = f"session:42:{here}:{here}"
        guest_partitions = Partitions(storage, count=2)  # holds partition 1 only
        guest_partitions.until[1] = math.inf
        guest = SessionManager(
            storage, initial=counter, config=PARTITIONED, partitions=guest_partitions
        )
        async with guest:
            token = FEEDING.set(1)  # as the feeder runs an update of partition 1
            try:
                await guest.update(other_key, add_one)  # borrowed from partition 0's owner
                assert await sessions.get(other_key) == {"n": 1}
                guest_partitions.until[1] = 0.0  # partition 1 lapsed under the update
                with pytest.raises(PartitionNotOwnedError, match=own_key):
                    await guest.update(own_key, add_one)
            finally:
                FEEDING.reset(token)
