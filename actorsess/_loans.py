"""Loans: a partitioned session opened by a process that does not own its partition.

An admin process, or a job or handler of one worker touching another worker's
chat, cannot run the session where it is cached: only the partition's owner may
write it. It *borrows* the session instead, through the partition's stream, so
the loan takes its place in line with the chat's updates:

1. The borrower appends a request (``LoanRequest``: a fresh id, the key) to the
   partition's stream and waits for the answer in the loan's ``ready`` list.
2. The owner reads it in stream order and serves it in the chat's turn, after
   the chat's updates before it: every manager of the owner with that key prefix
   takes the key's turn and writes its change out (one that cannot read the
   record keeps other keys, and takes no part); then the owner *claims* the loan
   (first claim only) and answers ``ready``.
3. The borrower loads the record from storage (it is current: the owner holds
   the turn, with nothing unwritten), runs its block, and sends its change, or
   "unchanged", to the ``change`` list.
4. The owner writes the change under its partition lease (fenced as its own
   writes are, with the request's stream position as the record's stamp), loads
   the session again, answers ``done`` (or ``refused``) and lets the turn go.

The owner waits for the change ``hold`` seconds (the borrower's
``lease_wait_timeout``); after that it answers ``expired`` and goes on, and the
borrower's change is dropped (its block raises). A borrower that gives up
waiting for ``ready`` claims the loan itself, so an owner that reaches the
request later skips it, as does an owner that reads the request again after a
takeover (the claim marker outlives that). Nothing half-done stays behind: the
change is one fenced write by the owner, confirmed to the borrower only once it
is stored; an owner that dies in between leaves it unconfirmed (the borrower's
block raises StorageError: the change may or may not be stored).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from actorsess._partitions import Lend, Partitions, Stamp, format_stamp
from actorsess._record import TOMBSTONE_TTL_MS
from actorsess.storage.base import WriteItem

#: Answers in a loan's lists.
READY = b"ready"
UNCHANGED = b"-"
DONE = b"done"
EXPIRED = b"expired"
REFUSED = b"refused:"
FAILED = b"error:"
#: Claim markers: served by the owner, or given up by the borrower.
_SERVED = "served"
GIVEN_UP = "given up"


@dataclass(frozen=True)
class LoanRequest:
    """What a borrower asks of a partition's owner (the stream entry's ``loan`` field)."""

    id: str
    #: The borrowing manager's ``key_prefix``: the owner's managers with it lend.
    prefix: str
    key: str
    #: Milliseconds the owner waits for the change once it has lent the session.
    hold_ms: int

    @classmethod
    def new(cls, prefix: str, key: str, hold: float) -> LoanRequest:
        return cls(secrets.token_hex(8), prefix, key, max(1, round(hold * 1000)))

    def encode(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "prefix": self.prefix, "key": self.key, "hold_ms": self.hold_ms}
        )

    @classmethod
    def decode(cls, raw: bytes) -> LoanRequest:
        """The request in ``raw``; ValueError naming what is wrong."""
        fields: Any = orjson.loads(raw)
        if not isinstance(fields, dict):
            raise ValueError(f"a loan request is a JSON object, got {raw[:60]!r}")
        for name, kind in (("id", str), ("prefix", str), ("key", str), ("hold_ms", int)):
            if not isinstance(fields.get(name), kind):
                raise ValueError(
                    f"loan request {raw[:60]!r}: {name!r} missing or not a {kind.__name__}"
                )
        return cls(fields["id"], fields["prefix"], fields["key"], fields["hold_ms"])


def encode_change(version: int, record: bytes | None, ttl_ms: int) -> bytes:
    """A borrower's change: the new record at ``version`` (None: delete), kept ``ttl_ms``
    (0: no expiry)."""
    head = b"%d %d " % (version, ttl_ms)
    return head + (b"d" if record is None else b"s" + record)


def decode_change(message: bytes) -> tuple[int, bytes | None, int]:
    """``(version, record or None, ttl_ms)`` of ``encode_change``'s message."""
    version, ttl_ms, body = message.split(b" ", 2)
    return int(version), None if body == b"d" else body[1:], int(ttl_ms)


async def serve_loan(
    partitions: Partitions, partition: int, stamp: Stamp, request: LoanRequest
) -> None:
    """Serve ``request`` (read from ``partition``'s stream at ``stamp``) in the owner of
    ``partition``, holding the chat's turn (see the module docstring)."""
    store, log = partitions.store, partitions.log
    lenders = partitions.lenders(request.prefix)
    if not lenders:
        problem = (
            f"the owner of partition {partition} has no partitioned manager with key_prefix "
            f"{request.prefix!r} (give the managers of every process the same key_prefix)"
        )
        await store.claim_loan(request.id, _SERVED, FAILED + problem.encode())
        log.warning("loan.refused", key=request.key, partition=partition, error=problem)
        return
    answered = written = False

    async def exchange() -> bool:
        nonlocal answered, written
        if not await store.claim_loan(request.id, _SERVED, READY):
            return False  # given up by its borrower, or served before a takeover
        answered = True
        change = await store.take_loan(request.id, "change", request.hold_ms / 1000)
        if change is None:
            await store.send_loan(request.id, "done", EXPIRED)
            log.warning("loan.expired", key=request.key, partition=partition)
            return False
        if change == UNCHANGED:
            return False
        version, record, ttl_ms = decode_change(change)
        conflicts = await store.write(
            partitions.token,
            [WriteItem(partitions.storage_keys(request.prefix).of(request.key), record, version)],
            [partition],
            [format_stamp(stamp)],
            ttl_ms or None,
            TOMBSTONE_TTL_MS,
            whole=True,
        )
        if conflicts:
            await store.send_loan(request.id, "done", REFUSED + conflicts[0].reason.encode())
            return False
        written = True
        return True

    async def through(lending: list[Lend]) -> bool:
        # Every lender holds the key's turn, its change written, around the exchange.
        if not lending:
            return await exchange()
        return await lending[0](request.key, lambda: through(lending[1:]))

    try:
        try:
            await through(lenders)
        finally:
            if written:
                # Confirmed once every lender has loaded the change back (or failed to,
                # and dropped the session): a read here after the borrower's block
                # returned sees it.
                await store.send_loan(request.id, "done", DONE)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("loan.failed", key=request.key, partition=partition, error=error)
        if not answered:
            # Tell the borrower now rather than let it wait out its timeout.
            with contextlib.suppress(Exception):  # (Redis down: it times out instead)
                await store.claim_loan(request.id, _SERVED, FAILED + error.encode())
