"""MemoryStorage: a dict, for tests and single-process bots that need no durability."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence

from actorsess._record import TOMBSTONE_TTL_S, tombstone, version_of
from actorsess.storage.base import (
    NEWER_VERSION,
    AtomicStorage,
    Conflict,
    LoadResult,
    ScannableStorage,
    Storage,
    WriteItem,
)


class MemoryStorage(Storage, AtomicStorage, ScannableStorage):
    """Keeps records in a dict; honours TTL against an injectable wall clock.

    An expired record (or a delete) leaves its version behind as a tombstone for
    ``TOMBSTONE_TTL_S``, as the durable storages do.
    """

    def __init__(self, *, timer: Callable[[], float] = time.monotonic) -> None:
        """Make an empty storage.

        Args:
            timer: The clock TTLs are measured against, in seconds (tests pass a
                fake one).
        """
        self._timer = timer
        #: key -> (record, expires at or None, version)
        self._records: dict[str, tuple[bytes, float | None, int]] = {}

    def __repr__(self) -> str:
        return f"<MemoryStorage [records: {len(self._records)}]>"

    def _current(self, key: str, now: float) -> tuple[bytes, int] | None:
        """The live record of ``key`` (a tombstone once expired) and its version."""
        entry = self._records.get(key)
        if entry is None:
            return None
        record, expires, version = entry
        if expires is not None and expires <= now:
            if expires + TOMBSTONE_TTL_S <= now:
                del self._records[key]
                return None
            return tombstone(version), version
        return record, version

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        now = self._timer()
        out: list[LoadResult] = []
        for key in keys:
            current = self._current(key, now)
            out.append(None if current is None else current[0])
        return out

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        now = self._timer()
        expires = None if ttl_ms is None else now + ttl_ms / 1000
        refused: list[Conflict] = []
        for position, item in enumerate(items):
            current = self._current(item.key, now)
            if current is not None and current[1] >= item.version:
                if current[1] > item.version:  # the version fence
                    refused.append(Conflict(position, NEWER_VERSION))
                continue  # the same version: a replay, already applied
            if item.blob is None:
                self._records[item.key] = (tombstone(item.version), now, item.version)
            else:
                self._records[item.key] = (item.blob, expires, item.version)
        return refused

    def atomic_problem(self, keys: Sequence[str]) -> str | None:
        return None

    async def write_all(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        now = self._timer()
        refused = []
        for position, item in enumerate(items):
            current = self._current(item.key, now)
            if current is not None and current[1] > item.version:
                refused.append(Conflict(position, NEWER_VERSION))
        return refused or await self.write_many(items, ttl_ms)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._records.pop(key, None)

    async def scan_keys(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        # The records are in memory anyway; a copy of the key list lets writes go on.
        keys = [key for key in self._records if key.startswith(prefix)]
        for start in range(0, len(keys), batch):
            yield keys[start : start + batch]

    async def close(self) -> None:
        return None

    def raw(self, key: str) -> bytes | None:
        """The stored record for ``key`` (tests and debugging)."""
        entry = self._records.get(key)
        return None if entry is None else entry[0]

    def put_raw(self, key: str, blob: bytes) -> None:
        """Store ``blob`` verbatim under ``key`` (tests that plant corrupt records)."""
        self._records[key] = (blob, None, version_of(blob))
