"""Session keys for aiogram updates, with the meanings of aiogram's ``FSMStrategy``.

Every key starts with the namespace name and the bot id, so two bots (or two
namespaces) sharing one Redis never collide, whatever a custom key function
returns; the storage prefix is prepended after that, so no key can leave it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiogram import Bot
from aiogram.dispatcher.middlewares.user_context import EVENT_CONTEXT_KEY, EventContext
from aiogram.fsm.strategy import FSMStrategy, apply_strategy
from aiogram.types import TelegramObject

KeyFunction = Callable[[TelegramObject, dict[str, Any]], str | None]
"""A custom key: from the update and the middleware ``data`` to a key string, or None
for "no session"."""

_CHAT_SCOPED = {FSMStrategy.CHAT, FSMStrategy.CHAT_TOPIC}


def strategy_key(strategy: FSMStrategy) -> KeyFunction:
    """A key function applying ``strategy`` exactly as aiogram's FSM does."""

    def key(event: TelegramObject, data: dict[str, Any]) -> str | None:
        context: EventContext | None = data.get(EVENT_CONTEXT_KEY)
        if context is None:
            return None
        return strategy_part(
            strategy,
            context.chat_id,
            context.user_id,
            context.thread_id,
            context.business_connection_id,
        )

    key.__qualname__ = f"strategy_key({strategy.name})"
    return key


def strategy_part(
    strategy: FSMStrategy,
    chat_id: int | None,
    user_id: int | None,
    thread_id: int | None,
    business_connection_id: str | None,
) -> str | None:
    """The key of a chat / user / topic under ``strategy`` (before namespace and bot)."""
    if chat_id is None:
        chat_id = user_id
    elif user_id is None and strategy in _CHAT_SCOPED:
        user_id = chat_id
    if chat_id is None or user_id is None:
        return None  # no chat and no user: no session rather than a shared one
    chat_id, user_id, thread_id = apply_strategy(
        strategy, chat_id=chat_id, user_id=user_id, thread_id=thread_id
    )
    parts = [str(chat_id), str(user_id)]
    if thread_id is not None:
        parts.append(f"t{thread_id}")
    if business_connection_id:
        parts.insert(0, "b" + escape_part(business_connection_id))
    return ":".join(parts)


def session_key(
    name: str = "session",
    *,
    bot_id: int,
    chat_id: int | None = None,
    user_id: int | None = None,
    thread_id: int | None = None,
    business_connection_id: str | None = None,
    strategy: FSMStrategy = FSMStrategy.USER_IN_CHAT,
) -> str:
    """The key ``SessionMiddleware(manager, name=name, key=strategy)`` uses for an
    update from this chat and user, for ``manager.get`` / ``update`` / ``scan``
    outside a handler: ``<name>:<bot id>:<chat>:<user>[:t<thread>]`` (the storage
    adds ``key_prefix``). ``session_key(bot_id=42, chat_id=-100, user_id=7)`` is
    ``"session:42:-100:7"``; a chat-wide session (``FSMStrategy.CHAT``) repeats the
    chat id: ``"session:42:-100:-100"``."""
    key = strategy_part(strategy, chat_id, user_id, thread_id, business_connection_id)
    if key is None:
        raise ValueError("session_key needs a chat_id or a user_id")
    return f"{name}:{bot_id}:{key}"


def escape_part(text: str) -> str:
    """``text`` with ``%`` and ``:`` percent-encoded, so that it cannot run into the
    next ``:``-separated part of a key (ids Telegram sends contain neither)."""
    if "%" in text or ":" in text:
        return text.replace("%", "%25").replace(":", "%3A")
    return text


_THREAD_LIKE = re.compile(r"t-?\d+:")


def escape_destiny(destiny: str, after_thread: bool) -> str:
    """The FSM destiny as the last part of a key. Without a thread part before it, a
    destiny that starts like one (``t5:...``) or with the escape mark ``~`` gets
    ``~`` in front, so ``thread 5 + "default"`` and ``"t5:default"`` stay apart; the
    common destinies (``default``, aiogram_dialog's) are unchanged."""
    if not after_thread and (destiny.startswith("~") or _THREAD_LIKE.match(destiny)):
        return "~" + destiny
    return destiny


_bot_ids: dict[str, int] = {}


def bot_id_of(bot: Bot | None) -> int:
    """``bot.id`` parses and validates the token on every call; cache it per token."""
    if bot is None:
        return 0
    token = bot.token
    bot_id = _bot_ids.get(token)
    if bot_id is None:
        bot_id = _bot_ids[token] = bot.id
    return bot_id


def namespaced(name: str, data: dict[str, Any], key: str) -> str:
    """``<namespace>:<bot id>:<key>``."""
    return f"{name}:{bot_id_of(data.get('bot'))}:{key}"
