"""The stored record: a small header carrying the format and the session version.

Layout: ``as1:<version>:<payload>``, e.g. ``as1:42:{"apple":3}``. The version
travels with the data so that every write can be fenced by compare-and-set
(a Lua script can read it with one ``string.match``), and a replayed write is
recognisable as already applied.

A *tombstone* is a record with an empty payload, ``as1:<version>:``: what a
delete (or an expiry a storage can still see) leaves behind for a while. It
loads as "no session" while carrying the version, so the key's next write
gets a higher one and a late write from before the delete is refused: a
version never repeats for a key (design rule 11). Tombstones live for
``TOMBSTONE_TTL_S``, far longer than any write stays in flight or any lease.

In partitioned mode (``actorsess._partitioned``) the header also carries the
stamp of the last forwarded update whose change the record holds:
``as1:<version>/<stamp>:<payload>``, e.g. ``as1:42/1764590000000-0-3:{"apple":3}``
(a tombstone too: ``as1:43/1764590000000-1-0:``). It travels with the data, so
it is written and read in the same command as the record. Every reader takes
the version and skips the stamp; a header without ``/`` has none.

A manager that declares migrations writes its schema version at the head of
the payload: ``as1:42:~3:{"apple":3}`` is schema 3 (no head: schema 0). JSON
never starts with ``~``, and the version fence (here and in Lua) reads only
the header, so records with and without a schema head live side by side; an
actorsess that knows nothing of schemas refuses such a record as corrupt
rather than misreading it. A payload of a codec of your own may start with ``~``
or be empty: such a payload always gets a head (``~0:`` at schema 0), so that it
is read neither as a schema mark nor as a tombstone.
"""

from __future__ import annotations

from actorsess.exceptions import CorruptSessionError

FORMAT_TAG = b"as1"
_HEADER_PREFIX = FORMAT_TAG + b":"
_MAX_VERSION_DIGITS = 20
# Where a header's closing ':' may be at the latest: ``as1:`` + version + "/" + stamp.
_MAX_HEADER = len(_HEADER_PREFIX) + _MAX_VERSION_DIGITS + 1 + 64
_STAMP_MARK = b"/"
#: How long storages keep a tombstone (seconds).
TOMBSTONE_TTL_S = 600
TOMBSTONE_TTL_MS = TOMBSTONE_TTL_S * 1000
_SCHEMA_MARK = ord("~")


def encode_record(version: int, payload: bytes, schema: int = 0) -> bytes:
    if schema or not payload or payload[0] == _SCHEMA_MARK:
        return b"%b%d:~%d:%b" % (_HEADER_PREFIX, version, schema, payload)
    return b"%b%d:%b" % (_HEADER_PREFIX, version, payload)


def split_schema(key: str, payload: bytes) -> tuple[int, bytes]:
    """``(schema, body)`` of a record's payload (schema 0 when it has no head)."""
    if not payload.startswith(b"~"):
        return 0, payload
    end = payload.find(b":", 1, _MAX_VERSION_DIGITS + 2)
    digits = payload[1:end] if end > 0 else b""
    if not digits.isdigit():
        raise CorruptSessionError(key, "record has a schema mark ('~') but no schema number")
    return int(digits), payload[end + 1 :]


def tombstone(version: int, stamp: str = "") -> bytes:
    """The record a delete leaves: no session, at ``version`` (with ``stamp``, if any)."""
    if stamp:
        return b"%b%d/%s:" % (_HEADER_PREFIX, version, stamp.encode())
    return b"%b%d:" % (_HEADER_PREFIX, version)


def with_stamp(blob: bytes, stamp: str) -> bytes:
    """``blob`` (a record without a stamp) with ``stamp`` in its header."""
    end = blob.index(b":", len(_HEADER_PREFIX))
    return b"%b/%s%b" % (blob[:end], stamp.encode(), blob[end:])


def record_stamp(blob: bytes) -> str | None:
    """The stamp in a record's header, or None when it has none (or is no record)."""
    header = _header(blob)
    if header is None:
        return None
    _, mark, stamp = header.partition(_STAMP_MARK)
    return stamp.decode() if mark and stamp else None


def _header(blob: bytes) -> bytes | None:
    """What is between ``as1:`` and the header's closing ``:``; None if no header."""
    if not blob.startswith(_HEADER_PREFIX):
        return None
    end = blob.find(b":", len(_HEADER_PREFIX), _MAX_HEADER)
    return blob[len(_HEADER_PREFIX) : end] if end > 0 else None


def _split_header(blob: bytes) -> tuple[int, bytes] | None:
    """``(version, payload)`` of a record, or None when ``blob`` has no valid header."""
    if not blob.startswith(_HEADER_PREFIX):
        return None
    end = blob.find(b":", len(_HEADER_PREFIX), _MAX_HEADER)
    digits = blob[len(_HEADER_PREFIX) : end] if end > 0 else b""
    if not digits.isdigit():  # a stamp after the version, or no valid header
        digits = digits.partition(_STAMP_MARK)[0]
        if not digits.isdigit():
            return None
    if len(digits) > _MAX_VERSION_DIGITS:
        return None
    return int(digits), blob[end + 1 :]


def decode_record(key: str, blob: bytes) -> tuple[int, bytes]:
    """Split a stored record into ``(version, payload)`` or raise CorruptSessionError."""
    split = _split_header(blob)
    if split is not None:
        return split
    if not blob.startswith(_HEADER_PREFIX):
        tag = blob.split(b":", 1)[0][:16] if b":" in blob[:17] else b""
        if tag[:2] == b"as" and tag[2:].isdigit():
            raise CorruptSessionError(
                key, f"record format {tag.decode()!r} is newer than this actorsess understands"
            )
        raise CorruptSessionError(key, "not an actorsess record (missing 'as1:' header)")
    raise CorruptSessionError(key, "record header has no valid version number")


def version_of(blob: bytes) -> int:
    """The version in ``blob``'s header, or -1 when it is not a record (older than any)."""
    split = _split_header(blob)
    return -1 if split is None else split[0]
