"""Several webhook worker processes on one Redis: actorsess shared mode vs aiogram's storages.

Worker processes (default 3) serve the same bot; the driver posts every update
(real Bot API JSON, over HTTP) to a worker picked at random, as a load
balancer without sticky sessions would, so one chat's updates reach several
processes at once. Each handler reads a counter, awaits once and writes it
+ 1 (no reply: a forwarded update's answer would be a Bot API call, and every
row does the same work). A 200 means handled, except in partitioned mode, where
it means stored in the partition's stream: there the run ends when the workers
report every update handled (``GET /handled``). Lost increments are read back
from Redis after the workers have stopped (SIGTERM); Redis commands come from
INFO commandstats (commands inside Lua scripts included) over the whole run,
shutdown flush included.

The first row is the ceiling: aiogram's MemoryStorage in each process, no
persistence and no coordination (it loses what another process counted); the
ratios are against it.

``--freeze-gc``: every worker, of every row, calls ``gc.freeze()`` once its app
is built, as a bot that freezes its start-up heap would; without it each full
collection scans aiogram's and pydantic's types again (about 216,000 objects).

Two workloads: "hot chats" (20 chats x 100 messages: several updates of one
chat in flight at once, the case isolation exists for) and "spread" (200
chats x 20 messages: most updates meet no other of their chat).

    .venv/bin/python -m benchmarks.multi_process [--workers 3] [--in-flight 128] [--rounds 3]
        [--scale 1] [--only partitioned,shared] [--breakdown] [--freeze-gc]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from actorsess.testing import LocalRedisCluster, RedisServer, message_update
from benchmarks._common import (
    flush_redis,
    machine,
    median,
    percentile,
    quiet_logs,
    redis_command_calls,
    redis_cpu_seconds,
    table,
)
from benchmarks._http import Pool
from harness.webhook_bot import stored_apples, stored_sessions
from harness.webhook_worker import WebhookWorker, all_handled, handled_counts, poll_workers

ROOT = Path(__file__).resolve().parent.parent
#: Partitions of the partitioned row (the harness's default).
PARTITIONS = 64


@dataclass(frozen=True)
class Row:
    name: str
    module: str
    args: tuple[str, ...] = ()
    ownership: str = "shared"
    #: Run against a local 3-primary Redis Cluster instead of one server.
    cluster: bool = False

    @property
    def actorsess(self) -> bool:
        return self.module == "harness.webhook_bot"

    @property
    def persists(self) -> bool:
        return "--memory" not in self.args


ROWS = [
    Row(
        "aiogram MemoryStorage per process (no persistence, lossy: the ceiling)",
        "benchmarks._aiogram_worker",
        ("--memory",),
    ),
    Row(
        "aiogram RedisStorage (default isolation)",
        "benchmarks._aiogram_worker",
        ("--isolation", "none"),
    ),
    Row(
        "aiogram RedisStorage + SimpleEventIsolation",
        "benchmarks._aiogram_worker",
        ("--isolation", "simple"),
    ),
    Row(
        "aiogram RedisStorage + RedisEventIsolation",
        "benchmarks._aiogram_worker",
        ("--isolation", "redis"),
    ),
    Row(
        "actorsess ownership=local, a key prefix per process (no coordination: the bound)",
        "harness.webhook_bot",
        ownership="local",
    ),
    Row("actorsess ownership=shared", "harness.webhook_bot"),
    Row(
        "actorsess ownership=partitioned (updates forwarded to the partition's owner)",
        "harness.webhook_bot",
        ownership="partitioned",
    ),
    Row(
        "actorsess ownership=partitioned on a 3-primary Redis Cluster",
        "harness.webhook_bot",
        ownership="partitioned",
        cluster=True,
    ),
]
CEILING = ROWS[0].name
ISOLATION = ROWS[3].name


@dataclass(frozen=True)
class Target:
    """Where a row runs: the URL its workers get, and every server to count and flush."""

    url: str
    servers: tuple[str, ...]
    cluster: bool = False


@dataclass
class Result:
    rate: float
    lost: int
    commands_per_update: float
    cpu_ms_per_update: float
    redis_cpu_us_per_update: float
    p50_ms: float
    p99_ms: float
    #: Calls per update of each Redis command (``--breakdown``).
    calls: dict[str, float]
    #: Updates the busiest worker's handler ran, over the workers' mean (actorsess rows).
    busiest: float | None
    #: Time from the last answered request to the last update handled (partitioned).
    drain_ms: float


async def run(row: Row, target: Target, args: argparse.Namespace, logs: Path) -> Result:
    url = target.url
    for server in target.servers:
        flush_redis(server)
    env = {"ACTORSESS_REDIS_URL": url, "ACTORSESS_OWNERSHIP": row.ownership, "HARNESS_REPLY": "0"}
    if args.freeze_gc:
        env["HARNESS_FREEZE_GC"] = "1"
    if target.cluster:
        env["HARNESS_REDIS_CLUSTER"] = "1"
    # Local mode serves one key space per process (a second one is refused), so the
    # no-coordination bound gives each process its own prefix: each counts its share
    # of a chat's updates, and the stored counts are summed over the prefixes.
    prefixes = [f"w{i}:" for i in range(args.workers)] if row.ownership == "local" else []
    workers = [
        WebhookWorker(
            row.module,
            logs / f"{i}.log",
            args=list(row.args),
            env={**env, "ACTORSESS_KEY_PREFIX": prefixes[i]} if prefixes else env,
            cwd=ROOT,
        )
        for i in range(args.workers)
    ]
    try:
        for worker in workers:
            worker.start()
        if row.ownership == "partitioned":
            await partitions_settled(workers)  # measure the steady state, not the joins
        chats = list(range(1, args.chats + 1))
        plan = [chat for chat in chats for _ in range(args.messages)]
        rng = random.Random(1)
        rng.shuffle(plan)
        latencies: list[float] = []
        failed = 0
        gate = asyncio.Semaphore(args.in_flight)
        pools = [Pool("127.0.0.1", w.port, "/webhook") for w in workers]
        requests = [(rng.choice(pools), chat) for chat in plan]
        prepared = [(pool, pool.request(message_update(chat, "apple"))) for pool, chat in requests]

        async def send(pool: Pool, request: bytes) -> None:
            nonlocal failed
            async with gate:
                started = time.perf_counter()
                failed += await pool.post(request) != 200
                latencies.append(time.perf_counter() - started)

        before = command_calls(target)
        redis_cpu_before = sum(map(redis_cpu_seconds, target.servers))
        cpu_before = sum(cpu_seconds(w.pid) for w in workers)
        started = time.perf_counter()
        await asyncio.gather(*(send(pool, request) for pool, request in prepared))
        answered = time.perf_counter() - started
        if row.ownership == "partitioned":
            await all_handled(workers, len(plan) - failed)
        elapsed = time.perf_counter() - started
        busiest = None
        if row.actorsess:
            shares = await handled_counts(workers)
            busiest = max(shares) / (sum(shares) / len(shares))
        cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
        for pool in pools:
            pool.close()
        for worker in workers:
            if worker.stop() != 0:
                raise RuntimeError(f"{row.name}: worker failed:\n{worker.output()}")
        after = command_calls(target)
        redis_cpu = sum(map(redis_cpu_seconds, target.servers)) - redis_cpu_before
    finally:
        for worker in workers:
            worker.kill()
    if not row.persists:
        stored = [0] * len(chats)
    elif target.cluster:
        apples = stored_sessions(url, chats, cluster=True)
        stored = [apples[chat].get("apple", 0) for chat in chats]
    elif prefixes:
        stored = stored_per_prefix(url, chats, prefixes)
    else:
        stored = await (stored_actorsess if row.actorsess else stored_aiogram)(url, chats)
    # Failed requests included: their updates are missing. Nothing is stored without
    # persistence, so there "lost" is only the failed requests.
    lost = len(plan) - sum(stored) if row.persists else failed
    calls = {  # INFO left out: the driver's own
        name: (n - before.get(name, 0)) / len(plan)
        for name, n in after.items()
        if name != "info" and n > before.get(name, 0)
    }
    return Result(
        len(plan) / elapsed,
        lost,
        sum(calls.values()),
        cpu / len(plan) * 1000,
        redis_cpu / len(plan) * 1e6,
        percentile(latencies, 0.5) * 1000,
        percentile(latencies, 0.99) * 1000,
        calls,
        busiest,
        (elapsed - answered) * 1000,
    )


def command_calls(target: Target) -> dict[str, int]:
    """Calls per command so far, summed over the target's servers."""
    total: dict[str, int] = {}
    for server in target.servers:
        for name, calls in redis_command_calls(server).items():
            total[name] = total.get(name, 0) + calls
    return total


async def partitions_settled(workers: list[WebhookWorker], timeout: float = 60) -> None:
    """Wait until every partition is owned and no worker is rebalancing."""

    def settled(answers: list[dict[str, Any]]) -> bool:
        return sum(a["owned"] for a in answers) == PARTITIONS and all(a["settled"] for a in answers)

    await poll_workers(workers, settled, timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stored_actorsess(url: str, chats: list[int]) -> list[int]:
    apples = await stored_apples(url, chats)
    return [apples[chat] for chat in chats]


def stored_per_prefix(url: str, chats: list[int], prefixes: list[str]) -> list[int]:
    """Apples per chat summed over the key prefixes of local-mode processes."""
    shares = [stored_sessions(url, chats, prefix) for prefix in prefixes]
    return [sum(share[chat].get("apple", 0) for share in shares) for chat in chats]


async def stored_aiogram(url: str, chats: list[int]) -> list[int]:
    client = redis.Redis.from_url(url)
    raw = client.mget([f"fsm:{c}:{c}:data" for c in chats])  # DefaultKeyBuilder
    client.close()
    return [json.loads(v).get("apple", 0) if v else 0 for v in raw]


#: (name, chats, messages per chat): a few busy group chats, and many quieter ones.
WORKLOADS = [("hot chats", 20, 100), ("spread", 200, 20)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="runs per row; the median is shown")
    parser.add_argument(
        "--scale",
        type=int,
        default=1,
        help="messages per chat times this (longer runs: steadier rates, slower benchmark)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print the Redis commands per update of each row, command by command",
    )
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="every worker (every row) calls gc.freeze() once its app is built, as a bot "
        "that freezes its start-up heap would",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated words: run only the rows whose name has one (the ceiling "
        "and RedisEventIsolation rows always run: the ratios need them)",
    )
    args = parser.parse_args()
    words = [w for w in args.only.split(",") if w]
    rows = [
        row
        for row in ROWS
        if not words or row.name in (CEILING, ISOLATION) or any(w in row.name for w in words)
    ]
    quiet_logs()
    frozen = ", start-up heap frozen (gc.freeze)" if args.freeze_gc else ""
    print(f"{args.workers} webhook workers, {args.in_flight} in flight{frozen}; {machine()}")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RedisServer())
        logs = stack.enter_context(tempfile.TemporaryDirectory())
        targets = {False: Target(server.url, (server.url,))}
        if any(row.cluster for row in rows):
            cluster = stack.enter_context(LocalRedisCluster())
            nodes = tuple(node.url for node in cluster.nodes)
            targets[True] = Target(cluster.url, nodes, cluster=True)
        for workload, chats, messages in WORKLOADS:
            args.chats, args.messages = chats, messages * args.scale
            results: dict[str, list[Result]] = {}
            for round_ in range(args.rounds):
                for row in rows:  # interleaved, so drift hits every row alike
                    where = Path(logs) / f"{workload}-{round_}-{row.module}"
                    result = await run(row, targets[row.cluster], args, where)
                    results.setdefault(row.name, []).append(result)
            print(
                f"\n{workload}: {chats} chats x {args.messages} messages routed at random, "
                f"median of {args.rounds} runs\n"
            )
            print(summary(results))
            if args.breakdown:
                print(breakdown(results))


def breakdown(results: dict[str, list[Result]]) -> str:
    """Each persisting row's Redis commands per update, command by command (median of
    the rounds; commands under 0.005 per update left out); then, run by run, each
    actorsess row's rate, how unevenly its workers' handlers shared the updates, and
    how long the last updates took to be handled after the last request was answered
    (a partitioned worker answers an update it forwards before its owner handles it)."""
    out = []
    for name, runs in results.items():
        names = sorted({command for r in runs for command in r.calls})
        per = {c: median([r.calls.get(c, 0.0) for r in runs]) for c in names}
        shown = sorted(((n, c) for c, n in per.items() if n >= 0.005), reverse=True)
        if shown:
            out.append([name, ", ".join(f"{c} {n:.2f}" for n, c in shown)])
    ceiling = median([r.rate for r in results[CEILING]])
    runs_out = [
        [
            name,
            " / ".join(f"{r.rate / ceiling:.2f}x" for r in runs),
            " / ".join(f"{r.busiest:.2f}" for r in runs),
            " / ".join(f"{r.drain_ms:.0f}" for r in runs),
        ]
        for name, runs in results.items()
        if all(r.busiest is not None for r in runs)
    ]
    headers = ["row", "vs ceiling, each run", "busiest worker / mean", "drain ms"]
    return (
        "\n" + table(["row", "Redis commands per update"], out) + "\n\n" + table(headers, runs_out)
    )


def summary(results: dict[str, list[Result]]) -> str:
    ceiling = median([r.rate for r in results[CEILING]])
    isolation = median([r.rate for r in results[ISOLATION]])
    out = []
    for name, runs in results.items():
        rate = median([r.rate for r in runs])
        out.append(
            [
                name,
                rate,
                f"{rate / ceiling:.2f}x",
                f"{rate / isolation:.2f}x",
                max(r.lost for r in runs),
                f"{median([r.commands_per_update for r in runs]):.2f}",
                f"{median([r.cpu_ms_per_update for r in runs]):.2f}",
                f"{median([r.redis_cpu_us_per_update for r in runs]):.1f}",
                median([r.p50_ms for r in runs]),
                median([r.p99_ms for r in runs]),
            ]
        )
    headers = [
        "row",
        "updates/s",
        "vs ceiling",
        "vs RedisEventIsolation",
        "lost (max)",
        "Redis cmds/update",
        "worker CPU ms/update",
        "Redis CPU µs/update",
    ]
    return table([*headers, "p50 ms", "p99 ms"], out)


if __name__ == "__main__":
    asyncio.run(main())
