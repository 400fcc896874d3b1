"""The demo, parts two and three: several bot processes on one Redis, updates routed
at random.

Starts a private redis-server and ``--processes`` webhook workers
(``harness.webhook_bot``), then posts every simulated user's messages, as real
Bot API update JSON, to a worker picked at random, as a load balancer without
sticky sessions would. One chat's updates reach several processes at once; the
counts read back from Redis must still match what was sent. With
``ownership="shared"`` the sessions move between the workers; with
``"partitioned"`` each worker owns partitions of the chats and the updates
move to their owner (a 200 then means "stored in the partition's stream", so
the demo waits until the workers report every update handled).

    python -m examples.shared_demo [--processes 3] [--users 100] [--messages 10]
        [--ownership shared|partitioned]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from actorsess.testing import RedisServer, message_update
from harness.webhook_bot import stored_apples
from harness.webhook_worker import WebhookWorker, all_handled

ROOT = Path(__file__).resolve().parent.parent


async def run_shared_demo(
    processes: int,
    users: int,
    messages: int,
    in_flight: int = 64,
    logs: Path | None = None,
    ownership: str = "shared",
) -> int:
    total = users * messages
    part = "three" if ownership == "partitioned" else "two"
    print(
        f"\nactorsess demo, part {part}: {processes} webhook worker processes on one Redis, "
        f"ownership={ownership!r}; {users} users x {messages} messages = {total} updates, "
        f"each sent to a random process\n",
        flush=True,
    )
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as scratch:
        log_dir = logs or Path(scratch)
        env = {
            "ACTORSESS_REDIS_URL": redis_server.url,
            "ACTORSESS_FLUSH_INTERVAL": "0.5",
            "ACTORSESS_OWNERSHIP": ownership,
            # No Telegram here: a forwarded update's answer would be a Bot API call.
            "HARNESS_REPLY": "0" if ownership == "partitioned" else "1",
        }
        workers = [
            WebhookWorker("harness.webhook_bot", log_dir / f"{i}.log", env=env, cwd=ROOT)
            for i in range(processes)
        ]
        try:
            for worker in workers:
                worker.start()
                print(f"  worker pid {worker.pid} serving {worker.url}", flush=True)
            chats = [2_000_000 + i for i in range(users)]
            schedule = [chat for chat in chats for _ in range(messages)]
            random.shuffle(schedule)
            gate = asyncio.Semaphore(in_flight)
            failed = 0
            started = time.monotonic()
            async with aiohttp.ClientSession() as http:

                async def send(chat: int) -> None:
                    nonlocal failed
                    async with gate:
                        url = random.choice(workers).url
                        async with http.post(url, json=message_update(chat, "apple")) as reply:
                            await reply.read()
                            failed += reply.status != 200

                await asyncio.gather(*(send(chat) for chat in schedule))
                if ownership == "partitioned":
                    await all_handled(workers, total - failed, timeout=60)
            elapsed = time.monotonic() - started
            for worker in workers:
                worker.stop()  # SIGTERM: each writes what it owns and lets go of its leases
        finally:
            for worker in workers:
                worker.kill()
        stored = await stored_apples(redis_server.url, chats)
    counted = sum(stored.values())
    wrong = [chat for chat, apples in stored.items() if apples != messages]
    print(
        f"\n  updates handled   {total - failed} in {elapsed:.2f}s ({total / elapsed:.0f}/s), "
        f"failed {failed}\n"
        f"  apples counted    {counted} (messages sent: {total}) read back from Redis\n"
        f"  users checked     {len(stored)}; wrong counters: {len(wrong)}"
    )
    ok = counted == total and not wrong and not failed
    print("\nRESULT: " + ("nothing lost" if ok else f"MISMATCH in {wrong[:5]}"), flush=True)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10, help="messages per user")
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep each worker's log in this folder"
    )
    parser.add_argument("--ownership", choices=["shared", "partitioned"], default="shared")
    args = parser.parse_args()
    sys.exit(
        asyncio.run(
            run_shared_demo(
                args.processes,
                args.users,
                args.messages,
                logs=args.logs,
                ownership=args.ownership,
            )
        )
    )


if __name__ == "__main__":
    main()
