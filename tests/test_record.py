"""The stored record's header, with and without a partitioned mode stamp, read in
Python and fenced in Lua alike."""

from __future__ import annotations

import pytest

from actorsess import CorruptSessionError, RedisStorage
from actorsess._record import (
    decode_record,
    encode_record,
    record_stamp,
    tombstone,
    version_of,
    with_stamp,
)
from actorsess.storage.base import WriteItem


def test_a_stamp_in_the_header_is_skipped_by_every_reader() -> None:
    stamped = with_stamp(encode_record(42, b'{"n":1}'), "1764590000000-3-7")
    assert stamped == b'as1:42/1764590000000-3-7:{"n":1}'
    assert decode_record("k", stamped) == (42, b'{"n":1}')
    assert version_of(stamped) == 42
    assert record_stamp(stamped) == "1764590000000-3-7"
    assert record_stamp(encode_record(42, b"{}")) is None
    dead = tombstone(43, "1764590000000-4-0")
    assert decode_record("k", dead) == (43, b"")  # still a tombstone
    assert record_stamp(dead) == "1764590000000-4-0"


def test_a_header_with_a_bad_version_before_the_stamp_is_corrupt() -> None:
    with pytest.raises(CorruptSessionError, match="version"):
        decode_record("k", b"as1:x/1-2-3:{}")
    assert version_of(b"as1:/1-2-3:{}") == -1


async def test_redis_fences_a_stamped_record_by_its_version(redis_storage: RedisStorage) -> None:
    """Lua reads the version of a stamped record: an older write is refused over it,
    a newer one lands."""
    storage = redis_storage
    await storage.client.set("k", with_stamp(encode_record(5, b"{}"), "1-0-0"))
    [conflict] = await storage.write_many([WriteItem("k", encode_record(4, b"{}"), 4)], None)
    assert conflict.position == 0
    assert await storage.write_many([WriteItem("k", encode_record(6, b"{}"), 6)], None) == []
    assert await storage.client.get("k") == b"as1:6:{}"
