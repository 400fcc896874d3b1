"""Batched, de-duplicated loading of sessions that are not cached.

A miss creates the key's actor in LOADING state and queues it here; every
miss in the same event-loop iteration rides in one ``load_many`` call.
Concurrent misses of one key find the same LOADING actor, so they share one
load (rule 9). The ownership does the storage call (``Ownership.fetch``): in
shared mode it also takes the key's lease, and a key owned by another process
stays LOADING while the ownership waits for it, then comes back here for
another try (``retry``) or with its record (``deliver``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from actorsess._actor import SessionActor, Status
from actorsess._codec import Codec
from actorsess._context import Context
from actorsess._migrations import Migrations
from actorsess._ownership import Ownership
from actorsess._stored import read_stored
from actorsess.exceptions import CorruptSessionError, StorageError
from actorsess.storage.base import LoadResult, Owned


def failure_reason(exc: BaseException, load_timeout: float) -> str:
    """What a failed batched load says about its cause, in the log and the error."""
    if isinstance(exc, TimeoutError):
        return f"load timed out after {load_timeout:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Loader:
    __slots__ = (
        "_clock",
        "_codec",
        "_config",
        "_counters",
        "_log",
        "_migrations",
        "_on_migrated",
        "_ownership",
        "_pending",
        "_registry",
        "_tasks",
        "_timings",
    )

    def __init__(
        self,
        context: Context,
        codec: Codec[Any],
        migrations: Migrations,
        on_migrated: Callable[[SessionActor[Any]], None],
        ownership: Ownership,
    ) -> None:
        self._ownership = ownership
        self._timings = context.timings
        self._migrations = migrations
        #: Called with a session upgraded on load: it is dirty, for the flusher to write.
        self._on_migrated = on_migrated
        self._codec = codec
        self._config = context.config
        self._registry = context.registry
        self._counters = context.counters
        self._clock = context.clock
        self._log = context.log
        self._pending: list[SessionActor[Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def request(self, actor: SessionActor[Any]) -> None:
        loop = asyncio.get_running_loop()
        actor.start_loading(loop.create_future())
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

    async def drain(self) -> None:
        """Return once every load requested so far has ended: each key's own future
        is resolved then, unless the key waits on the ownership (``Owned``).

        For callers that asked for many keys at once (``get_many``): one wait on
        the batches instead of a callback on every key's future.
        """
        if self._pending:
            self._dispatch()  # now: the caller has queued all it wants
        if self._tasks:
            await asyncio.wait(list(self._tasks))

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
                results = await self._ownership.fetch(actors)
            if len(results) != len(actors):
                raise StorageError(
                    f"storage returned {len(results)} records for {len(actors)} keys"
                )
        except BaseException as exc:
            self._counters.errors += 1
            reason = failure_reason(exc, self._config.load_timeout)
            self._log.warning("session.load_failed", keys=len(actors), error=reason)
            for actor in actors:
                error = StorageError(f"could not load session {actor.key!r}: {reason}")
                error.__cause__ = exc
                self.fail(actor, error)
            if not isinstance(exc, Exception):
                raise
            return
        for actor, raw in zip(actors, results, strict=True):
            if not isinstance(raw, Owned):  # an owned key waits in the ownership
                self._apply(actor, raw)
        duration = self._clock.now() - started
        self._timings.load_seconds.observe(duration)
        self._log.debug("session.load", keys=len(actors), duration_ms=round(duration * 1000, 3))

    def deliver(self, actor: SessionActor[Any], raw: LoadResult) -> None:
        """Finish loading ``actor`` with a record obtained elsewhere (a handover notice)."""
        if actor.status is Status.LOADING:
            self._apply(actor, raw)

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
        except Exception as exc:
            # Anything else (SessionEncodeError: initial() gives a value the codec
            # cannot store) fails this key alone; escaping, it would end the load's
            # task and leave every key of the batch waiting.
            self.fail(actor, exc)
            return
        ttl = self._config.ttl
        expires_at = None if ttl is None else self._clock.now() + ttl
        actor.loaded(stored.value, stored.blob, stored.version, expires_at)
        if stored.upgraded_from is not None:
            # Written back at the current schema by the flusher, in its usual batches.
            actor.upgraded(actor.blob == self._codec.empty_blob())
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
        actor.load_failed(error)
        self._registry.discard(actor)
        self._resolve(actor)

    @staticmethod
    def _resolve(actor: SessionActor[Any]) -> None:
        future = actor.end_loading()
        if future is not None and not future.done():
            future.set_result(None)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
