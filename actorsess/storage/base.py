"""The batch-shaped storage contract every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable


class WriteItem(NamedTuple):
    """One session to write: ``blob`` is the encoded record, ``None`` deletes the key.

    ``fenced`` asks the storage to check the stored version first (see
    ``Storage.write_many``). The flusher sets it for sessions whose earlier write
    had an unknown outcome, the only case where an older write of ours can
    still be in flight; storages may fence every write regardless.
    """

    key: str
    blob: bytes | None
    version: int
    fenced: bool = True
    #: Shared ownership: the lease token the write must still hold (see LeaseStorage).
    lease: str | None = None
    #: Shared ownership: the version this writer last wrote or loaded; a lapsed lease
    #: is taken back only if storage still holds it.
    expected: int | None = None


class BadValue(NamedTuple):
    """A stored value that is not a record at all (e.g. a Redis list under the key)."""

    reason: str


LoadResult = bytes | None | BadValue


@runtime_checkable
class Storage(Protocol):
    """Where sessions live between processes. Keys arrive already prefixed.

    Each call is one batch; implementations should make it one round trip (or
    one transaction). ``write_many`` must be idempotent: a write whose outcome
    was unknown (timeout, cancellation) is simply sent again.
    """

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        """Stored records for ``keys``, in order: bytes, None if absent, BadValue."""
        ...

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> None:
        """Store (or delete, for ``blob=None``) every item, applying ``ttl_ms`` if set.

        Version fence: an item is skipped when the stored record has a higher
        version, so a delayed replay of an older write never overwrites newer data.
        """
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys``; absent keys are ignored."""
        ...

    async def close(self) -> None:
        """Release connections or files this storage opened itself. Safe to call twice."""
        ...


@runtime_checkable
class PreparableStorage(Protocol):
    """A storage that can open, ahead of use, what its first calls would open."""

    async def prepare(self) -> None:
        """Open connections (and load scripts) now, so that the first batches after
        start do not each wait for a connection set-up. Raises what opening raises."""
        ...


class Release(NamedTuple):
    """One lease to let go of (see ``LeaseStorage.release_many``)."""

    key: str
    token: str
    #: Tokens of the acquire attempts that asked for the key; the first is handed it.
    waiters: Sequence[str] = ()
    #: The session's last write, made in the same step (``lease`` is ignored).
    final: WriteItem | None = None


class Owned(NamedTuple):
    """``acquire_many``'s answer for a key whose lease another manager holds."""

    owner: str


class Conflict(NamedTuple):
    """A write ``write_leased`` refused: its ``position`` in the items, and why."""

    position: int
    reason: str


@runtime_checkable
class LeaseStorage(Storage, Protocol):
    """A storage several processes can share: per-key ownership leases and fenced writes.

    Lease tokens read ``<manager id>:<number>``. Handover notices (see
    ``listen``) are bytes: ``w <requester token> <key>`` asks the owner to let
    go of ``key``; ``g <token> <key>\n<record>`` hands ``key`` over, its lease
    already set to ``token`` and its stored record ("" when absent) attached;
    ``f <key>`` says to ask again.
    """

    async def acquire_many(
        self, keys: Sequence[str], tokens: Sequence[str], manager_id: str, lease_ms: int
    ) -> list[LoadResult | Owned]:
        """Take each key's lease (free, or held under a token of ``manager_id`` itself)
        and load its record; for a key owned elsewhere, ask the owner to hand it over
        (``w <token> <key>``)."""
        ...

    async def renew_many(
        self,
        keys: Sequence[str],
        tokens: Sequence[str],
        lease_ms: int,
        expected: Sequence[int],
    ) -> list[bool]:
        """Extend the leases still held with ``tokens``; False where one was lost. A
        lease that lapsed (expired while storage was unreachable) is taken back when
        the record is still at the ``expected`` version: nobody can have written it."""
        ...

    async def release_many(
        self, releases: Sequence[Release], lease_ms: int, ttl_ms: int | None
    ) -> list[Conflict]:
        """Let go of each lease still held with its token, first making its ``final``
        write (fenced like ``write_leased``; refusals are returned). A key with
        waiters passes to the first of them (its lease set to that waiter's token for
        ``lease_ms``), which is sent the record (``g``); the others' requests are
        passed on to it."""
        ...

    async def write_leased(
        self, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        """Write items whose lease is still held with ``item.lease`` (or lapsed, with the
        record still at ``item.expected``: then it is taken back for ``lease_ms``) and
        whose stored version is older; a stored equal version counts as written."""
        ...

    async def listen(self, manager_id: str, on_notice: Callable[[bytes], None]) -> None:
        """Deliver the handover notices sent to ``manager_id`` until cancelled.

        ``on_notice`` gets each notice; it is also called with ``b""`` after every
        (re)subscription, when notices may have been missed.
        """
        ...
