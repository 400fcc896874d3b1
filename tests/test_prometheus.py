"""Operators' view: Prometheus metrics from stats(), the oldest unwritten change, hot keys."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actorsess import ConfigError, RedisStorage, SessionConfig, SessionManager, SessionStats
from actorsess.prometheus import SessionCollector, register_prometheus
from actorsess.testing import FakeClock
from tests.conftest import Events
from tests.helpers import counter, racy_increment

DASHBOARD = Path(__file__).resolve().parent.parent / "examples/grafana/actorsess-dashboard.json"


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """What a Prometheus server would read: (sample name, namespace) -> value."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels["namespace"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


async def test_metrics_are_what_stats_says_per_namespace(
    redis_storage: RedisStorage, redis_url: str
) -> None:
    """Each registered manager is one label value; every metric equals its stats() field,
    scraped through prometheus_client's own text format and parser."""
    registry = CollectorRegistry()
    config = SessionConfig(flush_interval=3600, max_cached=2)
    chats = SessionManager(redis_storage, initial=counter, config=config)
    users = SessionManager(
        RedisStorage.from_url(redis_url),
        initial=counter,
        config=SessionConfig(key_prefix="users:", flush_interval=3600),
    )
    async with chats, users:
        register_prometheus(chats, registry=registry)
        register_prometheus(users, namespace="users", registry=registry)
        for key in ("a", "b", "c", "a"):
            await racy_increment(chats, key)
        await chats.flush()
        await racy_increment(chats, "d")
        await racy_increment(users, "u")
        values = scrape(registry)
        stats = chats.stats()
        assert stats.loads > 0 and stats.written == 3 and stats.evictions > 0
        expected = {
            "actorsess_sessions_cached": stats.cached,
            "actorsess_sessions_parked": stats.parked,
            "actorsess_sessions_dirty": 1,
            "actorsess_blocks_active": 0,
            "actorsess_loads_total": stats.loads,
            "actorsess_flushes_total": stats.flushes,
            "actorsess_sessions_written_total": 3,
            "actorsess_evictions_total": stats.evictions,
            "actorsess_storage_errors_total": 0,
            "actorsess_write_conflicts_total": 0,
            "actorsess_handovers_total": 0,
        }
        for name, value in expected.items():
            assert values[(name, "actorsess:")] == value, name
        assert values[("actorsess_sessions_dirty", "users")] == 1
        assert values[("actorsess_sessions_written_total", "users")] == 0
        assert values[("actorsess_oldest_unwritten_seconds", "actorsess:")] >= 0


async def test_a_namespace_belongs_to_one_manager(redis_storage: RedisStorage) -> None:
    """Registering again under the same namespace is a no-op for the same manager and an
    error naming the namespace for another one; no per-key label exists."""
    registry = CollectorRegistry()
    first = SessionManager(redis_storage, initial=counter)
    second = SessionManager(redis_storage, initial=counter)
    register_prometheus(first, registry=registry)
    register_prometheus(first, registry=registry)
    with pytest.raises(ValueError, match="'actorsess:' is already reported"):
        register_prometheus(second, registry=registry)
    with pytest.raises(ValueError, match="non-empty string"):
        register_prometheus(second, namespace="", registry=registry)
    collector = register_prometheus(second, namespace="other", registry=registry)
    assert {ns for _, ns in scrape(registry)} == {"actorsess:", "other"}
    collector.remove("other")
    assert {ns for _, ns in scrape(registry)} == {"actorsess:"}


async def test_oldest_unwritten_change_is_its_age_until_written(
    redis_storage: RedisStorage,
) -> None:
    """The age of the oldest acknowledged change not yet in storage: what a crash would
    lose now. A later change to another session does not make it younger; a write
    brings it back to 0."""
    clock = FakeClock()
    config = SessionConfig(flush_interval=3600)
    async with SessionManager(redis_storage, initial=counter, config=config, clock=clock) as m:
        assert m.stats().oldest_unwritten == 0.0
        await racy_increment(m, "a")
        await clock.advance(5.0)
        await racy_increment(m, "b")
        await racy_increment(m, "a")  # already dirty: keeps its age
        await clock.advance(2.5)
        assert m.stats().oldest_unwritten == 7.5
        await m.flush()
        assert m.stats().oldest_unwritten == 0.0
        await racy_increment(m, "b")
        await clock.advance(1.0)
        assert m.stats().oldest_unwritten == 1.0


async def test_hot_keys_name_the_longest_queues(redis_storage: RedisStorage) -> None:
    """hot_keys(n) lists the keys with the most blocks inside or waiting, busiest first,
    without a per-key metric."""
    async with SessionManager(redis_storage, initial=counter) as m:
        assert m.hot_keys() == []
        release = asyncio.Event()

        async def hold(key: str) -> None:
            async with m.session(key):
                await release.wait()

        tasks = [asyncio.create_task(hold(k)) for k in ["hot"] * 3 + ["warm"] * 2 + ["cold"]]
        for _ in range(20):
            await asyncio.sleep(0)
        assert m.hot_keys() == [("hot", 3), ("warm", 2), ("cold", 1)]
        assert m.hot_keys(2) == [("hot", 3), ("warm", 2)]
        assert m.stats().active == 6
        release.set()
        await asyncio.gather(*tasks)
        assert m.hot_keys() == []
        bad: Any = 0
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            m.hot_keys(bad)


def test_every_stats_field_and_histogram_is_exported() -> None:
    """One source of truth: a field added to SessionStats, or a histogram added to the
    manager's timings, must get its metric."""
    from actorsess._timings import Timings
    from actorsess.prometheus import _HISTOGRAMS, _METRICS

    assert {m.field for m in _METRICS} == {f.name for f in dataclasses.fields(SessionStats)}
    assert set(_HISTOGRAMS) == {f.name for f in dataclasses.fields(Timings)}
    names = {family.name for family in SessionCollector().collect()}
    assert len(names) == len(_METRICS) + len(_HISTOGRAMS)


async def test_a_queue_reaching_the_threshold_logs_a_hot_key(
    redis_storage: RedisStorage, events: Events
) -> None:
    """session.hot_key names the key once its blocks (holder and waiters) reach
    hot_key_threshold, once per time the queue grows to it; None turns it off."""
    config = SessionConfig(hot_key_threshold=3)
    async with SessionManager(
        redis_storage, initial=counter, config=config, logger=events.logger
    ) as m:
        release = asyncio.Event()

        async def hold(key: str) -> None:
            async with m.session(key):
                await release.wait()

        tasks = [asyncio.create_task(hold(k)) for k in ["hot"] * 5 + ["calm"] * 2]
        for _ in range(20):
            await asyncio.sleep(0)
        assert events.named("session.hot_key") == [
            {"event": "session.hot_key", "log_level": "warning", "key": "hot", "blocks": 3}
        ]
        release.set()
        await asyncio.gather(*tasks)
    with pytest.raises(ConfigError, match="hot_key_threshold"):
        SessionConfig(hot_key_threshold=0)
    assert SessionConfig(hot_key_threshold=None).hot_key_threshold is None


async def test_the_dashboard_queries_only_metrics_that_exist_and_shows_them_all() -> None:
    """examples/grafana/actorsess-dashboard.json: every series it queries is exported,
    and every exported metric is on it."""
    from actorsess import MemoryStorage

    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bactorsess_[a-z0-9_]+", target["expr"])
    }
    registry = CollectorRegistry()
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        register_prometheus(m, registry=registry)
        await racy_increment(m, "k")
        await m.flush()
        exported = {name for name, _ in scrape(registry)}
        families = {
            f.name for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
    assert queried <= exported, queried - exported
    shown = {name for name in families if any(q.startswith(name) for q in queried)}
    assert shown == families, families - shown
