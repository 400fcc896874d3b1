"""Forwarding updates to their partition's owner: Redis Streams, Redis pub/sub, RabbitMQ.

The measurement behind the choice of transport for scale-out by update
forwarding: a worker that receives an update for a chat whose partition another
worker owns hands the raw update to that owner and acknowledges the webhook once
the transport has taken it. Here each of W worker processes is both: it receives
its share of the updates (each update goes to a worker picked at random, as a
load balancer without sticky sessions does) and owns P / W of the P partitions
(a chat's partition is fixed by a hash of its id). Every row moves the same
updates, in one run, rows interleaved:

- **Redis Streams**: one stream per partition; a receiver sends its updates as
  ``XADD`` (one command each, pipelined on one connection, so one receiver's
  updates keep their order); the owner reads its streams with ``XREAD BLOCK``
  and trims what it has read (``XTRIM MINID``, once per stream per read).
- **Redis pub/sub**: ``PUBLISH`` to the owner's channel. At most once: an owner
  that is not subscribed at that moment (restarting, reconnecting) never gets
  the update, so it cannot back "nothing acknowledged is lost"; shown as the
  floor of what forwarding over Redis costs.
- **RabbitMQ**: a consistent-hash exchange routes each update by chat id to one
  of P durable queues, each with ``x-single-active-consumer`` (the broker itself
  keeps one consumer per partition, and fails over to a standby); persistent
  messages, publisher confirms (the webhook is acknowledged once the broker has
  the update on disk), manual acks; client aiormq, the protocol library under
  aio-pika, which costs less CPU per message. A second row sends transient
  messages: what the broker costs without writing each update to disk.

Per row: updates forwarded per second (first send to last receipt), the
receiver's hand-off latency (send to the transport's acknowledgement, per batch
of ``--in-flight`` updates), the server's CPU time per 1,000 updates (Redis:
``INFO cpu``; RabbitMQ: every process of the node), the workers' own CPU per
update, Redis commands per update, and checks: every update received exactly
once, and each chat's updates from one receiver in the order sent.

Then the same with a fault: worker 0 only owns (it receives no webhooks, so no
unanswered one dies with it) and is killed with SIGKILL once half the updates
have arrived; worker 1 then takes its partitions over (Streams: reads them from
what is left; pub/sub: subscribes to its channel; RabbitMQ: consumes its queues,
to which the broker has returned what the dead consumer had not acknowledged).
The table shows what was lost, received twice, or out of order.

    .venv/bin/python -m benchmarks.forwarding [--workers 3] [--partitions 12]
        [--chats 2000] [--updates 30000] [--in-flight 64] [--rounds 3]

Needs ``redis-server`` and RabbitMQ's package (``rabbitmq-server``, with the
``rabbitmq_consistent_hash_exchange`` plugin it ships); both are started
privately, on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.abc
import redis
import redis.asyncio as redis_asyncio

from actorsess.testing import RedisServer
from benchmarks._common import (
    machine,
    median,
    percentile,
    redis_commands,
    redis_cpu_seconds,
    table,
)
from harness.rabbitmq import RabbitServer

TRANSPORTS = ("redis-streams", "redis-pubsub", "rabbitmq", "rabbitmq-transient")
ROW_NAMES = {
    "redis-streams": "Redis Streams (XADD / XREAD, one stream per partition)",
    "redis-pubsub": "Redis pub/sub (PUBLISH to the owner; at most once)",
    "rabbitmq": "RabbitMQ consistent-hash exchange, single-active-consumer queues",
    "rabbitmq-transient": "RabbitMQ, the same with transient messages (lost on broker restart)",
}
EXCHANGE = "actorsess.forward"
#: About the size of a Telegram text-message update's JSON.
PADDING = b"x" * 300


def partition_of(chat: int, partitions: int) -> int:
    return zlib.crc32(str(chat).encode()) % partitions


def update_body(chat: int, receiver: int, seq: int, uid: int) -> bytes:
    """The chat first (RabbitMQ's row routes on it), then what the checks read."""
    return b"%d:%d:%d:%d:%b" % (chat, receiver, seq, uid, PADDING)


@dataclass
class WorkerSpec:
    index: int
    workers: int
    partitions: int
    transport: str
    url: str
    #: (chat, seq, update id) of the updates this worker receives, in arrival order.
    sends: list[tuple[int, int, int]]
    in_flight: int
    #: The worker whose partitions this one takes over when told (the fault run).
    standby_for: int | None = None

    def partitions_of(self, worker: int) -> list[int]:
        return [p for p in range(self.partitions) if p % self.workers == worker]


GO, DONE, TAKEOVER = range(3)


async def until(flags: Any, which: int) -> None:
    """Return once the driver has set ``flags[which]``."""
    while not flags[which]:  # noqa: ASYNC110 - set by another process: nothing to await
        await asyncio.sleep(0.005)


@dataclass
class Shared:
    """What the driver and the workers of one run share. The counts are written by one
    worker each, with no lock: a worker killed by SIGKILL holding a lock would stop
    every other process at its next count."""

    #: Updates received per worker, duplicates included.
    received: Any
    #: Receipts per worker and update id, row by row (``worker * updates + id``): an
    #: update with none in any row is lost, with two or more duplicated.
    receipts: Any
    updates: int
    #: GO, DONE and TAKEOVER, set by the driver. Plain flags the workers poll, not
    #: multiprocessing Events: setting an Event waits for every process waiting on it
    #: to wake, and a killed one never does.
    flags: Any
    ready: Any
    out: Any

    def total_received(self) -> int:
        return sum(self.received[:])

    def receipts_per_update(self) -> list[int]:
        counts = [0] * self.updates
        rows = self.receipts[:]
        for row in range(len(rows) // self.updates):
            for uid, n in enumerate(rows[row * self.updates : (row + 1) * self.updates]):
                counts[uid] += n
        return counts


@dataclass
class WorkerReport:
    out_of_order: int
    handoff_s: list[float]
    cpu_s: float


class Owner:
    """What an owner checks of what it receives, and counts where the driver sees it."""

    def __init__(self, shared: Shared, worker: int) -> None:
        self._last: dict[tuple[bytes, bytes], int] = {}
        self._shared = shared
        self._worker = worker
        self._row = worker * shared.updates
        self.out_of_order = 0

    def take(self, bodies: list[bytes]) -> None:
        receipts = self._shared.receipts
        for body in bodies:
            chat, receiver, seq_text, uid, _ = body.split(b":", 4)
            seq = int(seq_text)
            if self._last.get((chat, receiver), -1) > seq:
                self.out_of_order += 1
            self._last[(chat, receiver)] = seq
            receipts[self._row + int(uid)] += 1
        self._shared.received[self._worker] += len(bodies)


Sender = Callable[[list[tuple[int, bytes]]], Awaitable[None]]
#: Starts receiving ``partitions`` of the dead ``worker`` as well.
TakeOver = Callable[[list[int], int], Awaitable[None]]


async def _redis_streams(
    spec: WorkerSpec, owner: Owner, stop: asyncio.Event
) -> tuple[Sender, TakeOver]:
    client = redis_asyncio.Redis.from_url(spec.url)
    reader = redis_asyncio.Redis.from_url(spec.url)
    mine = {f"fwd:{p}": "0-0" for p in spec.partitions_of(spec.index)}

    async def consume() -> None:
        while not stop.is_set():
            # RESP2 replies: [[stream, [(id, {field: value}), ...]], ...]
            replies: Any = await reader.xread(mine, count=1000, block=200)  # type: ignore[arg-type]
            if not replies:
                continue
            trim = reader.pipeline(transaction=False)
            for stream, entries in replies:
                owner.take([fields[b"u"] for _, fields in entries])
                last = entries[-1][0]
                mine[stream.decode()] = last.decode()
                # Acknowledged by trimming what was read (the last entry stays: an
                # owner that takes over reads from the start of what is left).
                trim.xtrim(stream, minid=last)
            await trim.execute()

    asyncio.get_running_loop().create_task(consume())

    async def send(batch: list[tuple[int, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for partition, body in batch:
            pipe.xadd(f"fwd:{partition}", {"u": body})
        await pipe.execute()

    async def take_over(partitions: list[int], worker: int) -> None:
        mine.update({f"fwd:{p}": "0-0" for p in partitions})  # the next XREAD has them

    return send, take_over


async def _redis_pubsub(
    spec: WorkerSpec, owner: Owner, stop: asyncio.Event
) -> tuple[Sender, TakeOver]:
    client = redis_asyncio.Redis.from_url(spec.url)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"fwd:w{spec.index}")

    async def consume() -> None:
        while not stop.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                owner.take([message["data"]])

    asyncio.get_running_loop().create_task(consume())

    async def send(batch: list[tuple[int, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for partition, body in batch:
            pipe.publish(f"fwd:w{partition % spec.workers}", body)
        await pipe.execute()

    async def take_over(partitions: list[int], worker: int) -> None:
        await pubsub.subscribe(f"fwd:w{worker}")  # what was published meanwhile is gone

    return send, take_over


async def _rabbitmq(
    spec: WorkerSpec, owner: Owner, stop: asyncio.Event, *, durable: bool = True
) -> tuple[Sender, TakeOver]:
    # aiormq, the protocol library under aio-pika: the same broker work at a fraction
    # of the client's CPU per message.
    connection = await aiormq.connect(spec.url)
    publishing = await connection.channel(publisher_confirms=True)
    consuming = await connection.channel()
    await consuming.basic_qos(prefetch_count=1000)
    # 2: written to disk before the confirm; 1: kept in memory (lost if the broker restarts).
    properties = aiormq.spec.Basic.Properties(delivery_mode=2 if durable else 1)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        owner.take([message.body])
        assert message.delivery_tag is not None  # consumed with acks
        await consuming.basic_ack(message.delivery_tag)

    async def take_over(partitions: list[int], worker: int) -> None:
        # The dead consumer's unacknowledged messages went back to its queues when its
        # connection closed; this consumer becomes the queues' single active one.
        for p in partitions:
            await consuming.basic_consume(f"fwd.{p}", on_message)

    await take_over(spec.partitions_of(spec.index), spec.index)

    async def send(batch: list[tuple[int, bytes]]) -> None:
        # Published in order on one channel; each awaits the broker's confirm.
        await asyncio.gather(
            *(
                publishing.basic_publish(
                    body,
                    exchange=EXCHANGE,
                    routing_key=body.split(b":", 1)[0].decode(),
                    properties=properties,
                )
                for _, body in batch
            )
        )

    return send, take_over


async def _rabbitmq_transient(
    spec: WorkerSpec, owner: Owner, stop: asyncio.Event
) -> tuple[Sender, TakeOver]:
    return await _rabbitmq(spec, owner, stop, durable=False)


TRANSPORT_SETUP = {
    "redis-streams": _redis_streams,
    "redis-pubsub": _redis_pubsub,
    "rabbitmq": _rabbitmq,
    "rabbitmq-transient": _rabbitmq_transient,
}


async def _work(spec: WorkerSpec, shared: Shared) -> WorkerReport:
    owner = Owner(shared, spec.index)
    stop = asyncio.Event()
    send, take_over = await TRANSPORT_SETUP[spec.transport](spec, owner, stop)
    shared.ready.put(spec.index)
    await until(shared.flags, GO)
    if spec.standby_for is not None:
        dead = spec.standby_for

        async def stand_by() -> None:
            await until(shared.flags, TAKEOVER)
            if not stop.is_set():
                await take_over(spec.partitions_of(dead), dead)

        asyncio.get_running_loop().create_task(stand_by())
    cpu_before = time.process_time()
    handoff: list[float] = []
    updates = [
        (partition_of(chat, spec.partitions), update_body(chat, spec.index, seq, uid))
        for chat, seq, uid in spec.sends
    ]
    for start in range(0, len(updates), spec.in_flight):
        began = time.perf_counter()
        await send(updates[start : start + spec.in_flight])
        handoff.append(time.perf_counter() - began)
    # Keep consuming until the driver has seen every update arrive (or given up).
    await until(shared.flags, DONE)
    stop.set()
    cpu = time.process_time() - cpu_before
    return WorkerReport(owner.out_of_order, handoff, cpu)


def worker_main(spec: WorkerSpec, shared: Shared) -> None:
    report = asyncio.run(_work(spec, shared))
    shared.out.put((spec.index, report))


@dataclass
class Row:
    rate: float
    handoff_p50_ms: float
    handoff_p99_ms: float
    server_cpu_ms_per_1k: float
    worker_cpu_us: float
    commands_per_update: float
    lost: int
    duplicates: int
    out_of_order: int


def plan(receivers: int, chats: int, updates: int, seed: int) -> list[list[tuple[int, int, int]]]:
    """Each receiver's arrivals: (chat, seq, update id), seq counting each chat's
    updates."""
    rng = random.Random(seed)
    seqs = [0] * (chats + 1)
    arrivals: list[list[tuple[int, int, int]]] = [[] for _ in range(receivers)]
    for uid in range(updates):
        chat = rng.randint(1, chats)
        seqs[chat] += 1
        arrivals[rng.randrange(receivers)].append((chat, seqs[chat], uid))
    return arrivals


def redis_cpu_and_commands(url: str) -> tuple[float, int]:
    return redis_cpu_seconds(url), redis_commands(url)


async def declare_rabbit(url: str, partitions: int) -> None:
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    await channel.exchange_declare(EXCHANGE, exchange_type="x-consistent-hash", durable=True)
    for p in range(partitions):
        queue = f"fwd.{p}"
        await channel.queue_declare(
            queue, durable=True, arguments={"x-single-active-consumer": True}
        )
        await channel.queue_purge(queue)
        await channel.queue_bind(queue, EXCHANGE, routing_key="1")  # weight 1 on the ring
    await connection.close()


def run_row(
    transport: str, url: str, args: argparse.Namespace, rabbit: RabbitServer, *, kill: bool
) -> Row:
    """One run. With ``kill``, worker 0 only owns (it receives nothing, so no update
    is lost with a webhook it had not answered); it is killed with SIGKILL once half
    the updates have arrived, and worker 1 then takes its partitions over."""
    if transport.startswith("rabbitmq"):
        asyncio.run(declare_rabbit(url, args.partitions))
        server_cpu = rabbit.cpu_seconds
        commands: Callable[[], int] = lambda: 0  # noqa: E731 - no Redis in this row
    else:
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()

        def server_cpu() -> float:
            return redis_cpu_and_commands(url)[0]

        def commands() -> int:
            return redis_cpu_and_commands(url)[1]

    receivers = list(range(1, args.workers)) if kill else list(range(args.workers))
    arrivals = plan(len(receivers), args.chats, args.updates, seed=7)
    sends: list[list[tuple[int, int, int]]] = [[] for _ in range(args.workers)]
    for receiver, share in zip(receivers, arrivals, strict=True):
        sends[receiver] = share
    context = multiprocessing.get_context("spawn")
    shared = Shared(
        received=context.Array("q", args.workers, lock=False),
        receipts=context.Array("i", args.workers * args.updates, lock=False),
        updates=args.updates,
        flags=context.Array("b", 3, lock=False),
        ready=context.Queue(),
        out=context.Queue(),
    )
    specs = [
        WorkerSpec(
            i,
            args.workers,
            args.partitions,
            transport,
            url,
            sends[i],
            args.in_flight,
            standby_for=0 if kill and i == 1 else None,
        )
        for i in range(args.workers)
    ]
    processes = [context.Process(target=worker_main, args=(spec, shared)) for spec in specs]
    for process in processes:
        process.start()
    for _ in processes:
        shared.ready.get(timeout=120)
    cpu_before, commands_before = server_cpu(), commands()
    started = time.perf_counter()
    shared.flags[GO] = 1
    killed = False
    last_count, last_change = 0, started
    while (count := shared.total_received()) < args.updates:
        now = time.perf_counter()
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > 3.0:
            break  # nothing arrives any more: the rest is lost
        if kill and not killed and count >= args.updates // 2:
            processes[0].kill()
            processes[0].join()
            killed = True
            shared.flags[TAKEOVER] = 1
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    cpu_after, commands_after = server_cpu(), commands()
    shared.flags[DONE] = 1
    reports = [shared.out.get(timeout=120)[1] for _ in processes[1 if kill else 0 :]]
    for process in processes:
        process.join(timeout=30)
    receipts = shared.receipts_per_update()
    handoff = [s for r in reports for s in r.handoff_s]
    return Row(
        rate=shared.total_received() / elapsed,
        handoff_p50_ms=percentile(handoff, 0.5) * 1000,
        handoff_p99_ms=percentile(handoff, 0.99) * 1000,
        server_cpu_ms_per_1k=(cpu_after - cpu_before) * 1000 / args.updates * 1000,
        worker_cpu_us=sum(r.cpu_s for r in reports) / args.updates * 1e6,
        commands_per_update=(commands_after - commands_before) / args.updates,
        lost=receipts.count(0),
        duplicates=sum(n - 1 for n in receipts if n > 1),
        out_of_order=sum(r.out_of_order for r in reports),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--chats", type=int, default=2000)
    parser.add_argument("--updates", type=int, default=30_000)
    parser.add_argument("--in-flight", type=int, default=64, help="updates per hand-off batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed in the fault runs)")
    rows: dict[tuple[str, bool], list[Row]] = {}
    with RedisServer() as server, RabbitServer() as rabbit:
        urls = {t: rabbit.url if t.startswith("rabbitmq") else server.url for t in TRANSPORTS}
        for _ in range(args.rounds):
            for kill in (False, True):
                for transport in TRANSPORTS:  # interleaved, so drift hits every row alike
                    rows.setdefault((transport, kill), []).append(
                        run_row(transport, urls[transport], args, rabbit, kill=kill)
                    )
    print(
        f"\nforwarding {args.updates} updates of {len(PADDING)}+ bytes over {args.chats} chats, "
        f"{args.workers} workers, {args.partitions} partitions, hand-off batches of "
        f"{args.in_flight}, median of {args.rounds} runs; {machine()}\n"
    )
    checks = ["lost (max)", "duplicated (max)", "out of order (max)"]
    print(
        table(
            [
                "transport",
                "updates/s",
                "hand-off p50 ms",
                "hand-off p99 ms",
                "server CPU ms / 1k updates",
                "worker CPU µs / update",
                "Redis cmds/update",
                *checks,
            ],
            [
                [
                    ROW_NAMES[transport],
                    median([r.rate for r in results]),
                    median([r.handoff_p50_ms for r in results]),
                    median([r.handoff_p99_ms for r in results]),
                    median([r.server_cpu_ms_per_1k for r in results]),
                    median([r.worker_cpu_us for r in results]),
                    f"{median([r.commands_per_update for r in results]):.3f}",
                    *_checks(results),
                ]
                for (transport, kill), results in rows.items()
                if not kill
            ],
        )
    )
    print(
        "\nworker 0 (an owner only) killed with SIGKILL halfway; worker 1 takes its "
        "partitions over:\n"
    )
    print(
        table(
            ["transport", *checks],
            [
                [ROW_NAMES[transport], *_checks(results)]
                for (transport, kill), results in rows.items()
                if kill
            ],
        )
    )


def _checks(results: list[Row]) -> list[int]:
    return [
        max(r.lost for r in results),
        max(r.duplicates for r in results),
        max(r.out_of_order for r in results),
    ]


if __name__ == "__main__":
    main()
