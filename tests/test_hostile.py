"""Hostile and odd input: user-controlled keys, secrets in URLs, no unsafe deserialization."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.types import Message
from redis.asyncio import Redis

import actorsess
from actorsess import (
    InvalidKeyError,
    MemoryStorage,
    RedisStorage,
    SessionConfig,
    SessionManager,
)
from actorsess._redact import redact_url
from actorsess.aiogram import SessionMiddleware
from actorsess.testing import RedisServer

from .aiogram_helpers import message_update
from .conftest import Events

PACKAGE = Path(actorsess.__file__).parent


async def test_arbitrary_keys_stay_under_the_prefix_and_apart() -> None:
    """Odd user-controlled keys are stored verbatim under key_prefix and never collide."""
    storage = MemoryStorage()
    odd = ["../etc", "a\nb", "*", "actorsess:other", " ", "ключ", "a:b", "a", "x}y{z", "a{}b"]
    async with SessionManager(storage, initial=lambda: {"k": ""}) as m:
        for key in odd:
            async with m.session(key) as s:
                s["k"] = key
        await m.flush()
        for key in odd:
            assert await m.get(key) == {"k": key}
    assert sorted(storage._records) == sorted("actorsess:" + k for k in odd)


@pytest.mark.parametrize("ownership", ["local", "shared"])
async def test_a_key_no_storage_can_hold_is_refused_alone(
    ownership: str, redis_url: str, redis_client: Any
) -> None:
    """A key with a lone surrogate or a NUL raises InvalidKeyError naming it, before it
    joins a batch; the ordinary keys asked for with it load as usual."""
    config = SessionConfig(ownership=ownership)  # type: ignore[arg-type]
    storage = RedisStorage.from_url(redis_url)
    async with SessionManager(storage, initial=lambda: {"n": 0}, config=config) as m:
        ordinary = [f"chat:{i}" for i in range(50)]
        for bad in ("\ud800", "a\x00b"):
            results = await asyncio.gather(
                m.get(bad), *(m.get(key) for key in ordinary), return_exceptions=True
            )
            assert isinstance(results[0], InvalidKeyError)
            assert repr(bad) in str(results[0])
            assert results[1:] == [{"n": 0}] * 50
            with pytest.raises(InvalidKeyError):
                await m.get_many([*ordinary, bad])
            with pytest.raises(InvalidKeyError):
                async with m.session(bad):
                    pass
        for key in ("x}y{z", "a{}b", "{x}:lease", "u:lease"):  # fine in both modes
            await m.update(key, lambda d: d.update(n=d["n"] + 1))
            assert await m.get(key) == {"n": 1}


async def test_two_bots_on_one_storage_never_share_sessions() -> None:
    """The same chat seen by two bots has two sessions (the bot id is in every key)."""
    storage = MemoryStorage()
    totals = {}
    for token in ("111:AAA", "222:BBB"):
        manager = SessionManager(storage, initial=lambda: {"n": 0})
        dp = Dispatcher()
        SessionMiddleware(manager).setup(dp)

        @dp.message()
        async def handler(message: Message, session: dict[str, int]) -> None:
            session["n"] += 1

        bot = Bot(token)
        for _ in range(3 if token.startswith("111") else 5):
            await dp.feed_update(bot, message_update(9))
        await manager.close()
        await bot.session.close()
        totals[token] = storage.raw(f"actorsess:session:{token.split(':')[0]}:9:9")
    assert totals == {"111:AAA": b'as1:3:{"n":3}', "222:BBB": b'as1:5:{"n":5}'}


def test_no_unsafe_deserializers_anywhere() -> None:
    """No module of the package imports pickle, marshal, shelve or dill."""
    banned = {"pickle", "marshal", "shelve", "dill", "cloudpickle"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & banned, f"{path} imports {names & banned}"


def test_passwords_are_redacted() -> None:
    """Reprs and redacted URLs never show a password."""
    assert redact_url("redis://alice:s3cret@host:6379/0") == "redis://alice:***@host:6379/0"
    assert redact_url("rediss://:s3cret@host/1") == "rediss://:***@host/1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    storage = RedisStorage.from_url("redis://alice:s3cret@127.0.0.1:1/0")
    manager: SessionManager[dict[str, int]] = SessionManager(storage, initial=dict)
    assert "s3cret" not in repr(storage) and "s3cret" not in repr(manager)
    assert "alice:***@" in repr(manager)


SECRET_PARTS = ("Hunter2", "er2secret", "Hunt")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0?password=Hunter2secret",
        "redis://alice@127.0.0.1:1/0?db=0&password=Hunter2secret&ssl_cert_reqs=none",
        "redis://:Hunt@er2secret@127.0.0.1:1/0",
        "redis://alice:Hunter2secret:9@127.0.0.1:1/0",
    ],
)
async def test_a_password_in_any_url_form_never_shows(url: str, events: Events) -> None:
    """A password in the query (redis-py accepts ?password=) or holding ':' or '@' is
    redacted from reprs and from start()'s warning."""
    storage = RedisStorage.from_url(url)
    manager = SessionManager[dict[str, int]](
        storage, initial=dict, config=SessionConfig(load_timeout=0.5), logger=events.logger
    )
    await manager.start()
    shown = [repr(storage), repr(manager), *map(str, events.capture.entries)]
    await manager.close()
    for text in shown:
        assert not any(part in text for part in SECRET_PARTS), text


@pytest.mark.parametrize(
    "url",
    ["redis://alice:Hunt/er2secret@127.0.0.1:1/0", "redis://alice:Hunt#er2secret@127.0.0.1:1/0"],
)
def test_a_url_that_does_not_parse_is_refused_without_its_password(url: str) -> None:
    """An unencoded '/' or '#' in a password makes the URL unparseable: the error says
    so with the URL redacted, and keeps no trace of redis-py's message (which quoted a
    piece of the password)."""
    with pytest.raises(ValueError, match=r"redis://alice:\*\*\*@127") as caught:
        RedisStorage.from_url(url)
    error = caught.value
    message = f"{error!r} {error.__cause__!r} {error.__context__!r}"
    assert not any(part in message for part in SECRET_PARTS), message


def test_tls_urls_are_accepted() -> None:
    """rediss:// builds a TLS connection pool (no connection is made here)."""
    storage = RedisStorage.from_url("rediss://user:pw@127.0.0.1:6390/0")
    client = storage.client
    assert isinstance(client, Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["username"] == "user"


async def test_acl_user_and_password_urls_work() -> None:
    """An ACL user with a password connects through from_url and round-trips a session."""
    acl = ["--user", "default", "off", "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"]
    with RedisServer(extra_args=acl) as server:
        url = f"redis://alice:s3cret@127.0.0.1:{server.port}/0"
        async with SessionManager(RedisStorage.from_url(url), initial=lambda: {"n": 0}) as m:
            await m.update("k", lambda s: s.update(n=1))
            await m.persist("k")
        async with SessionManager(RedisStorage.from_url(url), initial=lambda: {"n": 0}) as m:
            assert await m.get("k") == {"n": 1}
