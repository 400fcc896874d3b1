"""ActorFSMStorage behaves like aiogram's own storages, and serves real FSM flows."""

from __future__ import annotations

import asyncio
import datetime
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot, Dispatcher, F
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage as AiogramMemoryStorage
from aiogram.fsm.storage.redis import RedisStorage as AiogramRedisStorage
from aiogram.types import Message
from hypothesis import example, given
from hypothesis import strategies as st

from actorsess import RedisStorage, SessionConfig, SessionDeadlockError
from actorsess.aiogram import ActorFSMStorage

from .aiogram_helpers import message_update

KEY = StorageKey(bot_id=42, chat_id=-5, user_id=7)
OTHER = StorageKey(bot_id=42, chat_id=-5, user_id=8)


class Form(StatesGroup):
    name = State()
    age = State()


@pytest.fixture(params=["aiogram-memory", "aiogram-redis", "actorsess", "actorsess-shared"])
async def fsm_storage(
    request: pytest.FixtureRequest, redis_client: Any, redis_url: str
) -> AsyncIterator[BaseStorage]:
    storage: BaseStorage
    if request.param == "aiogram-memory":
        storage = AiogramMemoryStorage()
    elif request.param == "aiogram-redis":
        storage = AiogramRedisStorage.from_url(
            redis_url, key_builder=DefaultKeyBuilder(with_destiny=True)
        )
    elif request.param == "actorsess":
        storage = ActorFSMStorage(RedisStorage.from_url(redis_url))
    else:
        storage = ActorFSMStorage.from_url(redis_url, config=SessionConfig(ownership="shared"))
    yield storage
    await storage.close()


class TestFSMStorageParity:
    """The same behaviour tests run on aiogram's MemoryStorage, RedisStorage and ours."""

    async def test_defaults(self, fsm_storage: BaseStorage) -> None:
        """An unknown key has no state and empty data."""
        assert await fsm_storage.get_state(KEY) is None
        assert await fsm_storage.get_data(KEY) == {}
        assert await fsm_storage.get_value(KEY, "x") is None
        assert await fsm_storage.get_value(KEY, "x", 5) == 5

    async def test_set_and_get_state(self, fsm_storage: BaseStorage) -> None:
        """States are stored as strings, State objects included; None clears."""
        await fsm_storage.set_state(KEY, Form.name)
        assert await fsm_storage.get_state(KEY) == "Form:name"
        await fsm_storage.set_state(KEY, "custom")
        assert await fsm_storage.get_state(KEY) == "custom"
        assert await fsm_storage.get_state(OTHER) is None
        await fsm_storage.set_state(KEY, None)
        assert await fsm_storage.get_state(KEY) is None

    async def test_data_is_copied_in_and_out(self, fsm_storage: BaseStorage) -> None:
        """Mutating the dict given to set_data or returned by get_data changes nothing."""
        given = {"a": 1}
        await fsm_storage.set_data(KEY, given)
        given["a"] = 2
        got = await fsm_storage.get_data(KEY)
        assert got == {"a": 1}
        got["a"] = 3
        assert await fsm_storage.get_data(KEY) == {"a": 1}

    async def test_update_data_merges_and_returns_a_copy(self, fsm_storage: BaseStorage) -> None:
        """update_data merges like dict.update and returns the merged data."""
        await fsm_storage.set_data(KEY, {"a": 1, "b": 2})
        merged = await fsm_storage.update_data(KEY, {"b": 3, "c": 4})
        assert merged == {"a": 1, "b": 3, "c": 4}
        merged["a"] = 100
        assert await fsm_storage.get_data(KEY) == {"a": 1, "b": 3, "c": 4}
        assert await fsm_storage.get_value(KEY, "c") == 4

    async def test_non_dict_data_is_refused(self, fsm_storage: BaseStorage) -> None:
        """set_data with a non-dict raises DataNotDictLikeError."""
        with pytest.raises(DataNotDictLikeError):
            await fsm_storage.set_data(KEY, [1, 2])  # type: ignore[arg-type]

    async def test_clear(self, fsm_storage: BaseStorage) -> None:
        """Clearing (as FSMContext.clear does) resets state and data."""
        context = FSMContext(fsm_storage, KEY)
        await context.set_state(Form.age)
        await context.update_data(name="Ann")
        await context.clear()
        assert await context.get_state() is None
        assert await context.get_data() == {}

    async def test_destinies_are_separate(self, fsm_storage: BaseStorage) -> None:
        """The same chat and user under another destiny is another record."""
        other = StorageKey(bot_id=42, chat_id=-5, user_id=7, destiny="scenes_history")
        await fsm_storage.set_data(KEY, {"a": 1})
        assert await fsm_storage.get_data(other) == {}


async def test_fsm_survives_a_restart(redis_client: Any, redis_url: str) -> None:
    """State and data written through ActorFSMStorage are read by a new instance."""
    first = ActorFSMStorage(RedisStorage.from_url(redis_url))
    await first.set_state(KEY, Form.age)
    await first.update_data(KEY, {"name": "Ann"})
    await first.close()
    second = ActorFSMStorage(RedisStorage.from_url(redis_url))
    assert await second.get_state(KEY) == "Form:age"
    assert await second.get_data(KEY) == {"name": "Ann"}
    await second.close()


def form_dispatcher(fsm: ActorFSMStorage) -> tuple[Dispatcher, list[str]]:
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    replies: list[str] = []

    @dp.message(F.text == "/start")
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)
        replies.append("name?")

    @dp.message(Form.name)
    async def got_name(message: Message, state: FSMContext) -> None:
        await state.update_data(name=message.text)
        await asyncio.sleep(0)
        await state.set_state(Form.age)
        replies.append("age?")

    @dp.message(Form.age)
    async def got_age(message: Message, state: FSMContext) -> None:
        data = await state.get_data()
        await state.clear()
        replies.append(f"{data['name']} is {message.text}")

    @dp.message(F.text == "/count")
    async def count(message: Message, state: FSMContext) -> None:
        n = (await state.get_data()).get("n", 0)
        await asyncio.sleep(0)
        await state.update_data(n=n + 1)

    return dp, replies


async def test_wizard_flow_through_the_dispatcher(redis_client: Any, redis_url: str) -> None:
    """A three-step form runs on ActorFSMStorage with its events isolation."""
    fsm = ActorFSMStorage(RedisStorage.from_url(redis_url))
    dp, replies = form_dispatcher(fsm)
    bot = Bot("42:TEST")
    for text in ["/start", "Ann", "33"]:
        await dp.feed_update(bot, message_update(7, text))
    await dp.emit_shutdown()
    await bot.session.close()
    assert replies == ["name?", "age?", "Ann is 33"]


async def test_isolation_serializes_concurrent_updates(redis_client: Any, redis_url: str) -> None:
    """Concurrent read-await-write handlers on one chat lose no increment."""
    fsm = ActorFSMStorage(
        RedisStorage.from_url(redis_url), config=SessionConfig(flush_interval=0.01)
    )
    dp, _ = form_dispatcher(fsm)
    bot = Bot("42:TEST")
    await asyncio.gather(*(dp.feed_update(bot, message_update(7, "/count")) for _ in range(300)))
    await dp.emit_shutdown()
    await bot.session.close()
    reader = ActorFSMStorage(RedisStorage.from_url(redis_url))
    assert await reader.get_data(StorageKey(bot_id=42, chat_id=7, user_id=7)) == {"n": 300}
    await reader.close()


async def test_two_processes_share_fsm_storage_in_shared_mode(
    redis_client: Any, redis_url: str
) -> None:
    """Two dispatchers on shared-mode ActorFSMStorage (two processes' worth), one chat's
    updates split between them at random: no increment is lost."""
    config = SessionConfig(ownership="shared", flush_interval=0.01)
    dispatchers = [form_dispatcher(ActorFSMStorage.from_url(redis_url, config=config))[0]]
    dispatchers.append(form_dispatcher(ActorFSMStorage.from_url(redis_url, config=config))[0])
    bot = Bot("42:TEST")
    rng = random.Random(3)
    await asyncio.gather(
        *(rng.choice(dispatchers).feed_update(bot, message_update(7, "/count")) for _ in range(200))
    )
    for dp in dispatchers:
        await dp.emit_shutdown()
    await bot.session.close()
    reader = ActorFSMStorage(RedisStorage.from_url(redis_url))
    assert await reader.get_data(StorageKey(bot_id=42, chat_id=7, user_id=7)) == {"n": 200}
    await reader.close()


async def test_scenes_run_on_actor_fsm_storage(redis_client: Any, redis_url: str) -> None:
    """aiogram Scenes (with their history under another destiny) work unchanged."""
    from aiogram.filters import Command
    from aiogram.fsm.scene import Scene, SceneRegistry, ScenesManager, on

    replies: list[str] = []

    class AskName(Scene, state="ask_name"):
        @on.message.enter()
        async def on_enter(self, message: Message) -> None:
            replies.append("your name?")

        @on.message(F.text)
        async def on_name(self, message: Message, state: FSMContext) -> None:
            await state.update_data(name=message.text)
            await self.wizard.goto(AskCity)

    class AskCity(Scene, state="ask_city"):
        @on.message.enter()
        async def on_enter(self, message: Message) -> None:
            replies.append("your city?")

        @on.message(F.text)
        async def on_city(self, message: Message, state: FSMContext) -> None:
            data = await state.get_data()
            replies.append(f"{data['name']} from {message.text}")
            await self.wizard.exit()

    fsm = ActorFSMStorage(RedisStorage.from_url(redis_url))
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    registry = SceneRegistry(dp)
    registry.add(AskName, AskCity)

    @dp.message(Command("start"))
    async def start(message: Message, scenes: ScenesManager) -> None:
        await scenes.enter(AskName)

    bot = Bot("42:TEST")
    for text in ["/start", "Ann", "Oslo"]:
        await dp.feed_update(bot, message_update(7, text))
    await dp.emit_shutdown()
    await bot.session.close()
    assert replies == ["your name?", "your city?", "Ann from Oslo"]


async def test_fsm_storage_from_url_and_from_a_shared_manager(
    redis_client: Any, redis_url: str
) -> None:
    """ActorFSMStorage.from_url works like aiogram's; a plain-dict manager can be shared."""
    from actorsess import SessionManager

    by_url = ActorFSMStorage.from_url(redis_url)
    await by_url.set_state(KEY, Form.name)
    await by_url.close()
    manager: SessionManager[dict[str, Any]] = SessionManager(
        RedisStorage.from_url(redis_url), initial=dict
    )
    shared = ActorFSMStorage(manager)
    assert await shared.get_state(KEY) == "Form:name"
    assert await shared.get_data(OTHER) == {}
    assert await shared.update_data(OTHER, {"a": 1}) == {"a": 1}
    await shared.close()


_ids = st.integers(min_value=-2, max_value=2) | st.integers(min_value=-(10**13), max_value=10**13)
_where = st.tuples(st.integers(min_value=1, max_value=2), _ids, _ids)
# Drawn twice per example over one (bot, chat, user), so the search meets keys that
# differ only in the parts that could run into each other.
_rest = st.tuples(
    st.none() | st.integers(min_value=0, max_value=3),
    st.none() | st.sampled_from(["", "x", "x:1", "x%3A1", "1"]) | st.text(max_size=4),
    st.sampled_from(["default", "t1:default", "~t1:default", "1:default", "t1", "~"])
    | st.text(max_size=8),
)


def _key(where: tuple[int, int, int], rest: tuple[int | None, str | None, str]) -> StorageKey:
    bot_id, chat_id, user_id = where
    thread_id, connection, destiny = rest
    return StorageKey(bot_id, chat_id, user_id, thread_id, connection, destiny)


@given(where=_where, first=_rest, second=_rest, other_where=_where)
@example(
    where=(1, 0, 0),
    first=(1, None, "default"),
    second=(None, None, "t1:default"),
    other_where=(1, 0, 0),
)
@example(
    where=(1, 2, 3), first=(None, "x:1", "d"), second=(None, "x", "3:d"), other_where=(1, 1, 2)
)
def test_distinct_fsm_keys_never_share_a_session(
    where: tuple[int, int, int],
    first: tuple[int | None, str | None, str],
    second: tuple[int | None, str | None, str],
    other_where: tuple[int, int, int],
) -> None:
    """No two distinct aiogram StorageKeys map to the same session key (a thread id and a
    destiny that looks like one, ':' in a business connection id)."""

    def fields(key: StorageKey) -> tuple[object, ...]:
        # An empty business connection id means none, as in aiogram's key builder.
        connection = key.business_connection_id or None
        return (key.bot_id, key.chat_id, key.user_id, key.thread_id, connection, key.destiny)

    for a, b in (
        (_key(where, first), _key(where, second)),
        (_key(where, first), _key(other_where, second)),
    ):
        if fields(a) != fields(b):
            assert ActorFSMStorage.session_key(a) != ActorFSMStorage.session_key(b)


async def test_a_thread_and_a_thread_like_destiny_keep_their_own_state(
    redis_url: str, redis_client: Any
) -> None:
    """thread_id=5 and a destiny "t5:default" with no thread are different sessions."""
    fsm = ActorFSMStorage.from_url(redis_url)
    threaded = StorageKey(bot_id=1, chat_id=2, user_id=3, thread_id=5)
    lookalike = StorageKey(bot_id=1, chat_id=2, user_id=3, destiny="t5:default")
    await fsm.set_state(threaded, "in:thread")
    await fsm.set_state(lookalike, "other")
    assert await fsm.get_state(threaded) == "in:thread"
    assert await fsm.get_state(lookalike) == "other"
    await fsm.close()


@pytest.mark.parametrize("ownership", ["local", "shared"])
async def test_concurrent_updates_of_a_cold_chat_run_in_arrival_order(
    ownership: str, redis_client: Any, redis_url: str
) -> None:
    """aiogram's issue 1317 scenario on Redis, with the manager not yet started: four
    updates of one chat arrive together (command, then three plain messages); each must
    see the state the one before it set, from the very first update."""
    config = SessionConfig(ownership=ownership)  # type: ignore[arg-type]
    fsm = ActorFSMStorage(RedisStorage.from_url(redis_url), config=config)
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    seen: list[str] = []

    class Steps(StatesGroup):
        foo = State()
        bar = State()

    @dp.message(F.text == "/begin")
    async def begin(message: Message, state: FSMContext) -> None:
        seen.append("command")
        await state.set_state(Steps.foo)

    @dp.message(Steps.foo)
    async def foo(message: Message, state: FSMContext) -> None:
        seen.append("foo")
        await state.set_state(Steps.bar)

    @dp.message(Steps.bar)
    async def bar(message: Message, state: FSMContext) -> None:
        seen.append("bar")
        await state.set_state(None)

    @dp.message()
    async def anything(message: Message) -> None:
        seen.append("all")

    bot = Bot("42:TEST")
    texts = ["/begin", "one", "two", "three"]
    await asyncio.gather(*(dp.feed_update(bot, message_update(42, text)) for text in texts))
    assert seen == ["command", "foo", "bar", "all"]
    await fsm.close()
    await bot.session.close()


async def test_a_cleared_fsm_record_is_deleted(redis_client: Any, redis_url: str) -> None:
    """A record with no state and empty data is deleted, as aiogram's RedisStorage deletes
    the key (aiogram_dialog clears a context on every closed dialog): what remains is a
    tombstone that expires, never a record kept forever."""
    fsm = ActorFSMStorage.from_url(redis_url)
    keys = [
        StorageKey(bot_id=1, chat_id=2, user_id=3, destiny=f"aiogd:context:{i}") for i in range(30)
    ]
    for key in keys:
        await fsm.set_state(key, "dialog:step")
        await fsm.set_data(key, {"page": 1})
    await fsm.manager.flush()
    for key in keys:
        await fsm.set_state(key, None)
        await fsm.set_data(key, {})
    await fsm.manager.flush()
    for key in keys:
        name = "actorsess:" + ActorFSMStorage.session_key(key)
        record = await redis_client.get(name)
        assert isinstance(record, bytes) and record.endswith(b":"), record  # a tombstone
        assert 0 < await redis_client.pttl(name) <= 600_000
        assert await fsm.get_state(key) is None and await fsm.get_data(key) == {}
    await fsm.close()


async def test_a_dispatcher_started_twice_keeps_its_fsm_storage(
    redis_client: Any, redis_url: str
) -> None:
    """aiogram closes the FSM storage at dispatcher shutdown; started again (polling
    restarted in one process, tests feeding updates after a shutdown) the storage keeps
    working, as aiogram's own storages do, and the state survives."""
    fsm = ActorFSMStorage.from_url(redis_url)
    dp, replies = form_dispatcher(fsm)
    bot = Bot("42:TEST")
    for _ in range(2):
        await dp.emit_startup()
        await dp.feed_update(bot, message_update(7, "/start"))
        await dp.emit_shutdown()  # closes the storage
    await dp.feed_update(bot, message_update(7, "Ann"))  # no startup at all
    assert replies[-1].startswith("age")
    await dp.emit_shutdown()
    await bot.session.close()


async def test_a_task_spawned_by_a_handler_is_a_caller_from_outside(
    redis_client: Any, redis_url: str
) -> None:
    """A task the handler starts inherits its context but not its turn: after the handler
    returned, its FSM calls take turns of their own and land (aiogram_dialog's background
    updates do this); a read while the handler still holds the turn returns the committed
    value at once, without waiting for the handler."""
    fsm = ActorFSMStorage.from_url(redis_url)
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    background: list[asyncio.Task[None]] = []
    seen: list[str | None] = []

    class Job(StatesGroup):
        running = State()
        done = State()

    async def finish_later(state: FSMContext) -> None:
        seen.append(await state.get_state())  # committed so far: nothing
        await asyncio.sleep(0.05)  # the handler has returned by now
        await state.set_state(Job.done)
        await state.update_data(progress=100)

    @dp.message()
    async def start_job(message: Message, state: FSMContext) -> None:
        await state.set_state(Job.running)
        background.append(asyncio.create_task(finish_later(state)))
        await asyncio.sleep(0.01)

    bot = Bot("42:TEST")
    await dp.emit_startup()
    await dp.feed_update(bot, message_update(5, "go"))
    await asyncio.wait_for(asyncio.gather(*background), 5)
    key = StorageKey(bot_id=42, chat_id=5, user_id=5)
    assert seen == [None]
    assert await fsm.get_state(key) == "Job:done"
    assert await fsm.get_data(key) == {"progress": 100}
    await dp.emit_shutdown()
    await bot.session.close()


async def test_two_handlers_writing_each_others_state_do_not_hang(
    redis_client: Any, redis_url: str
) -> None:
    """Two users' handlers each hold their own FSM turn and write the other's state (a
    "send to another user" flow) at the same time: the wait that closes the cycle raises
    SessionDeadlockError at once, naming the keys; the other handler completes."""
    fsm = ActorFSMStorage.from_url(redis_url)
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    both_inside = asyncio.Barrier(2)
    outcome: dict[int, str] = {}

    @dp.message()
    async def invite(message: Message, state: FSMContext, bot: Bot) -> None:
        me = message.chat.id
        other = 2 if me == 1 else 1
        await state.set_state("inviting")
        await both_inside.wait()  # each now holds its own turn
        theirs = FSMContext(fsm, StorageKey(bot_id=bot.id, chat_id=other, user_id=other))
        try:
            await theirs.set_state("invited")
        except SessionDeadlockError as exc:
            outcome[me] = f"refused {exc.keys}"
            raise
        outcome[me] = "wrote"

    bot = Bot("42:TEST")
    await dp.emit_startup()
    async with asyncio.timeout(5):
        results = await asyncio.gather(
            dp.feed_update(bot, message_update(1, "hi")),
            dp.feed_update(bot, message_update(2, "hi")),
            return_exceptions=True,
        )
    assert sorted(outcome.values())[0].startswith("refused") and "wrote" in outcome.values()
    assert sum(isinstance(r, SessionDeadlockError) for r in results) == 1
    await dp.emit_shutdown()
    await bot.session.close()


async def test_fsm_data_reads_back_as_a_reload_gives_and_errors_come_from_set_data(
    redis_client: Any, redis_url: str
) -> None:
    """As with aiogram's RedisStorage: set_data/update_data accept what json.dumps
    accepts, normalised at once (tuples -> lists, int keys -> strings), so the same
    update reads what a reload gives; what JSON cannot hold raises inside the call,
    where the handler catches it, and the earlier set_state of the update is kept."""
    fsm = ActorFSMStorage.from_url(redis_url)
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    seen: dict[str, Any] = {}

    @dp.message()
    async def handler(message: Message, state: FSMContext) -> None:
        await state.set_state("form:when")
        await state.set_data({"pair": (1, 2), "by_user": {5000: 1}})
        seen["same_update"] = await state.get_data()
        await state.update_data(extra=(3,))
        seen["merged"] = await state.get_data()
        with pytest.raises(TypeError):
            await state.set_data({"when": datetime.datetime.now(datetime.UTC)})
        with pytest.raises(ValueError, match="not JSON compliant"):
            await state.update_data(ratio=float("nan"))

    bot = Bot("42:TEST")
    await dp.emit_startup()
    await dp.feed_update(bot, message_update(9, "x"))
    await dp.emit_shutdown()
    expected = {"pair": [1, 2], "by_user": {"5000": 1}}
    assert seen["same_update"] == expected
    assert seen["merged"] == {**expected, "extra": [3]}
    reloaded = ActorFSMStorage.from_url(redis_url)
    key = StorageKey(bot_id=42, chat_id=9, user_id=9)
    assert await reloaded.get_data(key) == {**expected, "extra": [3]}
    assert await reloaded.get_state(key) == "form:when"
    await reloaded.close()
    await bot.session.close()


async def test_a_key_builder_lays_out_the_fsm_keys(storage_factory: Any) -> None:
    """``ActorFSMStorage(..., key_builder=...)``: sessions stored under the builder's
    keys, read back by a restarted bot with the same builder."""
    builder = DefaultKeyBuilder(prefix="form", with_bot_id=True, with_destiny=True)
    key = StorageKey(bot_id=42, chat_id=-100, user_id=7, thread_id=5)
    fsm = ActorFSMStorage(storage_factory(), key_builder=builder)
    await fsm.set_state(key, "Form:name")
    await fsm.update_data(key, {"name": "Ann"})
    await fsm.close()
    stored = await storage_factory().load_many(["actorsess:form:42:-100:5:7:default"])
    assert stored[0] is not None and b'"Form:name"' in stored[0]
    again = ActorFSMStorage(storage_factory(), key_builder=builder)
    assert await again.get_state(key) == "Form:name"
    assert await again.get_data(key) == {"name": "Ann"}
    assert await ActorFSMStorage(storage_factory()).get_state(key) is None  # other layout
    await again.close()
