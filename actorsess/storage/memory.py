"""MemoryStorage: a dict, for tests and single-process bots that need no durability."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from actorsess.storage.base import LoadResult, WriteItem


class MemoryStorage:
    """Keeps records in a dict; honours TTL against an injectable wall clock."""

    def __init__(self, *, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._records: dict[str, tuple[bytes, float | None, int]] = {}

    def __repr__(self) -> str:
        return f"<MemoryStorage [records: {len(self._records)}]>"

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        now = self._timer()
        out: list[LoadResult] = []
        for key in keys:
            entry = self._records.get(key)
            if entry is not None and entry[1] is not None and entry[1] <= now:
                del self._records[key]
                entry = None
            out.append(None if entry is None else entry[0])
        return out

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> None:
        expires = None if ttl_ms is None else self._timer() + ttl_ms / 1000
        for item in items:
            stored = self._records.get(item.key)
            if stored is not None and stored[2] > item.version:
                continue  # the version fence
            if item.blob is None:
                self._records.pop(item.key, None)
            else:
                self._records[item.key] = (item.blob, expires, item.version)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._records.pop(key, None)

    async def close(self) -> None:
        return None

    def raw(self, key: str) -> bytes | None:
        """The stored record for ``key`` (tests and debugging)."""
        entry = self._records.get(key)
        return None if entry is None else entry[0]

    def put_raw(self, key: str, blob: bytes) -> None:
        """Store ``blob`` verbatim under ``key`` (tests that plant corrupt records)."""
        self._records[key] = (blob, None, -1)
