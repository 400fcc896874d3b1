"""Shared test helpers, and storages that inject faults a real server cannot produce."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio as redis_asyncio

from actorsess import MemoryStorage, SessionConfig, SessionManager, WriteItem
from actorsess._record import encode_record
from actorsess.storage.base import Conflict, LoadResult, Storage

#: The default key prefix, which storage keys start with.
PREFIX = SessionConfig().key_prefix


def counter() -> dict[str, int]:
    """The session most tests use: one counter."""
    return {"n": 0}


async def put_record(
    storage: Storage, key: str, payload: bytes, version: int, schema: int = 0
) -> None:
    """What an admin tool (or an older deployment) does: put a record straight into storage."""
    record = encode_record(version, payload, schema)
    await storage.write_many([WriteItem(PREFIX + key, record, version)], None)


async def racy_increment(manager: SessionManager[dict[str, int]], key: str) -> None:
    """Read the counter, await once, write it + 1: loses updates unless turns serialize."""
    async with manager.session(key) as session:
        n = session["n"]
        await asyncio.sleep(0)
        session["n"] = n + 1


async def read_all(url: str, keys: list[str]) -> list[bytes | None]:
    """The stored records of ``keys`` under the default prefix, read with a new connection."""
    client = redis_asyncio.Redis.from_url(url)
    values: list[bytes | None] = await client.mget([f"actorsess:{k}" for k in keys])  # type: ignore[assignment]
    await client.aclose()
    return values


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that records every batch and can fail or stall on request."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[WriteItem]] = []
        self.load_batches: list[list[str]] = []
        self.fail_writes = 0
        self.fail_loads = 0
        self.write_gate: asyncio.Event | None = None
        self.load_gate: asyncio.Event | None = None
        self.write_started = asyncio.Event()

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        self.load_batches.append(list(keys))
        if self.load_gate is not None:
            await self.load_gate.wait()
        if self.fail_loads:
            self.fail_loads -= 1
            raise ConnectionError("injected load failure")
        return await super().load_many(keys)

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        self.write_started.set()
        if self.write_gate is not None:
            await self.write_gate.wait()
        if self.fail_writes:
            self.fail_writes -= 1
            raise ConnectionError("injected write failure")
        self.batches.append(list(items))
        return await super().write_many(items, ttl_ms)

    @property
    def written_keys(self) -> list[str]:
        return [item.key for batch in self.batches for item in batch]
