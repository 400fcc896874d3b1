"""The batch-shaped storage contract every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
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
