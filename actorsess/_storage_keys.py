"""Where a session's record is kept: its storage key.

A session ``key`` is stored under ``key_prefix + key``. In partitioned mode on
Redis Cluster the partition's hash tag follows (``actorsess:session:42:7:7{17}``):
a write checks the partition's lease in the same script as it writes the
record, and a script may only touch keys of one slot (see
``actorsess.storage._redis_partitions``). Every part of a manager that names a
record in storage asks this object.
"""

from __future__ import annotations

from collections.abc import Callable

from actorsess.exceptions import InvalidKeyError


class StorageKeys:
    """The storage keys of one manager's sessions (see the module docstring)."""

    __slots__ = ("_tag_of", "prefix")

    def __init__(self, prefix: str, tag_of: Callable[[str], str] | None = None) -> None:
        """Keys under ``prefix``; ``tag_of(key)``, if given, is the hash tag put after
        each (the prefix must then have none of its own)."""
        self.prefix = prefix
        self._tag_of = tag_of

    def of(self, key: str) -> str:
        """The storage key of session ``key``."""
        if self._tag_of is None:
            return self.prefix + key
        if "{" in key:
            raise InvalidKeyError(
                f"session key {key!r}: on Redis Cluster in partitioned mode a key may not "
                "hold '{' (the partition's hash tag places its record beside its lease)"
            )
        return self.prefix + key + self._tag_of(key)

    def key_of(self, storage_key: str) -> str:
        """The session key of a storage key under the prefix (the inverse of ``of``)."""
        key = storage_key[len(self.prefix) :]
        if self._tag_of is not None and key.endswith("}") and "{" in key:
            key = key[: key.rindex("{")]
        return key
