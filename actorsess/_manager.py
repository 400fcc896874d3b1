"""SessionManager: the public face that ties registry, loader, flusher and codec together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import heapq
import inspect
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from actorsess._actor import SessionActor, Status
from actorsess._backoff import Backoff
from actorsess._borrowed import Borrower
from actorsess._claim import KeySpaceClaim
from actorsess._clock import Clock, MonotonicClock
from actorsess._codec import Codec, SessionCodec
from actorsess._config import SessionConfig
from actorsess._context import Context
from actorsess._deadlock import wait_for_turn
from actorsess._flusher import Flusher
from actorsess._group import SessionGroup
from actorsess._idle import IdleSession
from actorsess._key import check_key
from actorsess._keyspace import KeySpace, MigrationReport
from actorsess._loader import Loader
from actorsess._log import DefaultLogger
from actorsess._migrations import Migration, Migrations
from actorsess._owners import check_ownership, ownership_for
from actorsess._ownership import Ownership
from actorsess._partitions import Partitions
from actorsess._registry import Registry
from actorsess._stats import Counters, SessionStats
from actorsess._storage_keys import StorageKeys
from actorsess._timings import HistogramSnapshot, Timings
from actorsess._turn import SessionTurn, Turns, observed_turn
from actorsess._warm import Warmer
from actorsess.exceptions import (
    CorruptSessionError,
    InvalidKeyError,
    ManagerClosedError,
    SessionConflictError,
)
from actorsess.storage.base import (
    AtomicStorage,
    ClaimableStorage,
    PreparableStorage,
    Storage,
)

T = TypeVar("T")
R = TypeVar("R")

# The longest start() waits for the storage to open its connections.
_PREPARE_TIMEOUT = 2.0

# While closing, how often the sessions still held are looked at even without news.
_HOLDER_RECHECK = 0.05

# How many open managers use each storage object, so that one storage can serve
# several managers (namespaces) and is closed by the last of them to close.
_storage_users: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _use_storage(storage: Storage) -> None:
    # A storage that is not weak-referenceable counts every manager as its only user.
    with contextlib.suppress(TypeError):
        _storage_users[storage] = _storage_users.get(storage, 0) + 1


def _last_user_of(storage: Storage) -> bool:
    try:
        users = _storage_users.get(storage, 1) - 1
    except TypeError:
        return True
    if users > 0:
        _storage_users[storage] = users
        return False
    _storage_users.pop(storage, None)
    return True


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class SessionManager(Generic[T]):
    """Per-key sessions, serialized by actors, cached in an LRU, written behind in batches.

    The session type ``T`` is ``initial``'s return type: a dict, a dataclass, a
    TypedDict or a pydantic model.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        initial: Callable[[], T],
        config: SessionConfig | None = None,
        clock: Clock | None = None,
        logger: Any = None,
        rng: random.Random | None = None,
        migrations: Sequence[Migration] = (),
        codec: SessionCodec[T] | None = None,
        partitions: Partitions | None = None,
    ) -> None:
        """Sessions kept in ``storage``, started from ``initial()``.

        Args:
            storage: ``MemoryStorage()``, ``SqliteStorage(path)``,
                ``RedisStorage.from_url(url)`` (or any ``Storage``); one storage
                object may serve several managers (namespaces).
            initial: Makes a new session; its return type is the session type (a
                dict, a dataclass, a pydantic model or a TypedDict).
            config: A ``SessionConfig`` (flush interval, cache size, ownership ...;
                ``SessionConfig.from_env()`` reads ``ACTORSESS_*``).
            clock: Time source for flushes, TTLs and leases (tests pass
                ``actorsess.testing.FakeClock``).
            logger: A structlog-style logger (default: structlog's ``actorsess``
                logger).
            rng: Random source of the retry backoff's jitter.
            migrations: Functions upgrading stored data, oldest first (see the
                Session lifecycle page).
            codec: An encoding of your own (a ``SessionCodec``: ``encode`` and
                ``decode``) instead of the JSON typed by ``initial``; then
                ``strict_json`` does not apply, and ``initial`` may return any class.
            partitions: With ``ownership="partitioned"`` (and only then): this
                worker's ``Partitions``, shared with the forwarder and the other
                managers of the process.
        """
        config = SessionConfig() if config is None else config
        if not isinstance(config, SessionConfig):
            raise TypeError(f"config must be a SessionConfig, got {type(config).__name__}")
        check_ownership(config, storage, partitions)
        self._partitions = partitions
        self._storage = storage
        _use_storage(storage)
        self._config = config
        self._clock: Clock = clock or MonotonicClock()
        self._log = logger if logger is not None else DefaultLogger()
        self._codec: Codec[T] = Codec(initial, strict_json=config.strict_json, custom=codec)
        self._migrations = Migrations(migrations)
        self._keys = (
            StorageKeys(config.key_prefix)
            if partitions is None
            else partitions.storage_keys(config.key_prefix)
        )
        self._counters = Counters()
        self._timings = Timings()
        #: What ``session()`` calls to make a turn (``observed_turn`` once
        #: ``observe_turns()`` was called).
        self._make_turn: Callable[[Turns[T], str], SessionTurn[T]] = SessionTurn
        #: Partitioned mode: borrows the sessions of partitions this process does not hold.
        self._borrower = (
            None
            if partitions is None
            else Borrower(partitions, config, self._codec, self._migrations, self._clock, self._log)
        )
        if self._borrower is not None:
            self._make_turn = self._borrower.wrap(SessionTurn)
        self._backoff = Backoff(config.retry_base_delay, config.retry_max_delay, rng)
        self._turns: Turns[T] = Turns(self._codec, self.start, wait_for_turn)
        self._build()
        self._state = _State.NEW
        self._close_task: asyncio.Task[None] | None = None
        self._start_task: asyncio.Task[None] | None = None
        #: One process per key space in local mode; local and shared never mix.
        self._claim = (
            KeySpaceClaim(storage, config.key_prefix, config.ownership, self._clock, self._log)
            if isinstance(storage, ClaimableStorage)
            else None
        )

    # -- lifecycle ----------------------------------------------------------

    def _build(self) -> None:
        """Make the registry, the ownership, the loader, the flusher and the turn
        rules: at construction, and again when a closed manager is started anew."""
        config = self._config
        self._registry = Registry(config.max_cached, self._on_evict, self._forgotten, self._on_park)
        context = Context(
            self._storage,
            config,
            self._registry,
            self._counters,
            self._timings,
            self._clock,
            self._backoff,
            self._log,
            self._keys,
        )
        self._ownership: Ownership = ownership_for(context, self._partitions, self._codec.decode)
        if self._ownership.keeps_idle:
            self._registry.keep_idle(config.max_live, self._thaw)
        self._loader = Loader(
            context, self._codec, self._migrations, self._mark_migrated, self._ownership
        )
        self._warmer = Warmer(context, self._codec, self._migrations)
        self._flusher = Flusher(context, self._ownership, self._migrations.schema)
        self._ownership.bind(self._loader, self._flusher)
        self._turns.attach(context, self._ownership, self._loader, self._flusher)
        self._keyspace = KeySpace(
            context, self._codec, self._migrations, self._cached_committed, self._turns.empty_blob
        )

    @property
    def config(self) -> SessionConfig:
        """The settings this manager runs with."""
        return self._config

    @property
    def storage(self) -> Storage:
        """Where this manager keeps its sessions."""
        return self._storage

    def _set_state(self, state: _State) -> None:
        self._state = state
        # Mirrored as plain bools for the turn's hot path.
        self._turns.running = state is _State.RUNNING
        self._turns.closing = state is _State.CLOSING

    async def start(self) -> None:
        """Start the background flusher and open storage connections.

        Idempotent; the first session block starts it too. A storage that cannot
        be reached yet does not stop the start: it is logged as
        ``session.storage_unprepared`` and the first loads connect (or fail) as usual.
        """
        if self._state is _State.RUNNING:
            return
        if self._state is _State.CLOSING:
            raise ManagerClosedError("this SessionManager is closing; start it once closed")
        if self._state is _State.CLOSED:
            # Started again after close() (aiogram closes the storage at dispatcher
            # shutdown, and a bot may start polling again): fresh parts, same settings.
            self._build()
            _use_storage(self._storage)
            self._close_task = None
            self._start_task = None
            self._set_state(_State.NEW)
        # Every caller arriving while the start is under way waits for the same task and
        # resumes in arrival order, so the first turns of a key keep their order too.
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(self._startup())
        try:
            await asyncio.shield(self._start_task)
        except BaseException:
            if self._start_task.done():
                self._start_task = None  # failed: a later start tries again
            raise

    async def _startup(self) -> None:
        await self._prepare_storage()
        await self._ownership.check(min(self._config.load_timeout, _PREPARE_TIMEOUT))
        if self._claim is not None:
            await self._claim.acquire(min(self._config.load_timeout, _PREPARE_TIMEOUT))
        self._flusher.start()
        self._ownership.start()
        if self._partitions is not None:
            self._partitions.lend_from(self._keys.prefix, self._lend)
        self._set_state(_State.RUNNING)

    async def _prepare_storage(self) -> None:
        storage = self._storage
        if not isinstance(storage, PreparableStorage):
            return
        # Never long: the first loads would open connections anyway.
        timeout = min(self._config.load_timeout, _PREPARE_TIMEOUT)
        try:
            async with asyncio.timeout(timeout):
                await storage.prepare()
        except Exception as exc:
            reason = (
                f"timed out after {timeout:g}s"
                if isinstance(exc, TimeoutError)
                else f"{type(exc).__name__}: {exc}"
            )
            self._log.warning("session.storage_unprepared", storage=repr(storage), error=reason)

    async def close(self, *, timeout: float | None = None) -> None:
        """Stop intake, let current holders finish, write everything dirty, close storage.

        A storage shared by several managers is closed by the last one to close.

        Safe to call twice; concurrent callers all wait for the same shutdown.
        ``timeout`` (default ``close_timeout``) bounds the whole shutdown. What
        could not be written by then is logged as ``session.unflushed`` with the
        keys; a block still running then cannot commit (its exit raises
        ManagerClosedError and logs ``session.commit_refused``).
        """
        if self._close_task is None:
            budget = self._config.close_timeout if timeout is None else max(0.0, timeout)
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown(budget))
        await asyncio.shield(self._close_task)

    async def _shutdown(self, budget: float) -> None:
        was_running = self._state is _State.RUNNING
        self._set_state(_State.CLOSING)
        if self._partitions is not None:
            self._partitions.stop_lending(self._keys.prefix, self._lend)
        deadline = self._clock.now() + budget
        await self._wait_for_holders(deadline)
        unwritten: list[str] = []
        # From now on every commit takes the general path, which refuses it once the
        # flusher has stopped (the fast path has no check of its own).
        self._turns.fast_commit = False
        if was_running:
            remaining = max(0.1, deadline - self._clock.now())
            unwritten = await self._flusher.stop(remaining)
        await self._loader.aclose()
        if was_running:
            await self._ownership.stop(max(0.1, deadline - self._clock.now()))
        if unwritten:
            self._log.error(
                "session.unflushed",
                count=len(unwritten),
                keys=unwritten[:20],
                error=self._flusher.last_error,
            )
        if self._claim is not None and was_running:
            await self._claim.release()
        self._set_state(_State.CLOSED)
        if _last_user_of(self._storage):
            await self._storage.close()

    async def _wait_for_holders(self, deadline: float) -> None:
        """Let every turn held or queued when closing began finish (until ``deadline``).

        No new turn starts once closing, so the set of held sessions only shrinks.
        Turns are not counted one by one (that would cost every turn): each release
        while closing sets ``released`` and the held sessions are looked at again.
        """
        released = self._turns.released
        holders = [actor for actor in self._registry.actors() if actor.held]
        while holders:
            released.clear()
            remaining = deadline - self._clock.now()
            # The periodic look also catches a turn released without passing through
            # the manager (a waiter cancelled just as the turn reached it).
            if remaining <= 0:
                return
            await self._clock.wait(released, min(remaining, _HOLDER_RECHECK))
            holders = [actor for actor in holders if actor.held]

    async def __aenter__(self) -> SessionManager[T]:
        try:
            await self.start()
        except BaseException:
            await self.close()  # no __aexit__ follows: release what start opened
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # A manager dropped (or left behind by a closing loop) with unwritten changes
        # loses them; at least say so, with how many.
        flusher = getattr(self, "_flusher", None)
        if flusher is not None and flusher.dirty and self._state is not _State.CLOSED:
            self._log.error(
                "session.unflushed",
                count=len(flusher.dirty),
                keys=[actor.key for actor in list(flusher.dirty.values())[:20]],
                error="the SessionManager was dropped without close()",
            )

    def __repr__(self) -> str:
        return (
            f"<SessionManager [{self._state.value} | cached: {len(self._registry)} | "
            f"dirty: {len(self._flusher.dirty)}] {self._storage!r}>"
        )

    # -- public operations --------------------------------------------------

    def session(self, key: str) -> SessionTurn[T]:
        """Exclusive access to ``key``'s session; changes commit when the block exits.

        An invalid key raises InvalidKeyError when the block is entered.
        """
        # The key is checked where a session is created for it (``Turns.enter``), not
        # here: every cached key passed that check, and this call is on the hot path.
        return self._make_turn(self._turns, key)

    def observe_turns(self) -> None:
        """Count every session block (``stats().turns``) and time how long one in 16
        holds its session (``histograms()["turn_hold_seconds"]``), from now on.

        Off until called (``register_prometheus`` calls it), so that a cached turn
        costs nothing for metrics nobody reads; on, it costs a few percent of one."""
        self._make_turn = (
            observed_turn if self._borrower is None else self._borrower.wrap(observed_turn)
        )

    def histograms(self) -> dict[str, HistogramSnapshot]:
        """How long turns waited and held, loads and flushes took, and how large
        flushes were, as cumulative bucket counts (the Prometheus histograms)."""
        return self._timings.snapshots()

    def sessions(self, *keys: str) -> SessionGroup[T]:
        """Exclusive access to several sessions at once, committed all or nothing.

        ``async with manager.sessions(a, b) as (first, second):`` waits for every
        key's turn, taken in one global order (sorted keys), so groups over the same
        keys never deadlock. At the end of the block, the changed sessions are
        written in one atomic storage step before any of them takes its new state
        (write-through, whatever ``flush_interval`` is): storage and every later
        reader see all the changes or none. If the block raises, or the write fails,
        every session is rolled back (SessionConflictError, StorageError).

        On Redis Cluster the keys must share a hash slot (a common ``{tag}``);
        otherwise entering raises InvalidKeyError saying so.
        """
        return SessionGroup(self._turns, self.session, keys)

    async def move(self, renames: Mapping[str, str]) -> int:
        """Move sessions to new keys (``{old key: new key}``); returns how many moved.

        Each old key's session goes to its new key and the old key is deleted. Where
        the new key already holds a session, both are left as they are (the new one
        is newer). In one atomic step where ``sessions()`` can write all the keys
        together (on Redis Cluster: only keys sharing a hash slot); otherwise pair
        by pair, each new key written before its old key is deleted,
        so a crash in between leaves a copy behind, never a loss.
        """
        pairs = [(old, new) for old, new in renames.items() if old != new]
        for old, new in pairs:
            check_key(old)
            check_key(new)
        news = {new for _, new in pairs}
        if len(news) < len(pairs) or news & set(renames):
            raise InvalidKeyError("move(): every new key must be distinct and not an old key")
        if not pairs:
            return 0
        keys = [key for pair in pairs for key in pair]
        storage = self._storage
        if (
            isinstance(storage, AtomicStorage)
            and storage.atomic_problem([self._keys.of(key) for key in keys]) is None
        ):
            group = self.sessions(*keys)
            async with group:
                turns = dict(zip(keys, group.turns, strict=True))
                moved = 0
                for old, new in pairs:
                    if self._copy_over(turns[old], turns[new]) is not None:
                        turns[old].delete()
                        moved += 1
        else:
            moved = 0
            for old, new in pairs:
                moved += await self._move_pair(old, new)
        self._log.info("session.moved", moved=moved, kept=len(pairs) - moved)
        return moved

    def _copy_over(self, old: SessionTurn[T], new: SessionTurn[T]) -> bytes | None:
        """Inside both turns: give ``new`` a copy of ``old``'s value and return its
        encoding; None (nothing done) unless ``old`` has a session and ``new`` none."""
        if old.is_new or not new.is_new:
            return None
        copied = self._codec.encode(old.value)
        new.value = self._codec.decode(copied)
        return copied

    async def _move_pair(self, old: str, new: str) -> bool:
        old_turn, new_turn = self.session(old), self.session(new)
        first, second = (old_turn, new_turn) if old < new else (new_turn, old_turn)
        async with first, second:  # in key order, as every group
            copied = self._copy_over(old_turn, new_turn)
        if copied is None:
            return False
        await self.persist(new)  # the copy is in storage before the original goes
        turn = self.session(old)
        async with turn as value:
            if self._codec.encode(value) == copied:  # (changed meanwhile: both are kept)
                turn.delete()
        return True

    @overload
    async def update(self, key: str, fn: Callable[[T], Awaitable[R]]) -> R: ...
    @overload
    async def update(self, key: str, fn: Callable[[T], R]) -> R: ...
    async def update(self, key: str, fn: Callable[[T], Any]) -> Any:
        """Run ``fn(data)`` serialized with every other access to ``key``; return its result.

        ``fn`` may be a coroutine function. If it raises, the session is unchanged.
        """
        async with self.session(key) as data:
            result = fn(data)
            if inspect.isawaitable(result):
                result = await result
            return result

    async def get(self, key: str) -> T:
        """A copy of ``key``'s last committed value (loading it if needed)."""
        self._check_open()
        check_key(key)
        actor = self._cached_committed(key)
        if actor is not None:
            return self._codec.decode(actor.blob)
        if self._borrows(key):
            async with self.session(key) as value:  # a value of its own: not cached here
                return value
        actor = await self._turns.enter(key)
        try:
            return self._codec.decode(actor.blob)
        finally:
            self._turns.leave(actor)

    async def get_many(self, keys: Iterable[str]) -> dict[str, T]:
        """Copies of the committed values of ``keys``, loading every missing one in batches.

        Takes no turns (like ``get``) and makes no task per key. To warm the cache
        without needing the values, ``warm`` is cheaper. A corrupt or unloadable
        key raises its error after the others have loaded.
        """
        wanted = await self._started_with(keys)
        actors: list[SessionActor[T]] = []
        loading = False
        for key in wanted:
            # A parked session stays parked: in shared mode it may be on its way to
            # another process.
            actor: SessionActor[T] | None = self._registry.find_cached(key)
            if actor is None:
                actor = self._turns.new_actor(key)
            actors.append(actor)
            loading = loading or actor.status is Status.LOADING
        if loading:
            await self._loader.drain()
            # Keys another process owns (shared mode) arrive later, one by one.
            waiting = [
                actor.load_future
                for actor in actors
                if actor.status is Status.LOADING and actor.load_future is not None
            ]
            if waiting:
                await asyncio.shield(asyncio.gather(*waiting))
        result: dict[str, T] = {}
        failure: BaseException | None = None
        for actor in actors:
            if (
                actor.status is Status.READY
                and not self._turns.expired(actor)
                and self._ownership.usable(actor)
            ):
                result[actor.key] = self._codec.decode(actor.blob)
            elif actor.status is Status.FAILED:
                failure = failure or actor.error
            else:  # expired, still loading for a turn that arrived meanwhile, or its
                # lease lapsed: through a turn, as get() does
                result[actor.key] = await self.get(actor.key)
        if failure is not None:
            raise failure
        return result

    async def warm(self, keys: Iterable[str]) -> None:
        """Load ``keys`` into the cache ahead of their turns, e.g. the chats that were
        active before a restart, so their first updates find them cached.

        Records are read in batches of ``max_batch`` and kept as the bytes an idle
        session is kept as (see ``max_live``): no actor and no live value until a
        turn takes the session, so warming many keys costs little more than reading
        them. Keys already cached are left alone; beyond ``max_cached`` the oldest
        cached sessions make room, as for any load. Where sessions are not kept as
        bytes (shared ownership, or ``max_live`` at ``max_cached``), this is
        ``get_many`` without its result. A corrupt or unloadable key raises its error
        after the others have loaded.
        """
        wanted = await self._started_with(keys)
        if self._registry.keeps_idle:
            wanted = await self._warmer.warm(wanted)
        if wanted:
            await self.get_many(wanted)

    async def _started_with(self, keys: Iterable[str]) -> list[str]:
        """``keys`` checked and without repeats, the manager started (for the calls
        that take many keys at once)."""
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            check_key(key)
        if self._state is not _State.RUNNING:
            self._check_open()
            await self.start()
        return wanted

    async def persist(self, key: str) -> None:
        """Return once ``key``'s current committed state is in storage."""
        self._check_open()
        check_key(key)
        actor = self._registry.peek(key)
        if actor is not None:
            await self._flusher.wait_persisted(actor, actor.version)

    async def flush(self) -> None:
        """Return once everything dirty at the time of the call is in storage."""
        self._check_open()
        await self._flusher.wait_all_dirty()

    async def delete(self, key: str) -> None:
        """Reset ``key`` to ``initial`` and remove its stored record (even a corrupt one).

        Returns once the record is gone from storage.
        """
        turns = self._turns
        if self._borrows(key):
            turn = self.session(key)
            async with turn:
                turn.delete()
            return
        try:
            actor = await turns.enter(key)
        except CorruptSessionError:
            # No version can be read from a corrupt record, so it cannot be fenced:
            # remove it directly. No actor exists for it (the failed one is gone).
            async with asyncio.timeout(self._config.write_timeout):
                await self._storage.delete_many([self._keys.of(key)])
            return
        try:
            if not actor.dirty and not turns.has_room():
                # A delete makes the session dirty like any commit (rule 5).
                await self._flusher.wait_for_room()
            turns.check_accepting(actor)
            value, blob = self._codec.fresh()
            actor.replace(value)
            # One past the stored version, so the version fence lets the delete through.
            actor.commit(blob, True, actor.expires_at)
            version = actor.version
            self._flusher.mark_dirty(actor)
        finally:
            turns.leave(actor)
        await self._flusher.wait_persisted(actor, version)

    async def scan(
        self, prefix: str = "", *, batch: int | None = None
    ) -> AsyncIterator[tuple[str, T]]:
        """Every stored session whose key starts with ``prefix``, as ``(key, value)``.

        For broadcasts and admin tools: pages through storage (``batch`` keys, default
        ``max_batch``, per scan step and load), so memory stays flat however many
        sessions there are, and caches nothing. Values are copies of the committed
        state; a cached change not yet written wins over what storage holds, and
        cached sessions storage does not have yet come too. A corrupt record is
        skipped and logged (``session.corrupt``). A key changed during the walk may
        come with its old or new value; one added or deleted may or may not come.
        """
        size = self._walk_batch(prefix, batch)
        if self._state is not _State.RUNNING:
            self._check_open()
            await self.start()
        async for item in self._keyspace.scan(prefix, size):
            yield item

    async def migrate_all(
        self, *, dry_run: bool = False, prefix: str = "", batch: int | None = None
    ) -> MigrationReport:
        """Upgrade every stored session under ``prefix`` to this manager's schema now,
        instead of on each session's next load.

        Pages through storage (``batch`` keys at a time, default ``max_batch``);
        each upgraded session is written back by the flusher before the next page.
        ``dry_run=True`` reads and upgrades in memory only and writes nothing. A
        record that cannot be upgraded is left untouched and reported.
        """
        size = self._walk_batch(prefix, batch)
        if self._state is not _State.RUNNING:
            self._check_open()
            await self.start()
        report = await self._keyspace.migrate_all(self.get, self.flush, dry_run, prefix, size)
        self._log.info("session.migrate_all", **dataclasses.asdict(report))
        return report

    def _walk_batch(self, prefix: object, batch: object) -> int:
        if not isinstance(prefix, str) or "\x00" in prefix:
            raise InvalidKeyError(f"a key prefix must be a str without NUL, got {prefix!r}")
        if batch is None:
            return self._config.max_batch
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        return batch

    def _cached_committed(self, key: str) -> SessionActor[T] | None:
        """``key``'s cached actor if its committed value is current, else None."""
        actor = self._registry.peek(key)
        if (
            actor is not None
            and actor.status is Status.READY
            and not self._turns.expired(actor)
            and self._ownership.usable(actor)
        ):
            return actor
        return None

    def _mark_migrated(self, actor: SessionActor[T]) -> None:
        self._flusher.mark_dirty(actor)

    async def refresh(self, key: str) -> T:
        """Load ``key`` from storage again and return a copy of what it holds now.

        For a record changed outside this process (an admin tool, a restored
        backup) while a local-mode manager has it cached. Blocks already queued for
        ``key`` finish first; an unwritten change of this process is written before
        the reload (never dropped). In ``ownership="shared"`` edits go through the
        owner (another manager's ``update()``), so this raises ConfigError.
        """
        self._ownership.allow_outside_edits("refresh")
        actor = await self._turns.enter(key)
        try:
            await self._reload(actor)
            return self._codec.decode(actor.blob)
        finally:
            self._turns.leave(actor)

    async def evict(self, key: str) -> None:
        """Drop ``key``'s cached copy, so that its next use loads what storage holds.

        Like ``refresh`` (local mode only; an unwritten change is written first), but
        frees the memory: blocks that queued meanwhile find the session reloaded
        instead. A key that is not cached is left alone.
        """
        self._ownership.allow_outside_edits("evict")
        check_key(key)
        if self._registry.peek(key) is None:
            if self._registry.discard_idle(key):  # kept as bytes: written, idle
                self._on_evict(key)
            return
        actor = await self._turns.enter(key)
        try:
            if actor.waiters:
                await self._reload(actor)  # needed again at once: keep it, fresh
            else:
                await self._write_out(actor)
                self._registry.discard(actor)
                self._counters.evictions += 1
                self._log.debug("session.evict", key=key, was_dirty=False)
        finally:
            self._turns.leave(actor)

    def _borrows(self, key: str) -> bool:
        """Partitioned mode: whether a block on ``key`` opened now borrows the session
        from its partition's owner (``session()`` then gives a ``BorrowedTurn``)."""
        return self._borrower is not None and self._borrower.partitions.lends_key(key)

    async def _lend(self, key: str, exchange: Callable[[], Awaitable[bool]]) -> bool:
        """Partitioned mode, in the owner of ``key``'s partition: hold ``key``'s turn with
        its change written while ``exchange`` lends the session to another process
        (``actorsess._loans``), and load it again if ``exchange`` wrote a new record."""
        try:
            actor = await self._turns.enter(key)
        except CorruptSessionError:
            # Not a record this manager can read, so not one of its sessions (managers
            # share a key_prefix and keep different keys): it has no part in the loan.
            return await exchange()
        try:
            await self._write_out(actor)
            changed = await exchange()
            if changed:
                await self._reload(actor)
            return changed
        finally:
            self._turns.leave(actor)

    async def _write_out(self, actor: SessionActor[T]) -> None:
        """Holding ``actor``'s turn: return once its committed state is in storage, or
        storage refused it for a newer version written from outside, which wins (the
        refusal is logged and counted as ``session.conflict``)."""
        if actor.dirty:
            with contextlib.suppress(SessionConflictError):
                await self._flusher.wait_persisted(actor, actor.version)
        actor.clear_error()  # a refusal is settled by the reload or the drop that follows

    async def _reload(self, actor: SessionActor[T]) -> None:
        """Holding ``actor``'s turn: write it out, then load it again from storage."""
        await self._write_out(actor)
        version = actor.version
        self._loader.request(actor)
        future = actor.load_future
        assert future is not None
        await asyncio.shield(future)
        if actor.status is not Status.READY:
            assert actor.error is not None
            raise actor.error
        # A record put back at an older version (a restored backup) or removed outright:
        # this key's versions still go on above every one it has had (rule 11).
        actor.raise_version(version)

    def stats(self) -> SessionStats:
        """Counts of this manager's sessions and storage calls, as of now (the source
        of its Prometheus metrics, see :mod:`actorsess.prometheus`)."""
        since = self._flusher.oldest_dirty_since()
        return SessionStats(
            # Every counter under its own name; the rest is read off the state now.
            **dataclasses.asdict(self._counters),
            cached=len(self._registry),
            dirty=len(self._flusher.dirty),
            parked=len(self._registry.parked),
            active=sum(bool(actor.held) + actor.queued() for actor in self._registry.actors()),
            oldest_unwritten=0.0 if since is None else max(0.0, self._clock.now() - since),
        )

    def hot_keys(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` keys with the most session blocks inside or waiting for their turn
        right now, busiest first, as ``(key, blocks)``; idle keys are left out.

        For an operator looking for a hot chat (no per-key metric label needed). It
        looks at every cached session, so call it on demand, not per update."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"hot_keys(n): n must be an integer >= 1, got {n!r}")
        depths = ((bool(a.held) + a.queued(), a.key) for a in self._registry.actors())
        busiest = heapq.nlargest(n, (depth for depth in depths if depth[0] > 0))
        return [(key, blocks) for blocks, key in busiest]

    # -- helpers --------------------------------------------------------------

    def _check_open(self) -> None:
        """Raise while closing: no new work then. A closed manager starts again on use."""
        self._turns.check_open()

    def _forgotten(self, actor: SessionActor[Any]) -> None:
        self._ownership.forgotten(actor)

    def _on_evict(self, key: str) -> None:
        # A session leaves memory only once idle and written (rule 4): never dirty here.
        self._counters.evictions += 1
        self._log.debug("session.evict", key=key, was_dirty=False)

    def _thaw(self, key: str, idle: IdleSession) -> SessionActor[Any]:
        """The live actor of a session kept as bytes (it was written and idle)."""
        actor: SessionActor[T] = self._ownership.new_actor(key, self._keys.of(key))
        actor.loaded(self._codec.decode(idle.blob), idle.blob, idle.version, idle.expires_at)
        return actor

    def _on_park(self, actor: SessionActor[Any]) -> None:
        # Pushed out of the LRU while busy or dirty: kept (findable) until it is not.
        # A load nobody waits in line for (get_many() warming more keys than stay
        # live) is parked as a matter of course, silently: it leaves as its record lands.
        if actor.status is Status.LOADING and not actor.held:
            return
        self._log.debug("session.park", key=actor.key, was_dirty=actor.dirty, held=bool(actor.held))
