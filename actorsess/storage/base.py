"""The batch-shaped storage contract every backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable


class WriteItem(NamedTuple):
    """One session to write: ``blob`` is the encoded record, ``None`` deletes the key.

    Every item is fenced by ``version`` (see ``Storage.write_many``); a delete
    leaves a tombstone at ``version`` (see ``actorsess._record``).

    Attributes:
        key: The storage key (``key_prefix`` included).
        blob: The encoded record, or None for a delete.
        version: The record's version: the write lands only over an older stored one.
        lease: Shared ownership: the lease token the write must still hold (see LeaseStorage).
        expected: Shared ownership: the version this writer last wrote or loaded; a lapsed lease
            is taken back only if storage still holds it.
    """

    key: str
    blob: bytes | None
    version: int
    lease: str | None = None
    expected: int | None = None


class Conflict(NamedTuple):
    """A write the storage refused: its ``position`` in the items, and why.

    Attributes:
        position: Index of the refused item in the batch given to the storage.
        reason: Why it was refused (``NEWER_VERSION``, or the storage's own words).
    """

    position: int
    reason: str


NEWER_VERSION = "storage holds a newer version"
"""``Conflict.reason`` when storage already holds a newer version of the key."""


class BadValue(NamedTuple):
    """A stored value that is not a record at all (e.g. a Redis list under the key).

    Attributes:
        reason: What was found instead, for the error that names the key.
    """

    reason: str


LoadResult = bytes | None | BadValue
"""What ``Storage.load_many`` gives for one key: the record, None when absent, or
``BadValue`` for something that is not a record."""


@runtime_checkable
class Storage(Protocol):
    """Where sessions live between processes. Keys arrive already prefixed.

    Each call is one batch; implementations should make it one round trip (or
    one transaction). ``write_many`` must be idempotent: a write whose outcome
    was unknown (timeout, cancellation) is simply sent again.
    """

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        """Stored records for ``keys``, in order: bytes, None if absent, BadValue.

        A tombstone (or a record that expired while its version is still known)
        loads as the tombstone record ``as1:<version>:``.
        """
        ...

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        """Store every item, applying ``ttl_ms`` if set; ``blob=None`` replaces the
        record with a tombstone at the item's version, kept ``TOMBSTONE_TTL_S``.

        Version fence, on every item: an item is written only when the stored
        version (a tombstone's included) is older; the same version already
        stored counts as written (the replay of a write whose outcome was
        unknown). An item refused because storage holds a newer version is
        returned as ``Conflict(position, NEWER_VERSION)``; the others land.
        """
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` outright, with no fence (records too corrupt to carry a
        version); absent keys are ignored."""
        ...

    async def close(self) -> None:
        """Release connections or files this storage opened itself. Safe to call twice."""
        ...


@runtime_checkable
class AtomicStorage(Protocol):
    """A storage that can write several sessions in one all-or-nothing step
    (``SessionManager.sessions``)."""

    def atomic_problem(self, keys: Sequence[str]) -> str | None:
        """Why ``keys`` cannot be written together in one atomic step here (on Redis
        Cluster: keys in different hash slots), or None when they can."""
        ...

    async def write_all(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        """``write_many``, all or nothing: when storage holds a newer version of any
        item, nothing is written and those items are returned as conflicts. A replay
        (the same versions again, after an unknown outcome) counts as written."""
        ...


@runtime_checkable
class ScannableStorage(Protocol):
    """A storage that can list the keys it holds (``SessionManager.scan``, ``migrate_all``)."""

    def scan_keys(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        """The stored keys that start with ``prefix``, in lists of at most ``batch``.

        Memory stays bounded by ``batch`` however many keys there are (storages that
        hold everything in memory anyway may copy the key list). A key stored for the
        whole scan comes at least once (Redis SCAN may repeat one); one added or
        removed meanwhile may or may not come. Tombstones come too: the caller loads
        the records and skips them.
        """
        ...


@runtime_checkable
class PreparableStorage(Protocol):
    """A storage that can open, ahead of use, what its first calls would open."""

    async def prepare(self) -> None:
        """Open connections (and load scripts) now, so that the first batches after
        start do not each wait for a connection set-up. Raises what opening raises."""
        ...


class Claimant(NamedTuple):
    """Who asks for a key space (see ``ClaimableStorage``): one process, in one mode.

    Managers of one process share one claimant per mode, so several namespaces
    (managers) of one bot on one key space are fine; only another process, or the
    other mode, conflicts.
    """

    #: ``"local"`` or ``"shared"``.
    mode: str
    host: str
    pid: int
    #: Random per process: tells this process from an earlier one with the same pid.
    nonce: str

    def describe(self) -> str:
        if self.mode == "shared":
            return "processes in ownership='shared'"
        return f"a process in ownership='local' (host {self.host}, pid {self.pid})"


@runtime_checkable
class ClaimableStorage(Protocol):
    """A storage that can tell whether another process already serves a key space.

    Detection, not fencing (versions fence the writes): it turns the silent loss of
    two local-mode processes on one key space into an error at start.
    """

    async def claim(self, space: str, claimant: Claimant, ttl_ms: int) -> Claimant | str | None:
        """Claim (or renew for ``ttl_ms``) the key space ``space`` for ``claimant``;
        None when granted, else who holds it (a description if not a Claimant)."""
        ...

    async def unclaim(self, space: str, claimant: Claimant) -> None:
        """Let go of ``space`` if ``claimant`` holds it."""
        ...


class Release(NamedTuple):
    """One lease to let go of (see ``LeaseStorage.release_many``)."""

    key: str
    token: str
    #: Tokens of the acquire attempts that asked for the key; the first is handed it.
    waiters: Sequence[str] = ()
    #: The session's last write, made in the same step (``lease`` is ignored).
    final: WriteItem | None = None


class HandoverAsked(NamedTuple):
    """Notice: the acquire attempt ``token`` asks this manager to let go of ``key``."""

    token: str
    key: str


class HandedOver(NamedTuple):
    """Notice: ``key`` was handed to the attempt ``token``: its lease is set to that
    token and ``record`` is what storage holds (None when absent)."""

    token: str
    key: str
    record: bytes | None


class AskAgain(NamedTuple):
    """Notice: ``key`` moved on before it could be handed over; ask for it again."""

    key: str


class Resubscribed(NamedTuple):
    """The notice channel was (re)opened: notices may have been missed before it."""


Notice = HandoverAsked | HandedOver | AskAgain | Resubscribed


class Owned(NamedTuple):
    """``acquire_many``'s answer for a key whose lease another manager holds."""

    owner: str


@runtime_checkable
class LeaseStorage(Storage, Protocol):
    """A storage several processes can share: per-key ownership leases and fenced writes.

    Lease tokens read ``<manager id>:<number>``. Handover notices (see
    ``listen``) arrive typed: ``HandoverAsked``, ``HandedOver``, ``AskAgain``.
    """

    async def acquire_many(
        self, keys: Sequence[str], tokens: Sequence[str], manager_id: str, lease_ms: int
    ) -> list[LoadResult | Owned]:
        """Take each key's lease (free, or held under a token of ``manager_id`` itself)
        and load its record; for a key owned elsewhere, ask the owner to hand it over
        (it gets ``HandoverAsked``)."""
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
        ``lease_ms``), which is sent the record (``HandedOver``); the others'
        requests are passed on to it."""
        ...

    async def write_leased(
        self, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        """Write items whose lease is still held with ``item.lease`` (or lapsed, with the
        record still at ``item.expected``: then it is taken back for ``lease_ms``) and
        whose stored version is older; a stored equal version counts as written."""
        ...

    async def write_leased_all(
        self, items: Sequence[WriteItem], ttl_ms: int | None, lease_ms: int
    ) -> list[Conflict]:
        """``write_leased``, all or nothing (as ``AtomicStorage.write_all``): if any
        item's lease or version fence refuses it, nothing is written."""
        ...

    async def lease_hazard(self) -> str | None:
        """Why leases could vanish behind their owners' backs here (for example keys
        evicted under a memory limit), or None when they cannot."""
        ...

    async def listen(self, manager_id: str, on_notice: Callable[[Notice], None]) -> None:
        """Deliver the handover notices sent to ``manager_id`` until cancelled.

        ``on_notice`` gets each notice, and ``Resubscribed()`` after every
        (re)subscription, when notices may have been missed.
        """
        ...
