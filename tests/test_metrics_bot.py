"""Done-when for the operators' view: a real bot (aiogram polling a local Bot API
server, a private Redis) with the Prometheus collector, scraped over HTTP."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.prometheus import register_prometheus
from actorsess.testing import LocalBotAPI, RedisServer, free_port
from harness.bot_process import build_dispatcher, new_session

pytestmark = pytest.mark.process  # pauses a private redis-server

Samples = dict[str, float]


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def scrape(url: str) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("namespace") == "bot":
                le = sample.labels.get("le")
                samples[sample.name if le is None else f"{sample.name}[le={le}]"] = sample.value
    return samples


async def send(
    api: LocalBotAPI, manager: SessionManager[Any], chats: list[int], sent_before: int
) -> None:
    """Users write in ``chats``; returns once the bot has answered every one."""
    for chat in chats:
        api.user_message(chat, "apple")
    await api.wait_sent(sent_before + len(chats))
    for _ in range(500):  # the handlers' blocks end just after they answer
        if not manager.stats().active:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the handlers did not finish")


async def test_a_bot_scraped_over_http_reports_what_it_did(private_redis: RedisServer) -> None:
    config = SessionConfig(
        flush_interval=0.05,
        max_cached=5,
        write_timeout=0.3,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
        close_timeout=10,
    )
    manager = SessionManager(
        RedisStorage.from_url(private_redis.url), initial=new_session, config=config
    )
    registry = CollectorRegistry()
    register_prometheus(manager, namespace="bot", registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with LocalBotAPI() as api:
            dp = build_dispatcher(manager)
            polling = asyncio.create_task(
                dp.start_polling(api.bot(), handle_signals=False, polling_timeout=1)
            )
            chats = [100 + i for i in range(20)] * 3  # 60 updates over 20 chats
            await send(api, manager, chats, 0)
            await manager.flush()
            metrics = await asyncio.to_thread(scrape, url)
            stats = manager.stats()
            histograms = manager.histograms()

            # What it did: one turn per update, every chat loaded once and written.
            assert metrics["actorsess_turns_total"] == stats.turns == 60
            assert metrics["actorsess_sessions_loaded_total"] == stats.sessions_loaded >= 20
            assert metrics["actorsess_flushes_total"] == stats.flushes > 0
            assert metrics["actorsess_sessions_written_total"] == stats.written >= 20
            # 20 chats through an LRU of 5: the rest left memory (clean) or waited parked.
            assert metrics["actorsess_evictions_total"] == stats.evictions >= 15
            assert metrics["actorsess_sessions_cached"] == stats.cached <= 5 + stats.parked
            assert metrics["actorsess_sessions_parked"] == stats.parked
            assert metrics["actorsess_oldest_unwritten_seconds"] == 0
            # Histograms: every flush and load observed; one turn in 16 timed.
            assert metrics["actorsess_flush_seconds_count"] == stats.flushes
            assert metrics["actorsess_flush_sessions_sum"] == stats.written
            assert metrics["actorsess_load_seconds_count"] == stats.loads
            assert metrics["actorsess_turn_hold_seconds_count"] == 60 // 16
            assert metrics["actorsess_turn_hold_seconds_bucket[le=+Inf]"] == 60 // 16
            assert histograms["flush_bytes"].observations == stats.flushes

            # Redis paused: the changes of cached chats wait, and their age shows.
            recent = [200, 201, 202]
            await manager.get_many([f"session:{api.bot_id}:{c}:{c}" for c in recent])
            private_redis.pause()
            try:
                await send(api, manager, recent, 60)  # cached: they need no Redis
                await asyncio.sleep(0.8)
                paused = await asyncio.to_thread(scrape, url)
            finally:
                private_redis.resume()
            assert paused["actorsess_sessions_dirty"] == 3
            assert paused["actorsess_oldest_unwritten_seconds"] >= 0.7
            assert paused["actorsess_write_timeouts_total"] >= 1
            assert paused["actorsess_turns_total"] == 63
            assert paused["actorsess_sessions_loaded_total"] == stats.sessions_loaded + 3
            await manager.flush()
            resumed = await asyncio.to_thread(scrape, url)
            assert resumed["actorsess_oldest_unwritten_seconds"] == 0
            assert resumed["actorsess_sessions_dirty"] == 0
            await dp.stop_polling()
            await polling  # the dispatcher's shutdown closes the manager
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
