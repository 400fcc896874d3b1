"""SessionManager: serialization, rollback, lifecycle, copies, keys, typed values."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import enum
import random
import uuid
from typing import Any

import pydantic
import pytest
from typing_extensions import TypedDict

from actorsess import (
    ActorSessError,
    BackpressureTimeoutError,
    InvalidKeyError,
    ManagerClosedError,
    MemoryStorage,
    SessionConfig,
    SessionEncodeError,
    SessionManager,
    SessionTooLargeError,
)

from .conftest import Events
from .helpers import RecordingStorage, counter, racy_increment


async def test_no_lost_updates_with_awaits_between_read_and_write(storage_factory: Any) -> None:
    """Hundreds of concurrent blocks per key, each awaiting mid-update, lose nothing."""
    config = SessionConfig(flush_interval=0.01, max_batch=64)
    keys = [f"chat:{i}" for i in range(20)]
    per_key = 200

    async with SessionManager(storage_factory(), initial=counter, config=config) as m:
        jobs = [racy_increment(m, k) for k in keys for _ in range(per_key)]
        random.Random(7).shuffle(jobs)
        await asyncio.gather(*jobs)
    async with SessionManager(storage_factory(), initial=counter, config=config) as again:
        for key in keys:
            assert await again.get(key) == {"n": per_key}


async def test_blocks_on_one_key_run_in_arrival_order() -> None:
    """Waiters for one key get their turn in the order they asked for it."""
    order: list[int] = []
    async with SessionManager(MemoryStorage(), initial=counter) as m:

        async def visit(i: int) -> None:
            async with m.session("k") as s:
                await asyncio.sleep(0)
                order.append(i)
                s["n"] += 1

        tasks = []
        for i in range(100):
            tasks.append(asyncio.create_task(visit(i)))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    assert order == list(range(100))


async def test_different_keys_run_concurrently() -> None:
    """A block holding one key does not delay a block on another key."""
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        release = asyncio.Event()

        async def hold_a() -> None:
            async with m.session("a"):
                await release.wait()

        holder = asyncio.create_task(hold_a())
        await asyncio.sleep(0.01)
        async with asyncio.timeout(1):
            async with m.session("b") as s:
                s["n"] = 1
        release.set()
        await holder


async def test_raising_block_rolls_back_and_is_not_dirty() -> None:
    """An exception inside the block restores the entry value; nothing is marked dirty."""
    storage = RecordingStorage()
    async with SessionManager(storage, initial=lambda: {"items": [1]}) as m:
        async with m.session("k") as s:
            s["items"].append(2)
        await m.flush()
        writes = len(storage.batches)
        with pytest.raises(ZeroDivisionError):
            async with m.session("k") as s:
                s["items"].append(3)
                s["new"] = [0]
                _ = 1 / 0
        assert m.stats().dirty == 0
        assert await m.get("k") == {"items": [1, 2]}
        async with m.session("k") as s:
            assert s == {"items": [1, 2]}
        await m.flush()
        assert len(storage.batches) == writes


async def test_unchanged_block_is_not_written() -> None:
    """Reading a session without changing it costs no write (change tracking)."""
    storage = RecordingStorage()
    async with SessionManager(storage, initial=counter) as m:
        for _ in range(10):
            async with m.session("k") as s:
                assert s["n"] == 0
        await m.flush()
    assert storage.batches == []


async def test_get_returns_a_copy() -> None:
    """Mutating what get() returned does not change the session."""
    async with SessionManager(MemoryStorage(), initial=lambda: {"tags": ["a"]}) as m:
        copy = await m.get("k")
        copy["tags"].append("b")
        assert await m.get("k") == {"tags": ["a"]}


async def test_update_returns_fn_result_and_accepts_coroutines() -> None:
    """update() runs fn serialized, returns its result, and awaits async fns."""
    async with SessionManager(MemoryStorage(), initial=counter) as m:

        def bump(s: dict[str, int]) -> int:
            s["n"] += 1
            return s["n"]

        async def bump_async(s: dict[str, int]) -> int:
            await asyncio.sleep(0)
            s["n"] += 10
            return s["n"]

        assert await m.update("k", bump) == 1
        assert await m.update("k", bump_async) == 11


async def test_turn_value_replaces_the_whole_session() -> None:
    """Assigning turn.value commits a new object; a wrong type is refused."""
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        turn = m.session("k")
        async with turn:
            turn.value = {"n": 5}
        assert await m.get("k") == {"n": 5}
        turn = m.session("k")
        async with turn:
            with pytest.raises(TypeError, match="must be a dict"):
                turn.value = [1, 2]  # type: ignore[assignment]
        with pytest.raises(RuntimeError, match="inside its 'async with' block"):
            _ = turn.value


async def test_close_flushes_and_is_safe_twice() -> None:
    """close() writes everything dirty; a second close() is harmless."""
    storage = MemoryStorage()
    m = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    await m.update("k", lambda s: s.update(n=7))
    assert storage.raw("actorsess:k") is None
    await m.close()
    await m.close()
    assert storage.raw("actorsess:k") == b'as1:1:{"n":7}'


async def test_a_closing_manager_refuses_work_and_a_closed_one_starts_again() -> None:
    """While close() runs, new work raises ManagerClosedError; once closed, the manager
    starts again on use or start() (a dispatcher started a second time), and close()
    writes again."""
    storage = MemoryStorage()
    m = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    entered, finish = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with m.session("k") as s:
            entered.set()
            await finish.wait()
            s["n"] = 1

    task = asyncio.create_task(holder())
    await entered.wait()
    closing = asyncio.create_task(m.close())
    await asyncio.sleep(0.01)
    with pytest.raises(ManagerClosedError, match="closing"):
        async with m.session("other"):
            pass
    with pytest.raises(ManagerClosedError):
        await m.get("other")
    finish.set()
    await task
    await closing
    assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'
    await m.update("k", lambda s: s.update(n=s["n"] + 1))  # starts it again, reloads k
    assert m.stats().loads == 2
    await m.close()
    assert storage.raw("actorsess:k") == b'as1:2:{"n":2}'
    await m.start()
    assert await m.get_many(["k"]) == {"k": {"n": 2}}
    await m.close()


async def test_close_waits_for_current_holders() -> None:
    """close() lets a block that is running finish and writes its change."""
    storage = MemoryStorage()
    m = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    entered = asyncio.Event()

    async def slow() -> None:
        async with m.session("k") as s:
            entered.set()
            await asyncio.sleep(0.05)
            s["n"] = 99

    task = asyncio.create_task(slow())
    await entered.wait()
    await m.close()
    await task
    assert storage.raw("actorsess:k") == b'as1:1:{"n":99}'


async def test_close_waits_for_queued_turns_and_counts_them_active() -> None:
    """Blocks queued behind a holder when close() begins all run and are written."""
    storage = MemoryStorage()
    m = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    entered = asyncio.Event()
    go = asyncio.Event()

    async def first() -> None:
        async with m.session("k") as s:
            entered.set()
            await go.wait()
            s["n"] += 1

    async def queued() -> None:
        async with m.session("k") as s:
            await asyncio.sleep(0)
            s["n"] += 1

    tasks = [asyncio.create_task(first())]
    await entered.wait()
    tasks += [asyncio.create_task(queued()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert m.stats().active == 4
    closing = asyncio.create_task(m.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    go.set()
    await closing
    await asyncio.gather(*tasks)
    assert storage.raw("actorsess:k") == b'as1:4:{"n":4}'
    assert m.stats().active == 0


async def test_persist_is_visible_to_a_second_client(redis_storage: Any, redis_url: str) -> None:
    """After persist(key) returns, another connection reads the new value."""
    import redis.asyncio as redis_asyncio

    config = SessionConfig(flush_interval=3600)
    async with SessionManager(redis_storage, initial=counter, config=config) as m:
        await m.update("p", lambda s: s.update(n=3))
        other = redis_asyncio.Redis.from_url(redis_url)
        assert await other.get("actorsess:p") is None
        await m.persist("p")
        assert await other.get("actorsess:p") == b'as1:1:{"n":3}'
        await other.aclose()


async def test_write_through_returns_after_the_write() -> None:
    """flush_interval=0: the block returns only once its change is stored."""
    storage = MemoryStorage()
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(flush_interval=0)
    ) as m:
        for i in range(1, 4):
            await m.update("k", lambda s: s.update(n=s["n"] + 1))
            assert storage.raw("actorsess:k") == b'as1:%d:{"n":%d}' % (i, i)


async def test_stats_and_repr() -> None:
    """stats() counts cached/dirty/written; repr shows the state at a glance."""
    storage = MemoryStorage()
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(flush_interval=3600)
    ) as m:
        for i in range(3):
            await m.update(f"k{i}", lambda s: s.update(n=1))
        stats = m.stats()
        assert (stats.cached, stats.dirty, stats.written) == (3, 3, 0)
        assert repr(m).startswith("<SessionManager [running | cached: 3 | dirty: 3]")
        await m.flush()
        stats = m.stats()
        assert (stats.dirty, stats.written, stats.flushes, stats.loads) == (0, 3, 1, 3)


async def test_invalid_keys_are_refused_with_a_clear_error() -> None:
    """Empty, non-string and overlong keys raise InvalidKeyError."""
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        for bad in ["", 42, "x" * 2000, None, ["unhashable"]]:
            with pytest.raises(InvalidKeyError, match="session key must be"):
                async with m.session(bad):  # type: ignore[arg-type]
                    pass
            with pytest.raises(InvalidKeyError, match="session key must be"):
                await m.get(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidKeyError, match="session key must be"):
                await m.update(bad, lambda s: None)  # type: ignore[call-overload]
        assert m.stats().active == 0


async def test_oversized_session_is_refused_and_old_value_kept() -> None:
    """A commit over max_session_bytes raises, rolls back, and writes nothing."""
    storage = RecordingStorage()
    config = SessionConfig(max_session_bytes=100, flush_interval=3600)
    async with SessionManager(storage, initial=lambda: {"text": ""}, config=config) as m:
        await m.update("k", lambda s: s.update(text="short"))
        with pytest.raises(SessionTooLargeError, match="over max_session_bytes=100") as info:
            async with m.session("k") as s:
                s["text"] = "x" * 500
        assert info.value.key == "k"
        assert isinstance(info.value, ActorSessError)
        assert await m.get("k") == {"text": "short"}


async def test_unencodable_value_is_refused_and_rolled_back() -> None:
    """A value JSON cannot hold raises SessionEncodeError naming the key; old value kept."""
    async with SessionManager(MemoryStorage(), initial=lambda: {"a": 1}) as m:
        m_any: Any = m
        with pytest.raises(SessionEncodeError, match="'k'"):
            async with m_any.session("k") as s:
                s["obj"] = object()
        assert await m.get("k") == {"a": 1}


async def test_dict_sessions_keep_what_json_can_hold_exactly(storage_factory: Any) -> None:
    """A dict session holds what JSON holds: integers beyond 64 bits stay exact, and
    what a block committed is what it reads back after a reload."""
    big = 2**70 + 1
    config = SessionConfig(flush_interval=3600)
    expected = {"big": big, "pair": [1, 2], "keys": {"1": "one"}, "x": -0.0, "text": "é\u2028"}
    async with SessionManager[dict[str, Any]](storage_factory(), initial=dict, config=config) as m:
        async with m.session("k") as s:
            s.update(expected, none=None, flag=True, ratio=0.1)
        assert await m.get("k") == {**expected, "none": None, "flag": True, "ratio": 0.1}
    async with SessionManager[dict[str, Any]](
        storage_factory(), initial=dict, config=config
    ) as again:
        assert await again.get("k") == {**expected, "none": None, "flag": True, "ratio": 0.1}
        async with again.session("k") as s:
            s["big"] += 1
        assert (await again.get("k"))["big"] == big + 1


async def test_without_strict_json_what_json_changes_comes_back_changed(
    storage_factory: Any,
) -> None:
    """strict_json=False skips the per-commit check: tuples come back as lists, NaN
    and infinities as null, enum members as their values, UUIDs as strings (what
    orjson refuses or passes through, such as int keys, is still refused)."""
    config = SessionConfig(flush_interval=3600, strict_json=False)
    uid = uuid.UUID(int=7)
    async with SessionManager[dict[str, Any]](storage_factory(), initial=dict, config=config) as m:
        async with m.session("k") as s:
            s.update(pair=(1, 2), nan=float("nan"), inf=float("-inf"), color=Color.RED, id=uid)
        with pytest.raises(SessionEncodeError, match="dict keys must be str"):
            async with m.session("k") as s:
                s["by_user"] = {5000: 1}
    async with SessionManager[dict[str, Any]](
        storage_factory(), initial=dict, config=config
    ) as again:
        assert await again.get("k") == {
            "pair": [1, 2],
            "nan": None,
            "inf": None,
            "color": "red",
            "id": str(uid),
        }


class Color(enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"by_user": {5000: 1}}, r"by_user\.<int 5000>: dict keys must be str"),
        ({"tags": {"a"}}, "tags: a set"),
        ({"when": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)}, "when: a datetime"),
        ({"log": [{"at": datetime.date(2026, 1, 2)}]}, r"log\[0\]\.at: a date"),
        ({"counts": collections.defaultdict(int)}, "counts: a defaultdict"),
        ({"big": 2**70, "blob": b"x"}, "blob: a bytes is not JSON"),
        ({"pos": (1, 2)}, "pos: a tuple; JSON would store a list"),
        ({"log": [{"pos": (1,)}]}, r"log\[0\]\.pos: a tuple"),
        ({"score": float("nan")}, "score: NaN; JSON would store null"),
        ({"big": 2**70, "limit": float("inf")}, "limit: inf; JSON would store null"),
        ({"color": Color.RED}, "color: a Color is not JSON"),
        ({"id": uuid.UUID(int=7)}, "id: a UUID is not JSON"),
    ],
)
async def test_what_a_reload_would_change_is_refused_at_commit(
    value: dict[str, Any], where: str
) -> None:
    """Int keys (a reload turns 5000 into "5000", and the next commit adds a second key),
    sets, datetimes, dict subclasses and other objects are refused at commit with
    SessionEncodeError naming the path; the session keeps its committed value."""
    async with SessionManager[dict[str, Any]](MemoryStorage(), initial=dict) as m:
        await m.update("k", lambda s: s.update(n=1))
        with pytest.raises(SessionEncodeError, match=where):
            async with m.session("k") as s:
                s.update(value)
        assert await m.get("k") == {"n": 1}


def annotated_session() -> dict[str, Any]:
    return {"n": 0}


async def test_an_annotated_dict_session_keeps_the_json_rules(storage_factory: Any) -> None:
    """``initial`` annotated as returning ``dict[str, Any]`` (as mypy users write it) is
    a dict session like ``initial=dict``: a datetime is refused at commit, where it
    used to be written as a string and come back as one after a reload."""
    config = SessionConfig(flush_interval=3600)
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    async with SessionManager(storage_factory(), initial=annotated_session, config=config) as m:
        with pytest.raises(SessionEncodeError, match="when: a datetime"):
            async with m.session("k") as s:
                s["when"] = when
        async with m.session("k") as s:
            s["when"] = when.isoformat()
    async with SessionManager(storage_factory(), initial=annotated_session, config=config) as m:
        assert await m.get("k") == {"n": 0, "when": when.isoformat()}


async def test_a_change_json_cannot_see_is_refused_too() -> None:
    """A list replaced by an equal tuple, or a string by an enum member of that value,
    encodes to the same bytes as before; it is still refused, since a reload would give
    back the list or the string."""
    async with SessionManager[dict[str, Any]](MemoryStorage(), initial=dict) as m:
        await m.update("k", lambda s: s.update(pos=[1, 2], color="red"))
        with pytest.raises(SessionEncodeError, match="pos: a tuple"):
            async with m.session("k") as s:
                s["pos"] = (1, 2)
        with pytest.raises(SessionEncodeError, match="color: a Color"):
            async with m.session("k") as s:
                s["color"] = Color.RED
        assert await m.get("k") == {"pos": [1, 2], "color": "red"}
        assert type((await m.get("k"))["pos"]) is list


async def test_a_per_user_counter_survives_restarts(storage_factory: Any) -> None:
    """The reported loss: counting per user under int keys across restarts stored a
    record with a duplicate key and never passed 3. Int keys are refused at once;
    str keys count across every restart."""
    config = SessionConfig(flush_interval=3600)
    for _ in range(3):
        async with SessionManager[dict[str, Any]](
            storage_factory(), initial=dict, config=config
        ) as m:
            with pytest.raises(SessionEncodeError, match="dict keys must be str"):
                async with m.session("chat") as s:
                    s.setdefault("by_user", {})[5000] = 1
            for _ in range(2):
                async with m.session("chat") as s:
                    by_user = s.setdefault("by_user", {})
                    by_user["5000"] = by_user.get("5000", 0) + 1
    async with SessionManager[dict[str, Any]](storage_factory(), initial=dict) as m:
        assert await m.get("chat") == {"by_user": {"5000": 6}}


async def test_delete_passes_the_version_fence(storage_factory: Any) -> None:
    """delete() removes a record written at a high version by an earlier process."""
    config = SessionConfig(flush_interval=3600)
    async with SessionManager(storage_factory(), initial=counter, config=config) as first:
        for _ in range(7):
            await first.update("k", lambda s: s.update(n=s["n"] + 1))
    async with SessionManager(storage_factory(), initial=counter, config=config) as second:
        await second.delete("k")
    async with SessionManager(storage_factory(), initial=counter, config=config) as third:
        assert await third.get("k") == {"n": 0}
        assert await third.storage.load_many(["actorsess:k"]) == [b"as1:8:"]  # a tombstone


async def test_delete_resets_to_initial_and_removes_the_record() -> None:
    """delete() replaces the stored record with a tombstone and the next access sees
    initial()."""
    storage = MemoryStorage()
    async with SessionManager(storage, initial=counter) as m:
        await m.update("k", lambda s: s.update(n=5))
        await m.persist("k")
        assert storage.raw("actorsess:k") is not None
        await m.delete("k")
        assert storage.raw("actorsess:k") == b"as1:2:"
        assert await m.get("k") == {"n": 0}


@dataclasses.dataclass
class Profile:
    name: str = ""
    visits: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)


class Cart(pydantic.BaseModel):
    items: list[str] = []
    total: float = 0.0


class Prefs(TypedDict):
    lang: str
    volume: int


def new_prefs() -> Prefs:
    return {"lang": "en", "volume": 5}


async def test_typed_sessions_round_trip(storage_factory: Any) -> None:
    """Dataclass, pydantic and TypedDict sessions survive a restart with their types."""
    config = SessionConfig(flush_interval=3600)

    async def write_then_read(initial: Any, mutate: Any) -> Any:
        key = initial.__name__
        writer = SessionManager(storage_factory(), initial=initial, config=config)
        async with writer, writer.session(key) as s:
            mutate(s)
        async with SessionManager(storage_factory(), initial=initial, config=config) as m2:
            return await m2.get(key)

    def visit(profile: Profile) -> None:
        profile.visits = 3
        profile.tags.append("x")

    profile = await write_then_read(Profile, visit)
    assert profile == Profile(visits=3, tags=["x"])
    cart = await write_then_read(Cart, lambda c: c.items.append("apple"))
    assert isinstance(cart, Cart) and cart.items == ["apple"]
    prefs = await write_then_read(new_prefs, lambda p: p.update(volume=9))
    assert prefs == {"lang": "en", "volume": 9}


async def test_a_model_field_holding_the_wrong_type_is_refused_and_rolled_back() -> None:
    """pydantic does not validate assignment by default: the commit's serializer is
    the check, and the session keeps its last committed value."""
    async with SessionManager(MemoryStorage(), initial=Cart) as m:
        async with m.session("k") as cart:
            cart.items.append("apple")
        with pytest.raises(SessionEncodeError, match="'k'"):
            async with m.session("k") as cart:
                cart.items = 5  # type: ignore[assignment]
        assert (await m.get("k")).items == ["apple"]


async def test_a_storage_shared_by_managers_is_closed_by_the_last(redis_storage: Any) -> None:
    """Two namespaces on one RedisStorage: closing one leaves the other working."""
    closes = []
    close = redis_storage.close

    async def counted_close() -> None:
        closes.append(1)
        await close()

    redis_storage.close = counted_close
    sessions = SessionManager(redis_storage, initial=counter, config=SessionConfig(key_prefix="s:"))
    profiles = SessionManager(redis_storage, initial=counter, config=SessionConfig(key_prefix="p:"))
    await sessions.update("k", lambda s: s.update(n=1))
    await sessions.close()
    assert closes == []
    await profiles.update("k", lambda s: s.update(n=2))
    await profiles.persist("k")
    assert await redis_storage.load_many(["s:k", "p:k"]) == [b'as1:1:{"n":1}', b'as1:1:{"n":2}']
    await profiles.close()
    assert closes == [1]


async def test_stdlib_typeddict_sessions_work_as_json_objects() -> None:
    """A typing.TypedDict (which pydantic cannot validate before 3.12) is kept as a dict."""
    import typing

    class Plain(typing.TypedDict):
        count: int

    def new_plain() -> Plain:
        return {"count": 0}

    storage = MemoryStorage()
    async with SessionManager(storage, initial=new_plain) as m, m.session("k") as s:
        s["count"] += 1
    async with SessionManager(storage, initial=new_plain) as m2:
        assert await m2.get("k") == {"count": 1}


@pytest.mark.parametrize("flush_interval", [60.0, 0.0])
async def test_a_block_that_outlives_close_is_refused_and_logged(
    flush_interval: float, events: Events
) -> None:
    """A block still running when close() gave up (close_timeout) cannot be saved: its
    exit raises ManagerClosedError, the change is rolled back and logged, never lost
    silently."""
    storage = MemoryStorage()
    config = SessionConfig(flush_interval=flush_interval, close_timeout=0.1)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    await m.update("k", lambda s: s.update(n=1))
    entered, finish = asyncio.Event(), asyncio.Event()

    async def slow_handler() -> None:
        async with m.session("k") as s:
            entered.set()
            await finish.wait()
            s["n"] = 2

    task = asyncio.create_task(slow_handler())
    await entered.wait()
    await m.close()
    finish.set()
    with pytest.raises(ManagerClosedError, match="'k'.*closed before this block ended"):
        await task
    [refused] = events.named("session.commit_refused")
    assert refused["key"] == "k"
    assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'


async def test_delete_waits_for_room_under_backpressure() -> None:
    """delete() makes a session dirty like any commit, so with storage down it waits for
    room (and times out) instead of pushing dirty sessions past max_dirty."""
    storage = RecordingStorage()
    storage.fail_writes = 10**9
    config = SessionConfig(
        flush_interval=0.01, max_dirty=10, backpressure_timeout=0.2, retry_max_delay=0.05
    )
    m = SessionManager(storage, initial=counter, config=config)
    async with m:
        for i in range(10):
            await m.update(f"k{i}", lambda s: s.update(n=1))
        assert m.stats().dirty == 10
        results = await asyncio.gather(
            *(m.delete(f"other{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, BackpressureTimeoutError) for r in results)
        assert m.stats().dirty == 10
        storage.fail_writes = 0
        await m.delete("other0")
        assert await m.get("other0") == {"n": 0}


async def test_a_session_committed_back_to_its_initial_value_is_deleted() -> None:
    """No record is kept for a session equal to a fresh initial(): it is deleted (a
    tombstone), and reads back as the same value."""
    storage = MemoryStorage()
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(flush_interval=60)
    ) as m:
        await m.update("k", lambda s: s.update(n=3))
        await m.flush()
        assert storage.raw("actorsess:k") == b'as1:1:{"n":3}'
        await m.update("k", lambda s: s.update(n=0))
        await m.flush()
        assert storage.raw("actorsess:k") == b"as1:2:"
    async with SessionManager(storage, initial=counter) as again:
        assert await again.get("k") == {"n": 0}
        await again.update("k", lambda s: s.update(n=1))
        await again.flush()
        assert storage.raw("actorsess:k") == b'as1:3:{"n":1}'


async def test_a_block_can_delete_its_own_session(storage_factory: Any) -> None:
    """turn.delete() inside the block (every /reset): the block sees a fresh initial()
    from then on, through the reference it already holds too; the record becomes a
    tombstone at the next flush, and a later process reads initial()."""
    config = SessionConfig(flush_interval=3600)
    async with SessionManager(storage_factory(), initial=counter, config=config) as m:
        await m.update("k", lambda s: s.update(n=5, extra=1))
        await m.persist("k")
        turn = m.session("k")
        async with turn as session:
            assert session == {"n": 5, "extra": 1}
            fresh = turn.delete()
            assert fresh is session and session == {"n": 0}
            session["n"] += 0  # still usable after the delete
        assert await m.get("k") == {"n": 0}
        await m.flush()
        assert await m.storage.load_many(["actorsess:k"]) == [b"as1:2:"]
    async with SessionManager(storage_factory(), initial=counter, config=config) as again:
        assert await again.get("k") == {"n": 0}


async def test_a_delete_in_a_block_that_raises_is_rolled_back(storage_factory: Any) -> None:
    """A later exception in the block undoes the delete with everything else."""
    config = SessionConfig(flush_interval=3600)
    async with SessionManager(storage_factory(), initial=counter, config=config) as m:
        await m.update("k", lambda s: s.update(n=5))
        await m.persist("k")
        turn = m.session("k")
        with pytest.raises(LookupError):
            async with turn:
                turn.delete()
                raise LookupError
        assert await m.get("k") == {"n": 5}
        await m.flush()
        assert await m.storage.load_many(["actorsess:k"]) == [b'as1:1:{"n":5}']


async def test_changes_after_a_delete_in_the_same_block_are_kept() -> None:
    """delete() then new values: the block commits the new values, as a fresh session;
    a typed session gets its fresh value from delete()'s return."""
    async with SessionManager(MemoryStorage(), initial=Profile) as m:
        await m.update("k", lambda p: setattr(p, "visits", 3))
        turn = m.session("k")
        async with turn as profile:
            fresh = turn.delete()
            assert fresh is not profile and fresh == Profile()
            fresh.name = "new"
        assert await m.get("k") == Profile(name="new")
    with pytest.raises(RuntimeError, match="only available inside its 'async with' block"):
        turn.delete()
