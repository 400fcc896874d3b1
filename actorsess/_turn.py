"""The session turn, in one place: ``SessionTurn`` (what ``session(key)`` returns)
and ``Turns`` (the rules every turn of one manager follows).

A turn on a cached, free, loaded session is the library's hot path: it takes
its turn, runs the block and commits with no await and no allocation beyond the
encoded bytes. ``SessionTurn`` does only that much itself, reading the few
fields it needs straight off ``Turns`` (a Python call costs about 3% of a cached
turn, so the checks are not wrapped in one). Everything else (loading, waiting
in line, rollback, backpressure, write-through, shared ownership, groups) goes
through ``Turns.enter`` and ``Turns.exit``. Both paths change the session only
through the actor's own methods (``hold``, ``commit``, ``release``, ``rollback``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from actorsess._actor import SessionActor, Status
from actorsess._codec import Codec
from actorsess._context import Context
from actorsess._flusher import Flusher
from actorsess._key import check_key
from actorsess._loader import Loader
from actorsess._ownership import Ownership
from actorsess._timings import SAMPLE_EVERY
from actorsess.exceptions import (
    ActorSessError,
    InvalidKeyError,
    ManagerClosedError,
    SessionEncodeError,
    SessionTooLargeError,
    StorageError,
)
from actorsess.storage.base import AtomicStorage

T = TypeVar("T")

_READY = Status.READY
_SAMPLE_MASK = SAMPLE_EVERY - 1

#: Waits for a held actor's turn (``actor.acquire()`` with the deadlock check).
WaitForTurn = Callable[[SessionActor[Any]], Awaitable[None]]


class SessionTurn(Generic[T]):
    """Exclusive access to one session for the duration of an ``async with`` block.

    ``async with manager.session(key) as data`` yields the live value: mutate it
    in place. To replace it wholesale, keep the turn and assign ``turn.value``::

        turn = manager.session(key)
        async with turn:
            turn.value = {"apple": 0}

    Leaving the block normally commits; leaving it with an exception restores
    the value it had on entry.
    """

    __slots__ = ("_actor", "_key", "_turns")

    def __init__(self, turns: Turns[T], key: str) -> None:
        """Made by ``manager.session(key)``, not by hand.

        Args:
            turns: The turn rules of the manager the session belongs to.
            key: The session key.
        """
        self._turns = turns
        self._key = key
        self._actor: SessionActor[T] | None = None

    @property
    def key(self) -> str:
        """The session key."""
        return self._key

    def _inside(self) -> SessionActor[T]:
        actor = self._actor
        if actor is None:
            raise RuntimeError("the session is only available inside its 'async with' block")
        return actor

    @property
    def value(self) -> T:
        """The live session value, inside the block only; assign to replace it."""
        actor = self._inside()
        return actor.value  # type: ignore[return-value]

    @value.setter
    def value(self, new: T) -> None:
        actor = self._inside()
        self._turns.check_value(new)
        actor.replace(new)

    @property
    def is_new(self) -> bool:
        """True while the session has nothing stored: its committed value is
        ``initial()`` (never written, deleted, or expired). Unchanged by edits the
        block has not committed yet."""
        actor = self._inside()
        return actor.blob == self._turns.empty_blob

    def delete(self) -> T:
        """Delete this session from inside its block (a ``/reset``), returning the fresh
        ``initial()`` value the block sees from then on.

        When the block ends normally the stored record is removed at the next flush
        (version-fenced, as every write); if it raises, the delete rolls back with
        everything else. Changes made after the delete are kept, as a new session.
        A dict session is emptied and refilled in place, so the value the block
        already holds is the fresh one; a typed session must use the returned value.
        """
        actor = self._inside()
        fresh: T = self._turns.codec.initial()
        current = actor.value
        if isinstance(current, dict) and isinstance(fresh, dict):
            # The commit finds the value equal to initial() and deletes the record.
            current.clear()
            current.update(fresh)
            return current
        self._turns.check_value(fresh)
        actor.replace(fresh)
        return fresh

    async def __aenter__(self) -> T:
        if self._actor is not None:
            raise RuntimeError(f"session {self._key!r}: this turn is already entered")
        turns = self._turns
        # Fast path: a free, loaded, unexpired cached session (in shared mode
        # ``lookup`` also misses one whose lease is not good now).
        try:
            actor: SessionActor[T] | None = turns.lookup(self._key) if turns.running else None
        except TypeError:  # an unhashable key: enter() raises InvalidKeyError naming it
            actor = None
        if (
            actor is None
            or actor.held  # (a session with waiters is always held)
            or actor.status is not _READY
            or (actor.expires_at is not None and turns.clock.now() >= actor.expires_at)
        ):
            actor = await turns.enter(self._key)
            actor.hold(self)  # the holder, for the deadlock check
        else:
            actor.hold_cached(self)
        self._actor = actor
        return actor.value  # type: ignore[return-value]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        actor = self._actor
        if actor is None:
            return
        self._actor = None
        turns = self._turns
        if exc_type is not None or not turns.fast_commit:
            await turns.exit(actor, exc_type is None)
            return
        # Fast path: commit with no await. Whatever needs more (an unencodable or
        # too large value, room for a newly dirty session) goes to ``exit``, which
        # encodes again and handles it.
        try:
            blob = turns.encode_common(actor.value, None, turns.encode_option)  # type: ignore[arg-type]
            # Also where the bytes did not change: a list replaced by an equal tuple
            # encodes the same, and a reload would still give back the list.
            read_back = turns.read_back
            if read_back is not None and read_back(blob) != actor.value:
                raise ValueError  # ``exit`` encodes again and names what JSON changes
        except Exception:
            await turns.exit(actor, True)
            return
        if blob != actor.blob:
            if len(blob) > turns.max_bytes or (
                # Newly dirty while too many wait for storage: ``exit`` waits for room.
                actor.version <= actor.persisted_version and len(turns.dirty) >= turns.max_dirty
            ):
                await turns.exit(actor, True)
                return
            # ``Turns.apply`` and ``Turns.leave`` written out (each call would cost
            # ~3% of a turn); the state changes themselves are the actor's methods.
            ttl = turns.ttl
            if actor.commit(
                blob, blob == turns.empty_blob, None if ttl is None else turns.clock.now() + ttl
            ):
                turns.mark_dirty(actor)  # newly dirty (write-through never gets here)
        if actor.release() and (actor.parked or turns.closing):
            turns.idle(actor)


class TimedTurn(SessionTurn[T]):
    """A SessionTurn that measures how long its block holds the session."""

    __slots__ = ("_since",)

    async def __aenter__(self) -> T:
        value = await super().__aenter__()
        self._since = self._turns.clock.now()
        return value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._actor is not None:
            turns = self._turns
            turns.timings.turn_hold_seconds.observe(turns.clock.now() - self._since)
        await super().__aexit__(exc_type, exc, tb)


def observed_turn(turns: Turns[T], key: str) -> SessionTurn[T]:
    """What ``session()`` makes while turns are observed: every turn counted, one in
    ``SAMPLE_EVERY`` timed (timing each would cost a coroutine layer per turn)."""
    counters = turns.counters
    count = counters.turns = counters.turns + 1
    if count & _SAMPLE_MASK:
        return SessionTurn(turns, key)
    return TimedTurn(turns, key)


class Turns(Generic[T]):
    """How a turn of one manager is taken and ended: the general path behind
    ``SessionTurn``, and the turns of ``get``, ``delete`` and groups.

    The manager sets ``running``, ``closing`` and ``fast_commit`` as its state
    changes; the rest is fixed for the life of one set of parts (``attach``).
    """

    __slots__ = (
        "_config",
        "_flusher",
        "_keys",
        "_loader",
        "_log",
        "_ownership",
        "_registry",
        "_start",
        "_storage",
        "_wait",
        "_write_through",
        "clock",
        "closing",
        "codec",
        "counters",
        "dirty",
        "empty_blob",
        "encode_common",
        "encode_option",
        "fast_commit",
        "lookup",
        "mark_dirty",
        "max_bytes",
        "max_dirty",
        "read_back",
        "released",
        "running",
        "timings",
        "ttl",
    )

    def __init__(
        self, codec: Codec[T], start: Callable[[], Awaitable[None]], wait: WaitForTurn
    ) -> None:
        self.codec = codec
        #: Starts the manager (a turn taken before ``start()``).
        self._start = start
        self._wait = wait
        self.encode_common = codec.encode_common
        self.encode_option = codec.encode_option
        self.read_back = codec.read_back
        #: The encoded initial value: a session committed back to it is deleted.
        self.empty_blob = codec.empty_blob()
        #: Set (while closing) whenever a session's turn is released, so that the
        #: shutdown re-checks whether the holders it waits for are done.
        self.released = asyncio.Event()

    def attach(
        self, context: Context, ownership: Ownership, loader: Loader, flusher: Flusher
    ) -> None:
        """Work with these parts from now on: at construction, and again when a closed
        manager starts anew with fresh parts (a turn waiting for that start then
        goes on with the new ones)."""
        config = context.config
        self._config = config
        self._storage = context.storage
        self._registry = context.registry
        self._log = context.log
        self.clock = context.clock
        self.counters = context.counters
        self.timings = context.timings
        self._ownership = ownership
        self._loader = loader
        self._flusher = flusher
        self.mark_dirty = flusher.mark_dirty
        #: The flusher's dirty sessions, for the fast path's room check.
        self.dirty = flusher.dirty
        self._keys = context.keys
        self.ttl = config.ttl
        self._write_through = config.flush_interval == 0
        self.max_dirty = config.max_dirty
        self.max_bytes = config.max_session_bytes
        #: The cached actor of a key for the fast path, bound once: the LRU index's
        #: lookup (in shared mode it also misses actors whose lease is not good).
        self.lookup: Callable[[str], SessionActor[T] | None] = ownership.lookup()
        #: Whether the manager runs / is closing (plain bools for the hot path).
        self.running = False
        self.closing = False
        #: Commits may take the fast path (not in write-through, nor once closing).
        self.fast_commit = not self._write_through

    # -- taking a turn ------------------------------------------------------

    def check_open(self) -> None:
        """Raise while closing: no new work then. A closed manager starts again on use."""
        if self.closing:
            raise ManagerClosedError("this SessionManager is closing; no new session work")

    async def enter(self, key: str) -> SessionActor[T]:
        """Take ``key``'s turn: the general path (load, wait in line, shared ownership)."""
        check_key(key)
        if not self.running:
            # Before any lookup: start() may wait (storage connections), and what a
            # lookup saw before that wait is stale after it.
            await self.start()
        actor: SessionActor[T] = await self._ownership.take(key, self._take, self.leave)
        return actor

    async def start(self) -> None:
        """Start the manager for a turn taken before ``start()`` (raise while closing)."""
        self.check_open()
        await self._start()

    async def _take(self, key: str) -> SessionActor[T]:
        if not self.running:
            # Closed while this caller waited for a handover: its actor is gone.
            raise ManagerClosedError("this SessionManager closed while this block waited")
        actor: SessionActor[T] | None = self._registry.find(key)
        if actor is None:
            actor = self.new_actor(key)
        if actor.held:
            blocks = 2 + len(actor.waiters or ())  # the holder, those waiting, this one
            if blocks == self._config.hot_key_threshold:
                self._log.warning("session.hot_key", key=key, blocks=blocks)
            since = self.clock.now()
            await self._wait(actor)
            self.timings.turn_wait_seconds.observe(self.clock.now() - since)
        else:
            actor.hold()  # SessionTurn.__aenter__ names itself the holder
        if actor.status is not Status.READY:
            await self._ready(actor)
        elif self.expired(actor):
            actor.renew(*self.codec.fresh())
        return actor

    def new_actor(self, key: str) -> SessionActor[T]:
        """A registered actor for ``key``, its load requested."""
        actor: SessionActor[T] = self._ownership.new_actor(key, self._keys.of(key))
        self._loader.request(actor)
        self._registry.add(actor)
        return actor

    async def _ready(self, actor: SessionActor[T]) -> None:
        """Called holding the turn of a LOADING or FAILED actor: wait for the load, or
        release the turn and raise the load's error."""
        try:
            if actor.status is Status.LOADING:
                future = actor.load_future
                assert future is not None
                await asyncio.shield(future)
            if actor.status is Status.READY:
                return
        except BaseException:
            self.leave(actor)
            raise
        self.leave(actor)
        assert actor.error is not None
        raise actor.error

    def expired(self, actor: SessionActor[T]) -> bool:
        expires_at = actor.expires_at
        return expires_at is not None and self.clock.now() >= expires_at

    # -- ending a turn ------------------------------------------------------

    async def exit(self, actor: SessionActor[T], ok: bool) -> None:
        """End a turn through the general path: rollback, backpressure, write-through."""
        version = actor.version
        try:
            if not ok:
                actor.rollback(self.codec.decode)
            else:
                blob = self.encode_change(actor)
                if blob is not None:
                    try:
                        self.check_accepting(actor)
                    except ManagerClosedError:
                        actor.rollback(self.codec.decode)
                        raise
                    if actor.version <= actor.persisted_version and not self.has_room():
                        # Backpressure (rule 5): this change would add a dirty session
                        # while too many wait for storage. Wait for room still holding
                        # the turn, so the bound on dirty sessions is exact.
                        try:
                            await self._flusher.wait_for_room()
                        except BaseException:
                            actor.rollback(self.codec.decode)
                            raise
                    self.apply(actor, blob)
        finally:
            self.leave(actor)
        if self._write_through and actor.version != version:
            await self._flusher.wait_persisted(actor, actor.version)

    def has_room(self) -> bool:
        return len(self.dirty) < self.max_dirty

    def check_accepting(self, actor: SessionActor[T]) -> None:
        """Raise (and log) if a change to ``actor`` could no longer be written: the
        flusher has stopped, so it would be lost silently."""
        if self._flusher.accepting:
            return
        self.counters.errors += 1
        self._log.error("session.commit_refused", key=actor.key, reason="manager closed")
        raise ManagerClosedError(
            f"session {actor.key!r}: the SessionManager closed before this block ended "
            "(close_timeout passed), so its change cannot be saved and was rolled back"
        )

    def encode_change(self, actor: SessionActor[T]) -> bytes | None:
        """The new committed bytes, or None if the value did not change. Rolls back on refusal."""
        try:
            blob = self.codec.encode(actor.value)  # type: ignore[arg-type]
        except Exception as exc:
            actor.rollback(self.codec.decode)
            raise SessionEncodeError(actor.key, f"{type(exc).__name__}: {exc}") from exc
        if blob == actor.blob:
            return None
        if len(blob) > self.max_bytes:
            actor.rollback(self.codec.decode)
            raise SessionTooLargeError(actor.key, len(blob), self.max_bytes)
        return blob

    def expiry(self) -> float | None:
        """When a session used now expires (None without a ttl)."""
        ttl = self.ttl
        return None if ttl is None else self.clock.now() + ttl

    def apply(self, actor: SessionActor[T], blob: bytes) -> None:
        """Commit ``blob`` as ``actor``'s new state, for the flusher to write."""
        # A session back at its initial value needs no record: it is deleted (as
        # aiogram deletes an FSM key with no state and no data), so storage does not
        # fill up with empty sessions; loading it again gives the same value.
        newly_dirty = actor.commit(blob, blob == self.empty_blob, self.expiry())
        # A dirty session is already queued for the flusher (it leaves the queue only
        # once clean); only a newly dirty one, or write-through, needs telling it.
        if newly_dirty or self._write_through:
            self.mark_dirty(actor)

    def leave(self, actor: SessionActor[T]) -> None:
        """Hand the turn on (to the next in line, or free it). The fast path does the
        same with ``release`` and ``idle`` written out."""
        if actor.release() and (actor.parked or self.closing):
            self.idle(actor)

    def idle(self, actor: SessionActor[T]) -> None:
        """``actor``'s turn became free while it is parked or the manager closes."""
        if actor.parked:
            self._ownership.settle(actor)  # it may leave memory now, or move
        if self.closing:
            self.released.set()

    # -- several sessions at once ---------------------------------------------

    def check_group(self, keys: tuple[str, ...]) -> None:
        """Raise, before any turn is taken, what would make ``sessions(*keys)`` fail."""
        if not keys:
            raise ValueError("sessions() needs at least one key")
        seen: set[str] = set()
        for key in keys:
            check_key(key)
            if key in seen:
                raise InvalidKeyError(f"sessions(): key {key!r} is given twice")
            seen.add(key)
        storage = self._storage
        if not isinstance(storage, AtomicStorage):
            raise TypeError(
                "sessions() needs a storage that can write several sessions in one atomic "
                f"step (write_all); {type(storage).__name__} cannot"
            )
        problem = storage.atomic_problem([self._keys.of(key) for key in keys])
        if problem is not None:
            raise InvalidKeyError(problem)

    async def commit_group(self, turns: tuple[SessionTurn[T], ...]) -> None:
        """End a group's turns: write its changes in one atomic step, or roll all back."""
        actors: list[SessionActor[T]] = []
        for turn in turns:
            actor = turn._actor
            assert actor is not None
            turn._actor = None
            actors.append(actor)
        try:
            changes: list[tuple[SessionActor[Any], bytes, bool]] = []
            for actor in actors:
                blob = self.encode_change(actor)
                if blob is not None:
                    changes.append((actor, blob, blob == self.empty_blob))
            if changes:
                self.check_accepting(changes[0][0])
                await self._flusher.write_together(changes)
                expires_at = self.expiry()
                for actor, _, _ in changes:
                    actor.extend(expires_at)
        except BaseException as exc:
            for actor in actors:
                actor.rollback(self.codec.decode)
            if isinstance(exc, Exception) and not isinstance(exc, ActorSessError):
                keys = ", ".join(repr(actor.key) for actor in actors)
                raise StorageError(
                    f"sessions {keys} were not saved ({type(exc).__name__}: {exc}); "
                    "all of them were rolled back"
                ) from exc
            raise
        finally:
            for actor in actors:
                self.leave(actor)

    def check_value(self, value: object) -> None:
        expected = self.codec.runtime_type
        if not isinstance(value, expected):
            raise TypeError(
                f"a session value must be a {expected.__name__}, got {type(value).__name__}"
            )
