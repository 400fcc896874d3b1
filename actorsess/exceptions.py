"""Every error actorsess raises derives from ``ActorSessError``."""

from __future__ import annotations

__all__ = [
    "ActorSessError",
    "BackpressureTimeoutError",
    "ConfigError",
    "CorruptSessionError",
    "InvalidKeyError",
    "KeySpaceInUseError",
    "LeaseTimeoutError",
    "ManagerClosedError",
    "PartitionNotOwnedError",
    "SessionConflictError",
    "SessionDeadlockError",
    "SessionEncodeError",
    "SessionTooLargeError",
    "StorageError",
]


class ActorSessError(Exception):
    """Root of all actorsess errors."""


class ConfigError(ActorSessError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        """Make the error.

        Args:
            field: The ``SessionConfig`` field (kept as ``.field``).
            problem: What is wrong with its value (kept as ``.problem``).
        """
        self.field = field
        self.problem = problem
        super().__init__(f"SessionConfig.{field}: {problem}")


class ManagerClosedError(ActorSessError, RuntimeError):
    """The SessionManager was closed; it accepts no more work."""


class InvalidKeyError(ActorSessError, ValueError):
    """A session key is not a non-empty string of acceptable length."""


class CorruptSessionError(ActorSessError):
    """The stored record of one session could not be decoded or validated.

    The record is left untouched in storage for inspection; other keys keep
    working. ``SessionManager.delete(key)`` discards it deliberately.
    """

    def __init__(self, key: str, reason: str) -> None:
        """Make the error.

        Args:
            key: The session key (kept as ``.key``).
            reason: What is wrong with the record (kept as ``.reason``).
        """
        self.key = key
        self.reason = reason
        super().__init__(f"session {key!r} has a corrupt stored record: {reason}")


class SessionTooLargeError(ActorSessError):
    """A committed session encodes to more than ``max_session_bytes``.

    The commit is refused and the session keeps its previous value.
    """

    def __init__(self, key: str, size: int, limit: int) -> None:
        """Make the error.

        Args:
            key: The session key (``.key``).
            size: Its encoded size in bytes (``.size``).
            limit: ``max_session_bytes`` (``.limit``).
        """
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(
            f"session {key!r} encodes to {size} bytes, over max_session_bytes={limit}; "
            "the change was rolled back"
        )


class SessionEncodeError(ActorSessError, TypeError):
    """A session value could not be encoded (for example it holds a non-JSON object)."""

    def __init__(self, key: str, reason: str) -> None:
        """Make the error.

        Args:
            key: The session key (``.key``).
            reason: The path of the value JSON cannot hold, and why (``.reason``).
        """
        self.key = key
        self.reason = reason
        super().__init__(f"session {key!r} cannot be encoded: {reason}; the change was rolled back")


class StorageError(ActorSessError):
    """The storage backend failed (connection refused, timeout, server error)."""


class BackpressureTimeoutError(ActorSessError, TimeoutError):
    """Too many sessions are waiting to be written and the wait for room timed out."""

    def __init__(self, dirty: int, limit: int, waited: float) -> None:
        """Make the error.

        Args:
            dirty: Sessions waiting to be written (``.dirty``).
            limit: ``max_dirty`` (``.limit``).
            waited: Seconds the block waited for room.
        """
        self.dirty = dirty
        self.limit = limit
        super().__init__(
            f"{dirty} sessions are waiting to be written (max_dirty={limit}); "
            f"gave up after {waited:g}s: is the storage reachable?"
        )


class SessionConflictError(ActorSessError):
    """Storage refused a session's write in shared ownership mode: another process
    owns the key now (this one was paused or cut off past its lease) or wrote a
    newer version. The refused changes are dropped; the next turn reloads."""

    def __init__(self, key: str, reason: str) -> None:
        """Make the error.

        Args:
            key: The session key (``.key``).
            reason: Why storage refused the write (``.reason``).
        """
        self.key = key
        self.reason = reason
        super().__init__(f"session {key!r} was not written: {reason}; it will be reloaded")


class LeaseTimeoutError(ActorSessError, TimeoutError):
    """The process owning a session did not let go of it in time (shared ownership), or
    did not lend it in time (partitioned ownership: ``owner`` names the partition)."""

    def __init__(self, key: str, waited: float, owner: str | None) -> None:
        """Make the error.

        Args:
            key: The session key (``.key``).
            waited: Seconds waited for the lease.
            owner: The lease token of the process holding it, if known (``.owner``).
        """
        self.key = key
        self.owner = owner
        holder = f" (lease held by {owner!r})" if owner else ""
        super().__init__(
            f"session {key!r}: gave up waiting {waited:g}s for its lease{holder}; "
            "is the owning process stalled? (SessionConfig.lease_wait_timeout)"
        )


class PartitionNotOwnedError(ActorSessError, RuntimeError):
    """Partitioned ownership: a session's partition moved away from this worker while
    its block waited for the turn, or it is the partition of the update being
    handled, which is never borrowed (the partition's next owner reads the update
    again). Anywhere else, opening the session again borrows it from its owner."""

    def __init__(self, key: str, partition: int) -> None:
        """Make the error.

        Args:
            key: The session key (``.key``).
            partition: Its partition (``.partition``).
        """
        self.key = key
        self.partition = partition
        super().__init__(
            f"session {key!r} belongs to partition {partition}, which this worker does not "
            "own now (it moved away while the block waited for its turn)"
        )


class PartitionCountError(ActorSessError, ValueError):
    """A worker's ``Partitions(count=...)`` differs from the count its namespace was
    started with: the two would place chats in different partitions and serve one
    chat twice, each under its own lease (and on Redis Cluster a session's record is
    stored by its partition)."""

    def __init__(self, count: int, recorded: int, key: str) -> None:
        """Make the error.

        Args:
            count: This worker's count (``.count``).
            recorded: The count recorded in Redis (``.recorded``).
            key: The Redis key it is recorded under.
        """
        self.count = count
        self.recorded = recorded
        super().__init__(
            f"Partitions(count={count}): the workers of this namespace run with "
            f"count={recorded} (recorded in Redis under {key!r}); give every worker the "
            f"same count. To change it, stop every worker and delete {key!r} (on Redis "
            "Cluster the sessions' records are stored by partition: changing the count "
            "leaves them where the old one put them)"
        )


class KeySpaceInUseError(ActorSessError, RuntimeError):
    """Another process already serves this key space in a way this manager cannot share.

    In ``ownership="local"`` each process assumes it alone writes its keys; a
    second process on the same SQLite file, or on the same Redis ``key_prefix``,
    would silently lose updates. Run one process per key space, or give every
    process ``ownership="shared"`` (Redis).
    """

    def __init__(self, storage: str, space: str, holder: str, ownership: str) -> None:
        """Make the error.

        Args:
            storage: The storage, as its repr shows it (``.storage``).
            space: The key space: the ``key_prefix`` (``.space``).
            holder: Who serves it already: host, process id, mode (``.holder``).
            ownership: This manager's ``ownership`` setting.
        """
        self.storage = storage
        self.space = space
        self.holder = holder
        super().__init__(
            f"{storage} (key prefix {space!r}) is already served by {holder}; this manager "
            f"(ownership={ownership!r}) cannot share it: run one process per key space in "
            "local mode, or set ownership='shared' in every process (Redis only)"
        )


class SessionDeadlockError(ActorSessError, RuntimeError):
    """Waiting for a session's turn would never end: the wait closes a cycle.

    Raised, promptly, in the task whose wait closes it: a task that holds session A
    and asks for B, while B's holder waits for A (two handlers writing each other's
    FSM state, say). Its block rolls back and its turns are released, so the other
    task goes on.
    """

    def __init__(self, keys: list[str]) -> None:
        """Make the error.

        Args:
            keys: The chain of the wait, from the key asked for back to a key this
                task holds (``.keys``).
        """
        self.keys = keys
        chain = " -> ".join(repr(key) for key in keys)
        super().__init__(
            f"waiting for session {keys[0]!r} would deadlock: its holder waits, through "
            f"{chain}, for a session this task holds; take turns one at a time, or "
            "write the other session after this block ends"
        )
