"""Update builders: Bot API payloads as Telegram sends them, for feeding a dispatcher."""

from __future__ import annotations

import itertools
import time
from typing import Any

_update_ids = itertools.count(1)


def text_message(
    message_id: int,
    chat_id: int,
    text: str,
    *,
    user_id: int | None = None,
    chat_type: str = "private",
    thread_id: int | None = None,
) -> dict[str, Any]:
    """A Bot API ``Message`` payload: ``text`` from a user (the chat's own id by default)."""
    sender = chat_id if user_id is None else user_id
    message: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": chat_type},
        "from": {"id": sender, "is_bot": False, "first_name": f"user{sender}"},
        "text": text,
    }
    if thread_id is not None:
        message["message_thread_id"] = thread_id
        message["is_topic_message"] = True
        message["chat"]["is_forum"] = True
    return message


def message_update(chat_id: int, text: str = "hi", *, user_id: int | None = None) -> dict[str, Any]:
    """A Bot API update payload (JSON-ready): a private text message, as Telegram posts it."""
    n = next(_update_ids)
    return {"update_id": n, "message": text_message(n, chat_id, text, user_id=user_id)}
