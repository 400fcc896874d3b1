"""The flusher: one background task that writes dirty sessions in batches (write-behind).

Each round follows the same three steps:

1. snapshot, with no await: take up to ``max_batch`` dirty actors (oldest
   first, at most ``max_batch_bytes`` of them) and their committed bytes and
   versions;
2. write, with await: one ``write_many`` call under ``write_timeout``;
3. settle, with no await: an actor becomes clean only if the version written
   is still its current version. A change that arrived during the write keeps
   it dirty for the next round (rule 3).

Up to two rounds are in flight, over disjoint sessions, so one round's Python
work overlaps the other's storage call; the loop itself owns no I/O.

A failed, timed-out or cancelled write has an unknown outcome; everything in
it stays dirty and is written again after a capped, jittered backoff. Records
are whole values carrying their version and every write is fenced by it, so
writing twice is harmless and a late copy never lands over newer data (rules 6
and 11).

A write the storage refuses (it holds a newer version; in shared ownership
mode also: the lease is not ours) is never counted as done: it is reported as a
conflict, its session leaves the dirty set, never retried, and the ownership
hears of it (``Ownership.refused``). Writes go through the ownership, which in
shared mode fences them by lease too.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actorsess._actor import SessionActor, Status
from actorsess._context import Context
from actorsess._ownership import Ownership
from actorsess._record import encode_record
from actorsess.exceptions import BackpressureTimeoutError, SessionConflictError, StorageError
from actorsess.storage.base import WriteItem

_NEVER = float("-inf")
# One round's Python work (snapshot, settle) overlaps the other's storage call.
_ROUNDS_IN_FLIGHT = 2


class Flusher:
    __slots__ = (
        "_backoff",
        "_backoff_until",
        "_batch_limit",
        "_clock",
        "_config",
        "_counters",
        "_dirty_since",
        "_failures",
        "_in_flight",
        "_log",
        "_ownership",
        "_room",
        "_round_waiters",
        "_rounds",
        "_schema",
        "_stopping",
        "_task",
        "_timings",
        "_waiting_for_room",
        "_wake",
        "_write_through",
        "dirty",
        "last_error",
    )

    def __init__(self, context: Context, ownership: Ownership, schema: int = 0) -> None:
        config = context.config
        self._ownership = ownership
        self._timings = context.timings
        #: The schema version written into every record (see ``actorsess._migrations``).
        self._schema = schema
        self._config = config
        self._counters = context.counters
        self._clock = context.clock
        self._backoff = context.backoff
        self._log = context.log
        self._write_through = config.flush_interval == 0
        #: Dirty actors by storage key, in the order they first became dirty.
        self.dirty: dict[str, SessionActor[Any]] = {}
        self._dirty_since = _NEVER
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._round_waiters: list[asyncio.Future[None]] = []
        self._waiting_for_room = 0
        #: Consecutive failed rounds (drives the backoff and the logged attempt).
        self._failures = 0
        self._backoff_until = _NEVER
        #: Most sessions the next round takes: max_batch, halved after each timed-out
        #: write (a batch too large to land in time is split), doubled after a success.
        self._batch_limit = config.max_batch
        #: Storage keys of the sessions in a round now being written.
        self._in_flight: set[str] = set()
        self._rounds: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    # -- hot path ---------------------------------------------------------

    def mark_dirty(self, actor: SessionActor[Any]) -> None:
        dirty = self.dirty
        if actor.storage_key not in dirty:
            dirty[actor.storage_key] = actor
            now = self._clock.now()
            actor.became_dirty(now)
            size = len(dirty)
            if size == 1:
                self._dirty_since = now
                self._wake.set()
            elif size >= self._config.max_batch:
                self._wake.set()
        if self._write_through:
            self._wake.set()

    def oldest_dirty_since(self) -> float | None:
        """When the longest-dirty session became dirty (None when nothing is dirty).

        Sessions enter ``dirty`` when they become dirty and leave it only once
        clean, so the first is the oldest; a session changed again while being
        written keeps its place, so this may be up to one round early."""
        for actor in self.dirty.values():
            return actor.dirty_since
        return None

    # -- shared ownership: sessions written outside the rounds --------------

    @property
    def schema(self) -> int:
        """The schema version records are written at (a lease release writes one too)."""
        return self._schema

    def in_flight(self, storage_key: str) -> bool:
        """A round (or a lease release) is writing this session now."""
        return storage_key in self._in_flight

    def hold(self, storage_key: str) -> None:
        """Keep rounds off a session whose write rides on a lease release."""
        self._in_flight.add(storage_key)

    def unhold(self, storage_key: str) -> None:
        self._in_flight.discard(storage_key)
        self._wake.set()

    def drop(self, actor: SessionActor[Any]) -> None:
        """Take ``actor`` out of the dirty set if its current version is written."""
        if actor.version <= actor.persisted_version and self.dirty.get(actor.storage_key) is actor:
            del self.dirty[actor.storage_key]
        if len(self.dirty) < self._config.max_dirty:
            self._room.set()

    def refuse(self, actor: SessionActor[Any], reason: str) -> None:
        """Storage refused ``actor``'s write: report it (never count it as done). Its
        changes since the last good write are dropped; its next turn reloads."""
        self._counters.conflicts += 1
        self._log.warning("session.conflict", key=actor.key, version=actor.version, reason=reason)
        actor.refused(SessionConflictError(actor.key, reason))
        # Out of the dirty set now: a later actor of this key must be able to enter it.
        self.drop(actor)
        self._ownership.refused(actor)

    # -- several sessions in one all-or-nothing write -----------------------

    async def write_together(self, changes: list[tuple[SessionActor[Any], bytes, bool]]) -> None:
        """Commit ``(actor, new blob, deleted)`` changes, whose turns the caller holds,
        in one all-or-nothing storage write (``AtomicStorage.write_all``); each actor
        takes its new state only once that write has landed.

        Refused for a newer stored version: nothing is written, the refused sessions
        are reloaded on next use, SessionConflictError. Failed or cancelled (outcome
        unknown): the caller's values roll back, and each session, with the version
        that may have landed skipped, is written again at its old state, so storage
        ends at all the old values or all the new ones.
        """
        keys = [actor.storage_key for actor, _, _ in changes]
        # A round writing one of them now would land its older version after ours.
        while not self._in_flight.isdisjoint(keys):
            await self._next_round()
        started = self._clock.now()
        items = [
            WriteItem(
                actor.storage_key,
                None if deleted else encode_record(actor.version + 1, blob, self._schema),
                actor.version + 1,
                expected=actor.persisted_version,
            )
            for actor, blob, deleted in changes
        ]
        self._in_flight.update(keys)
        try:
            async with asyncio.timeout(self._config.write_timeout):
                conflicts = await self._ownership.write_all(
                    [actor for actor, _, _ in changes], items, self._config.ttl_ms
                )
        except BaseException:
            self._counters.write_failures += 1
            for actor, _, _ in changes:
                actor.skip_versions(2)
                self.mark_dirty(actor)
            raise
        finally:
            self._in_flight.difference_update(keys)
            self._wake.set()
        if conflicts:
            for position, reason in conflicts:
                self.refuse(changes[position][0], reason)
            position, reason = conflicts[0]
            raise SessionConflictError(changes[position][0].key, reason)
        for actor, blob, deleted in changes:
            actor.written_together(blob, deleted)
            self.drop(actor)
        self._count_written(items, started, 1, together=True)

    # -- lifecycle --------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """A session made dirty now will still be written (False once stopped)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="actorsess-flusher")

    async def stop(self, timeout: float) -> list[str]:
        """Write everything dirty (retrying until ``timeout``); return keys left unwritten."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                for round_task in list(self._rounds):
                    round_task.cancel()
                await asyncio.gather(task, *self._rounds, return_exceptions=True)
        self._fail_waiters(StorageError("the session manager closed before this write landed"))
        return [actor.key for actor in self.dirty.values()]

    # -- waiting for writes -------------------------------------------------

    async def wait_persisted(self, actor: SessionActor[Any], version: int) -> None:
        """Return once ``actor`` at ``version`` (or later) is in storage.

        Raises StorageError if a write round fails meanwhile: the change stays
        dirty and the flusher keeps retrying it.
        """
        while actor.persisted_version < version and self.dirty.get(actor.storage_key) is actor:
            await self._next_round()
        if actor.error is not None and actor.status is Status.READY:
            raise actor.error  # shared ownership: the write was refused as a conflict

    async def wait_all_dirty(self) -> None:
        """Return once every session dirty now is in storage at its current version."""
        # Two flat lists, not a tuple per session: a flush of many sessions should
        # not itself allocate enough to set off a full garbage collection.
        actors = list(self.dirty.values())
        versions = [actor.version for actor in actors]
        for actor, version in zip(actors, versions, strict=True):
            await self.wait_persisted(actor, version)

    async def _next_round(self) -> None:
        if self._task is None or self._task.done():
            raise StorageError("the flusher is not running")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._round_waiters.append(waiter)
        self._wake.set()
        await waiter

    async def wait_for_room(self) -> None:
        """Backpressure: wait until fewer than ``max_dirty`` sessions are dirty."""
        limit = self._config.max_dirty
        timeout = self._config.backpressure_timeout
        started = self._clock.now()
        self._waiting_for_room += 1
        self._counters.backpressure_waits += 1
        try:
            self._log.warning(
                "session.backpressure", dirty=len(self.dirty), waiting=self._waiting_for_room
            )
            while len(self.dirty) >= limit:
                remaining = None if timeout is None else started + timeout - self._clock.now()
                if remaining is not None and remaining <= 0:
                    self._counters.backpressure_timeouts += 1
                    raise BackpressureTimeoutError(len(self.dirty), limit, timeout or 0.0)
                self._room.clear()
                self._wake.set()
                await self._clock.wait(self._room, remaining)
        finally:
            self._waiting_for_room -= 1

    # -- the task -----------------------------------------------------------

    def _delay(self) -> float | None:
        """Seconds until the next round should start; None when there is nothing to do."""
        if not self.dirty:
            return None
        now = self._clock.now()
        if now < self._backoff_until:
            return self._backoff_until - now
        if (
            self._stopping
            or self._write_through
            or self._round_waiters
            or len(self.dirty) >= self._config.max_batch
        ):
            return 0.0
        return self._dirty_since + self._config.flush_interval - now

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self.dirty and not self._rounds:
                self._resolve_waiters()
                if self._stopping:
                    return
            delay = self._delay()
            if delay is not None and delay <= 0:
                if len(self._rounds) < _ROUNDS_IN_FLIGHT and len(self.dirty) > len(self._in_flight):
                    self._start_round()
                    continue
                delay = None  # due, but nothing more can start until a round ends
            await self._clock.wait(self._wake, delay)

    def _start_round(self) -> None:
        """Step 1, with no await: snapshot up to max_batch dirty actors not already in flight."""
        started = self._clock.now()
        batch_size = self._batch_limit
        byte_budget = self._config.max_batch_bytes
        in_flight = self._in_flight
        schema = self._schema
        batch: list[SessionActor[Any]] = []
        items: list[WriteItem] = []
        # A session is in at most one round at a time, so two writes of one key
        # are never in flight together and cannot land out of order.
        for key, actor in self.dirty.items():
            if key in in_flight:
                continue
            in_flight.add(key)
            batch.append(actor)
            version = actor.version
            record = None if actor.deleted else encode_record(version, actor.blob, schema)
            items.append(WriteItem(key, record, version, expected=actor.persisted_version))
            byte_budget -= len(actor.blob)
            # Bounded by count and by bytes; a single session larger than the byte
            # budget still goes, alone.
            if len(batch) >= batch_size or byte_budget <= 0:
                break
        leftovers = len(self.dirty) > len(in_flight)
        self._dirty_since = _NEVER if leftovers else started
        waiters, self._round_waiters = self._round_waiters, []
        attempt = self._failures + 1
        task = asyncio.get_running_loop().create_task(
            self._write_round(batch, items, waiters, started, attempt)
        )
        self._rounds.add(task)
        task.add_done_callback(self._round_ended)

    def _round_ended(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved; rounds handle their own errors
        self._wake.set()

    async def _write_round(
        self,
        batch: list[SessionActor[Any]],
        items: list[WriteItem],
        waiters: list[asyncio.Future[None]],
        started: float,
        attempt: int,
    ) -> None:
        """Steps 2 and 3: write (await), then settle with no await."""
        try:
            try:
                async with asyncio.timeout(self._config.write_timeout):
                    conflicts = await self._ownership.write(batch, items, self._config.ttl_ms)
            except BaseException as exc:
                # Outcome unknown: this batch may still land later; the version fence
                # keeps it from landing over anything newer.
                if not isinstance(exc, Exception):
                    self._round_waiters.extend(waiters)
                    raise
                self._on_failure(exc, waiters, attempt)
                return
            dirty = self.dirty
            # Each refused session leaves the dirty set, marked written as far as it
            # can be, so the loop below leaves it alone.
            for position, reason in conflicts:
                self.refuse(batch[position], reason)
            for actor, item in zip(batch, items, strict=True):
                actor.written(item.version)
                if actor.version == item.version and dirty.get(item.key) is actor:
                    del dirty[item.key]  # unchanged since the snapshot: clean
        finally:
            self._in_flight.difference_update([item.key for item in items])
        settle = self._ownership.settle
        for actor in batch:
            if actor.parked:
                settle(actor)
        self._count_written(items, started, attempt)
        self._failures = 0
        self._batch_limit = min(self._config.max_batch, self._batch_limit * 2)
        self._backoff_until = _NEVER
        self.last_error = None
        if len(self.dirty) < self._config.max_dirty:
            self._room.set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        # Waiters that arrived while this round was in flight re-check their own
        # condition; whatever they wait for may have landed just now.
        self._resolve_waiters()

    def _count_written(
        self, items: list[WriteItem], started: float, attempt: int, **extra: object
    ) -> None:
        self._counters.flushes += 1
        self._counters.written += len(items)
        size = sum(len(i.blob) for i in items if i.blob is not None)
        duration = self._clock.now() - started
        timings = self._timings
        timings.flush_seconds.observe(duration)
        timings.flush_sessions.observe(len(items))
        timings.flush_bytes.observe(size)
        self._log.info(
            "session.flush",
            sessions=len(items),
            bytes=size,
            duration_ms=round(duration * 1000, 3),
            attempt=attempt,
            **extra,
        )

    def _on_failure(
        self, exc: Exception, waiters: list[asyncio.Future[None]], attempt: int
    ) -> None:
        self._counters.errors += 1
        self._counters.write_failures += 1
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        self._backoff_until = self._clock.now() + delay
        if isinstance(exc, TimeoutError):
            self._counters.write_timeouts += 1
            reason = f"write timed out after {self._config.write_timeout:g}s (outcome unknown)"
            # Too much for one write_timeout, perhaps: the next rounds take half as many
            # sessions (down to one), and grow back as writes succeed.
            self._batch_limit = max(1, self._batch_limit // 2)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.last_error = reason
        self._log.warning(
            "session.flush_failed",
            error=reason,
            retry_in_s=round(delay, 3),
            dirty=len(self.dirty),
            attempt=attempt,
        )
        for waiter in waiters:
            if not waiter.done():
                error = StorageError(f"session write failed: {reason}; it will be retried")
                error.__cause__ = exc
                waiter.set_exception(error)

    def _resolve_waiters(self) -> None:
        waiters, self._round_waiters = self._round_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _fail_waiters(self, error: StorageError) -> None:
        waiters, self._round_waiters = self._round_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
