"""The borrower's side of a loan (``actorsess._loans``): ``BorrowedTurn``.

A partitioned manager's ``session(key)`` gives a ``BorrowedTurn`` when this
process does not hold ``key``'s partition (``Partitions.lends_key``). The turn
asks the partition's owner for the session, loads it once the owner has lent
it, and at the end of the block sends the change to the owner, returning only
once the owner has stored it. The session is not cached here: every borrowed
block asks again, so the owner stays the one place the session lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from actorsess._actor import SessionActor
from actorsess._clock import Clock
from actorsess._codec import Codec
from actorsess._config import SessionConfig
from actorsess._key import check_key
from actorsess._loans import (
    DONE,
    EXPIRED,
    FAILED,
    GIVEN_UP,
    READY,
    REFUSED,
    UNCHANGED,
    LoanRequest,
    encode_change,
)
from actorsess._migrations import Migrations
from actorsess._partitions import DELIVERY, Partitions, note_not_opened
from actorsess._record import encode_record
from actorsess._stored import read_stored
from actorsess._turn import SessionTurn, Turns
from actorsess.exceptions import (
    ActorSessError,
    LeaseTimeoutError,
    SessionConflictError,
    StorageError,
)

T = TypeVar("T")

#: Makes the turn of ``session(key)``.
MakeTurn = Callable[[Turns[T], str], SessionTurn[T]]


class Borrower:
    """What the borrowed turns of one partitioned manager share."""

    def __init__(
        self,
        partitions: Partitions,
        config: SessionConfig,
        codec: Codec[Any],
        migrations: Migrations,
        clock: Clock,
        log: Any,
    ) -> None:
        self.partitions = partitions
        self.store = partitions.store
        self.keys = partitions.storage_keys(config.key_prefix)
        #: How long a loan waits for the owner, and the owner for the block's change.
        self.hold = config.lease_wait_timeout
        #: How long, past its hold time, the owner may take to write and load a change.
        self.confirm_timeout = config.write_timeout + config.load_timeout
        self.ttl_ms = config.ttl_ms or 0
        self.max_bytes = config.max_session_bytes
        self.codec = codec
        self.migrations = migrations
        self.clock = clock
        self.log = log
        #: Loans given back in the background (a borrower cancelled while it waited).
        self._giving_back: set[asyncio.Task[None]] = set()

    def wrap(self, make: MakeTurn[T]) -> MakeTurn[T]:
        """``make``, except that a session this process must borrow gets a BorrowedTurn."""
        lends_key = self.partitions.lends_key

        def make_turn(turns: Turns[T], key: str) -> SessionTurn[T]:
            if lends_key(key):
                return BorrowedTurn(turns, key, self)
            return make(turns, key)

        return make_turn

    async def borrow(self, key: str) -> Loan:
        """Ask the owner of ``key``'s partition to lend it; the loan, with the session
        loaded, once the owner has."""
        partition = self.partitions.partition_of_key(key)
        stored_key = self.keys.of(key)  # a key storage cannot take is refused here
        request = LoanRequest.new(self.keys.prefix, key, self.hold)
        started = self.clock.now()
        try:
            await self.store.request_loan(partition, request.encode())
            answer = await self.store.take_loan(request.id, "ready", self.hold)
            if answer is None and not await self.store.claim_loan(request.id, GIVEN_UP, b""):
                # The owner claimed it at the last moment: its answer is there.
                answer = await self.store.take_loan(request.id, "ready", self.hold)
        except BaseException as exc:
            self.give_back_later(request.id)
            _raise_as_storage_error(key, "could not be borrowed", exc)
            raise
        if answer is None:
            raise LeaseTimeoutError(
                key, self.clock.now() - started, f"the owner of partition {partition}"
            )
        if answer != READY:
            reason = answer.removeprefix(FAILED).decode(errors="replace")
            raise StorageError(f"session {key!r}: its owner could not lend it: {reason}")
        actor: SessionActor[Any] = SessionActor(key, stored_key)
        loan = Loan(self, actor, partition, request, self.clock.now())
        try:
            [raw] = await self.store.load([stored_key])
            stored = read_stored(key, raw, self.codec, self.migrations, self.max_bytes)
        except BaseException as exc:
            self.give_back_later(request.id)
            _raise_as_storage_error(key, "could not be loaded", exc)
            raise
        loan.actor.loaded(stored.value, stored.blob, stored.version, None)
        self.log.debug("session.borrowed", key=key, partition=partition)
        return loan

    def give_back_later(self, loan: str) -> None:
        """Let the owner go on at once (best effort): give the loan up if it was not
        answered yet, else tell the owner nothing changed."""

        async def give_back() -> None:
            try:
                if not await self.store.claim_loan(loan, GIVEN_UP, b""):
                    await self.store.send_loan(loan, "change", UNCHANGED)
            except Exception as exc:  # the owner waits out its hold time instead
                self.log.warning("loan.give_back_failed", error=f"{type(exc).__name__}: {exc}")

        task = asyncio.get_running_loop().create_task(give_back())
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)


class Loan:
    """One session lent to this process: its private actor and the way back."""

    __slots__ = ("actor", "borrower", "lent_at", "partition", "request")

    def __init__(
        self,
        borrower: Borrower,
        actor: SessionActor[Any],
        partition: int,
        request: LoanRequest,
        lent_at: float,
    ) -> None:
        self.borrower = borrower
        self.partition = partition
        self.request = request
        #: When the owner's hold time started (as seen here: a little after it did).
        self.lent_at = lent_at
        #: Not in the registry: the session lives at its owner.
        self.actor = actor

    async def give_back(self) -> None:
        """Nothing changed: the owner may go on."""
        try:
            await self.borrower.store.send_loan(self.request.id, "change", UNCHANGED)
        except Exception as exc:
            self.borrower.log.warning(
                "loan.give_back_failed",
                key=self.actor.key,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def commit(self, blob: bytes, deleted: bool) -> None:
        """Send the session's new encoding (``deleted``: back to ``initial()``, so its
        record is deleted) at the next version, and return once the owner has stored
        it; raise if it did not."""
        borrower, key = self.borrower, self.actor.key
        version = self.actor.version + 1
        record = None if deleted else encode_record(version, blob, borrower.migrations.schema)
        # The owner's hold ends a little before it does here; keep a margin for the trip.
        left = self.lent_at + borrower.hold * 0.9 - borrower.clock.now()
        if left <= 0:
            await self.give_back()
            raise _held_too_long(key, borrower.hold)
        change = encode_change(version, record, borrower.ttl_ms)
        try:
            await borrower.store.send_loan(self.request.id, "change", change)
            answer = await borrower.store.take_loan(
                self.request.id, "done", left + borrower.confirm_timeout
            )
        except Exception as exc:
            _raise_as_storage_error(key, "was not confirmed as saved", exc)
            raise
        if answer == DONE:
            return
        if answer is None:
            raise StorageError(
                f"session {key!r}: the owner of partition {self.partition} did not confirm "
                "the change; it may or may not be saved"
            )
        if answer == EXPIRED:
            raise _held_too_long(key, borrower.hold)
        raise SessionConflictError(key, answer.removeprefix(REFUSED).decode(errors="replace"))


def _held_too_long(key: str, hold: float) -> SessionConflictError:
    return SessionConflictError(
        key,
        f"the block held the borrowed session longer than its owner lends it "
        f"(lease_wait_timeout={hold:g}s), so the change was dropped",
    )


def _raise_as_storage_error(key: str, what: str, exc: BaseException) -> None:
    """A storage client's error reaches the block as StorageError naming the key; our
    own errors and cancellations go on as they are (the caller re-raises them)."""
    if isinstance(exc, Exception) and not isinstance(exc, ActorSessError):
        raise StorageError(f"session {key!r} {what}: {type(exc).__name__}: {exc}") from exc


class BorrowedTurn(SessionTurn[T]):
    """A session block on a session borrowed from its partition's owner (see the module
    docstring). Inside the block it is like any other; leaving it normally returns
    once the change is stored (write-through, whatever ``flush_interval`` is)."""

    __slots__ = ("_borrower", "_loan")

    def __init__(self, turns: Turns[T], key: str, borrower: Borrower) -> None:
        super().__init__(turns, key)
        self._borrower = borrower
        self._loan: Loan | None = None

    async def __aenter__(self) -> T:
        if self._actor is not None:
            raise RuntimeError(f"session {self._key!r}: this turn is already entered")
        check_key(self._key)
        turns = self._turns
        if not turns.running:
            await turns.start()
        try:
            loan = await self._borrower.borrow(self._key)
        except (StorageError, LeaseTimeoutError) as exc:  # its owner did not lend it
            note_not_opened(exc)
            raise
        loan.actor.hold(self)
        self._loan, self._actor = loan, loan.actor
        return loan.actor.value  # type: ignore[return-value]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        loan, actor = self._loan, self._actor
        if loan is None or actor is None:
            return
        self._loan = self._actor = None
        if exc_type is not None:
            await loan.give_back()
            return
        try:
            blob = self._turns.encode_change(actor)  # raises what a commit would
        except BaseException:
            await loan.give_back()
            raise
        if blob is None:
            await loan.give_back()
            return
        delivery = DELIVERY.get()
        if delivery is not None:
            delivery.changed = True  # sent: the lender may store it even if this fails
        await loan.commit(blob, blob == self._turns.empty_blob)
