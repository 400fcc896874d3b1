"""Partitions: which chats this process serves when several share one Redis.

Chats hash to a fixed number of partitions. Each worker process keeps a
heartbeat in Redis; every worker computes the same assignment from the live
members (``actorsess._assignment``: rendezvous hashing, at most one partition more
per worker than another), takes the leases of its partitions and renews them all
in one script per heartbeat: the cost is O(partitions), not O(sessions).

When a worker joins, leaves or dies, about its share of the partitions moves.
Giving one up gracefully runs in order: the forwarder stops feeding its updates
and waits for those in flight, every partitioned manager writes the partition's
dirty sessions and forgets them, and only then is the lease released, so the
next owner loads what the last one wrote. A lease that lapsed (a stalled or
cut-off process) is *lost*: its sessions are forgotten without writing, and
storage would refuse those writes anyway (every write is fenced by the
partition's lease); the updates they came from are still in the partition's
stream, and its next owner reads them again.

Listeners (``PartitionListener``) are the forwarder of ``actorsess.aiogram`` and
the ownership of each manager with ``ownership="partitioned"``.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from actorsess._assignment import assign
from actorsess._clock import Clock, MonotonicClock
from actorsess._log import DefaultLogger
from actorsess._storage_keys import StorageKeys
from actorsess.exceptions import ConfigError, InvalidKeyError, PartitionCountError
from actorsess.storage._redis_partitions import RedisPartitionStore
from actorsess.storage.redis import RedisStorage

#: The stamp of a forwarded update: (stream entry time, entry sequence, index in
#: the entry). Stamps grow along a partition's stream.
Stamp = tuple[int, int, int]


class Delivery:
    """A forwarded update being handled: its stamp, and what its run has done to
    sessions so far (the feeder runs it again only if that is nothing)."""

    __slots__ = ("changed", "failed", "stamp")

    def __init__(self, stamp: Stamp) -> None:
        self.stamp = stamp
        #: A change of it to a session was committed (or sent to the session's lender):
        #: running it again could make that change twice.
        self.changed = False
        #: Why one of its sessions could not be opened (its load or its borrow failed),
        #: even if its handler caught the error: then the update did not run as it
        #: should have.
        self.failed: Exception | None = None


#: The forwarded update the current task is handling; None outside one.
DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar(
    "actorsess_delivery", default=None
)


def note_not_opened(error: Exception) -> None:
    """Record, for the forwarded update the current task is handling (if any), that one
    of its sessions could not be opened: the feeder sees it even if the handler
    catches the error."""
    delivery = DELIVERY.get()
    if delivery is not None and delivery.failed is None:
        delivery.failed = error


#: The partition of the update the current task is handling (forwarded or received
#: here); None outside one. A session of another partition opened there is borrowed
#: from its owner; one of this partition is not (see ``Partitions.lends_key``).
FEEDING: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "actorsess_feeding", default=None
)

#: A manager lending one of its sessions: ``lend(key, exchange)`` holds ``key``'s turn
#: with its change written, runs ``exchange`` (True: it wrote a new record) and loads
#: the session again if so; returns what ``exchange`` returned.
Lend = Callable[[str, Callable[[], Awaitable[bool]]], Awaitable[bool]]

# How many keys' partitions ``lends_key`` keeps before it starts afresh.
_KEY_PARTITIONS_KEPT = 100_000
# A lease counts as held for this share of lease_time after the call that took or
# renewed it was sent: the rest is the margin for clock drift and a late reply.
_LEASE_TRUST = 0.8
# Heartbeats while a rebalance is under way (a partition to take is still held by
# its previous owner, or one is being handed off) come this often.
_BUSY_INTERVAL = 0.2


def parse_stamp(text: str) -> Stamp:
    """``"<ms>-<seq>-<index>"`` as a Stamp."""
    ms, seq, index = text.split("-")
    return int(ms), int(seq), int(index)


def format_stamp(stamp: Stamp) -> str:
    return f"{stamp[0]}-{stamp[1]}-{stamp[2]}"


class PartitionListener(Protocol):
    """What a partition's arrival and departure mean to one part of the process."""

    def gained(self, partition: int) -> None:
        """This process owns ``partition`` now."""

    async def stop_feeding(self, partition: int) -> None:
        """``partition`` is being given up: start no new update of it, and return once
        those running have ended."""

    async def let_go(self, partition: int) -> bool:
        """Write ``partition``'s dirty sessions and forget them; False if they could
        not be written (the partition is kept then, and given up later)."""

    async def settled(self, partition: int) -> None:
        """Every listener let go of ``partition`` (its sessions are in storage); its
        lease is released next."""

    def lost(self, partition: int) -> None:
        """``partition``'s lease lapsed: drop everything of it without writing."""

    async def persist(self) -> bool:
        """Write every session dirty now; False if some could not be written."""


class Partitions:
    """The partitions this worker owns, kept by heartbeats in Redis (see the module
    docstring). Give the same object to the forwarder and to every manager with
    ``ownership="partitioned"``."""

    def __init__(
        self,
        storage: RedisStorage,
        *,
        count: int = 64,
        lease_time: float = 10.0,
        namespace: str = "actorsess:partitions:",
        clock: Clock | None = None,
        logger: Any = None,
    ) -> None:
        """Partition leases and update streams in the Redis of ``storage``.

        Args:
            storage: The ``RedisStorage`` the sessions live in: one server, or a
                Redis Cluster (each partition's keys then share a slot, see
                ``actorsess.storage._redis_partitions``).
            count: How many partitions chats hash to; the same in every worker (the
                first records it, ``start()`` refuses another), and at least the
                number of workers you will run.
            lease_time: Seconds a partition lease lives unless renewed (renewed every
                third of it). A dead worker's partitions move after this long.
            namespace: Prefix of the Redis keys of membership, leases and streams
                (no ``{`` or ``}``: each partition's keys carry its hash tag).
            clock: Time source (tests).
            logger: A structlog-style logger.
        """
        if not isinstance(storage, RedisStorage):
            raise TypeError(f"Partitions needs a RedisStorage, got {type(storage).__name__}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"Partitions: count must be a whole number >= 1, got {count!r}")
        if not lease_time > 0:
            raise ValueError(f"Partitions: lease_time must be > 0 seconds, got {lease_time!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"Partitions: namespace must be a non-empty str, got {namespace!r}")
        if "{" in namespace or "}" in namespace:
            raise ValueError(
                f"Partitions: namespace {namespace!r} must not hold '{{' or '}}': each "
                "partition's keys carry the partition as their Redis Cluster hash tag"
            )
        self.count = count
        self.lease_time = lease_time
        self._lease_ms = max(1, round(lease_time * 1000))
        self.store = RedisPartitionStore(storage.client, namespace)
        self.clock: Clock = clock or MonotonicClock()
        self.log = logger if logger is not None else DefaultLogger()
        #: This worker's member token (random per start).
        self.token = secrets.token_hex(8)
        #: Owned partitions -> clock time until which the lease can be relied on.
        self.until: dict[int, float] = {}
        self.members: list[str] = []
        #: The partitions that are this worker's among ``members``.
        self._mine: set[int] | None = None
        self._listeners: list[PartitionListener] = []
        #: Session keys -> their partitions, as ``lends_key`` met them (bounded).
        self._key_partitions: dict[str, int] = {}
        #: The partitioned managers of this process that lend sessions, by key prefix.
        self._lenders: dict[str, list[Lend]] = {}
        self._task: asyncio.Task[None] | None = None
        #: Giving partitions up, beside the heartbeat (which keeps renewing them).
        self._giving_up: asyncio.Task[None] | None = None
        self._busy = False
        #: Whether the count recorded in Redis was found to be this one.
        self._count_agreed = False

    def __repr__(self) -> str:
        return f"<Partitions {self.count} owned={sorted(self.until)} members={len(self.members)}>"

    # -- where a chat or a session goes -------------------------------------------

    def partition_of(self, chat: str) -> int:
        """The partition of a chat, given as the chat part of its session keys."""
        return zlib.crc32(chat.encode()) % self.count

    def partition_of_key(self, key: str) -> int:
        """The partition of a session key as ``SessionMiddleware`` and
        ``ActorFSMStorage`` make them (``<name>:<bot id>[:b<connection>]:<chat>:...``)."""
        return self.partition_of(self.chat_of_key(key))

    @staticmethod
    def chat_of_key(key: str) -> str:
        """The chat part of a session key (see ``partition_of_key``)."""
        parts = key.split(":", 4)
        chat = parts[2] if len(parts) > 2 else ""
        if chat.startswith("b") and len(parts) > 3:
            chat = parts[3]  # a business connection's part comes before the chat
        if not chat:
            raise InvalidKeyError(
                f"session key {key!r}: partitioned ownership places a session by its chat, "
                "and this key has no chat part (keys look like '<name>:<bot id>:<chat>:...', "
                "as SessionMiddleware, ActorFSMStorage and session_key() make them)"
            )
        return chat

    def storage_keys(self, prefix: str) -> StorageKeys:
        """Where the sessions of a partitioned manager with ``key_prefix`` ``prefix``
        are stored: on Redis Cluster, beside their partition's lease (its hash tag
        after the key)."""
        if not self.store.cluster:
            return StorageKeys(prefix)
        if "{" in prefix:
            raise ConfigError(
                "key_prefix",
                f"{prefix!r} holds '{{': on Redis Cluster in partitioned mode each "
                "session's record is placed by its partition's hash tag, which must be "
                "the first in its key",
            )
        return StorageKeys(prefix, self._tag_of_key)

    def _tag_of_key(self, key: str) -> str:
        return self.store.tag(self.partition_of_key(key))

    def holds(self, partition: int) -> bool:
        """Whether this worker owns ``partition`` and its lease can be relied on now."""
        until = self.until.get(partition)
        return until is not None and until > self.clock.now()

    def holds_key(self, key: str) -> bool:
        """Whether this worker holds the partition of session ``key`` now: a job that
        runs outside updates in every worker opens only such sessions (the others'
        owners do theirs; see "Sessions outside an update" in the docs)."""
        return self.holds(self.partition_of_key(key))

    def lends_key(self, key: str) -> bool:
        """Whether a session block on ``key`` opened now borrows the session from its
        partition's owner: its partition is not held here, and it is not the partition
        of the update being handled (that one's own sessions are opened where it is
        owned; if it moved meanwhile, the update is read again by the next owner)."""
        # Every session() of partitioned mode asks: the partition of a key is kept,
        # since hashing it costs several times a cached turn's own work.
        try:
            partition = self._key_partitions.get(key)
            if partition is None:
                partition = self._key_partitions[key] = self.partition_of_key(key)
                if len(self._key_partitions) > _KEY_PARTITIONS_KEPT:
                    self._key_partitions.clear()
        except (InvalidKeyError, AttributeError, TypeError):
            return False  # not a session key: the block refuses it by name on entry
        return not self.holds(partition) and partition != FEEDING.get()

    # -- listeners ----------------------------------------------------------------

    def subscribe(self, listener: PartitionListener) -> None:
        """Tell ``listener`` of every partition gained and given up from now on (and of
        those owned now, at once)."""
        if listener not in self._listeners:
            self._listeners.append(listener)
            for partition in self.until:
                listener.gained(partition)

    def unsubscribe(self, listener: PartitionListener) -> None:
        """Stop telling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def lend_from(self, prefix: str, lend: Lend) -> None:
        """A manager with ``key_prefix`` ``prefix`` lends its sessions (until ``stop_lending``)."""
        self._lenders.setdefault(prefix, []).append(lend)

    def stop_lending(self, prefix: str, lend: Lend) -> None:
        """The manager given to ``lend_from`` lends no more (it is closing)."""
        lenders = self._lenders.get(prefix, [])
        if lend in lenders:
            lenders.remove(lend)

    def lenders(self, prefix: str) -> list[Lend]:
        """The managers here that serve keys under ``prefix`` (a session manager and an
        FSM storage often share one), in the order they started."""
        return list(self._lenders.get(prefix, ()))

    async def persist(self) -> bool:
        """Ask every listener to write what is dirty now; True once all of it is in
        storage (what came before in the streams may then be dropped)."""
        return all([await listener.persist() for listener in list(self._listeners)])

    # -- lifecycle ------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """Whether no rebalance is under way here: every partition this worker should
        own (by the members it last saw) it owns, and it is giving none up."""
        return self.running and not self._busy

    @property
    def running(self) -> bool:
        """Whether the heartbeat runs (between ``start()`` and ``stop()``)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Join: record this worker's heartbeat and take the partitions free for it.
        Those still held by their previous owner follow within a few heartbeats.

        Raises:
            PartitionCountError: The namespace's workers run with another ``count``.
        """
        if self.running:
            return
        try:
            await self._beat()
        except PartitionCountError:
            raise
        except Exception as exc:
            # Redis unreachable: serve anyway (updates of unowned partitions are
            # answered 503 until it is back); the heartbeat keeps trying.
            self._renewal_failed(exc)
        self._task = asyncio.get_running_loop().create_task(self._beat_forever())

    async def stop(self) -> None:
        """Leave: stop the heartbeat, drop out of the members, so the others take over
        at once, and give every partition up gracefully (see the module docstring),
        renewing the leases until each is given up."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # From here on nothing is taken, but the leases held are renewed until they are
        # given up, however long their updates take to end and their sessions to be
        # written: one lapsing meanwhile would cut an update short and refuse writes.
        keeping = asyncio.get_running_loop().create_task(self._renew_forever())
        try:
            if self._giving_up is not None:
                await asyncio.gather(self._giving_up, return_exceptions=True)
            try:
                await self.store.leave(self.token)
            except Exception as exc:
                self.log.warning("partition.leave_failed", error=f"{type(exc).__name__}: {exc}")
            await self._give_up(sorted(self.until))
        finally:
            keeping.cancel()
            await asyncio.gather(keeping, return_exceptions=True)

    # -- heartbeats ---------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(_BUSY_INTERVAL if self._busy else self.lease_time / 3)
            try:
                await self._beat()
            except PartitionCountError as exc:
                # Started while Redis was unreachable: it does not join, and says why.
                self.log.error("partition.count_mismatch", error=str(exc))
            except Exception as exc:
                self._renewal_failed(exc)

    async def _renew_forever(self) -> None:
        """Renew the leases held, at once and then every ``lease_time / 3``."""
        while True:
            held, sent = sorted(self.until), self.clock.now()
            try:
                renewed = await self.store.renew(self.token, held, self._lease_ms)
            except Exception as exc:
                self._renewal_failed(exc)
            else:
                self._renewed(held, renewed, sent)
            await asyncio.sleep(self.lease_time / 3)

    def _renewal_failed(self, error: Exception) -> None:
        """A heartbeat or renewal got no answer: the leases it could not renew stay
        trusted until they lapse here."""
        self.log.warning("partition.heartbeat_failed", error=f"{type(error).__name__}: {error}")
        self._drop_lapsed()

    def _renewed(self, held: Sequence[int], renewed: Sequence[bool], sent: float) -> None:
        """Trust the leases of ``held`` renewed by a call sent at ``sent``; the others
        are lost (another worker holds them), and so are those that lapsed."""
        trusted = sent + self.lease_time * _LEASE_TRUST
        for partition, ok in zip(held, renewed, strict=True):
            if ok and partition in self.until:
                self.until[partition] = trusted
            elif partition in self.until:
                self._lose(partition, "another worker holds its lease")
        self._drop_lapsed()

    async def _beat(self) -> None:
        if not self._count_agreed:
            # Before joining: a worker with another count would serve chats twice.
            recorded = await self.store.record_count(self.count)
            if recorded != self.count:
                raise PartitionCountError(self.count, recorded, self.store.count_key)
            self._count_agreed = True
        sent = self.clock.now()
        held = sorted(self.until)
        beat = await self.store.heartbeat(self.token, held, self._lease_ms, self._lease_ms)
        self._renewed(held, beat.renewed, sent)
        if beat.members != self.members or self._mine is None:
            # Only when the members change: count x members hashes, sorted (512 x 50:
            # 35-55 ms).
            self.members = beat.members
            owners = assign(self.count, self.members)
            self._mine = {p for p, owner in owners.items() if owner == self.token}
        mine = self._mine
        leaving = sorted(p for p in self.until if p not in mine)
        if leaving and self._giving_up is None:
            # In a task of its own: the heartbeat must go on renewing every lease
            # (these included) while their sessions are written.
            self._giving_up = asyncio.get_running_loop().create_task(self._give_up(leaving))
            self._giving_up.add_done_callback(self._given_up)
        wanted = sorted(mine - self.until.keys())
        sent = self.clock.now()
        taken = await self.store.acquire(self.token, wanted, self._lease_ms)
        trusted = sent + self.lease_time * _LEASE_TRUST
        for partition, ok in zip(wanted, taken, strict=True):
            if ok:
                self.until[partition] = trusted
                self.log.info("partition.gained", partition=partition)
                for listener in list(self._listeners):
                    listener.gained(partition)
        self._busy = bool(leaving) or not all(taken)

    def _given_up(self, task: asyncio.Task[None]) -> None:
        self._giving_up = None
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            self.log.error("partition.give_up_failed", error=f"{type(error).__name__}: {error}")

    def drop(self, partition: int, reason: str) -> None:
        """Let go of ``partition`` at once, writing nothing (as when its lease lapses):
        a part of the process found it cannot rely on the lease. A later heartbeat
        takes it again if it is still this worker's, and its stream is read anew."""
        if partition in self.until:
            self._lose(partition, reason)

    def _drop_lapsed(self) -> None:
        now = self.clock.now()
        for partition, until in list(self.until.items()):
            if until <= now:
                self._lose(partition, "its lease lapsed before it was renewed")

    def _lose(self, partition: int, reason: str) -> None:
        del self.until[partition]
        self.log.warning("partition.lost", partition=partition, reason=reason)
        for listener in list(self._listeners):
            listener.lost(partition)

    async def _give_up(self, partitions: Sequence[int]) -> None:
        """Give ``partitions`` up together, phase by phase (one flush round covers all
        of their sessions), then release the leases of those written."""
        listeners = list(self._listeners)
        for partition in partitions:
            for listener in listeners:
                await listener.stop_feeding(partition)
        released = []
        for partition in partitions:
            written = [await listener.let_go(partition) for listener in listeners]
            if partition not in self.until:
                continue  # lost meanwhile
            if all(written):
                for listener in listeners:
                    await listener.settled(partition)
                del self.until[partition]
                released.append(partition)
                self.log.info("partition.released", partition=partition)
            else:
                # Kept: its sessions are not all in storage. Fed again; given up later.
                self.log.warning("partition.release_postponed", partition=partition)
                for listener in listeners:
                    listener.gained(partition)
        try:
            await self.store.release(self.token, released)
        except Exception as exc:
            # Each lapses on its own within lease_time; nothing unwritten is behind it.
            self.log.warning("partition.release_failed", error=f"{type(exc).__name__}: {exc}")
