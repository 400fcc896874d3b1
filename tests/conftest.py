"""Shared fixtures: a real private Redis, the three storages, captured log events."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
import structlog
from structlog.testing import LogCapture

from actorsess import MemoryStorage, RedisStorage, SqliteStorage, Storage
from actorsess.testing import LocalRedisCluster, RedisServer

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis to test against: ``REDIS_URL`` (its db is flushed!) or a private server."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A private 3-primary Redis Cluster, shared by the tests that need one."""
    with LocalRedisCluster() as cluster:
        yield cluster


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def redis_storage(
    redis_client: redis_asyncio.Redis, redis_url: str
) -> AsyncIterator[RedisStorage]:
    storage = RedisStorage.from_url(redis_url)
    yield storage
    await storage.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.sqlite3"


@pytest.fixture(params=["memory", "redis", "sqlite", "cluster"])
async def storage_factory(
    request: pytest.FixtureRequest, redis_client: redis_asyncio.Redis, redis_url: str
) -> AsyncIterator[Any]:
    """Builds fresh storage objects that all see the same data (like a second process)."""
    kind: str = request.param
    shared_memory = MemoryStorage()
    cluster_url = ""
    if kind == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        cluster_url = cluster.url
        flusher = redis_asyncio.RedisCluster.from_url(cluster_url)
        await flusher.flushall()
        await flusher.aclose()
    directory = tempfile.mkdtemp(prefix="actorsess-sqlite-")
    made: list[Storage] = []

    def make() -> Storage:
        storage: Storage
        if kind == "memory":
            storage = shared_memory
        elif kind == "redis":
            storage = RedisStorage.from_url(redis_url)
        elif kind == "cluster":
            storage = RedisStorage.from_url(cluster_url, cluster=True)
        else:
            storage = SqliteStorage(Path(directory) / "s.sqlite3")
        made.append(storage)
        return storage

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for storage in made:
        await storage.close()


class Events:
    """structlog events captured from one manager, with every level kept."""

    def __init__(self) -> None:
        self.capture = LogCapture()
        self.logger = structlog.wrap_logger(
            None, processors=[self.capture], wrapper_class=structlog.BoundLogger
        )

    def named(self, event: str) -> list[Any]:
        return [e for e in self.capture.entries if e["event"] == event]


@pytest.fixture
def events() -> Events:
    return Events()
