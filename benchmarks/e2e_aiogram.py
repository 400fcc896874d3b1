"""End-to-end through a real aiogram Dispatcher: actorsess vs aiogram's own storages.

200 chats x 50 messages (10,000 real Update objects), 256 in flight; each
handler reads a counter, awaits once, writes counter + 1. The ceiling is aiogram's
MemoryStorage with no isolation (no persistence, loses increments); its row with
SimpleEventIsolation is the in-memory lossless reference, which, like every
correct row, queues the updates of one chat behind each other. Lost increments are
read back from storage afterwards; Redis commands come from INFO commandstats
(commands run inside Lua scripts included). The collector's full runs and total
pause during each run are shown because they, not the session layer, make most
of every row's p99: a full collection scans the 10,000 prebuilt Updates while
all 256 updates in flight wait. ``--freeze-gc`` moves those Updates (and
everything built before the runs) out of the collector's reach with
``gc.freeze()``, as a bot that freezes its start-up heap would, and shows what
is left: the per-chat queueing every lossless row pays.

    .venv/bin/python -m benchmarks.e2e_aiogram [--chats 200] [--messages 50] [--rounds 3]
                                               [--freeze-gc] [--no-cluster]

actorsess's middleware row runs over Redis, and also over the embedded SQLite
storage and a local 3-primary Redis Cluster (Redis commands summed over the
primaries).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.types import Message, Update
from prometheus_client import CollectorRegistry

import actorsess
from actorsess import testing
from actorsess.aiogram import ActorFSMStorage, SessionMiddleware
from actorsess.prometheus import register_prometheus
from actorsess.testing import LocalRedisCluster, RedisServer
from benchmarks._common import (
    CollectorWatch,
    flush_redis,
    machine,
    median,
    percentile,
    quiet_logs,
    redis_commands,
    table,
)

BOT_ID = 42
CEILING = "aiogram MemoryStorage (ceiling, no persistence)"
LOSSLESS_IN_MEMORY = "aiogram MemoryStorage + SimpleEventIsolation"


@dataclass
class Result:
    name: str
    rate: float
    lost: int
    commands_per_update: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    full_collections: int
    collector_pause_ms: float


@dataclass
class Run:
    """One pass of the updates through a dispatcher."""

    elapsed_s: float
    latencies_s: list[float]
    collector: CollectorWatch

    def result(self, name: str, lost: int, commands_per_update: float) -> Result:
        return Result(
            name,
            len(self.latencies_s) / self.elapsed_s,
            lost,
            commands_per_update,
            percentile(self.latencies_s, 0.5) * 1000,
            percentile(self.latencies_s, 0.99) * 1000,
            percentile(self.latencies_s, 0.999) * 1000,
            self.collector.full_collections,
            self.collector.pause_s * 1000,
        )


def message_update(chat: int) -> Update:
    """A private text message in ``chat``, as an aiogram Update."""
    return Update.model_validate(testing.message_update(chat, "apple"))


def make_updates(chats: int, messages: int, seed: int = 1) -> list[Update]:
    """``messages`` updates for each of ``chats`` chats, shuffled."""
    plan = [chat for chat in range(1, chats + 1) for _ in range(messages)]
    random.Random(seed).shuffle(plan)
    return [message_update(chat) for chat in plan]


async def drive(dp: Dispatcher, bot: Bot, updates: list[Update], in_flight: int) -> Run:
    latencies: list[float] = []
    limiter = asyncio.Semaphore(in_flight)

    async def one(update: Update) -> None:
        async with limiter:
            started = time.perf_counter()
            await dp.feed_update(bot, update)
            latencies.append(time.perf_counter() - started)

    await dp.emit_startup()
    with CollectorWatch() as collector:
        started = time.perf_counter()
        await asyncio.gather(*(one(u) for u in updates))
        elapsed = time.perf_counter() - started
    await dp.emit_shutdown()
    return Run(elapsed, latencies, collector)


def fsm_dispatcher(storage: BaseStorage, isolation: BaseEventIsolation | None) -> Dispatcher:
    dp = (
        Dispatcher(storage=storage, events_isolation=isolation)
        if isolation
        else Dispatcher(storage=storage)
    )

    @dp.message()
    async def handler(message: Message, state: FSMContext) -> None:
        n = (await state.get_data()).get("n", 0)
        await asyncio.sleep(0)
        await state.update_data(n=n + 1)

    return dp


def expected_counts(updates: list[Update]) -> Counter[int]:
    """Messages per chat in ``updates``: what each counter must reach."""
    return Counter(u.message.chat.id for u in updates if u.message is not None)


async def fsm_counts(storage: BaseStorage, chats: list[int]) -> list[int]:
    keys = [StorageKey(bot_id=BOT_ID, chat_id=c, user_id=c) for c in chats]
    return [int((await storage.get_data(k)).get("n", 0)) for k in keys]


Runner = Callable[[], Awaitable[Result]]


def middleware_dispatcher(manager: actorsess.SessionManager[dict[str, int]]) -> Dispatcher:
    """The benchmark's handler over actorsess's middleware: read, await once, write."""
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)

    @dp.message()
    async def handler(message: Message, session: dict[str, int]) -> None:
        n = session["n"]
        await asyncio.sleep(0)
        session["n"] = n + 1

    return dp


async def run_fsm(
    name: str,
    url: str | None,
    make: Callable[[], tuple[BaseStorage, BaseEventIsolation | None]],
    updates: list[Update],
    in_flight: int,
    reader: Callable[[], BaseStorage],
) -> Result:
    if url:
        flush_redis(url)
    storage, isolation = make()
    dp = fsm_dispatcher(storage, isolation)
    bot = Bot(f"{BOT_ID}:BENCH")
    before = redis_commands(url) if url else 0
    run = await drive(dp, bot, updates, in_flight)
    after = redis_commands(url) if url else 0
    expected = expected_counts(updates)
    read_back = reader() if url else storage
    counts = await fsm_counts(read_back, list(expected))
    if read_back is not storage:
        await read_back.close()
    await storage.close()
    if isolation is not None:
        await isolation.close()
    await bot.session.close()
    lost = sum(expected.values()) - sum(counts)
    return run.result(name, lost, (after - before - 1) / len(updates) if url else 0.0)


async def run_actorsess(
    url: str, updates: list[Update], in_flight: int, metrics: bool = False
) -> Result:
    name = "actorsess SessionMiddleware (Redis)" + (" + Prometheus collector" if metrics else "")
    flush_redis(url)
    return await run_middleware(
        name,
        lambda: actorsess.RedisStorage.from_url(url),
        updates,
        in_flight,
        lambda: redis_commands(url),
        metrics,
    )


async def run_middleware(
    name: str,
    make_storage: Callable[[], actorsess.Storage],
    updates: list[Update],
    in_flight: int,
    count_commands: Callable[[], int] | None = None,
    metrics: bool = False,
    servers: int = 1,
) -> Result:
    """The middleware row over any storage; ``count_commands`` reads the counters of
    ``servers`` Redis servers (None: no Redis involved), each reading one INFO."""
    manager = actorsess.SessionManager(
        make_storage(),
        initial=lambda: {"n": 0},
        config=actorsess.SessionConfig(flush_interval=1.0),
    )
    if metrics:  # what a Prometheus collector costs: turns counted, 1 in 16 timed
        register_prometheus(manager, registry=CollectorRegistry())
    dp = middleware_dispatcher(manager)
    bot = Bot(f"{BOT_ID}:BENCH")
    before = count_commands() if count_commands else 0
    run = await drive(dp, bot, updates, in_flight)
    after = count_commands() if count_commands else 0
    await bot.session.close()
    reader = actorsess.SessionManager(make_storage(), initial=lambda: {"n": 0})
    async with reader:
        expected = expected_counts(updates)
        values = await reader.get_many(f"session:{BOT_ID}:{c}:{c}" for c in expected)
    lost = sum(expected.values()) - sum(v["n"] for v in values.values())
    per_update = (after - before - servers) / len(updates) if count_commands else 0.0
    return run.result(name, lost, per_update)


def new_sqlite_file() -> Callable[[], actorsess.Storage]:
    """Storages over one new SQLite file (each run counts from zero; its reader reads
    the same file)."""
    path = os.path.join(tempfile.mkdtemp(prefix="actorsess-bench-"), "sessions.sqlite3")
    return lambda: actorsess.SqliteStorage(path)


def cluster_commands(cluster: LocalRedisCluster) -> int:
    return sum(redis_commands(f"redis://127.0.0.1:{port}") for port in cluster.primary_ports())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument(
        "--no-cluster",
        dest="cluster",
        action="store_false",
        help="leave out the row over a local 3-primary Redis Cluster",
    )
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="gc.freeze() the prebuilt Updates (and all else built before the runs)",
    )
    args = parser.parse_args()
    quiet_logs()
    updates = make_updates(args.chats, args.messages)
    if args.freeze_gc:
        gc.collect()
        gc.freeze()
    cluster_context = LocalRedisCluster() if args.cluster else contextlib.nullcontext()
    with RedisServer() as server, cluster_context as cluster:
        url = server.url
        rows: dict[str, list[Result]] = {}

        def actor_fsm() -> tuple[BaseStorage, BaseEventIsolation | None]:
            fsm = ActorFSMStorage(actorsess.RedisStorage.from_url(url))
            return fsm, fsm.create_isolation()

        def fsm(
            name: str,
            storage_url: str | None,
            make: Callable[[], tuple[BaseStorage, BaseEventIsolation | None]],
            reader: Callable[[], BaseStorage],
        ) -> tuple[str, Runner]:
            return name, lambda: run_fsm(name, storage_url, make, updates, args.in_flight, reader)

        def redis_reader() -> BaseStorage:
            return peer_redis(url)

        scenarios: list[tuple[str, Runner]] = [
            fsm(CEILING, None, lambda: (MemoryStorage(), None), MemoryStorage),
            fsm(
                LOSSLESS_IN_MEMORY,
                None,
                lambda: (MemoryStorage(), SimpleEventIsolation()),
                MemoryStorage,
            ),
            fsm(
                "aiogram RedisStorage (default isolation)",
                url,
                lambda: (peer_redis(url), None),
                redis_reader,
            ),
            fsm(
                "aiogram RedisStorage + SimpleEventIsolation",
                url,
                lambda: (peer_redis(url), SimpleEventIsolation()),
                redis_reader,
            ),
            fsm(
                "aiogram RedisStorage + RedisEventIsolation",
                url,
                lambda: _redis_with_isolation(url),
                redis_reader,
            ),
            (
                "actorsess SessionMiddleware (Redis)",
                lambda: run_actorsess(url, updates, args.in_flight),
            ),
            (
                "actorsess SessionMiddleware (Redis) + Prometheus collector",
                lambda: run_actorsess(url, updates, args.in_flight, metrics=True),
            ),
            fsm(
                "actorsess ActorFSMStorage (Redis)",
                url,
                actor_fsm,
                lambda: ActorFSMStorage(actorsess.RedisStorage.from_url(url)),
            ),
        ]
        scenarios.append(
            (
                "actorsess SessionMiddleware (SQLite)",
                lambda: run_middleware(
                    "actorsess SessionMiddleware (SQLite)",
                    new_sqlite_file(),
                    updates,
                    args.in_flight,
                ),
            )
        )
        if cluster is not None:
            on_cluster = cluster
            scenarios.append(
                (
                    "actorsess SessionMiddleware (Redis Cluster, 3 primaries)",
                    lambda: run_middleware(
                        "actorsess SessionMiddleware (Redis Cluster, 3 primaries)",
                        lambda: actorsess.RedisStorage.from_url(on_cluster.url, cluster=True),
                        updates,
                        args.in_flight,
                        lambda: cluster_commands(on_cluster),
                        servers=len(on_cluster.primary_ports()),
                    ),
                )
            )
        for _ in range(args.rounds):
            for name, runner in scenarios:  # interleaved, so drift hits every row alike
                rows.setdefault(name, []).append(await runner())
    ceiling = median([r.rate for r in rows[CEILING]])
    ceiling_p99 = median([r.p99_ms for r in rows[CEILING]])
    lossless_p99 = median([r.p99_ms for r in rows[LOSSLESS_IN_MEMORY]])
    out = []
    for name, results in rows.items():
        rate = median([r.rate for r in results])
        p99 = median([r.p99_ms for r in results])
        out.append(
            [
                name,
                rate,
                f"{rate / ceiling:.2f}x",
                max(r.lost for r in results),
                f"{median([r.commands_per_update for r in results]):.3f}",
                median([r.p50_ms for r in results]),
                p99,
                f"{p99 / ceiling_p99:.2f}x",
                f"{p99 / lossless_p99:.2f}x",
                median([r.p999_ms for r in results]),
                f"{median([r.full_collections for r in results]):g}",
                median([r.collector_pause_ms for r in results]),
            ]
        )
    frozen = ", prebuilt Updates frozen (gc.freeze)" if args.freeze_gc else ""
    print(
        f"\nend-to-end, {len(updates)} updates over {args.chats} chats, "
        f"{args.in_flight} in flight, median of {args.rounds} runs{frozen}; {machine()}\n"
    )
    print(
        table(
            [
                "row",
                "updates/s",
                "vs ceiling",
                "lost (max)",
                "Redis cmds/update",
                "p50 ms",
                "p99 ms",
                "p99 vs ceiling",
                "p99 vs lossless in-memory",
                "p99.9 ms",
                "full GCs",
                "GC pause ms",
            ],
            out,
        )
    )


def peer_redis(url: str) -> RedisStorage:
    """aiogram's RedisStorage on a blocking pool: its default pool raises
    MaxConnectionsError past 100 connections in flight."""
    from redis.asyncio import BlockingConnectionPool, Redis

    pool = BlockingConnectionPool.from_url(url, max_connections=100, timeout=30)
    return RedisStorage(Redis(connection_pool=pool))


def _redis_with_isolation(url: str) -> tuple[BaseStorage, BaseEventIsolation | None]:
    storage = peer_redis(url)
    return storage, storage.create_isolation()


if __name__ == "__main__":
    asyncio.run(main())
