"""Several real webhook worker processes on one Redis, fed real updates over HTTP."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.testing import RedisServer
from harness.webhook_bot import OFFLINE_TOKEN, new_session, stored_apples
from tests.workers import Feed, stop, workers

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process


async def test_updates_routed_at_random_to_three_workers_lose_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """One chat's updates reach any of 3 workers, 64 in flight: every one is counted."""
    redis.Redis.from_url(redis_url).flushdb()
    chats, per_chat = list(range(1, 31)), 20
    rng = random.Random(11)
    plan = [chat for chat in chats for _ in range(per_chat)]
    rng.shuffle(plan)
    feed = Feed()
    with workers(redis_url, tmp_path, 3, flush_interval=0.2) as started:
        gate = asyncio.Semaphore(64)

        async def send(http: aiohttp.ClientSession, chat: int) -> None:
            async with gate:
                assert await feed.post(http, rng.choice(started).url, chat)

        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(send(http, chat) for chat in plan))
        for worker in started:
            stop(worker)
    assert await stored_apples(redis_url, chats) == dict.fromkeys(chats, per_chat)
    assert not redis.Redis.from_url(redis_url).keys("*\x00lease\x00*"), "leases left behind"


async def test_worker_paused_past_its_lease_cannot_overwrite_newer_data(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker holding unwritten changes; another takes the chat over after the
    lease expires; on SIGCONT the stale worker's write is refused (session.conflict)."""
    redis.Redis.from_url(redis_url).flushdb()
    with (
        workers(redis_url, tmp_path / "a", 1, flush_interval=30, lease_time=1) as [stale],
        workers(redis_url, tmp_path / "b", 1, flush_interval=0.05, lease_time=1) as [fresh],
    ):
        feed = Feed()
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                assert await feed.post(http, stale.url, 1)  # 3 apples, not yet written
            stale.signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                for _ in range(5):
                    assert await feed.post(http, fresh.url, 1)
                took_over_after = time.monotonic() - started
                await asyncio.sleep(0.3)  # fresh writes its 5 apples
                assert await stored_apples(redis_url, [1]) == {1: 5}
            finally:
                stale.signal(signal.SIGCONT)
            await asyncio.sleep(1.0)  # the stale worker renews (lost) and tries to write
            assert await stored_apples(redis_url, [1]) == {1: 5}
            assert await feed.post(http, stale.url, 1)  # handed back: reloads 5, counts 6
        stop(stale)
        stop(fresh)
    assert await stored_apples(redis_url, [1]) == {1: 6}
    assert 0.5 < took_over_after < 5, took_over_after
    assert "session.conflict" in stale.output() or "session.lease_lost" in stale.output()


async def test_killed_worker_keys_are_taken_over_without_losing_flushed_updates(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL one of two write-through workers mid-run: the other takes its chats over once
    the leases expire, and every acknowledged (hence written) update is in storage."""
    redis.Redis.from_url(redis_url).flushdb()
    chats = list(range(1, 11))
    feed = Feed()
    with workers(redis_url, tmp_path, 2, flush_interval=0, lease_time=1) as [victim, survivor]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            rng = random.Random(5)

            async def traffic(rounds: int, targets: list[str]) -> None:
                for _ in range(rounds):
                    await asyncio.gather(
                        *(feed.post(http, rng.choice(targets), chat) for chat in chats)
                    )

            both = [victim.url, survivor.url]
            killer = asyncio.get_running_loop().call_later(0.5, victim.kill)
            await traffic(30, both)  # the victim dies somewhere in here
            killer.cancel()
            victim.kill()
            await traffic(5, [survivor.url])
        stop(survivor)
    stored = await stored_apples(redis_url, chats)
    for chat in chats:
        assert feed.acked.get(chat, 0) <= stored[chat] <= feed.sent[chat], chat
    # The survivor served every chat after the kill, the victim's ones included.
    assert sum(feed.acked.values()) >= 5 * len(chats)


async def test_redis_paused_past_the_lease_under_three_live_workers_loses_nothing(
    tmp_path: Path,
) -> None:
    """Three live workers take one chat's updates at random (write-behind, flush 0.2 s,
    lease 1 s) while Redis is SIGSTOPped for 1.6 s, twice. No worker died, so no
    acknowledged update may be lost: acked <= stored <= sent for every chat."""
    chats = list(range(1, 21))
    feed = Feed()
    with (
        RedisServer() as server,
        workers(server.url, tmp_path, 3, flush_interval=0.2, lease_time=1) as started,
    ):
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            rng = random.Random(23)
            done = asyncio.Event()

            async def chat_traffic(chat: int) -> None:
                while not done.is_set():
                    await feed.post(http, rng.choice(started).url, chat)
                    await asyncio.sleep(0.02)

            senders = [asyncio.create_task(chat_traffic(chat)) for chat in chats]
            for _ in range(2):
                await asyncio.sleep(0.8)
                server.pause()
                await asyncio.sleep(1.6)
                server.resume()
            await asyncio.sleep(1.5)
            done.set()
            await asyncio.gather(*senders)
        for worker in started:
            stop(worker)
        stored = await stored_apples(server.url, chats)
    lost = {chat: feed.acked.get(chat, 0) - stored[chat] for chat in chats}
    assert all(n <= 0 for n in lost.values()), lost
    assert all(stored[chat] <= feed.sent[chat] for chat in chats)
    assert sum(feed.acked.values()) > 300


async def test_a_delete_made_while_a_worker_was_stopped_is_not_undone(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker holds 3 unwritten apples of a new chat and is SIGSTOPped past its lease;
    an admin process (a shared-mode manager) deletes the chat's session meanwhile. On
    SIGCONT and shutdown the stopped worker's write is refused: the delete's tombstone
    carries a version, so "absent" no longer looks like the version 0 it had loaded."""
    redis.Redis.from_url(redis_url).flushdb()
    with workers(redis_url, tmp_path, 1, flush_interval=30, lease_time=1) as [stale]:
        feed = Feed()
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                assert await feed.post(http, stale.url, 1)  # never written: flush in 30 s
        stale.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.5)  # past the lease
            admin = SessionManager(
                RedisStorage.from_url(redis_url),
                initial=new_session,
                config=SessionConfig(ownership="shared", lease_time=1),
            )
            async with admin:
                await admin.delete(f"session:{OFFLINE_TOKEN.split(':')[0]}:1:1")
        finally:
            stale.signal(signal.SIGCONT)
        await asyncio.sleep(1.0)
        stale.stop()  # SIGTERM: it tries its final write
    assert await stored_apples(redis_url, [1]) == {1: 0}
    assert "session.conflict" in stale.output() or "session.lease_lost" in stale.output()
