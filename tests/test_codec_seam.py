"""A codec of your own (``SessionManager(..., codec=...)``): values of any class,
stored as the codec's bytes on every storage, with the same guarantees as JSON
sessions: an encode that fails refuses the commit, a decode that fails marks the
record corrupt and leaves it alone."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from actorsess import (
    CorruptSessionError,
    MemoryStorage,
    RedisStorage,
    SessionEncodeError,
    SessionManager,
    SqliteStorage,
    Storage,
)


class Point:
    """A session type JSON codecs refuse (a plain class)."""

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class PointCodec:
    """``x,y`` compressed; its bytes start with zlib's 0x78, or with ``~`` on request."""

    def __init__(self, mark: bytes = b"") -> None:
        self.mark = mark  # a payload that starts like a schema head, to check framing

    def encode(self, value: Point) -> bytes:
        if value.x < 0:
            raise ValueError("x must not be negative")
        return self.mark + zlib.compress(b"%d,%d" % (value.x, value.y))

    def decode(self, payload: bytes) -> Point:
        x, y = zlib.decompress(payload[len(self.mark) :]).split(b",")
        return Point(int(x), int(y))


StorageFactory = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def storages(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_client: Any
) -> Callable[[], Storage]:
    """New storage objects over the same data each call (a restarted process)."""
    memory = MemoryStorage()
    makers: dict[str, Callable[[], Storage]] = {
        "memory": lambda: memory,
        "sqlite": lambda: SqliteStorage(tmp_path / "s.sqlite3"),
        "redis": lambda: RedisStorage.from_url(redis_url),
    }
    return makers[request.param]


@pytest.mark.parametrize("mark", [b"", b"~"])
async def test_values_round_trip_through_storage_as_the_codecs_bytes(
    storages: Callable[[], Storage], mark: bytes
) -> None:
    codec = PointCodec(mark)
    async with SessionManager(storages(), initial=Point, codec=codec) as m:
        async with m.session("p") as point:
            point.x, point.y = 3, 4
        await m.update("q", lambda p: setattr(p, "x", 9))
        async with m.session("q") as point:  # back to initial(): deleted, not stored
            point.x = 0
    async with SessionManager(storages(), initial=Point, codec=codec) as again:
        assert await again.get("p") == Point(3, 4)
        assert await again.get("q") == Point()
        raw = await again.storage.load_many(["actorsess:p", "actorsess:q"])
    assert isinstance(raw[0], bytes)
    head = b"as1:1:~0:" if mark else b"as1:1:"  # a payload starting with '~' gets a head
    assert raw[0] == head + codec.encode(Point(3, 4))
    assert raw[1] == b"as1:2:"  # the tombstone of the delete


async def test_an_encode_that_fails_refuses_the_commit_and_rolls_back() -> None:
    async with SessionManager(MemoryStorage(), initial=Point, codec=PointCodec()) as m:
        await m.update("p", lambda p: setattr(p, "x", 1))
        with pytest.raises(SessionEncodeError, match="x must not be negative"):
            async with m.session("p") as point:
                point.x = -1
        assert await m.get("p") == Point(1, 0)


async def test_an_encode_that_returns_no_bytes_is_refused() -> None:
    class TextCodec(PointCodec):
        def encode(self, value: Point) -> bytes:
            return f"{value.x},{value.y}"  # type: ignore[return-value]

    async with SessionManager(MemoryStorage(), initial=Point, codec=TextCodec()) as m:
        with pytest.raises(SessionEncodeError, match="codec.encode must return bytes, got str"):
            await m.update("p", lambda p: setattr(p, "x", 1))
        assert m.stats().dirty == 0


async def test_a_decode_that_fails_marks_the_record_corrupt_and_leaves_it() -> None:
    storage = MemoryStorage()
    storage.put_raw("actorsess:p", b"as1:1:not zlib")
    async with SessionManager(storage, initial=Point, codec=PointCodec()) as m:
        with pytest.raises(CorruptSessionError, match="'p'"):
            await m.get("p")
    assert storage.raw("actorsess:p") == b"as1:1:not zlib"


def test_a_codec_without_both_methods_is_refused_at_construction() -> None:
    class EncodeOnly:
        def encode(self, value: Point) -> bytes:
            return b""

    with pytest.raises(TypeError, match="EncodeOnly has no decode"):
        SessionManager(MemoryStorage(), initial=Point, codec=EncodeOnly())  # type: ignore[arg-type]
