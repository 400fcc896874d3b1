"""SessionMiddleware through a real aiogram Dispatcher fed real Update objects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Message, Update

from actorsess import (
    ManagerClosedError,
    MemoryStorage,
    SessionConfig,
    SessionManager,
    SessionTurn,
)
from actorsess.aiogram import LazySession, SessionMiddleware, SessionOrderError, session_key

from .aiogram_helpers import message_update, poll_update
from .conftest import Events
from .helpers import RecordingStorage, counter

Counter = dict[str, int]


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    bot = Bot("42:TEST")
    yield bot
    await bot.session.close()


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (FSMStrategy.USER_IN_CHAT, "session:42:-100:7"),
        (FSMStrategy.CHAT, "session:42:-100:-100"),
        (FSMStrategy.GLOBAL_USER, "session:42:7:7"),
        (FSMStrategy.USER_IN_TOPIC, "session:42:-100:7:t5"),
        (FSMStrategy.CHAT_TOPIC, "session:42:-100:-100:t5"),
    ],
)
async def test_key_strategies_follow_fsm_meanings(
    bot: Bot, strategy: FSMStrategy, expected: str
) -> None:
    """Each FSMStrategy builds the key aiogram's FSM would, namespaced by name and bot."""
    manager = SessionManager(MemoryStorage(), initial=counter)
    dp = Dispatcher()
    SessionMiddleware(manager, key=strategy).setup(dp)
    seen: list[str] = []

    @dp.message()
    async def handler(message: Message, session_turn: SessionTurn[Counter]) -> None:
        seen.append(session_turn.key)

    update = message_update(-100, user_id=7, chat_type="supergroup", thread_id=5)
    await dp.feed_update(bot, update)
    await manager.close()
    assert seen == [expected]
    # The helper for code outside handlers gives the very same key.
    outside = session_key(bot_id=42, chat_id=-100, user_id=7, thread_id=5, strategy=strategy)
    assert outside == expected


async def test_business_connection_and_custom_key(bot: Bot) -> None:
    """Business connection ids enter the key; a custom key function is namespaced too."""
    manager = SessionManager(MemoryStorage(), initial=counter)
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)
    custom = SessionManager(MemoryStorage(), initial=counter)
    SessionMiddleware(
        custom,
        name="lang",
        key=lambda event, data: "by-language" if getattr(event, "message", None) else None,
    ).setup(dp)
    seen: list[tuple[str, str]] = []

    @dp.business_message()
    async def on_business(message: Message, session_turn: Any, lang_turn: Any) -> None:
        assert lang_turn is None
        seen.append((session_turn.key, ""))

    @dp.message()
    async def on_message(message: Message, session_turn: Any, lang_turn: Any) -> None:
        seen.append((session_turn.key, lang_turn.key))

    await dp.feed_update(bot, message_update(5, business_connection_id="BC1"))
    await dp.feed_update(bot, message_update(5))
    await manager.close()
    await custom.close()
    assert seen[0][0] == "session:42:bBC1:5:5"
    assert seen[0][0] == session_key(bot_id=42, chat_id=5, user_id=5, business_connection_id="BC1")
    assert seen[1] == ("session:42:5:5", "lang:42:by-language")


async def test_no_chat_and_no_user_gets_no_session(bot: Bot) -> None:
    """An update without chat or user receives session=None, never a shared session."""
    storage = RecordingStorage()
    manager = SessionManager(storage, initial=counter)
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)
    got: list[Any] = []

    @dp.poll()
    async def on_poll(poll: Any, session: Any) -> None:
        got.append(session)

    await dp.feed_update(bot, poll_update())
    await manager.close()
    assert got == [None]
    assert storage.load_batches == []


async def test_no_lost_updates_256_in_flight_over_200_chats(bot: Bot, redis_storage: Any) -> None:
    """10,000 updates, 256 in flight, handlers awaiting mid-update: every increment lands."""
    config = SessionConfig(flush_interval=0.05)
    manager = SessionManager(redis_storage, initial=counter, config=config)
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)

    @dp.message()
    async def handler(message: Message, session: Counter) -> None:
        n = session["n"]
        await asyncio.sleep(0)
        session["n"] = n + 1

    chats = [10_000 + i for i in range(200)]
    updates = [message_update(c) for c in chats for _ in range(50)]
    random.Random(5).shuffle(updates)
    await dp.emit_startup()
    limiter = asyncio.Semaphore(256)

    async def feed(update: Update) -> None:
        async with limiter:
            await dp.feed_update(bot, update)

    await asyncio.gather(*(feed(u) for u in updates))
    await dp.emit_shutdown()
    async with SessionManager(
        redis_storage.__class__.from_url(_url(redis_storage)), initial=counter
    ) as reader:
        values = await asyncio.gather(*(reader.get(f"session:42:{c}:{c}") for c in chats))
    assert [v["n"] for v in values] == [50] * 200


def _url(storage: Any) -> str:
    kwargs = storage.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


async def test_handler_error_rolls_back(bot: Bot) -> None:
    """A handler that raises leaves its session exactly as it was."""
    manager = SessionManager(MemoryStorage(), initial=lambda: {"items": [0]})
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)

    @dp.message()
    async def handler(message: Message, session: dict[str, list[int]]) -> None:
        session["items"].append(1)
        if message.text == "boom":
            raise RuntimeError("boom")

    await dp.feed_update(bot, message_update(1, "ok"))
    with pytest.raises(RuntimeError, match="boom"):
        await dp.feed_update(bot, message_update(1, "boom"))
    assert await manager.get("session:42:1:1") == {"items": [0, 1]}
    await manager.close()


async def test_turn_value_assignment_replaces_the_session(bot: Bot) -> None:
    """Assigning <name>_turn.value is the documented way to replace a session."""
    manager = SessionManager(MemoryStorage(), initial=counter)
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)

    @dp.message()
    async def handler(message: Message, session_turn: SessionTurn[Counter]) -> None:
        session_turn.value = {"n": 100}

    await dp.feed_update(bot, message_update(3))
    assert await manager.get("session:42:3:3") == {"n": 100}
    await manager.close()


async def test_two_namespaces_per_chat_and_per_user(bot: Bot) -> None:
    """'session' per user-in-chat and 'profile' per user, each with its own manager."""
    chat_sessions = SessionManager(MemoryStorage(), initial=counter)
    profiles = SessionManager(MemoryStorage(), initial=lambda: {"messages": 0})
    dp = Dispatcher()
    SessionMiddleware(chat_sessions, key=FSMStrategy.CHAT).setup(dp)
    SessionMiddleware(profiles, name="profile", key=FSMStrategy.GLOBAL_USER).setup(dp)

    @dp.message()
    async def handler(message: Message, session: Counter, profile: dict[str, int]) -> None:
        session["n"] += 1
        await asyncio.sleep(0)
        profile["messages"] += 1

    updates = [message_update(-1, user_id=u, chat_type="group") for u in (1, 2) for _ in range(20)]
    updates += [message_update(-2, user_id=1, chat_type="group") for _ in range(10)]
    random.Random(1).shuffle(updates)
    await asyncio.gather(*(dp.feed_update(bot, u) for u in updates))
    assert await chat_sessions.get("session:42:-1:-1") == {"n": 40}
    assert await chat_sessions.get("session:42:-2:-2") == {"n": 10}
    assert await profiles.get("profile:42:1:1") == {"messages": 30}
    assert await profiles.get("profile:42:2:2") == {"messages": 20}
    await chat_sessions.close()
    await profiles.close()


async def test_lazy_mode_costs_nothing_when_untouched(bot: Bot) -> None:
    """A lazy session that the handler never loads causes no load and no write."""
    storage = RecordingStorage()
    manager = SessionManager(storage, initial=counter)
    dp = Dispatcher()
    SessionMiddleware(manager, lazy=True).setup(dp)

    @dp.message()
    async def handler(message: Message, session: LazySession[Counter]) -> None:
        if message.text == "count":
            data = await session.load()
            data["n"] += 1

    for _ in range(5):
        await dp.feed_update(bot, message_update(9, "ignore me"))
    assert storage.load_batches == []
    assert manager.stats().cached == 0
    await asyncio.gather(*(dp.feed_update(bot, message_update(9, "count")) for _ in range(20)))
    assert await manager.get("session:42:9:9") == {"n": 20}
    await manager.close()


async def test_lazy_sessions_opened_out_of_order_are_refused(bot: Bot) -> None:
    """Opening lazy sessions against set-up order raises instead of risking deadlock."""
    first = SessionManager(MemoryStorage(), initial=counter)
    second = SessionManager(MemoryStorage(), initial=counter)
    dp = Dispatcher()
    SessionMiddleware(first, name="a", lazy=True).setup(dp)
    SessionMiddleware(second, name="b", lazy=True).setup(dp)

    @dp.message()
    async def handler(message: Message, a: LazySession[Counter], b: LazySession[Counter]) -> None:
        if message.text == "good":
            (await a.load())["n"] += 1
            (await b.load())["n"] += 1
        else:
            await b.load()
            await a.load()

    await dp.feed_update(bot, message_update(1, "good"))
    with pytest.raises(SessionOrderError, match="set-up order"):
        await dp.feed_update(bot, message_update(1, "bad"))
    assert await first.get("a:42:1:1") == {"n": 1}
    await first.close()
    await second.close()


async def test_shutdown_waits_for_updates_already_dispatched(bot: Bot) -> None:
    """Dispatcher shutdown lets in-flight updates reach their session, then flushes."""
    storage = MemoryStorage()
    manager = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)
    gate = asyncio.Event()

    @dp.message()
    async def handler(message: Message, session: Counter) -> None:
        await gate.wait()
        session["n"] += 1

    await dp.emit_startup()
    tasks = [asyncio.create_task(dp.feed_update(bot, message_update(4))) for _ in range(10)]
    await asyncio.sleep(0.01)
    shutdown = asyncio.create_task(dp.emit_shutdown())
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    await shutdown
    assert storage.raw("actorsess:session:42:4:4") == b'as1:10:{"n":10}'


async def test_a_stuck_update_delays_shutdown_by_one_close_timeout(
    bot: Bot, events: Events
) -> None:
    """A handler that never finishes holds dispatcher shutdown for close_timeout in all
    (not once for the middleware and again for the manager); when it does finish, its
    change is refused with an error in the handler, never lost silently."""
    storage = MemoryStorage()
    config = SessionConfig(flush_interval=3600, close_timeout=0.4)
    manager = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    dp = Dispatcher()
    SessionMiddleware(manager).setup(dp)
    gate = asyncio.Event()
    seen: list[BaseException] = []

    @dp.message()
    async def handler(message: Message, session: Counter) -> None:
        await gate.wait()
        session["n"] += 1

    await dp.emit_startup()
    stuck = asyncio.create_task(dp.feed_update(bot, message_update(4)))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await dp.emit_shutdown()
    assert loop.time() - started < 0.4 * 1.5
    gate.set()
    try:
        await stuck
    except ManagerClosedError as exc:
        seen.append(exc)
    assert len(seen) == 1 and "closed before this block ended" in str(seen[0])
    assert [e["key"] for e in events.named("session.commit_refused")] == ["session:42:4:4"]
    assert storage.raw("actorsess:session:42:4:4") is None


async def test_registered_without_setup_still_writes_at_shutdown(bot: Bot) -> None:
    """Registered the usual aiogram way (``dp.update.outer_middleware``) instead of with
    setup(): the first update hooks the dispatcher's shutdown, which writes everything."""
    storage = MemoryStorage()
    manager = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=3600))
    dp = Dispatcher()
    dp.update.outer_middleware(SessionMiddleware(manager))

    @dp.message()
    async def handler(message: Message, session: Counter) -> None:
        session["n"] += 1

    await dp.emit_startup()
    for _ in range(3):
        await dp.feed_update(bot, message_update(4))
    await dp.emit_shutdown()
    assert storage.raw("actorsess:session:42:4:4") == b'as1:3:{"n":3}'
    assert repr(manager).startswith("<SessionManager [closed")


def test_a_process_that_exits_without_close_says_what_it_lost() -> None:
    """A bot whose loop ends without close() (the manager dropped with dirty sessions)
    logs session.unflushed with the count and keys: never a silent loss."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio
        from actorsess import MemoryStorage, SessionConfig, SessionManager

        async def main():
            config = SessionConfig(flush_interval=3600)
            m = SessionManager(MemoryStorage(), initial=dict, config=config)
            for key in ("a", "b"):
                await m.update(key, lambda s: s.update(n=1))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [line for line in done.stdout.splitlines() if "session.unflushed" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert "count=2" in lines[0] and "'a'" in lines[0] and "'b'" in lines[0]


@pytest.mark.parametrize("lazy", [False, True])
async def test_a_reset_handler_deletes_its_session(bot: Bot, lazy: bool) -> None:
    """/reset through a real Dispatcher: ``session_turn.delete()`` (or ``await
    session.delete()`` for a lazy session) leaves no record; the next update starts
    from initial()."""
    storage = MemoryStorage()
    manager = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=0))
    dp = Dispatcher()
    SessionMiddleware(manager, lazy=lazy).setup(dp)
    seen: list[int] = []

    @dp.message()
    async def handler(message: Message, session: Any, session_turn: Any = None) -> None:
        if lazy:
            value = await session.delete() if message.text == "/reset" else await session.load()
        elif message.text == "/reset":
            value = session_turn.delete()
        else:
            value = session
        value["n"] += 0 if message.text == "/reset" else 1
        seen.append(value["n"])

    for text in ["hi", "hi", "/reset", "hi"]:
        await dp.feed_update(bot, message_update(5, text))
        if text == "/reset":
            assert storage.raw(f"actorsess:{_key_of(5)}") == b"as1:3:"
    await manager.close()
    assert seen == [1, 2, 0, 1]


def _key_of(chat: int) -> str:
    return f"session:42:{chat}:{chat}"


def _language_seed(update: Any, data: dict[str, Any]) -> dict[str, Any]:
    """A first-touch default as bots write it: the user's language from the update."""
    return {"lang": data["event_from_user"].language_code or "en", "n": 0}


@pytest.mark.parametrize("lazy", [False, True])
async def test_a_new_session_is_seeded_from_the_update_that_first_touches_it(
    bot: Bot, lazy: bool, storage_factory: Any
) -> None:
    """``initial=(update, data) -> value`` seeds a session with nothing stored, once:
    later updates (another language) keep it, a /reset seeds it again, and the seed
    is stored even when the handler changes nothing."""

    def build(storage: Any) -> tuple[Dispatcher, SessionManager[dict[str, Any]]]:
        manager = SessionManager(storage, initial=lambda: {"lang": "?", "n": 0})
        dp = Dispatcher()
        SessionMiddleware(manager, lazy=lazy, initial=_language_seed).setup(dp)

        @dp.message()
        async def handler(message: Message, session: Any, session_turn: Any = None) -> None:
            if message.text == "/reset":
                await session.delete() if lazy else session_turn.delete()
                return
            value = await session.load() if lazy else session
            if message.text == "count":
                value["n"] += 1
            seen.append(dict(value))

        return dp, manager

    seen: list[dict[str, Any]] = []
    dp, manager = build(storage_factory())
    updates = [("look", "de"), ("count", "fr"), ("/reset", "it"), ("look", "it")]
    for text, language in updates:
        await dp.feed_update(bot, message_update(5, text, language_code=language))
    await manager.close()
    assert seen == [{"lang": "de", "n": 0}, {"lang": "de", "n": 1}, {"lang": "it", "n": 0}]
    dp, manager = build(storage_factory())  # a restart: the seed was stored
    await dp.feed_update(bot, message_update(5, "count", language_code="pt"))
    await manager.close()
    assert seen[-1] == {"lang": "it", "n": 1}


async def test_a_first_touch_factory_that_fails_rolls_the_update_back(bot: Bot) -> None:
    storage = MemoryStorage()
    manager = SessionManager(storage, initial=counter, config=SessionConfig(flush_interval=0))
    dp = Dispatcher()

    def broken(update: Any, data: dict[str, Any]) -> Counter:
        raise LookupError("no language")

    SessionMiddleware(manager, initial=broken).setup(dp)
    dp.message()(lambda message, session: None)
    with pytest.raises(LookupError, match="no language"):
        await dp.feed_update(bot, message_update(5))
    assert storage.raw(f"actorsess:{_key_of(5)}") is None
    with pytest.raises(TypeError, match="initial must be a function"):
        SessionMiddleware(manager, initial={"n": 1})  # type: ignore[arg-type]
    await manager.close()


def test_a_key_needs_a_chat_or_a_user() -> None:
    with pytest.raises(ValueError, match="needs a chat_id or a user_id"):
        session_key(bot_id=42)
    assert session_key("profile", bot_id=42, user_id=7) == "profile:42:7:7"
