"""The demo: the apple counter bot under real polling, many users at once, nothing lost.

A local Bot API server (``actorsess.testing.LocalBotAPI``) stands in for
Telegram; simulated users send messages concurrently; the bot runs
``dp.start_polling`` over HTTP on loopback with actorsess sessions in SQLite
(or Redis when ``ACTORSESS_REDIS_URL`` is set). At the end the counters are
read back from storage with a fresh manager and checked against what was sent.
Running it again continues the counts. With ``BOT_TOKEN`` set, the same bot
runs against real Telegram instead.

While it runs, the manager's metrics are served for Prometheus at
``http://127.0.0.1:<port>/metrics`` (``--metrics-port``; the Grafana dashboard in
``examples/grafana/`` reads them), and the demo scrapes them once at the end.
Logs show INFO and above, as a bot's would; ``--debug`` shows every event.

Then part two (``examples.shared_demo``): three webhook worker processes on
a private Redis with ``ownership="shared"``, each update sent to a random one
of them, and the same check; and part three, the same with
``ownership="partitioned"`` (updates forwarded to their partition's owner).
Skip both with ``--processes 0``.

    python -m examples.demo [--users 200] [--messages 25] [--db data/demo.sqlite3]
        [--processes 3] [--metrics-port 0] [--debug]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from actorsess import SessionConfig, SessionManager, Storage
from actorsess.prometheus import register_prometheus
from actorsess.testing import LocalBotAPI
from examples.apple_counter import build_dispatcher, make_storage, new_session
from examples.shared_demo import run_shared_demo

SHOWN_PER_EVENT = {"session.evict": 4, "session.load": 2}


class EventSampler:
    """Shows every flush, but only the first few of the chattier events."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        name = str(event.get("event"))
        self.seen[name] += 1
        limit = SHOWN_PER_EVENT.get(name)
        if limit is not None and self.seen[name] > limit:
            raise structlog.DropEvent
        if limit is not None and self.seen[name] == limit:
            event["note"] = f"further {name} events are counted, not shown"
        return event


def configure_logging(sampler: EventSampler, debug: bool) -> None:
    structlog.configure(
        processors=[
            sampler,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
    )
    logging.getLogger("aiogram").setLevel(logging.WARNING)


def storage_label() -> str:
    url = os.environ.get("ACTORSESS_REDIS_URL")
    return f"Redis ({url.rsplit('@', 1)[-1]})" if url else "SQLite"


async def read_counters(make: Any, keys: list[str]) -> dict[str, int]:
    """Apples per key, read straight from storage by a brand-new manager."""
    storage: Storage = make()
    async with SessionManager(storage, initial=new_session) as reader:
        values = await asyncio.gather(*(reader.get(key) for key in keys))
    return {key: value["apple"] for key, value in zip(keys, values, strict=True)}


def serve_metrics(sessions: SessionManager[Any], port: int) -> tuple[Any, str]:
    """Serve ``sessions``' metrics on ``port`` (0: any free one); the server and URL."""
    registry = CollectorRegistry()
    register_prometheus(sessions, namespace="demo", registry=registry)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return (server, thread), f"http://127.0.0.1:{server.server_address[1]}/metrics"


def scrape(url: str) -> dict[str, float]:
    """The demo's own /metrics, read as Prometheus would."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "le" not in sample.labels
    }


async def run_demo(args: argparse.Namespace) -> int:
    sampler = EventSampler()
    configure_logging(sampler, args.debug)

    def make() -> Storage:
        return make_storage(args.db)

    total = args.users * args.messages
    async with LocalBotAPI() as api:
        bot = api.bot()
        chats = [1_000_000 + i for i in range(args.users)]
        keys = [f"session:{api.bot_id}:{chat}:{chat}" for chat in chats]
        before = await read_counters(make, keys)
        config = SessionConfig(flush_interval=args.flush_interval, max_cached=args.max_cached)
        sessions = SessionManager(make(), initial=new_session, config=config)
        dp = build_dispatcher(sessions)
        metrics_server, metrics_url = (
            serve_metrics(sessions, args.metrics_port) if args.metrics_port >= 0 else (None, "")
        )
        if metrics_url:
            print(f"metrics for Prometheus: {metrics_url}")

        print(
            f"actorsess demo: {args.users} users x {args.messages} messages = {total} updates, "
            f"sessions in {storage_label()}, flush every {args.flush_interval}s, "
            f"cache of {args.max_cached}\n"
        )
        polling = asyncio.create_task(
            dp.start_polling(bot, handle_signals=False, polling_timeout=1)
        )
        started = time.monotonic()
        rng = random.Random()
        schedule = [chat for chat in chats for _ in range(args.messages)]
        rng.shuffle(schedule)

        async def users_send() -> None:
            for start in range(0, len(schedule), 250):
                for chat in schedule[start : start + 250]:
                    api.user_message(chat, "an apple, please")
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(users_send())
        last_count, last_time = 0, started
        while len(api.sent) < total:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            stats = sessions.stats()
            done = len(api.sent)
            print(
                f"[{now - started:5.1f}s] updates {done:>6}/{total}  "
                f"{(done - last_count) / (now - last_time):>7.0f}/s  "
                f"| cached {stats.cached - stats.parked:>4} (+{stats.parked} parked)  "
                f"dirty {stats.dirty:>4}  flushes {stats.flushes:>3}  written {stats.written:>6}  "
                f"evictions {stats.evictions:>5}",
                flush=True,
            )
            last_count, last_time = done, now
            if now - started > args.timeout:
                print(f"gave up after {args.timeout}s", file=sys.stderr)
                break
        elapsed = time.monotonic() - started
        await sender
        await dp.stop_polling()  # shutdown: the middleware closes the manager, flushing all
        await polling
        final_stats = sessions.stats()
        scraped = await asyncio.to_thread(scrape, metrics_url) if metrics_url else {}
        if metrics_server is not None:
            server, thread = metrics_server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    after = await read_counters(make, keys)
    sent_per_chat = Counter(schedule)
    gained = sum(after[k] - before[k] for k in keys)
    wrong = [
        k
        for k, chat in zip(keys, chats, strict=True)
        if after[k] - before[k] != sent_per_chat[chat]
    ]
    replies = Counter(m["chat_id"] for m in api.sent)
    print(
        f"\nsummary\n"
        f"  updates handled   {len(api.sent)} in {elapsed:.2f}s ({len(api.sent) / elapsed:.0f}/s)\n"
        f"  apples gained     {gained} (messages sent: {total}) read back from {storage_label()}\n"
        f"  users checked     {len(keys)}; wrong counters: {len(wrong)}\n"
        f"  storage writes    {final_stats.flushes} batches, {final_stats.written} sessions "
        f"({final_stats.written / max(total, 1):.3f} per update)\n"
        f"  evictions         {final_stats.evictions}\n"
        f"  highest count     {max(after.values())} apples "
        f"(run again: the counts continue)"
    )
    if scraped:
        print(
            f"  /metrics          turns {scraped['actorsess_turns_total']:.0f}, "
            f"flushes {scraped['actorsess_flushes_total']:.0f}, "
            f"sessions loaded {scraped['actorsess_sessions_loaded_total']:.0f}, "
            f"oldest unwritten {scraped['actorsess_oldest_unwritten_seconds']:.1f}s"
        )
    ok = gained == total and not wrong and sum(replies.values()) == total
    print("\nRESULT: " + ("nothing lost" if ok else f"MISMATCH in {wrong[:5]}"))
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--users", type=int, default=200, help="simulated users, each in its own chat"
    )
    parser.add_argument("--messages", type=int, default=25, help="messages per user")
    parser.add_argument(
        "--db", default="data/demo.sqlite3", help="SQLite file (unless ACTORSESS_REDIS_URL)"
    )
    parser.add_argument(
        "--flush-interval", type=float, default=0.5, help="seconds between batched writes"
    )
    parser.add_argument(
        "--max-cached",
        type=int,
        default=150,
        help="sessions kept in the cache (busy or dirty ones are parked above it, not dropped)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds to wait for every reply before the demo gives up",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="worker processes in parts two and three; 0 skips them",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="port of the Prometheus /metrics endpoint while it runs (0: any free port, -1: none)",
    )
    parser.add_argument("--debug", action="store_true", help="log debug events too")
    args = parser.parse_args()
    if os.environ.get("BOT_TOKEN"):
        from examples.apple_counter import main as real_main

        asyncio.run(real_main())
        return
    status = asyncio.run(run_demo(args))
    if args.processes and status == 0:
        status = asyncio.run(run_shared_demo(args.processes, users=100, messages=10))
    if args.processes and status == 0:
        status = asyncio.run(
            run_shared_demo(args.processes, users=100, messages=10, ownership="partitioned")
        )
    sys.exit(status)


if __name__ == "__main__":
    main()
