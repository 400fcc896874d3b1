"""The stored record: a small header carrying the format and the session version.

Layout: ``as1:<version>:<payload>``, e.g. ``as1:42:{"apple":3}``. The version
travels with the data so that writers can later be fenced by compare-and-set
(a Lua script can read it with one ``string.match``), and a replayed write is
recognisable as already applied.
"""

from __future__ import annotations

from actorsess.exceptions import CorruptSessionError

FORMAT_TAG = b"as1"
_HEADER_PREFIX = FORMAT_TAG + b":"
_MAX_VERSION_DIGITS = 20


def encode_record(version: int, payload: bytes) -> bytes:
    return b"%b%d:%b" % (_HEADER_PREFIX, version, payload)


def decode_record(key: str, blob: bytes) -> tuple[int, bytes]:
    """Split a stored record into ``(version, payload)`` or raise CorruptSessionError."""
    if not blob.startswith(_HEADER_PREFIX):
        tag = blob.split(b":", 1)[0][:16] if b":" in blob[:17] else b""
        if tag[:2] == b"as" and tag[2:].isdigit():
            raise CorruptSessionError(
                key, f"record format {tag.decode()!r} is newer than this actorsess understands"
            )
        raise CorruptSessionError(key, "not an actorsess record (missing 'as1:' header)")
    end = blob.find(b":", len(_HEADER_PREFIX), len(_HEADER_PREFIX) + _MAX_VERSION_DIGITS + 1)
    digits = blob[len(_HEADER_PREFIX) : end] if end > 0 else b""
    if not digits.isdigit():
        raise CorruptSessionError(key, "record header has no valid version number")
    return int(digits), blob[end + 1 :]
