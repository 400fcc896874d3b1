"""Partitioned mode with real worker processes behind a random-routing balancer.

Each chat sends numbered messages one after another (the next once the last
was answered or failed), so "arrival order" is defined; the handler appends
each number to the session's ``seen`` list. For every chat: each number is
handled at most once, every acknowledged one is stored (acked <= stored <=
sent), and the acknowledged ones are stored in the order they were sent.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from actorsess import ActorSessError, Partitions, RedisStorage, SessionConfig, SessionManager
from actorsess.testing import LocalRedisCluster, RedisServer, message_update
from harness.balancer import Balancer
from harness.webhook_bot import OFFLINE_TOKEN, new_session, stored_sessions
from harness.webhook_worker import WebhookWorker
from tests.workers import start_worker, workers

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process

CHATS = list(range(1, 31))
SETTINGS = {"ownership": "partitioned", "flush_interval": 0, "lease_time": 1}
#: No answers: a forwarded update's answer would be a Bot API call, and there is no
#: Telegram here.
ENV = {"HARNESS_REPLY": "0", "LOG_LEVEL": "INFO"}


@dataclass
class NumberedFeed:
    """Per chat: the numbers sent and those acknowledged (HTTP 200)."""

    sent: dict[int, list[int]] = field(default_factory=dict)
    acked: dict[int, list[int]] = field(default_factory=dict)
    #: What each request that was not acknowledged got, as "<chat>/<number>: <answer>".
    failed: list[str] = field(default_factory=list)

    async def chat(self, http: aiohttp.ClientSession, url: str, chat: int, count: int) -> None:
        for number in range(1, count + 1):
            self.sent.setdefault(chat, []).append(number)
            try:
                async with http.post(url, json=message_update(chat, str(number))) as response:
                    answer = f"{response.status} {(await response.read())[:80]!r}"
                    ok = response.status == 200
            except (TimeoutError, aiohttp.ClientError) as exc:
                answer, ok = f"{type(exc).__name__}: {exc}", False
            if ok:
                self.acked.setdefault(chat, []).append(number)
            else:
                self.failed.append(f"{chat}/{number}: {answer}")
            # A sender backs off after a failure (Telegram does): a fault that fails
            # requests fast must not use a chat's numbers up before it is over.
            await asyncio.sleep(0.02 if ok else 0.2)

    def check(self, stored: dict[int, dict[str, object]]) -> None:
        for chat in CHATS:
            seen = stored[chat].get("seen", [])
            assert isinstance(seen, list)
            assert len(seen) == len(set(seen)), (chat, "handled twice", seen)
            acked, sent = self.acked.get(chat, []), self.sent.get(chat, [])
            assert set(acked) <= set(seen) <= set(sent), (chat, sorted(set(acked) - set(seen)))
            in_order = [n for n in seen if n in set(acked)]
            assert in_order == sorted(in_order), (chat, "out of order", seen)
            assert stored[chat]["apple"] == len(seen), chat


def partitioned_workers(
    redis_url: str, tmp: Path, count: int, *, cluster: bool = False, **settings: object
) -> AbstractContextManager[list[WebhookWorker]]:
    env = {**ENV, "HARNESS_REDIS_CLUSTER": "1"} if cluster else ENV
    return workers(redis_url, tmp, count, env, **{**SETTINGS, **settings})


def flush(redis_url: str, *, cluster: bool = False) -> None:
    client = redis.RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()


async def run_load(
    balancer: Balancer, per_chat: int, fault: Callable[[], Awaitable[None]]
) -> NumberedFeed:
    """Every chat sends ``per_chat`` numbered messages through the balancer while
    ``fault`` runs beside them."""
    feed = NumberedFeed()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        load = asyncio.gather(*(feed.chat(http, balancer.url, chat, per_chat) for chat in CHATS))
        await fault()
        await load
    return feed


Fault = Callable[[list[WebhookWorker], Balancer], Awaitable[None]]


async def three_workers_with(
    redis_url: str,
    tmp: Path,
    fault: Fault,
    *,
    per_chat: int,
    timeout: float,
    cluster: bool = False,
    **settings: object,
) -> tuple[NumberedFeed, list[WebhookWorker]]:
    """Three workers behind a balancer (``timeout``: how long it waits for one), the
    load, and ``fault`` beside it; every worker still running is stopped (SIGTERM) and
    the stored sessions are checked against what was sent and acknowledged.
    ``cluster``: the URL names a node of a Redis Cluster; ``settings``: more of the
    workers' settings."""
    flush(redis_url, cluster=cluster)
    with partitioned_workers(redis_url, tmp, 3, cluster=cluster, **settings) as started:
        async with Balancer(timeout=timeout) as balancer:
            balancer.backends = [w.url for w in started]
            feed = await run_load(balancer, per_chat, lambda: fault(started, balancer))
        for worker in started:
            if worker.process is not None and worker.process.poll() is None:
                assert worker.stop() == 0, worker.output()
    feed.check(stored_sessions(redis_url, CHATS, cluster=cluster))
    return feed, started


def restarting(server: RedisServer) -> Fault:
    """A fault: ``server`` stopped a second into the load and started again 0.5 s later
    (it keeps an append-only file: what it acknowledged survives)."""

    async def restart(started: list[WebhookWorker], balancer: Balancer) -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)

    return restart


def refusing_scripts(redis_url: str, seconds: float) -> Fault:
    """A fault: a second into the load, Redis refuses ``EVALSHA`` and ``EVAL`` for
    ``seconds`` (``ACL SETUSER``): session loads and writes and lease renewals fail,
    forwards and reads go on."""

    async def refuse(started: list[WebhookWorker], balancer: Balancer) -> None:
        await asyncio.sleep(1.0)
        client = redis.Redis.from_url(redis_url)
        acl = functools.partial(client.execute_command, "ACL", "SETUSER", "default")
        try:
            await asyncio.to_thread(acl, "-evalsha", "-eval")
            await asyncio.sleep(seconds)
        finally:
            await asyncio.to_thread(acl, "+evalsha", "+eval")
            client.close()

    return refuse


def streams_left(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(
            int(client.xlen(key)) for key in client.scan_iter("actorsess:partitions:updates:*")
        )
    finally:
        client.close()


async def test_workers_joining_and_leaving_mid_load_lose_nothing_and_keep_order(
    redis_url: str, tmp_path: Path
) -> None:
    """Two workers, a third joins mid-load, then the first leaves (SIGTERM): its
    partitions' sessions are written and its streams trimmed before it goes."""
    redis.Redis.from_url(redis_url).flushdb()
    with partitioned_workers(redis_url, tmp_path, 2) as started:
        async with Balancer(timeout=5) as balancer:
            balancer.backends = [w.url for w in started]

            async def join_then_leave() -> None:
                await asyncio.sleep(1.0)
                # Off the loop: a worker takes seconds to start, and this loop is also
                # the balancer's and the senders' (blocked, every request would stall).
                joined = await asyncio.to_thread(
                    start_worker, redis_url, tmp_path / "joined.log", ENV, **SETTINGS
                )
                started.append(joined)
                balancer.backends.append(joined.url)
                await asyncio.sleep(1.5)
                leaving = started[0]
                balancer.backends.remove(leaving.url)
                await asyncio.sleep(0.3)  # what the balancer sent it is answered
                assert await asyncio.to_thread(leaving.stop) == 0, leaving.output()

            feed = await run_load(balancer, 100, join_then_leave)
        for worker in started[1:]:
            assert worker.stop() == 0, worker.output()
    stored = stored_sessions(redis_url, CHATS)
    feed.check(stored)
    assert not feed.failed, feed.failed[:5]
    assert streams_left(redis_url) == 0, "stream entries left untrimmed"


@pytest.mark.parametrize("on_cluster", [False, True], ids=["one-server", "cluster"])
async def test_a_killed_worker_loses_no_acknowledged_update(
    on_cluster: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """SIGKILL one of three mid-load: its partitions move once their leases lapse, and
    the updates forwarded to it (acknowledged at XADD) are handled by the next owner.
    On a 3-primary Redis Cluster too: each partition's lease, stream and sessions
    share a slot, and each worker reads its partitions slot by slot."""
    if on_cluster:
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_url")

    async def kill_one(started: list[WebhookWorker], balancer: Balancer) -> None:
        await asyncio.sleep(1.0)
        started[1].signal(signal.SIGKILL)
        await asyncio.sleep(0.5)  # until the balancer's health check notices
        balancer.backends.remove(started[1].url)

    feed, _ = await three_workers_with(
        url, tmp_path, kill_one, per_chat=100, timeout=5, cluster=on_cluster
    )
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 90


async def test_on_a_redis_cluster_a_primary_restart_loses_no_acknowledged_update(
    redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    """A cluster primary (append-only file) restarts mid-load: the partitions whose slots
    it serves are taken again once it is back, and every acknowledged update is in."""
    restart_node = restarting(redis_cluster.nodes[1])
    feed, _ = await three_workers_with(
        redis_cluster.url, tmp_path, restart_node, per_chat=100, timeout=5, cluster=True
    )
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 60


async def test_a_worker_stopped_past_its_lease_is_fenced_off(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP one of three for three lease times, then SIGCONT: the others take its
    partitions over; what it does after waking is refused, and nothing is lost."""

    async def pause_one(started: list[WebhookWorker], balancer: Balancer) -> None:
        await asyncio.sleep(1.0)
        started[1].signal(signal.SIGSTOP)
        await asyncio.sleep(3.0)
        started[1].signal(signal.SIGCONT)

    feed, started = await three_workers_with(
        redis_url, tmp_path, pause_one, per_chat=150, timeout=2
    )
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 120
    assert "partition.lost" in started[1].output()


async def test_a_redis_restart_mid_load_loses_no_acknowledged_update(tmp_path: Path) -> None:
    """Redis (append-only file) restarts mid-load: requests fail while it is down (not
    acknowledged), partitions are taken again, and every acknowledged update is in."""
    with RedisServer(appendonly=True) as server:
        feed, _ = await three_workers_with(
            server.url, tmp_path, restarting(server), per_chat=100, timeout=5
        )
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 60


async def test_redis_refusing_scripts_mid_load_loses_no_acknowledged_update(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis refuses scripts for 0.4 s mid-load (``ACL SETUSER default -evalsha
    -eval``: session loads and writes and a lease renewal fail, while forwards and
    reads go on), less than the leases last. Each worker caches 4 sessions of its 10
    chats, so the forwarded updates it reads meanwhile find their session's load
    failing: they run again in their place once scripts are back. Every acknowledged
    update is in, in order (before: those updates were counted as handled, and lost)."""

    feed, started = await three_workers_with(
        redis_url, tmp_path, refusing_scripts(redis_url, 0.4), per_chat=100, timeout=5, max_cached=4
    )
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 60
    assert any("forward.update_retry" in worker.output() for worker in started)


async def test_a_worker_told_to_stop_while_redis_refuses_scripts_exits_and_loses_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """A worker gets SIGTERM 0.3 s into 3 s of Redis refusing scripts: its forwarded
    updates that keep failing to load do not hold its exit up past its leases (they
    are dropped with their partitions, still in the streams), and the others handle
    them once scripts are back; every acknowledged update is in, in order."""
    refuse = refusing_scripts(redis_url, 3.0)
    exited: list[tuple[int, float]] = []

    async def stop_one_meanwhile(started: list[WebhookWorker], balancer: Balancer) -> None:
        async def stop_one() -> None:
            await asyncio.sleep(1.3)
            balancer.backends.remove(started[1].url)
            began = time.monotonic()
            code = await asyncio.to_thread(started[1].stop)
            exited.append((code, time.monotonic() - began))

        await asyncio.gather(refuse(started, balancer), stop_one())

    feed, started = await three_workers_with(
        redis_url, tmp_path, stop_one_meanwhile, per_chat=100, timeout=5, max_cached=4
    )
    [(code, took)] = exited
    assert code == 0, started[1].output()
    assert took < 5.0, took  # lease_time is 1 s
    assert sum(map(len, feed.acked.values())) > len(CHATS) * 50


@dataclass
class AdminBonus:
    """An admin process's changes per chat: attempted, and confirmed (returned)."""

    attempted: dict[int, int] = field(default_factory=dict)
    confirmed: dict[int, int] = field(default_factory=dict)

    async def run(self, redis_url: str, rounds: int) -> None:
        """A process that is no worker (its ``Partitions`` never started) adds 1 to every
        chat's ``bonus``, ``rounds`` times over, while the workers serve the chats."""
        storage = RedisStorage.from_url(redis_url)
        admin = SessionManager(
            storage,
            initial=new_session,
            config=SessionConfig(ownership="partitioned", lease_wait_timeout=3),
            partitions=Partitions(storage, count=64, lease_time=1),
        )
        bot_id = OFFLINE_TOKEN.split(":", 1)[0]

        def add_bonus(session: dict[str, Any]) -> None:
            session["bonus"] = session.get("bonus", 0) + 1

        async with admin:
            for _ in range(rounds):
                for chat in CHATS:
                    self.attempted[chat] = self.attempted.get(chat, 0) + 1
                    try:
                        await admin.update(f"session:{bot_id}:{chat}:{chat}", add_bonus)
                    except ActorSessError:
                        continue  # not confirmed: the count below allows for it
                    self.confirmed[chat] = self.confirmed.get(chat, 0) + 1

    def check(self, stored: dict[int, dict[str, object]]) -> None:
        for chat in CHATS:
            bonus = stored[chat].get("bonus", 0)
            assert isinstance(bonus, int)
            assert self.confirmed.get(chat, 0) <= bonus <= self.attempted.get(chat, 0), chat


async def test_an_admin_process_changes_sessions_through_their_owners_under_load(
    redis_url: str, tmp_path: Path
) -> None:
    """A process that owns no partition opens the workers' sessions while updates flow:
    each change goes through the session's owner in its turn, so neither the
    updates' counts nor the admin's are lost, and updates keep their order."""
    admin = AdminBonus()

    async def admin_rounds(started: list[WebhookWorker], balancer: Balancer) -> None:
        await asyncio.sleep(0.5)
        await admin.run(redis_url, rounds=3)

    feed, _ = await three_workers_with(redis_url, tmp_path, admin_rounds, per_chat=60, timeout=5)
    admin.check(stored_sessions(redis_url, CHATS))
    assert admin.confirmed == admin.attempted, "a change was not confirmed"
    assert not feed.failed, feed.failed[:5]


async def test_an_admin_change_confirmed_before_its_owner_is_killed_is_kept(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL a worker while the admin process works through the chats: a change the
    admin saw confirmed is stored, and none is stored twice; the loans asked of the
    dead worker wait in its partitions' streams and are served by their next owner
    (one in flight at the kill may fail unconfirmed, or be stored)."""
    admin = AdminBonus()

    async def admin_and_kill(started: list[WebhookWorker], balancer: Balancer) -> None:
        async def kill() -> None:
            await asyncio.sleep(1.0)
            started[1].signal(signal.SIGKILL)
            await asyncio.sleep(0.5)
            balancer.backends.remove(started[1].url)

        await asyncio.gather(admin.run(redis_url, rounds=6), kill())

    await three_workers_with(redis_url, tmp_path, admin_and_kill, per_chat=100, timeout=5)
    admin.check(stored_sessions(redis_url, CHATS))
    assert sum(admin.confirmed.values()) > len(CHATS) * 4
