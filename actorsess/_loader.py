"""Batched, de-duplicated loading of sessions that are not cached.

A miss creates the key's actor in LOADING state and queues it here; every
miss in the same event-loop iteration rides in one ``load_many`` call.
Concurrent misses of one key find the same LOADING actor, so they share one
load (rule 9). In shared ownership mode a load also takes the key's lease; a
key owned by another process stays LOADING while the lease keeper waits for
it, then comes back here for another try.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from actorsess._actor import SessionActor, Status
from actorsess._clock import Clock
from actorsess._codec import Codec
from actorsess._config import SessionConfig
from actorsess._migrations import Migrations
from actorsess._registry import Registry
from actorsess._stats import Counters
from actorsess._stored import read_stored
from actorsess._timings import Timings
from actorsess.exceptions import CorruptSessionError, StorageError
from actorsess.storage.base import LoadResult, Owned, Storage

if TYPE_CHECKING:
    from actorsess._leases import LeaseKeeper


class Loader:
    __slots__ = (
        "_clock",
        "_codec",
        "_config",
        "_counters",
        "_keeper",
        "_log",
        "_migrations",
        "_on_migrated",
        "_pending",
        "_registry",
        "_storage",
        "_tasks",
        "_timings",
    )

    def __init__(
        self,
        storage: Storage,
        codec: Codec[Any],
        config: SessionConfig,
        registry: Registry,
        counters: Counters,
        clock: Clock,
        log: Any,
        timings: Timings,
        migrations: Migrations,
        on_migrated: Callable[[SessionActor[Any]], None],
        keeper: LeaseKeeper | None = None,
    ) -> None:
        self._storage = storage
        self._timings = timings
        self._migrations = migrations
        #: Called with a session upgraded on load: it is dirty, for the flusher to write.
        self._on_migrated = on_migrated
        self._keeper = keeper
        self._codec = codec
        self._config = config
        self._registry = registry
        self._counters = counters
        self._clock = clock
        self._log = log
        self._pending: list[SessionActor[Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, actor: SessionActor[Any]) -> None:
        loop = asyncio.get_running_loop()
        actor.load_future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._dispatch)
        self._pending.append(actor)

    def retry(self, actor: SessionActor[Any]) -> bool:
        """Load ``actor`` again with the next batch (its waiters keep their future);
        False if it is not loading any more."""
        if actor.status is not Status.LOADING or actor.load_future is None:
            return False
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._dispatch)
        self._pending.append(actor)
        return True

    def _dispatch(self) -> None:
        pending, self._pending = self._pending, []
        step = self._config.max_batch
        for start in range(0, len(pending), step):
            task = asyncio.get_running_loop().create_task(self._load(pending[start : start + step]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load(self, actors: list[SessionActor[Any]]) -> None:
        started = self._clock.now()
        self._counters.loads += 1
        try:
            async with asyncio.timeout(self._config.load_timeout):
                results = await self._fetch(actors)
            if len(results) != len(actors):
                raise StorageError(
                    f"storage returned {len(results)} records for {len(actors)} keys"
                )
        except BaseException as exc:
            self._counters.errors += 1
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"load timed out after {self._config.load_timeout:g}s"
            self._log.warning("session.load_failed", keys=len(actors), error=reason)
            for actor in actors:
                error = StorageError(f"could not load session {actor.key!r}: {reason}")
                error.__cause__ = exc
                self.fail(actor, error)
            if not isinstance(exc, Exception):
                raise
            return
        for actor, raw in zip(actors, results, strict=True):
            if not isinstance(raw, Owned):  # an owned key waits in the lease keeper
                self._apply(actor, raw)
        duration = self._clock.now() - started
        self._timings.load_seconds.observe(duration)
        self._log.debug("session.load", keys=len(actors), duration_ms=round(duration * 1000, 3))

    def deliver(self, actor: SessionActor[Any], raw: LoadResult) -> None:
        """Finish loading ``actor`` with a record obtained elsewhere (a handover notice)."""
        if actor.status is Status.LOADING:
            self._apply(actor, raw)

    async def _fetch(self, actors: list[SessionActor[Any]]) -> Sequence[LoadResult | Owned]:
        if self._keeper is not None:
            return await self._keeper.acquire(actors)
        return await self._storage.load_many([a.storage_key for a in actors])

    def _apply(self, actor: SessionActor[Any], raw: LoadResult) -> None:
        # Every record read from storage, by a load or a handover: a cache miss.
        self._counters.sessions_loaded += 1
        try:
            stored = read_stored(
                actor.key, raw, self._codec, self._migrations, self._config.max_session_bytes
            )
        except CorruptSessionError as exc:
            self._counters.errors += 1
            self._log.error("session.corrupt", key=actor.key, error=exc.reason)
            self.fail(actor, exc)
            return
        actor.value, actor.blob = stored.value, stored.blob
        actor.version = actor.persisted_version = stored.version
        ttl = self._config.ttl
        actor.expires_at = None if ttl is None else self._clock.now() + ttl
        actor.status = Status.READY
        if stored.upgraded_from is not None:
            # Written back at the current schema by the flusher, in its usual batches.
            actor.version += 1
            actor.deleted = actor.blob == self._codec.empty_blob()
            self._on_migrated(actor)
            self._log.debug(
                "session.migrated",
                key=actor.key,
                from_schema=stored.upgraded_from,
                to_schema=self._migrations.schema,
            )
        self._resolve(actor)
        if actor.parked:  # loaded for get_many() while pushed out of the LRU
            self._registry.settle(actor)

    def fail(self, actor: SessionActor[Any], error: BaseException) -> None:
        actor.status = Status.FAILED
        actor.error = error
        self._registry.discard(actor)
        self._resolve(actor)

    @staticmethod
    def _resolve(actor: SessionActor[Any]) -> None:
        future = actor.load_future
        actor.load_future = None
        if future is not None and not future.done():
            future.set_result(None)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
