"""Partitioned ownership: a manager serves the sessions of the partitions its worker owns.

``ownership="partitioned"`` with a ``Partitions`` object (see ``actorsess._partitions``).
A session belongs to its chat's partition. A turn starts only while this worker
holds that partition's lease (else ``PartitionNotOwnedError``); every write is
fenced in storage by the lease, so a worker that stalled past it is refused.

Each write also records, in the session's record header, the stamp of the last
forwarded update that changed it (``DELIVERY``); a load reads it back. An update
that the next owner reads again from the stream after a takeover, and whose
change to a session is already written, changes that session no second time:
its commit is dropped. So a session gets every forwarded update once, even across a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from actorsess._actor import SessionActor, Status
from actorsess._context import Context
from actorsess._ownership import FlusherPort, LeaveTurn, LoaderPort, TakeTurn
from actorsess._partitions import (
    DELIVERY,
    Partitions,
    Stamp,
    format_stamp,
    note_not_opened,
    parse_stamp,
)
from actorsess._record import TOMBSTONE_TTL_MS, record_stamp
from actorsess.exceptions import (
    ConfigError,
    PartitionNotOwnedError,
    SessionConflictError,
    StorageError,
)
from actorsess.storage.base import Conflict, LoadResult, Owned, WriteItem

_NO_STAMP: Stamp = (0, 0, 0)


class PartitionActor(SessionActor[Any]):
    """An actor of partitioned mode: it knows its partition and its update stamps."""

    __slots__ = ("decode", "loaded_stamp", "partition", "stamp")

    def __init__(
        self, key: str, storage_key: str, partition: int, decode: Callable[[bytes], Any]
    ) -> None:
        super().__init__(key, storage_key)
        self.partition = partition
        #: Makes the committed value live again when a replayed update's commit is dropped.
        self.decode = decode
        #: The stamp written with the record this actor loaded: updates up to it are in.
        self.loaded_stamp = _NO_STAMP
        #: The stamp of the last forwarded update committed here, or loaded (written
        #: with the record).
        self.stamp: Stamp | None = None

    def commit(self, blob: bytes, deleted: bool, expires_at: float | None) -> bool:
        delivery = DELIVERY.get()
        if delivery is not None:
            if delivery.stamp <= self.loaded_stamp:
                # Read again after a takeover, and already in the stored record.
                self.value = self.decode(self.blob)
                return False
            self.stamp = delivery.stamp
            delivery.changed = True
        return super().commit(blob, deleted, expires_at)


def _partitioned(actor: SessionActor[Any]) -> PartitionActor:
    # Every actor of a partitioned manager is made by PartitionOwnership.new_actor.
    return cast(PartitionActor, actor)


class PartitionOwnership:
    """The ``Ownership`` of ``ownership="partitioned"`` (see the module docstring)."""

    __slots__ = ("_clock", "_decode", "_flusher", "_log", "_partitions", "_registry", "_store")

    keeps_idle = False  # a session goes with its partition: forgotten when it moves

    def __init__(
        self, context: Context, partitions: Partitions, decode: Callable[[bytes], Any]
    ) -> None:
        self._partitions = partitions
        self._store = partitions.store
        self._registry = context.registry
        self._clock = context.clock
        self._log = context.log
        self._decode = decode
        self._flusher: FlusherPort | None = None

    def bind(self, loader: LoaderPort, flusher: FlusherPort) -> None:
        self._flusher = flusher

    @property
    def flusher(self) -> FlusherPort:
        assert self._flusher is not None, "bind() first"
        return self._flusher

    def new_actor(self, key: str, storage_key: str) -> SessionActor[Any]:
        return PartitionActor(
            key, storage_key, self._partitions.partition_of_key(key), self._decode
        )

    def lookup(self) -> Callable[[str], SessionActor[Any] | None]:
        index, until, clock = self._registry.lookup, self._partitions.until, self._clock

        def owned(key: str) -> SessionActor[Any] | None:
            # The cached actor, unless its partition's lease cannot be relied on now.
            actor = index(key)
            if actor is not None and until.get(_partitioned(actor).partition, 0.0) <= clock.now():
                return None
            return actor

        return owned

    def usable(self, actor: SessionActor[Any]) -> bool:
        return actor.status is Status.READY and self._partitions.holds(
            _partitioned(actor).partition
        )

    async def take(self, key: str, take_turn: TakeTurn, leave: LeaveTurn) -> SessionActor[Any]:
        self._check_owned(key, self._partitions.partition_of_key(key))
        try:
            actor = await take_turn(key)
        except StorageError as exc:
            note_not_opened(exc)
            raise
        partition = _partitioned(actor).partition
        if not self._partitions.holds(partition):
            leave(actor)  # the partition left while this turn waited
            self._check_owned(key, partition)
        return actor

    def _check_owned(self, key: str, partition: int) -> None:
        if not self._partitions.holds(partition):
            raise PartitionNotOwnedError(key, partition)

    async def fetch(self, actors: Sequence[SessionActor[Any]]) -> Sequence[LoadResult | Owned]:
        loaded = await self._store.load([a.storage_key for a in actors])
        for actor, record in zip(actors, loaded, strict=True):
            stamp = record_stamp(record) if isinstance(record, bytes) else None
            if stamp is not None:
                partitioned = _partitioned(actor)
                # Its next write keeps the stamp, even if no forwarded update changes it.
                partitioned.stamp = partitioned.loaded_stamp = parse_stamp(stamp)
        return loaded

    async def write(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        return await self._write(actors, items, ttl_ms, whole=False)

    async def write_all(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        return await self._write(actors, items, ttl_ms, whole=True)

    async def _write(
        self,
        actors: Sequence[SessionActor[Any]],
        items: Sequence[WriteItem],
        ttl_ms: int | None,
        *,
        whole: bool,
    ) -> list[Conflict]:
        partitioned = [_partitioned(a) for a in actors]
        return await self._store.write(
            self._partitions.token,
            items,
            [a.partition for a in partitioned],
            ["" if a.stamp is None else format_stamp(a.stamp) for a in partitioned],
            ttl_ms,
            TOMBSTONE_TTL_MS,
            whole=whole,
        )

    def settle(self, actor: SessionActor[Any]) -> None:
        self._registry.settle(actor)

    def refused(self, actor: SessionActor[Any]) -> None:
        # Out of the cached lookups: forgotten once idle; the next turn reloads.
        self._registry.park(actor)

    def forgotten(self, actor: SessionActor[Any]) -> None:
        pass

    def allow_outside_edits(self, operation: str) -> None:
        raise ConfigError(
            "ownership",
            f"{operation}() is for ownership='local'; with 'partitioned' the owner of a "
            "partition always holds what storage holds",
        )

    async def check(self, timeout: float) -> None:
        pass

    def start(self) -> None:
        self._partitions.subscribe(self)

    async def stop(self, timeout: float) -> None:
        self._partitions.unsubscribe(self)

    # -- PartitionListener --------------------------------------------------------

    def _actors_of(self, partition: int) -> list[PartitionActor]:
        actors = [*self._registry.actors(), *self._registry.parked.values()]
        return [a for a in map(_partitioned, actors) if a.partition == partition]

    def gained(self, partition: int) -> None:
        pass

    async def stop_feeding(self, partition: int) -> None:
        pass

    async def let_go(self, partition: int) -> bool:
        actors = self._actors_of(partition)
        if not await self._write_out([a for a in actors if a.dirty], partition):
            return False
        for actor in actors:
            self._registry.park(actor)  # forgotten now, or once its last turn ends
        return True

    async def _write_out(self, actors: Sequence[SessionActor[Any]], partition: int | None) -> bool:
        """Wait until ``actors`` are written at their current versions; False if a write
        failed (they stay dirty, and the flusher retries)."""
        for actor in actors:
            try:
                await self.flusher.wait_persisted(actor, actor.version)
            except SessionConflictError:
                pass  # refused: reported by the flusher, and nothing more to write
            except StorageError as exc:
                self._log.warning(
                    "partition.write_failed",
                    partition=partition,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return False
        return True

    async def settled(self, partition: int) -> None:
        pass

    async def persist(self) -> bool:
        return await self._write_out(list(self.flusher.dirty.values()), None)

    def lost(self, partition: int) -> None:
        reason = f"partition {partition} was lost (its lease lapsed) before this was written"
        for actor in self._actors_of(partition):
            if actor.dirty:
                self.flusher.refuse(actor, reason)
            else:
                self._registry.park(actor)
