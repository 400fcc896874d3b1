"""Real faults on private redis-server processes: stopped, paused, connections killed,
slowed, and a Redis Cluster node restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import (
    BackpressureTimeoutError,
    ConfigError,
    LeaseTimeoutError,
    RedisStorage,
    SessionConfig,
    SessionConflictError,
    SessionManager,
    StorageError,
)
from actorsess.testing import LocalRedisCluster, RedisServer

from .conftest import Events
from .helpers import counter, read_all

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server of this test's own (with AOF, and DEBUG allowed from loopback)."""
    with RedisServer(appendonly=True, extra_args=["--enable-debug-command", "local"]) as server:
        yield server


async def test_paused_redis_cached_sessions_keep_working(
    private_redis: RedisServer, events: Events
) -> None:
    """SIGSTOPped Redis: cached handlers run, cold loads fail fast, nothing lost on resume."""
    config = SessionConfig(
        flush_interval=0.05,
        write_timeout=0.3,
        load_timeout=0.3,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
        close_timeout=10,
    )
    storage = RedisStorage.from_url(private_redis.url, pool_timeout=2)
    keys = [f"chat:{i}" for i in range(30)]
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        await m.get_many(keys)
        private_redis.pause()
        try:
            rounds = 0
            started = time.monotonic()
            while time.monotonic() - started < 1.5:
                await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))
                rounds += 1
                await asyncio.sleep(0.01)
            slowest_round = (time.monotonic() - started) / rounds
            cold_started = time.monotonic()
            with pytest.raises(StorageError, match="timed out after 0.3s"):
                await m.get("never-seen")
            cold_failure_s = time.monotonic() - cold_started
        finally:
            private_redis.resume()
        await m.flush()
    assert rounds > 20, "cached sessions must not wait for the paused server"
    assert slowest_round < 0.1 and cold_failure_s < 1.0
    timeouts = [e for e in events.named("session.flush_failed") if "timed out" in e["error"]]
    assert timeouts and m.stats().write_timeouts == len(timeouts)
    values = await read_all(private_redis.url, keys)
    assert values == [b'as1:%d:{"n":%d}' % (rounds, rounds)] * len(keys)


async def test_start_against_a_paused_redis_waits_only_the_load_timeout(
    private_redis: RedisServer, events: Events
) -> None:
    """start() with Redis SIGSTOPped: logged and returned after load_timeout; once the
    server resumes, sessions load and are written as usual."""
    config = SessionConfig(load_timeout=0.3, flush_interval=0.05)
    storage = RedisStorage.from_url(private_redis.url)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    private_redis.pause()
    try:
        started = time.monotonic()
        await m.start()
        start_s = time.monotonic() - started
    finally:
        private_redis.resume()
    [unprepared] = events.named("session.storage_unprepared")
    assert unprepared["error"] == "timed out after 0.3s"
    assert 0.25 < start_s < 1.0
    async with m:
        await m.update("k", lambda s: s.update(n=1))
    assert await read_all(private_redis.url, ["k"]) == [b'as1:1:{"n":1}']


async def test_connections_killed_during_writes_result_is_exact(private_redis: RedisServer) -> None:
    """CLIENT KILL while batches are written: outcomes unknown, retried, totals exact."""
    config = SessionConfig(
        flush_interval=0.001,
        max_batch=50,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        write_timeout=2,
    )
    storage = RedisStorage.from_url(private_redis.url)
    killer = redis_asyncio.Redis.from_url(private_redis.url)
    keys = [f"k{i}" for i in range(200)]
    kills = 0
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.get_many(keys)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        for _ in range(30):
            await bump_all()
            await asyncio.sleep(0.002)
            kills += int(await killer.client_kill_filter(_type="normal", skipme=True))
        await m.flush()
    await killer.aclose()
    assert kills > 0
    values = await read_all(private_redis.url, keys)
    assert values == [b'as1:30:{"n":30}'] * len(keys)


async def test_slow_redis_backpressure_bounds_dirty_and_times_out(
    private_redis: RedisServer, events: Events
) -> None:
    """DEBUG SLEEP stalls Redis: dirty sessions stop at max_dirty and writers get a clear error."""
    config = SessionConfig(
        flush_interval=0.01,
        max_dirty=50,
        max_batch=10,
        write_timeout=5,
        backpressure_timeout=0.5,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )
    storage = RedisStorage.from_url(private_redis.url)
    sleeper = redis_asyncio.Redis.from_url(private_redis.url)
    keys = [f"k{i}" for i in range(200)]
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        await m.get_many(keys)
        debug_sleep = sleeper.execute_command("DEBUG", "SLEEP", "2")  # type: ignore[no-untyped-call]
        stall = asyncio.create_task(debug_sleep)
        await asyncio.sleep(0.05)
        peak = 0

        async def bump(key: str) -> None:
            nonlocal peak
            await m.update(key, lambda s: s.update(n=s["n"] + 1))
            peak = max(peak, m.stats().dirty)

        results = await asyncio.gather(*(bump(k) for k in keys), return_exceptions=True)
        await stall
        await m.flush()
    await sleeper.aclose()
    timed_out = [r for r in results if isinstance(r, BackpressureTimeoutError)]
    assert peak <= config.max_dirty
    assert len(timed_out) == len(keys) - config.max_dirty
    assert "max_dirty=50" in str(timed_out[0])
    assert events.named("session.backpressure")
    # The operator's counters agree with what the blocks saw.
    assert m.stats().backpressure_timeouts == len(timed_out)
    assert m.stats().backpressure_waits >= len(timed_out)
    values = await read_all(private_redis.url, keys)
    landed = sum(1 for v in values if v == b'as1:1:{"n":1}')
    assert landed == config.max_dirty  # refused changes were rolled back, accepted ones kept


async def test_redis_stopped_mid_run_then_restarted_loses_nothing(
    private_redis: RedisServer, events: Events
) -> None:
    """Writes fail while Redis is down, stay dirty, and all land after it returns."""
    config = SessionConfig(
        flush_interval=0.02,
        retry_base_delay=0.02,
        retry_max_delay=0.2,
        write_timeout=1.0,
        close_timeout=10,
    )
    storage = RedisStorage.from_url(private_redis.url, pool_timeout=1.0)
    keys = [f"chat:{i}" for i in range(50)]
    async with SessionManager(storage, initial=counter, config=config, logger=events.logger) as m:
        for key in keys:  # load everything while Redis is up
            await m.get(key)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        await bump_all()
        await m.flush()
        private_redis.stop()
        for _ in range(10):  # cached sessions keep working while Redis is down
            await bump_all()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert m.stats().dirty == len(keys)
        assert m.stats().errors > 0
        failures = events.named("session.flush_failed")
        assert m.stats().write_failures == len(failures) > 0
        private_redis.start()
        await asyncio.sleep(0.5)
        await m.flush()
        assert m.stats().dirty == 0

    values = await read_all(private_redis.url, keys)
    assert values == [b'as1:11:{"n":11}'] * len(keys)


async def test_cluster_node_restart_mid_load_loses_nothing(redis_cluster: Any) -> None:
    """A cluster primary restarted (AOF) mid-load: its keys' writes retry and land."""
    config = SessionConfig(
        flush_interval=0.02,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
        write_timeout=2.0,
        close_timeout=20,
    )
    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    keys = [f"node-restart:{i}" for i in range(60)]
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.get_many(keys)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        await bump_all()
        await m.flush()
        victim = redis_cluster.nodes[1]
        victim.stop()
        for _ in range(5):
            await bump_all()
            await asyncio.sleep(0.05)
        victim.start()
        await asyncio.sleep(0.5)
        for _ in range(20):  # the restarted node rejoins; retries land
            if m.stats().dirty == 0:
                break
            await asyncio.sleep(0.25)
        await m.flush()
    reader = SessionManager(RedisStorage.from_url(redis_cluster.url, cluster=True), initial=counter)
    async with reader:
        values = await reader.get_many(keys)
    assert [v["n"] for v in values.values()] == [6] * len(keys)


async def test_cluster_primary_killed_fails_over_without_losing_replicated_writes() -> None:
    """SIGKILL a primary of a cluster with replicas mid-load: its replica takes over and
    every update lands. What the cluster itself can lose is what the primary
    acknowledged but had not replicated when it died; the test lets replication
    catch up before the kill, so any loss here would be actorsess's."""
    config = SessionConfig(
        flush_interval=0.02,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
        write_timeout=2.0,
        close_timeout=30,
    )
    with LocalRedisCluster(replicas=1, node_timeout_ms=1000) as cluster:
        storage = RedisStorage.from_url(cluster.url, cluster=True)
        keys = [f"failover:{i}" for i in range(60)]
        async with SessionManager(storage, initial=counter, config=config) as m:

            async def bump_all() -> None:
                await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

            await bump_all()
            await m.flush()
            await asyncio.sleep(0.3)  # replication catches up
            victim = next(n for n in cluster.nodes if n.port == cluster.primary_ports()[1])
            victim.kill()
            for _ in range(5):
                await bump_all()
                await asyncio.sleep(0.05)
            for _ in range(80):  # a replica is promoted; retries land on it
                if m.stats().dirty == 0:
                    break
                await asyncio.sleep(0.25)
            await m.flush()
        reader = SessionManager(RedisStorage.from_url(cluster.url, cluster=True), initial=counter)
        async with reader:
            values = await reader.get_many(keys)
    assert [v["n"] for v in values.values()] == [6] * len(keys)


async def test_shared_mode_redis_paused_past_the_lease_then_resumed(
    private_redis: RedisServer, events: Events
) -> None:
    """Shared ownership with Redis SIGSTOPped for longer than a lease: once a lease can no
    longer be renewed, turns on it wait (boundedly) instead of running on an ownership
    that may be gone; after the resume everything that succeeded is stored exactly."""
    config = SessionConfig(
        ownership="shared",
        flush_interval=0.05,
        lease_time=0.6,
        lease_wait_timeout=0.5,
        write_timeout=0.3,
        load_timeout=0.3,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
    )
    keys = [f"paused-shared:{i}" for i in range(10)]
    done = dict.fromkeys(keys, 0)
    storage = RedisStorage.from_url(private_redis.url)
    async with SessionManager(storage, initial=counter, config=config, logger=events.logger) as m:

        async def bump(key: str) -> None:
            try:
                await m.update(key, lambda s: s.update(n=s["n"] + 1))
            except (LeaseTimeoutError, StorageError):
                return
            done[key] += 1

        for _ in range(3):
            await asyncio.gather(*(bump(k) for k in keys))
        private_redis.pause()
        try:
            started = time.monotonic()
            while time.monotonic() - started < 1.5:
                await asyncio.gather(*(bump(k) for k in keys))
                await asyncio.sleep(0.05)
        finally:
            private_redis.resume()
        for _ in range(40):  # leases come back (released, reacquired); turns run again
            await asyncio.gather(*(bump(k) for k in keys))
            if m.stats().dirty == 0 and all(done[k] >= 6 for k in keys):
                break
            await asyncio.sleep(0.1)
        await m.flush()
    reader = SessionManager(RedisStorage.from_url(private_redis.url), initial=counter)
    async with reader:
        values = await reader.get_many(keys)
    assert not events.named("session.conflict")
    assert {k: v["n"] for k, v in values.items()} == done
    assert all(done[k] >= 6 for k in keys)


async def test_shared_mode_redis_paused_past_the_lease_with_three_live_processes(
    private_redis: RedisServer, events: Events
) -> None:
    """Three shared-mode managers (standing for worker processes, each with its own
    connections and id) take random updates while Redis is SIGSTOPped past the lease,
    twice. Every holder stays alive, so nothing acknowledged may be lost: for every key,
    acknowledged <= stored <= sent."""
    config = SessionConfig(
        ownership="shared",
        flush_interval=0.2,
        lease_time=1.0,
        lease_wait_timeout=5.0,
        write_timeout=0.5,
        load_timeout=0.5,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
        close_timeout=10,
    )
    managers = [
        SessionManager(
            RedisStorage.from_url(private_redis.url),
            initial=counter,
            config=config,
            logger=events.logger,
        )
        for _ in range(3)
    ]
    keys = [f"chat:{i}" for i in range(20)]
    sent = dict.fromkeys(keys, 0)
    acked = dict.fromkeys(keys, 0)
    rng = __import__("random").Random(3)
    stop = asyncio.Event()

    async def sender(key: str) -> None:
        while not stop.is_set():
            sent[key] += 1
            try:
                await rng.choice(managers).update(key, lambda s: s.update(n=s["n"] + 1))
            except (LeaseTimeoutError, StorageError, SessionConflictError):
                pass
            else:
                acked[key] += 1
            await asyncio.sleep(0.01)

    for m in managers:
        await m.start()
    senders = [asyncio.create_task(sender(key)) for key in keys]
    try:
        for _ in range(2):
            await asyncio.sleep(0.5)
            private_redis.pause()
            await asyncio.sleep(1.6)
            private_redis.resume()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await asyncio.gather(*senders)
        for m in managers:
            await m.close()
    records = await read_all(private_redis.url, keys)
    stored = {
        key: int(record.split(b'"n":')[1].rstrip(b"}")) if record else 0
        for key, record in zip(keys, records, strict=True)
    }
    lost = {k: acked[k] - stored[k] for k in keys if stored[k] < acked[k]}
    assert not lost, (lost, sum(lost.values()), len(events.named("session.conflict")))
    assert all(stored[k] <= sent[k] for k in keys)
    assert sum(acked.values()) > 200


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
async def test_shared_mode_refuses_a_redis_that_evicts_keys(policy: str) -> None:
    """Under maxmemory with an eviction policy, Redis may drop lease keys and hand a live
    session to another process (69% of acknowledged increments were lost that way);
    shared mode refuses to start there, naming the policy and the fix."""
    args = ["--maxmemory", "50mb", "--maxmemory-policy", policy]
    with RedisServer(extra_args=args) as server:
        config = SessionConfig(ownership="shared")
        manager = SessionManager(RedisStorage.from_url(server.url), initial=counter, config=config)
        with pytest.raises(ConfigError, match=f"maxmemory-policy {policy}.*noeviction"):
            async with manager:
                pass
        local = SessionManager(RedisStorage.from_url(server.url), initial=counter)
        async with local:  # local mode holds no leases: fine
            await local.update("k", lambda s: s.update(n=1))


async def test_shared_mode_with_redis_stopped_says_what_fails(events: Events) -> None:
    """Shared ownership with its Redis stopped: renewals and, at close, the release of
    the leases fail, each reported (``session.lease_renew_failed``,
    ``session.lease_release_failed``); nothing hangs."""
    with RedisServer() as server:
        config = SessionConfig(
            ownership="shared", lease_time=0.3, write_timeout=0.3, close_timeout=2
        )
        storage = RedisStorage.from_url(server.url)
        m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
        await m.start()
        await m.update("k", lambda s: s.update(n=1))
        await m.persist("k")
        server.stop()
        await asyncio.sleep(0.6)  # two renewal periods
        renew = events.named("session.lease_renew_failed")
        assert renew and renew[0]["keys"] == 1 and "Error" in renew[0]["error"]
        async with asyncio.timeout(5):
            await m.close()
        [release] = events.named("session.lease_release_failed")
        assert release["keys"] == 1


def test_a_cluster_node_whose_port_was_taken_starts_on_another() -> None:
    """LocalRedisCluster picks its ports ahead; one taken before its node starts (by
    any process) moves that node to a free one, and a cluster that cannot start
    leaves no node running."""
    import socket

    cluster = LocalRedisCluster()
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", cluster.nodes[1].port))
    squatter.listen()
    try:
        with cluster:
            assert len(cluster.primary_ports()) == 3
            assert cluster.nodes[1].port != squatter.getsockname()[1]
    finally:
        squatter.close()
    assert all(node.process is None or node.process.poll() is not None for node in cluster.nodes)
