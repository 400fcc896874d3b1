"""From a stored record to a session value: header, size limit, schema, migrations, codec.

The one reading of records, shared by loads (``_loader``) and walks over the
key space (``_keyspace``), so both see exactly the same sessions.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

from actorsess._codec import Codec
from actorsess._migrations import Migrations
from actorsess._record import decode_record, split_schema
from actorsess.exceptions import CorruptSessionError, SessionEncodeError
from actorsess.storage.base import BadValue, LoadResult

T = TypeVar("T")


class Stored(NamedTuple, Generic[T]):
    """What a record holds, read at the manager's current schema."""

    #: The record's version (a tombstone's too; 0 when absent).
    version: int
    #: The session (a fresh ``initial()`` when none is stored) and its encoding.
    value: T
    blob: bytes
    #: A session is stored: not absent, not a tombstone.
    present: bool
    #: The schema the record was upgraded from by migrations, or None if it was current.
    upgraded_from: int | None


def read_stored(
    key: str, raw: LoadResult, codec: Codec[T], migrations: Migrations, max_bytes: int
) -> Stored[T]:
    """Read ``raw`` (what storage returned for ``key``); raises CorruptSessionError
    naming the key and what was wrong."""
    if isinstance(raw, BadValue):
        raise CorruptSessionError(key, raw.reason)
    # Absent is version 0; a tombstone is "absent" at the deleted one's version, so
    # that the versions of this key go on above it.
    version, payload = (0, b"") if raw is None else decode_record(key, raw)
    if len(payload) > max_bytes:
        raise CorruptSessionError(
            key, f"stored session is {len(payload)} bytes, over max_session_bytes={max_bytes}"
        )
    if not payload:
        try:
            value, blob = codec.fresh()
        except Exception as exc:
            raise SessionEncodeError(
                key, f"initial() gives a value that cannot be stored: {type(exc).__name__}: {exc}"
            ) from exc
        return Stored(version, value, blob, False, None)
    schema, payload = split_schema(key, payload)
    upgraded_from = None
    if migrations.needed(key, schema):
        payload = migrations.upgrade(key, schema, payload)
        upgraded_from = schema
    try:
        value = codec.decode(payload)
        # An upgraded session is kept as the codec writes it (the next commit compares
        # its bytes with these).
        blob = payload if upgraded_from is None else codec.encode(value)
    except Exception as exc:  # DecodeFailure, or what a codec of your own raised
        after = "" if upgraded_from is None else f" (after migrating it from schema {schema})"
        raise CorruptSessionError(key, f"{exc}{after}") from exc
    return Stored(version, value, blob, True, upgraded_from)
