"""SessionConfig: one frozen, keyword-only, validated settings object."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal, get_args

from actorsess._record import TOMBSTONE_TTL_S
from actorsess.exceptions import ConfigError

Ownership = Literal["local", "shared", "partitioned"]

_ENV_PREFIX = "ACTORSESS_"
#: ``ACTORSESS_*`` variables that are not settings: the examples' Redis URL.
_OTHER_VARIABLES = frozenset({"ACTORSESS_REDIS_URL"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SessionConfig:
    """How sessions are cached, written and bounded.

    Every field is checked at construction; a bad value raises
    ``ConfigError`` naming the field.

    Attributes:
        flush_interval: Seconds a change may wait before it is written. ``0`` means
            write-through: a session block returns only after its change is in storage.
        max_batch: Most sessions written in one storage call; this many dirty sessions also
            trigger a write before ``flush_interval`` has passed.
        max_batch_bytes: Most bytes of session data written in one storage call (a session
            larger than this is written alone). A write that times out is split in half.
        max_cached: Sessions kept in the in-process LRU cache (held or dirty ones may exceed it
            briefly: they are parked, never dropped).
        max_live: Of the cached sessions, how many are kept live (decoded, with their
            actor): the most recently used. The others are kept as their encoded bytes,
            which the garbage collector never scans, and decoded again when used. Shared
            ownership keeps every cached session live.
        max_dirty: Dirty sessions allowed before new session blocks wait for the flusher
            (backpressure while storage is slow or down).
        ttl: Seconds a stored session lives after its last change; ``None`` keeps it forever.
        key_prefix: Namespace prepended to every storage key.
        ownership: ``"local"``: this process owns every key it serves (one bot process).
            ``"shared"``: several processes on one Redis (leases and fencing).
            ``"partitioned"``: several worker processes, each owning whole partitions of
            the chats, with updates forwarded to their owner (give the manager a
            ``Partitions``; see the "Several processes" page).
        lease_time: Shared ownership: seconds a lease lives unless renewed (renewal runs every
            third of it). A crashed process's sessions are taken over after this long.
        lease_wait_timeout: Shared ownership: seconds a session block waits for another process
            to hand its session over before ``LeaseTimeoutError``. A process
            that died is taken over after its lease lapses plus a grace period of one
            ``lease_time`` (a live one answers within it), so keep this above twice
            ``lease_time``. Partitioned ownership: seconds a borrowed block waits for
            the partition's owner to lend the session, and at most holds it.
        max_session_bytes: Largest encoded session accepted at commit (and read from storage).
        write_timeout: Seconds one storage write may take before its outcome counts as unknown
            (it is retried; writes are idempotent).
        load_timeout: Seconds one batched load may take before the waiting blocks fail.
        retry_base_delay: First retry delay after a failed write; doubles up to
            ``retry_max_delay``.
        retry_max_delay: Cap of the retry delay.
        backpressure_timeout: Seconds a session block waits for room under backpressure before
            ``BackpressureTimeoutError``; ``None`` waits as long as it takes.
        close_timeout: Seconds ``close()`` spends letting holders finish and writing what is
            dirty.
        hot_key_threshold: A key with this many session blocks inside or waiting for its turn
            logs ``session.hot_key`` (each time its queue grows to it); ``None``: never.
        strict_json: Dict sessions: refuse at commit a tuple, NaN or an infinity, an enum member
            or a UUID, which JSON would store as a list, null, the member's value or a string.
            It reads every commit's bytes back (about 0.4 µs for a small session, 1 µs for a
            70-byte one). With ``False`` those come back changed after a reload; non-str keys,
            sets, datetimes and other objects are refused either way. Typed sessions keep their
            types through their schema.
    """

    flush_interval: float = 1.0
    max_batch: int = 1000
    max_batch_bytes: int = 8_388_608
    max_cached: int = 10_000
    max_live: int = 1024
    max_dirty: int = 100_000
    ttl: float | None = None
    key_prefix: str = "actorsess:"
    ownership: Ownership = "local"
    lease_time: float = 10.0
    lease_wait_timeout: float = 25.0
    max_session_bytes: int = 1_048_576
    write_timeout: float = 10.0
    load_timeout: float = 10.0
    retry_base_delay: float = 0.05
    retry_max_delay: float = 5.0
    backpressure_timeout: float | None = 30.0
    close_timeout: float = 15.0
    hot_key_threshold: int | None = 100
    strict_json: bool = True

    def __post_init__(self) -> None:
        _non_negative_finite("flush_interval", self.flush_interval)
        for name in (
            "max_batch",
            "max_batch_bytes",
            "max_cached",
            "max_live",
            "max_dirty",
            "max_session_bytes",
        ):
            _positive_int(name, getattr(self, name))
        if self.ttl is not None:
            _positive_finite("ttl", self.ttl)
        if self.hot_key_threshold is not None:
            _positive_int("hot_key_threshold", self.hot_key_threshold)
        for name in (
            "write_timeout",
            "load_timeout",
            "retry_base_delay",
            "retry_max_delay",
            "close_timeout",
            "lease_time",
            "lease_wait_timeout",
        ):
            _positive_finite(name, getattr(self, name))
        if self.backpressure_timeout is not None:
            _positive_finite("backpressure_timeout", self.backpressure_timeout)
        if self.retry_max_delay < self.retry_base_delay:
            raise ConfigError("retry_max_delay", "must be at least retry_base_delay")
        if not isinstance(self.key_prefix, str):
            raise ConfigError(
                "key_prefix", f"must be a string, got {type(self.key_prefix).__name__}"
            )
        if "\x00" in self.key_prefix or not _encodable(self.key_prefix):
            raise ConfigError(
                "key_prefix", "must be valid Unicode without NUL (the lease keys' marker)"
            )
        if self.lease_time * 2 > TOMBSTONE_TTL_S:
            raise ConfigError(
                "lease_time",
                f"must be at most {TOMBSTONE_TTL_S // 2} s: a deleted session's tombstone "
                f"({TOMBSTONE_TTL_S} s) must outlive any lease",
            )
        if not isinstance(self.strict_json, bool):
            raise ConfigError("strict_json", f"must be True or False, got {self.strict_json!r}")
        if self.ownership not in get_args(Ownership):
            raise ConfigError(
                "ownership",
                f"must be 'local', 'shared' or 'partitioned', got {self.ownership!r}",
            )

    @property
    def lease_ms(self) -> int:
        """``lease_time`` in whole milliseconds."""
        return max(1, round(self.lease_time * 1000))

    @property
    def ttl_ms(self) -> int | None:
        """``ttl`` in whole milliseconds, as storages apply it."""
        return None if self.ttl is None else max(1, round(self.ttl * 1000))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SessionConfig:
        """Build a config from ``ACTORSESS_<FIELD>`` variables (e.g. ``ACTORSESS_TTL=3600``).

        Only this constructor reads the environment; ``SessionConfig()`` never
        does. Numbers may be written as ``10000``, ``10_000`` or ``1e4``; ``none``
        (any case) sets an optional field to ``None``. An ``ACTORSESS_*`` variable
        that names no setting (a misspelling) raises a ``UserWarning`` naming the
        closest one. Keyword ``overrides`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(_ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _parse_env(field.name, str(field.type), raw)
        known_vars = {_ENV_PREFIX + f.name.upper() for f in dataclasses.fields(cls)}
        for variable in sorted(env):
            if (
                variable.startswith(_ENV_PREFIX)
                and variable not in known_vars
                and variable not in _OTHER_VARIABLES
            ):
                close = difflib.get_close_matches(variable, known_vars, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                warnings.warn(
                    f"{variable} is not a SessionConfig setting and is ignored{hint}",
                    UserWarning,
                    stacklevel=2,
                )
        known = {f.name for f in dataclasses.fields(cls)}
        for name in overrides:
            if name not in known:
                raise ConfigError(name, "is not a SessionConfig field")
        values.update(overrides)
        return cls(**values)


def _parse_env(name: str, type_text: str, raw: str) -> Any:
    variable = _ENV_PREFIX + name.upper()
    text = raw.strip()
    if "None" in type_text and text.lower() in ("none", ""):
        return None
    if type_text == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(name, f"{variable}={raw!r} is not true/false, yes/no, on/off or 1/0")
    if not type_text.startswith(("int", "float")):
        return text
    try:
        number = float(text.replace("_", ""))  # 10000, 10_000, 1e4, 10000.0, 0.5
    except ValueError:
        raise ConfigError(name, f"{variable}={raw!r} is not a number") from None
    if not type_text.startswith("int"):
        return number
    if not number.is_integer():
        raise ConfigError(name, f"{variable}={raw!r} is not a whole number")
    return int(number)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _non_negative_finite(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(name, f"must be a finite number >= 0, got {value!r}")


def _positive_finite(name: str, value: object) -> None:
    _non_negative_finite(name, value)
    if value == 0:
        raise ConfigError(name, "must be greater than 0")


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
