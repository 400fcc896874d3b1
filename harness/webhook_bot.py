"""The webhook worker of this project's multi-process tests, benchmarks and demo: the
apple counter on one Redis, ``ownership="shared"``, several of it behind a balancer.

    ACTORSESS_REDIS_URL=redis://127.0.0.1:6379/0 python -m harness.webhook_bot --port 0

One chat's updates may reach any worker, even several at once; each session is
owned by one worker at a time and handed over on demand (see the "Several
processes" page). The handler awaits once between reading and writing the
counter, as a real handler awaits a database or API call, so a lost update
would show.

Replies go back in the webhook response (no outgoing Bot API call), and the
response is sent once the handler is done, so a 200 means "handled".
The worker prints ``READY <port>`` once it serves, and on SIGTERM or SIGINT
writes every session and releases its leases before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
from typing import Any

import redis
import structlog
from aiogram import Bot, Dispatcher, F
from aiogram.methods import SendMessage
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from actorsess import Partitions, RedisStorage, SessionConfig, SessionManager
from actorsess.aiogram import ForwardingRequestHandler, SessionMiddleware

WEBHOOK_PATH = "/webhook"
#: A syntactically valid token for running without Telegram (tests, benchmarks).
OFFLINE_TOKEN = "123456789:LOCAL-actorsess-demo-token"

#: ``{"apple": <count>}``, and ``"seen"``: the numbers of numbered messages, in the
#: order they were handled (the partitioned-mode fault tests check order with it).
Apples = dict[str, Any]

#: Whether the handler answers (in the webhook response; a forwarded update's
#: answer is a Bot API call). ``HARNESS_REPLY=0`` turns it off: the
#: benchmark of the partitioned mode compares rows doing the same work, and
#: runs with no Telegram to call.
REPLY = os.environ.get("HARNESS_REPLY", "1") != "0"
#: ``HARNESS_REDIS_CLUSTER=1``: the URL names a node of a Redis Cluster.
CLUSTER = os.environ.get("HARNESS_REDIS_CLUSTER") == "1"
#: How many partitions chats hash to in partitioned mode (``HARNESS_PARTITIONS``).
PARTITIONS = int(os.environ.get("HARNESS_PARTITIONS", "64"))
#: ``HARNESS_FREEZE_GC=1``: ``gc.freeze()`` once the app is built (see ``freeze_start_up``).
FREEZE_GC = os.environ.get("HARNESS_FREEZE_GC") == "1"
#: Updates this worker's handler ran (served at ``GET /handled``).
handled = 0


def new_session() -> Apples:
    return {"apple": 0}


def build_dispatcher(sessions: SessionManager[Apples]) -> Dispatcher:
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)

    @dp.message(F.text)
    async def on_message(message: Message, session: Apples) -> SendMessage | None:
        global handled
        apples = session["apple"]
        await asyncio.sleep(0)  # stands for the database or API call a real handler awaits
        session["apple"] = apples + 1
        if message.text and message.text.isdigit():
            session.setdefault("seen", []).append(int(message.text))
        handled += 1
        if not REPLY:
            return None
        return message.answer(f"🍏 apples: {apples + 1}")

    return dp


def build_app(redis_url: str, token: str) -> web.Application:
    config = SessionConfig.from_env()
    storage = RedisStorage.from_url(redis_url, cluster=CLUSTER)
    app = web.Application()
    if config.ownership == "partitioned":
        # Several workers own partitions of the chats; updates move to their owner.
        partitions = Partitions(storage, count=PARTITIONS, lease_time=config.lease_time)
        sessions = SessionManager(
            storage, initial=new_session, config=config, partitions=partitions
        )
        dp = build_dispatcher(sessions)
        handler: SimpleRequestHandler = ForwardingRequestHandler(dp, Bot(token), partitions)
    else:
        sessions = SessionManager(storage, initial=new_session, config=config)
        dp = build_dispatcher(sessions)
        handler = SimpleRequestHandler(dispatcher=dp, bot=Bot(token), handle_in_background=False)
    handler.register(app, path=WEBHOOK_PATH)
    setup_application(app, dp)
    app.router.add_get("/handled", count_handled)
    if config.ownership == "partitioned":
        app["partitions"] = partitions
    return app


async def count_handled(request: web.Request) -> web.Response:
    """Updates handled here; in partitioned mode also the partitions owned, and whether
    this worker's share is settled (no rebalance under way)."""
    answer: dict[str, object] = {"handled": handled}
    partitions = request.app.get("partitions")
    if partitions is not None:
        answer.update(owned=len(partitions.until), settled=partitions.settled)
    return web.json_response(answer)


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, printing ``READY <port>`` once it listens;
    the app's cleanup then runs the dispatcher's shutdown (final flush, leases released)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()
    print("STOPPED", flush=True)


async def stored_apples(redis_url: str, chats: list[int]) -> dict[int, int]:
    """Apples per private chat as stored in Redis, read as an admin process does: with a
    shared-mode manager of its own, which the workers hand the sessions to."""
    bot_id = OFFLINE_TOKEN.split(":", 1)[0]
    keys = {chat: f"session:{bot_id}:{chat}:{chat}" for chat in chats}
    shared = SessionConfig(ownership="shared")
    storage = RedisStorage.from_url(redis_url)
    async with SessionManager(storage, initial=new_session, config=shared) as reader:
        values = await reader.get_many(keys.values())
    return {chat: values[key]["apple"] for chat, key in keys.items()}


def stored_sessions(
    redis_url: str, chats: list[int], prefix: str = "actorsess:", *, cluster: bool = False
) -> dict[int, Apples]:
    """The stored session of each private chat, read straight from Redis (no manager:
    workers may still run). ``cluster``: the URL names a node of a Redis Cluster, whose
    partitioned-mode records carry their partition's tag (``PARTITIONS`` of them)."""
    bot_id = OFFLINE_TOKEN.split(":", 1)[0]
    keys = [f"session:{bot_id}:{chat}:{chat}" for chat in chats]
    records: list[bytes | None]
    if cluster:
        # Named by a Partitions object only (it connects to nothing unless started).
        names = Partitions(RedisStorage.from_url(redis_url, cluster=True), count=PARTITIONS)
        cluster_client = redis.RedisCluster.from_url(redis_url)
        try:
            stored_keys = [names.storage_keys(prefix).of(key) for key in keys]
            records = [cluster_client.get(key) for key in stored_keys]  # type: ignore[misc]
        finally:
            cluster_client.close()
    else:
        client = redis.Redis.from_url(redis_url)
        try:
            records = client.mget([prefix + key for key in keys])  # type: ignore[assignment]
        finally:
            client.close()
    return {
        chat: json.loads(record.split(b":", 2)[2] or b"{}") if record else {}
        for chat, record in zip(chats, records, strict=True)
    }


def freeze_start_up() -> None:
    """With ``HARNESS_FREEZE_GC=1``, move everything built so far out of the garbage
    collector's sight, as a bot that freezes its start-up heap would: aiogram's and
    pydantic's types are about 216,000 objects, which every full collection would
    scan again (0.2-0.3 s each on this project's benchmark machine)."""
    if FREEZE_GC:
        gc.collect()
        gc.freeze()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args()
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level))
    )
    os.environ.setdefault("ACTORSESS_OWNERSHIP", "shared")  # what this example is about
    redis_url = os.environ.get("ACTORSESS_REDIS_URL", "redis://127.0.0.1:6379/0")
    token = os.environ.get("BOT_TOKEN", OFFLINE_TOKEN)
    app = build_app(redis_url, token)
    freeze_start_up()
    asyncio.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
