"""Shared ownership: per-key leases in Redis, so several processes can serve one key space.

A manager owns a key while it caches it. The lease is taken together with the
load (one script per batch), renewed for every cached key in batches every
third of ``lease_time``, and released, with a batch of others, once the actor
is forgotten: after its final write, on eviction, handover or shutdown.

Handover: a manager that finds a key owned elsewhere asks the owner over
pub/sub (inside the same acquire script) and waits. The owner *retires* its
actor: no new turn starts on it and the turns already queued finish; once it
is idle, one release call makes its last write, passes the lease to the first
requester's token and sends that requester the record, so it takes over with
no round trip of its own. Other requesters' requests are passed on to the new
owner. A notice lost on the way costs a retry after a short, growing delay
(which takes the lease reserved for it); a dead owner's lease simply expires.
If the release call fails, the session is still dirty: the flusher writes it
with its own retries and the lease is released once it is clean. Every write
is fenced by the lease token and the version (``write_leased``), so a stale
owner (a paused process, an expired lease) is refused, reports
``session.conflict`` and reloads.

``LeaseKeeper`` is the ``Ownership`` of shared mode (see ``actorsess._ownership``):
the core reaches all of the above only through that seam. The lease state lives
here too, on ``LeasedActor``, the actor type of shared mode.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from actorsess._actor import SessionActor, Status
from actorsess._context import Context
from actorsess._ownership import FlusherPort, LeaveTurn, LoaderPort, TakeTurn
from actorsess._record import encode_record
from actorsess.exceptions import ConfigError, LeaseTimeoutError
from actorsess.storage.base import (
    AskAgain,
    Conflict,
    HandedOver,
    HandoverAsked,
    LeaseStorage,
    LoadResult,
    Notice,
    Owned,
    Release,
    WriteItem,
)

#: ``lease_until`` of an actor whose lease was lost or released: never valid.
LOST = -math.inf
# The longest stop() waits for its tasks to end once cancelled.
_STOP_GRACE = 1.0
# First delay before asking an owner again when no "free" notice came; doubles.
_FIRST_RETRY = 0.02
_MAX_RETRY = 0.5


class LeasedActor(SessionActor[Any]):
    """An actor of shared mode: it also holds its key's lease."""

    __slots__ = ("lease_token", "lease_until")

    def __init__(self, key: str, storage_key: str) -> None:
        super().__init__(key, storage_key)
        #: The token of the lease this actor holds (None when it holds none).
        self.lease_token: str | None = None
        #: Clock time until which that lease can be relied on.
        self.lease_until = math.inf


def _leased(actor: SessionActor[Any]) -> LeasedActor:
    # Every actor of a shared-mode manager is made by LeaseKeeper.new_actor.
    return cast(LeasedActor, actor)


class _Waiting(NamedTuple):
    actor: LeasedActor
    #: The token of every acquire attempt of this wait.
    token: str
    deadline: float
    attempt: int
    #: The retry timer; None while an attempt is in flight.
    timer: asyncio.TimerHandle | None
    #: A "free" notice arrived while an attempt was in flight.
    freed: bool


class LeaseKeeper:
    __slots__ = (
        "_clock",
        "_config",
        "_counters",
        "_finishing",
        "_flusher",
        "_gone",
        "_handed_back",
        "_leaving",
        "_loader",
        "_log",
        "_prefix",
        "_registry",
        "_releases",
        "_requesters",
        "_retry_backoff",
        "_storage",
        "_tasks",
        "_tokens",
        "_waiting",
        "manager_id",
    )

    # A session goes with its lease: one that leaves its actor is released and must
    # be loaded (with the lease) again, so none is kept as idle bytes.
    keeps_idle = False

    def __init__(self, context: Context, storage: LeaseStorage) -> None:
        config = context.config
        self._storage = storage
        self._config = config
        self._registry = context.registry
        self._counters = context.counters
        self._clock = context.clock
        self._retry_backoff = context.backoff
        self._log = context.log
        self._prefix = config.key_prefix
        #: Random per manager: lease tokens are ``<manager_id>:<n>``.
        self.manager_id = secrets.token_hex(8)
        self._tokens = itertools.count(1)
        #: Actors waiting for another manager to let go of their key, by storage key.
        self._waiting: dict[str, _Waiting] = {}
        #: Who asked for a key we own, in order of asking: manager id -> the token of
        #: its latest acquire attempt. The first is handed the key on release.
        self._requesters: dict[str, dict[str, str]] = {}
        #: Futures resolved when a retiring actor is forgotten, by storage key.
        self._gone: dict[str, tuple[LeasedActor, asyncio.Future[None]]] = {}
        #: Leases to release in the next batch.
        self._releases: list[Release] = []
        #: Leaving actors whose last write rides on a release now in flight.
        self._finishing: dict[str, LeasedActor] = {}
        #: Tokens of ``_finishing`` actors that another owner handed a lease back to
        #: while their release was in flight, by storage key.
        self._handed_back: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Storage keys of actors being let go of (handover, lost lease, conflict).
        self._leaving: set[str] = set()
        self._loader: LoaderPort | None = None
        self._flusher: FlusherPort | None = None

    # -- the seam (Ownership) -------------------------------------------------

    def bind(self, loader: LoaderPort, flusher: FlusherPort) -> None:
        self._loader, self._flusher = loader, flusher

    @property
    def loader(self) -> LoaderPort:
        assert self._loader is not None, "bind() first"
        return self._loader

    @property
    def flusher(self) -> FlusherPort:
        assert self._flusher is not None, "bind() first"
        return self._flusher

    def new_actor(self, key: str, storage_key: str) -> SessionActor[Any]:
        return LeasedActor(key, storage_key)

    def lookup(self) -> Callable[[str], SessionActor[Any] | None]:
        index, clock = self._registry.lookup, self._clock

        def owned(key: str) -> SessionActor[Any] | None:
            # The cached actor, unless its lease cannot be relied on now.
            actor = index(key)
            if actor is not None and _leased(actor).lease_until <= clock.now():
                return None
            return actor

        return owned

    def usable(self, actor: SessionActor[Any]) -> bool:
        """A loaded actor whose lease this manager can still rely on."""
        return actor.status is Status.READY and _leased(actor).lease_until > self._clock.now()

    async def take(self, key: str, take_turn: TakeTurn, leave: LeaveTurn) -> SessionActor[Any]:
        """A turn runs only on an actor whose lease holds. One being handed over (or
        whose lease lapsed) is left to finish and be forgotten; then a new actor
        takes the lease again."""
        deadline = self._clock.now() + self._config.lease_wait_timeout
        while True:
            actor = self._registry.peek(key)
            if (
                actor is None
                or actor.status is not Status.READY
                or not (self.leaving(actor) or not self.usable(actor))
            ):
                actor = await take_turn(key)
                # Turns queued before a handover began still run while the lease holds.
                if self.usable(actor):
                    return actor
                leave(actor)
            leased = _leased(actor)
            self.retire(leased)
            await self.gone(leased, deadline)

    async def fetch(self, actors: Sequence[SessionActor[Any]]) -> Sequence[LoadResult | Owned]:
        # Every actor of a shared-mode manager is made by new_actor.
        return await self.acquire(cast("Sequence[LeasedActor]", actors))

    async def write(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        return await self._storage.write_leased(
            _with_leases(actors, items), ttl_ms, self._config.lease_ms
        )

    async def write_all(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        """``write``, all or nothing (a ``sessions()`` group's commit)."""
        return await self._storage.write_leased_all(
            _with_leases(actors, items), ttl_ms, self._config.lease_ms
        )

    def refused(self, actor: SessionActor[Any]) -> None:
        """Storage refused ``actor``'s write, so the lease cannot be relied on; let go
        of the actor (the next turn takes the lease and reloads)."""
        leased = _leased(actor)
        leased.lease_until = LOST
        self.retire(leased)

    def allow_outside_edits(self, operation: str) -> None:
        raise ConfigError(
            "ownership",
            f"{operation}() is for ownership='local'; with 'shared' the owner of a key "
            "always holds what storage holds: change a session from elsewhere through a "
            "shared-mode manager's update(), which goes through its owner",
        )

    # -- lifecycle ----------------------------------------------------------

    async def check(self, timeout: float) -> None:
        """Refuse to run where leases could vanish behind their owners' backs."""
        try:
            async with asyncio.timeout(timeout):
                hazard = await self._storage.lease_hazard()
        except Exception:
            return  # unreachable now: loads will say so
        if hazard is not None:
            raise ConfigError("ownership", f"'shared' cannot be used safely: {hazard}")

    def start(self) -> None:
        self._spawn(self._listen_forever())
        self._spawn(self._renew_forever())

    async def stop(self, timeout: float) -> None:
        """Release every lease still held (after the final flush) and stop the tasks,
        within ``timeout`` (leases not released by then expire on their own)."""
        for actor in self._registry.actors():
            self.forgotten(actor)
        for waiting in self._waiting.values():
            if waiting.timer is not None:
                waiting.timer.cancel()
        self._waiting.clear()
        releases, self._releases = self._releases, []
        try:
            async with asyncio.timeout(timeout):
                await self._release(releases)
        except TimeoutError:
            self._log.warning("session.lease_release_failed", keys=len(releases), error="timeout")
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                # Bounded: close() must return even if a task ignores its cancellation.
                _, stuck = await asyncio.wait(tasks, timeout=_STOP_GRACE)
                if stuck:
                    self._log.error("session.task_stuck", tasks=len(stuck))

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self._storage.listen(self.manager_id, self._on_notice)
            except Exception as exc:
                _raise_if_cancelled()
                # Without notices handovers still happen, only slower (retries, expiry).
                failures += 1
                self._log.warning(
                    "session.lease_listen_failed", error=f"{type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(self._retry_backoff.delay(failures))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- taking leases (the loader's fetch in shared mode) ---------------------

    async def acquire(self, actors: Sequence[LeasedActor]) -> list[LoadResult | Owned]:
        """Take the leases of ``actors`` and load their records, in one storage call.

        An actor keeps one token through all its attempts: it is what an owner
        reserves the lease for when handing the key over, so a late handover notice
        meant for an earlier wait can be told apart and ignored."""
        tokens = []
        sent = self._clock.now()
        for actor in actors:
            waiting = self._waiting.get(actor.storage_key)
            if waiting is None or waiting.actor is not actor:
                # Registered before the first attempt, so that a handover notice
                # outrunning this call's reply is recognised as meant for it.
                token = f"{self.manager_id}:{next(self._tokens)}"
                deadline = sent + self._config.lease_wait_timeout
                waiting = _Waiting(actor, token, deadline, 0, None, False)
                self._waiting[actor.storage_key] = waiting
            tokens.append(waiting.token)
        try:
            results = await self._storage.acquire_many(
                [a.storage_key for a in actors], tokens, self.manager_id, self._config.lease_ms
            )
        except BaseException:
            # Outcome unknown: some leases may be ours now, with nobody to use them.
            for actor, token in zip(actors, tokens, strict=True):
                self._queue_release(Release(actor.storage_key, token))
            raise
        loop = asyncio.get_running_loop()
        for actor, token, result in zip(actors, tokens, results, strict=True):
            if isinstance(result, Owned):
                self._wait_for_owner(actor, result.owner, token)
                continue
            actor.lease_token = token
            actor.lease_until = sent + self._config.lease_time
            self._stop_waiting(actor)
            if actor.storage_key in self._requesters:
                # Asked for while loading: serve the turns already waiting, then
                # hand over. Runs after the loader has made the actor ready.
                loop.call_soon(self.retire, actor)
        return results

    def _wait_for_owner(self, actor: LeasedActor, owner: str, token: str) -> None:
        """``actor``'s key is owned elsewhere: retry when told it is free, or after a delay."""
        key = actor.storage_key
        previous = self._waiting.get(key)
        now = self._clock.now()
        if previous is None or previous.actor is not actor:
            return  # the wait ended meanwhile (the actor failed or was forgotten)
        deadline, attempt, freed = previous.deadline, previous.attempt + 1, previous.freed
        if now >= deadline:
            self._waiting.pop(key, None)
            error = LeaseTimeoutError(actor.key, self._config.lease_wait_timeout, owner)
            self._log.warning("session.lease_timeout", key=actor.key, owner=owner)
            self.loader.fail(actor, error)
            return
        # A notice that came while this attempt was in flight means the owner let go
        # meanwhile: go again now. Not over and over, though: a lease left behind by
        # a process that no longer wants it only goes when it expires.
        backoff = min(_MAX_RETRY, _FIRST_RETRY * 2.0 ** min(attempt - 1, 16))
        delay = 0.0 if freed and attempt <= 3 else backoff
        timer = asyncio.get_running_loop().call_later(min(delay, deadline - now), self._retry, key)
        self._waiting[key] = _Waiting(actor, token, deadline, attempt, timer, False)

    def _retry(self, key: str, notice: bool = False) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            return
        if notice and waiting.timer is not None and waiting.attempt > 3:
            # Told to ask again, again: the lease is likely left behind and goes only
            # when it expires. Keep to the growing delay rather than a storm of asks.
            return
        if waiting.timer is None:
            # An attempt is in flight; a second acquire for one actor would take the
            # lease twice. Note the notice so the next attempt starts at once.
            self._waiting[key] = waiting._replace(freed=True)
            return
        waiting.timer.cancel()
        self._waiting[key] = waiting._replace(timer=None)
        if not self.loader.retry(waiting.actor):
            del self._waiting[key]  # no longer loading: nothing to wait for

    def _stop_waiting(self, actor: SessionActor[Any]) -> None:
        waiting = self._waiting.get(actor.storage_key)
        if waiting is not None and waiting.actor is actor:
            del self._waiting[actor.storage_key]
            if waiting.timer is not None:
                waiting.timer.cancel()

    # -- notices from other managers ----------------------------------------

    def _on_notice(self, notice: Notice) -> None:
        if isinstance(notice, HandoverAsked):
            self._handover(notice.key, notice.token)
        elif isinstance(notice, HandedOver):
            self._given(notice.token, notice.key, notice.record)
        elif isinstance(notice, AskAgain):
            self._retry(notice.key, notice=True)
        else:
            # (Re)subscribed: "free" notices may have been missed meanwhile.
            for key in list(self._waiting):
                self._retry(key, notice=True)

    def _given(self, token: str, key: str, record: bytes | None) -> None:
        """The owner handed ``key`` over: the lease is reserved for ``token``, the record
        attached."""
        waiting = self._waiting.get(key)
        if waiting is None or waiting.token != token:
            # Late, for a wait that has ended: let the reservation go, unless an actor
            # of ours already holds the lease under that token.
            actor = self._actor_of(key)
            if actor is not None and actor.lease_token == token and key in self._finishing:
                # Its release is on its way. If that has run in Redis already, this
                # reservation is new (another owner served a request of ours that had
                # ended) and nobody would take it: let it go once the reply is in.
                self._handed_back[key] = token
            elif actor is None or actor.lease_token != token:
                self._queue_release(Release(key, token))
            return
        if waiting.timer is None:
            # An acquire with this token is in flight; it takes the reservation itself.
            self._waiting[key] = waiting._replace(freed=True)
            return
        waiting.timer.cancel()
        del self._waiting[key]
        actor = waiting.actor
        actor.lease_token = token
        # The reservation's expiry started when the owner let go, a little before
        # this notice arrived; count on half of it until the next renewal.
        actor.lease_until = self._clock.now() + self._config.lease_time / 2
        if key in self._requesters:
            asyncio.get_running_loop().call_soon(self.retire, actor)
        self.loader.deliver(actor, record)

    def _handover(self, storage_key: str, requester: str) -> None:
        """Another manager asks for ``storage_key`` (``requester`` is its attempt's token)."""
        if requester.rpartition(":")[0] == self.manager_id:
            return  # our own earlier request, passed back to us by a release
        actor = self._actor_of(storage_key)
        if actor is None:
            # Nothing of ours holds it (a lease of a forgotten actor is on its way out,
            # or about to expire): let the requester ask again now.
            self._queue_release(Release(storage_key, "", [requester]))
            return
        self._note_requester(storage_key, requester)
        if actor.lease_token is not None:
            self.retire(actor)
        # Still loading: the lease is about to be ours; the actor is retired right
        # after it takes it (see acquire).

    def _actor_of(self, storage_key: str) -> LeasedActor | None:
        if not storage_key.startswith(self._prefix):
            return None
        actor = self._registry.peek(storage_key[len(self._prefix) :])
        return None if actor is None else _leased(actor)

    def _note_requester(self, storage_key: str, token: str) -> None:
        manager, _, number = token.rpartition(":")
        if not number.isdigit():
            return  # not a token at all
        asking = self._requesters.setdefault(storage_key, {})
        known = asking.get(manager)
        # One entry per manager: only its latest attempt can still be waiting.
        if known is None or int(known.rpartition(":")[2]) < int(number):
            asking[manager] = token

    # -- letting go -----------------------------------------------------------

    def retire(self, actor: LeasedActor) -> None:
        """Let go of ``actor``: no new turns start on it (those already queued still run
        while the lease holds); once it is idle it is written and released in one
        step, and forgotten."""
        key = actor.storage_key
        if key in self._leaving or self._registry.peek(actor.key) is not actor:
            return
        self._leaving.add(key)
        if key in self._requesters:
            self._counters.handovers += 1
            to = list(self._requesters[key].values())
            self._log.debug("session.handover", key=actor.key, to=to)
        self._registry.park(actor)
        self.settle(actor)

    def leaving(self, actor: SessionActor[Any]) -> bool:
        """``actor`` is being let go of: new turns wait for it to be forgotten."""
        return actor.storage_key in self._leaving

    def settle(self, actor: SessionActor[Any]) -> None:
        """A parked ``actor`` may have become idle or clean. One being let go of is
        released with its last write (when idle and not being written); any other
        is dropped once idle and clean, as the registry does."""
        actor = _leased(actor)
        key = actor.storage_key
        flusher = self.flusher
        if (
            key not in self._leaving
            or not actor.dirty
            or actor.lease_token is None
            or actor.held
            or actor.waiters
            or key in self._finishing
            or flusher.in_flight(key)
            or self._registry.peek(actor.key) is not actor
        ):
            self._registry.settle(actor)
            return
        version = actor.version
        record = None if actor.deleted else encode_record(version, actor.blob, flusher.schema)
        final = WriteItem(key, record, version, expected=actor.persisted_version)
        flusher.hold(key)  # no flush round may write it meanwhile
        self._finishing[key] = actor
        waiters = list(self._requesters.get(key, {}).values())
        self._queue_release(Release(key, actor.lease_token, waiters, final))

    async def gone(self, actor: LeasedActor, deadline: float) -> None:
        """Wait until the retiring ``actor`` is forgotten, or raise LeaseTimeoutError."""
        if self._registry.peek(actor.key) is not actor:
            return
        entry = self._gone.get(actor.storage_key)
        if entry is None or entry[0] is not actor:
            entry = (actor, asyncio.get_running_loop().create_future())
            self._gone[actor.storage_key] = entry
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock.now())):
                await asyncio.shield(entry[1])
        except TimeoutError:
            raise LeaseTimeoutError(actor.key, self._config.lease_wait_timeout, None) from None

    def forgotten(self, actor: SessionActor[Any]) -> None:
        """The registry's hook: ``actor`` left it for good, so its lease goes too."""
        actor = _leased(actor)
        key = actor.storage_key
        self._stop_waiting(actor)
        self._leaving.discard(key)
        token, actor.lease_token = actor.lease_token, None
        actor.lease_until = LOST
        if token is not None:
            waiters = list(self._requesters.pop(key, {}).values())
            self._queue_release(Release(key, token, waiters))
        entry = self._gone.get(key)
        if entry is not None and entry[0] is actor:
            del self._gone[key]
            if not entry[1].done():
                entry[1].set_result(None)

    def _queue_release(self, release: Release) -> None:
        if not self._releases:
            asyncio.get_running_loop().call_soon(self._dispatch_releases)
        self._releases.append(release)

    def _dispatch_releases(self) -> None:
        releases, self._releases = self._releases, []
        if releases:
            self._spawn(self._release(releases))

    async def _release(self, releases: list[Release]) -> None:
        step = self._config.max_batch
        for start in range(0, len(releases), step):
            part = releases[start : start + step]
            try:
                async with asyncio.timeout(self._config.write_timeout):
                    conflicts = await self._storage.release_many(
                        part, self._config.lease_ms, self._config.ttl_ms
                    )
            except Exception as exc:
                _raise_if_cancelled()
                # Plain leases expire on their own (others wait at most lease_time);
                # sessions whose last write rode along are written the usual way.
                self._log.warning(
                    "session.lease_release_failed",
                    keys=len(part),
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._finished(part, {}, failed=True)
            else:
                self._finished(part, {c.position: c.reason for c in conflicts}, failed=False)

    def _finished(self, releases: list[Release], refused: dict[int, str], failed: bool) -> None:
        """Settle the sessions whose last write rode on ``releases``. After a failed
        call they are still dirty: the flusher writes them with its own retries,
        and its settling then forgets them and releases their leases."""
        flusher = self.flusher
        for position, release in enumerate(releases):
            final = release.final
            actor = self._finishing.pop(release.key, None) if final is not None else None
            if final is None or actor is None:
                continue
            flusher.unhold(release.key)
            # Unless released just below, the actor keeps the token, and its own
            # release (once forgotten) lets a lease handed back to it go as well.
            handed_back = self._handed_back.pop(release.key, None) == release.token
            if failed:
                continue
            if position in refused:
                flusher.refuse(actor, refused[position])
                self._registry.settle(actor)
                continue
            actor.written(final.version)
            flusher.drop(actor)
            # Who asked while the release was on its way is not among its waiters: its
            # wait goes on and asks the new owner. Kept, its request would hand a later
            # actor of ours over to a wait that may have ended.
            self._requesters.pop(release.key, None)
            actor.lease_token = None  # released: forgetting it must not release again
            self._registry.settle(actor)
            if handed_back:
                self._queue_release(Release(release.key, release.token))

    # -- renewal ----------------------------------------------------------------

    async def _renew_forever(self) -> None:
        period = self._config.lease_time / 3
        while True:
            await asyncio.sleep(period)
            held = [
                a
                for a in map(_leased, self._registry.actors())
                if a.lease_token is not None and a.lease_until != LOST
            ]
            step = self._config.max_batch
            for start in range(0, len(held), step):
                await self._renew(held[start : start + step])

    async def _renew(self, actors: list[LeasedActor]) -> None:
        tokens = [a.lease_token or "" for a in actors]
        sent = self._clock.now()
        try:
            async with asyncio.timeout(self._config.write_timeout):
                renewed = await self._storage.renew_many(
                    [a.storage_key for a in actors],
                    tokens,
                    self._config.lease_ms,
                    [a.persisted_version for a in actors],
                )
        except Exception as exc:
            _raise_if_cancelled()
            # Turns keep running until the old expiry; then they wait for a new lease.
            self._log.warning(
                "session.lease_renew_failed", keys=len(actors), error=f"{type(exc).__name__}: {exc}"
            )
            return
        for actor, token, ok in zip(actors, tokens, renewed, strict=True):
            if (
                actor.lease_token != token
                or actor.lease_until == LOST
                # Its release (carrying its last write and passing the lease on) may have
                # run in Redis before this renewal did, its reply still on the way: a
                # refusal then says nothing about a lease we still rely on.
                or actor.storage_key in self._finishing
            ):
                continue
            if ok:
                self._counters.leases_renewed += 1
                actor.lease_until = sent + self._config.lease_time
            else:
                self._counters.leases_lost += 1
                self._log.warning("session.lease_lost", key=actor.key)
                actor.lease_until = LOST
                self.retire(actor)


def _with_leases(
    actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem]
) -> list[WriteItem]:
    """``items``, each fenced by the lease its actor holds."""
    return [
        item._replace(lease=_leased(actor).lease_token)
        for actor, item in zip(actors, items, strict=True)
    ]


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that surfaced as another error (a client library may
    turn a cancel in the middle of a reply into its own exception): a loop that
    swallowed it would never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
