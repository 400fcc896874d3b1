"""Chat migration: when a group becomes a supergroup, its sessions follow the new id.

Telegram then sends, in the old group, a service message with
``migrate_to_chat_id``; from then on every update comes with the new chat id.
Without a move, the chat's sessions (every namespace and the FSM) would stay
behind under an id that is never used again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Dispatcher
from aiogram.types import Message, TelegramObject, Update

from actorsess._manager import SessionManager
from actorsess.aiogram._keys import bot_id_of


def migration_of(event: TelegramObject) -> tuple[int, int] | None:
    """``(old chat id, new chat id)`` if ``event`` announces a chat migration."""
    message = event.message if isinstance(event, Update) else event
    if isinstance(message, Message) and message.migrate_to_chat_id is not None:
        return message.chat.id, message.migrate_to_chat_id
    return None


def chat_prefix(namespace: str, bot_id: int, chat_id: int) -> str:
    """Where the keys of one chat start: ``<namespace>:<bot id>:<chat id>:``."""
    return f"{namespace}:{bot_id}:{chat_id}:"


def moved_key(key: str, old_prefix: str, new_prefix: str, old: int, new: int) -> str:
    """``key`` of the old chat as the new chat's: the chat part, and the user part too
    where it repeats the chat id (chat-wide sessions: ``FSMStrategy.CHAT``)."""
    user, sep, rest = key[len(old_prefix) :].partition(":")
    return new_prefix + (str(new) if user == str(old) else user) + sep + rest


async def move_chat(
    manager: SessionManager[Any], namespace: str, bot_id: int, old: int, new: int
) -> int:
    """Move every session of chat ``old`` in ``namespace`` to chat ``new``; returns how
    many moved (see ``SessionManager.move``)."""
    old_prefix = chat_prefix(namespace, bot_id, old)
    new_prefix = chat_prefix(namespace, bot_id, new)
    renames: dict[str, str] = {}
    async for key, _ in manager.scan(old_prefix):
        renames[key] = moved_key(key, old_prefix, new_prefix, old, new)
    return await manager.move(renames) if renames else 0


class ChatMigration(BaseMiddleware):
    """Outer update middleware moving one namespace's sessions on a chat migration
    (``ActorFSMStorage.setup`` puts one for the FSM ahead of aiogram's FSM middleware,
    so the move does not wait for the turn that middleware holds for the update)."""

    def __init__(self, manager: SessionManager[Any], namespace: str) -> None:
        self.manager = manager
        self.namespace = namespace

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        migration = migration_of(event)
        if migration is not None:
            bot_id = bot_id_of(data.get("bot"))
            await move_chat(self.manager, self.namespace, bot_id, *migration)
        return await handler(event, data)

    def setup_before_fsm(self, dp: Dispatcher) -> None:
        """Register on ``dp.update`` just ahead of the dispatcher's FSM middleware (the
        others keep their order)."""
        outer = dp.update.outer_middleware
        fsm = dp.fsm
        after = list(outer[outer.index(fsm) :]) if fsm in outer else []
        for middleware in after:
            outer.unregister(middleware)
        outer.register(self)
        for middleware in after:
            outer.register(middleware)
