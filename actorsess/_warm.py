"""Warming the cache: records read in batches straight into the idle tier as bytes.

After a restart every active chat's first update waits on a load, and a load
through a turn or ``get_many`` builds an actor per key only for most of them to
be pushed out of the live LRU again at once. Warming skips that: each batch of
records is read as a load reads it (``read_stored``: header, size, schema,
decoding), and the committed bytes go where an idle, written session lives
(``Registry.keep_loaded``). The first turn on a key makes its actor, as for any
idle session.

What cannot go that way is left for ``get_many`` (the caller's next step), which
reads it again the usual way: records that need a migration (they become a
change to write, so they need an actor), corrupt ones (so their error is raised
as a load raises it), and a whole batch during whose storage call some session
left memory (its read may predate that session's last write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NamedTuple

from actorsess._codec import Codec
from actorsess._context import Context
from actorsess._loader import failure_reason
from actorsess._migrations import Migrations
from actorsess._stored import read_stored
from actorsess.exceptions import StorageError
from actorsess.storage.base import LoadResult


class _Read(NamedTuple):
    """One batch as storage returned it."""

    keys: list[str]
    records: Sequence[LoadResult]
    #: Some session left memory while storage was read: these records may be older
    #: than what it wrote.
    stale: bool


class Warmer:
    __slots__ = ("_codec", "_context", "_keys", "_migrations")

    def __init__(self, context: Context, codec: Codec[Any], migrations: Migrations) -> None:
        self._context = context
        self._codec = codec
        self._migrations = migrations
        self._keys = context.keys

    async def warm(self, keys: Sequence[str]) -> list[str]:
        """Cache ``keys`` as bytes where they are not cached yet; the keys left for
        the usual load path."""
        step = self._context.config.max_batch
        left: list[str] = []
        # Two batches at a time: storage reads the next while this one is decoded.
        reading: asyncio.Task[_Read] | None = None
        try:
            for start in range(0, len(keys), step):
                following = asyncio.ensure_future(self._read(keys[start : start + step]))
                if reading is not None:
                    self._keep(await reading, left)
                reading = following
            if reading is not None:
                self._keep(await reading, left)
                reading = None
        finally:
            if reading is not None and not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        return left

    async def _read(self, keys: Sequence[str]) -> _Read:
        registry = self._context.registry
        wanted = [key for key in keys if key not in registry]
        if not wanted:
            return _Read(wanted, [], stale=False)
        departures = registry.departures
        records = await self._load(wanted)
        return _Read(wanted, records, stale=registry.departures != departures)

    def _keep(self, read: _Read, left: list[str]) -> None:
        if read.stale:
            left.extend(read.keys)
            return
        context = self._context
        config = context.config
        expires_at = None if config.ttl is None else context.clock.now() + config.ttl
        for key, raw in zip(read.keys, read.records, strict=True):
            try:
                stored = read_stored(
                    key, raw, self._codec, self._migrations, config.max_session_bytes
                )
            except Exception:  # corrupt, or initial() unstorable: raised by get_many
                left.append(key)
                continue
            if stored.upgraded_from is not None:
                left.append(key)  # a change to write: it needs an actor
            else:
                context.registry.keep_loaded(key, stored.version, stored.blob, expires_at)

    async def _load(self, keys: list[str]) -> Sequence[LoadResult]:
        context = self._context
        started = context.clock.now()
        context.counters.loads += 1
        try:
            async with asyncio.timeout(context.config.load_timeout):
                records = await context.storage.load_many([self._keys.of(key) for key in keys])
        except Exception as exc:
            context.counters.errors += 1
            reason = failure_reason(exc, context.config.load_timeout)
            context.log.warning("session.load_failed", keys=len(keys), error=reason)
            raise StorageError(f"could not load {len(keys)} sessions to warm: {reason}") from exc
        if len(records) != len(keys):
            raise StorageError(f"storage returned {len(records)} records for {len(keys)} keys")
        context.counters.sessions_loaded += len(keys)
        duration = context.clock.now() - started
        context.timings.load_seconds.observe(duration)
        context.log.debug("session.load", keys=len(keys), duration_ms=round(duration * 1000, 3))
        return records
