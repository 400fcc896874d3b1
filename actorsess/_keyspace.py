"""Walks over the whole key space: ``SessionManager.scan`` and ``migrate_all``.

Both page through the storage's keys (``ScannableStorage.scan_keys``) and load
each page with one ``load_many``, so memory stays bounded by the page size
whatever the number of sessions. Neither creates actors for what it reads:
a walk does not push the bot's live sessions out of the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from actorsess._actor import SessionActor
from actorsess._codec import Codec
from actorsess._context import Context
from actorsess._migrations import Migrations
from actorsess._stored import Stored, read_stored
from actorsess.exceptions import CorruptSessionError
from actorsess.storage.base import LoadResult, ScannableStorage

T = TypeVar("T")

#: How many failures a MigrationReport lists by key (all are counted).
MAX_LISTED_FAILURES = 100


@dataclasses.dataclass(frozen=True)
class MigrationReport:
    """What ``SessionManager.migrate_all`` found (and, unless a dry run, did).

    Attributes:
        dry_run: True: nothing was written, the counts say what a real run would do.
        schema: The schema version records were brought to (how many migrations are declared).
        scanned: Stored sessions looked at (tombstones not counted): current + migrated +
            failed.
        current: Already at ``schema``.
        migrated: Upgraded and written back (in a dry run: that would be).
        failed: Could not be read or upgraded; their records were left as they were.
        failures: ``(key, reason)`` of the first ``MAX_LISTED_FAILURES`` failures.
    """

    dry_run: bool
    schema: int
    scanned: int = 0
    current: int = 0
    migrated: int = 0
    failed: int = 0
    failures: tuple[tuple[str, str], ...] = ()


class KeySpace(Generic[T]):
    """The pages of stored sessions under one manager's ``key_prefix``."""

    __slots__ = (
        "_cached",
        "_codec",
        "_counters",
        "_empty_blob",
        "_keys",
        "_log",
        "_max_bytes",
        "_migrations",
        "_registry",
        "_storage",
    )

    def __init__(
        self,
        context: Context,
        codec: Codec[T],
        migrations: Migrations,
        cached: Callable[[str], SessionActor[T] | None],
        empty_blob: bytes | None,
    ) -> None:
        self._storage = context.storage
        self._codec = codec
        self._migrations = migrations
        self._registry = context.registry
        self._keys = context.keys
        self._max_bytes = context.config.max_session_bytes
        self._counters = context.counters
        self._log = context.log
        #: The cached actor of a key whose committed value is current, or None.
        self._cached = cached
        #: The encoded initial value: a session committed back to it has no record.
        self._empty_blob = empty_blob

    def _scannable(self, operation: str) -> ScannableStorage:
        storage = self._storage
        if not isinstance(storage, ScannableStorage):
            raise TypeError(
                f"{operation}() needs a storage that can list its keys (scan_keys); "
                f"{type(storage).__name__} cannot"
            )
        return storage

    async def pages(
        self, operation: str, prefix: str, batch: int
    ) -> AsyncIterator[list[tuple[str, LoadResult]]]:
        """``(session key, stored record)`` for every stored key starting with ``prefix``,
        a page (one scan step and one load) at a time."""
        storage = self._scannable(operation)
        key_of = self._keys.key_of
        async for storage_keys in storage.scan_keys(self._keys.prefix + prefix, batch):
            records = await self._storage.load_many(storage_keys)
            yield [(key_of(key), raw) for key, raw in zip(storage_keys, records, strict=True)]

    def read(self, key: str, raw: LoadResult) -> Stored[T]:
        return read_stored(key, raw, self._codec, self._migrations, self._max_bytes)

    async def scan(self, prefix: str, batch: int) -> AsyncIterator[tuple[str, T]]:
        """Every session under ``prefix`` as ``(key, copy of its committed value)``; a
        cached value wins over the stored one (it is as new or newer)."""
        self._scannable("scan")
        # Changes not written yet, some to keys storage does not have at all: bounded
        # by max_dirty, and each leaves this map once the walk has passed it.
        unwritten = {
            actor.key: actor
            for actor in self._registry.actors()
            if actor.dirty and actor.key.startswith(prefix)
        }
        async for page in self.pages("scan", prefix, batch):
            for key, raw in page:
                unwritten.pop(key, None)
                value = self._cached_value(key)
                if value is not None:
                    if value is not _NO_SESSION:
                        yield key, value
                    continue
                try:
                    stored = self.read(key, raw)
                except CorruptSessionError as exc:
                    self._counters.errors += 1
                    self._log.error("session.corrupt", key=key, error=exc.reason)
                    continue
                if stored.present:
                    yield key, stored.value
        for key in unwritten:
            value = self._cached_value(key)
            if value is not None and value is not _NO_SESSION:
                yield key, value

    def _cached_value(self, key: str) -> Any:
        """A copy of ``key``'s cached committed value, ``_NO_SESSION`` when it is
        cached as deleted, None when storage must be asked."""
        actor = self._cached(key)
        if actor is None:
            return None
        if actor.blob == self._empty_blob:
            return _NO_SESSION
        return self._codec.decode(actor.blob)

    def _forget_if_idle(self, key: str) -> None:
        """Drop ``key``'s actor if nobody uses it and storage has its state."""
        actor = self._registry.peek(key)
        if actor is not None and actor.droppable:
            self._registry.discard(actor)

    async def migrate_all(
        self,
        get: Callable[[str], Awaitable[T]],
        flush: Callable[[], Awaitable[None]],
        dry_run: bool,
        prefix: str,
        batch: int,
    ) -> MigrationReport:
        """Bring every stored session under ``prefix`` to the current schema, a page at a
        time: upgraded through the manager's own loads (``get``, so the cache, and the
        owners in shared mode, stay right), written by its flusher (``flush``), and let
        go of unless it was cached before."""
        scanned = current = migrated = failed = 0
        failures: list[tuple[str, str]] = []

        def fail(key: str, reason: str) -> None:
            nonlocal failed
            failed += 1
            if len(failures) < MAX_LISTED_FAILURES:
                failures.append((key, reason))

        async for page in self.pages("migrate_all", prefix, batch):
            upgrade: list[str] = []
            for key, raw in page:
                try:
                    stored = self.read(key, raw)
                except CorruptSessionError as exc:
                    scanned += 1
                    fail(key, exc.reason)
                    continue
                if not stored.present:
                    continue
                scanned += 1
                if stored.upgraded_from is None:
                    current += 1
                elif dry_run:
                    migrated += 1
                else:
                    upgrade.append(key)
            if not upgrade:
                continue
            was_cached = {key for key in upgrade if key in self._registry}
            results = await asyncio.gather(*(get(key) for key in upgrade), return_exceptions=True)
            for key, result in zip(upgrade, results, strict=True):
                if isinstance(result, CorruptSessionError):
                    fail(key, result.reason)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    migrated += 1
            await flush()
            for key in upgrade:
                if key not in was_cached:
                    self._forget_if_idle(key)
        return MigrationReport(
            dry_run=dry_run,
            schema=self._migrations.schema,
            scanned=scanned,
            current=current,
            migrated=migrated,
            failed=failed,
            failures=tuple(failures),
        )


#: ``KeySpace._cached_value``'s answer for a session cached as deleted.
_NO_SESSION: Any = object()
