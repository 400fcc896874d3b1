"""IdleSessions: cached sessions nobody uses, kept as their encoded bytes only.

A live session costs the garbage collector: its actor and its value are
containers, and every full collection visits them (about a microsecond per
cached session, so a second's pause for a million). An idle, written session
needs neither: its committed bytes and version say everything about it. So the
registry keeps only the most recently used sessions live (``max_live``) and the
rest of ``max_cached`` here, in plain dicts of ``str`` to ``bytes`` (and to
``float`` for expiry times), which the collector never tracks, however large.
A turn that finds its session here makes the actor and decodes the value again.

Order is the dicts' insertion order: a session enters at the young end when it
stops being live and leaves when it is live again, so the oldest entries are the
least recently used; they are evicted in batches, which keeps trimming cheap.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple


class IdleSession(NamedTuple):
    """What an idle session is: enough to make its actor again."""

    version: int
    blob: bytes
    expires_at: float | None


class IdleSessions:
    """A bounded, least-recently-used store of idle sessions as bytes."""

    __slots__ = ("_batch", "_entries", "_expiry", "_on_evict")

    def __init__(self, capacity: int, on_evict: Callable[[str], None]) -> None:
        """Keep at most the room ``keep`` is given (never more than ``capacity``);
        ``on_evict(key)`` for each session pushed out."""
        #: Evicted together once over capacity: the oldest entries sit behind the
        #: dict's deleted slots, so trimming one at a time would rescan them.
        self._batch = max(1, capacity // 64)
        #: Storage-free form of each session: ``b"<version>:" + committed bytes``.
        self._entries: dict[str, bytes] = {}
        #: Expiry times (only with a ttl).
        self._expiry: dict[str, float] = {}
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keep(
        self, key: str, version: int, blob: bytes, expires_at: float | None, room: int
    ) -> None:
        """Keep ``key``'s written, idle session (the youngest now), in at most ``room``
        entries (what the cache has left beside its live sessions)."""
        entries = self._entries
        entries[key] = b"%d:%b" % (version, blob)
        if expires_at is not None:
            self._expiry[key] = expires_at
        if len(entries) > room:
            excess = len(entries) - room + self._batch - 1
            for old in list(itertools.islice(entries, min(excess, len(entries)))):
                self.discard(old)
                self._on_evict(old)

    def take(self, key: str) -> IdleSession | None:
        """Remove and return ``key``'s session (it is about to be live again)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        version, _, blob = entry.partition(b":")
        return IdleSession(int(version), blob, self._expiry.pop(key, None))

    def discard(self, key: str) -> bool:
        """Forget ``key``'s session; True if it was here."""
        if self._entries.pop(key, None) is None:
            return False
        self._expiry.pop(key, None)
        return True
