"""Real aiogram Update objects for tests."""

from __future__ import annotations

import itertools
from typing import Any

from aiogram.types import Update

_ids = itertools.count(1)


def message_update(
    chat_id: int,
    text: str = "hi",
    *,
    user_id: int | None = None,
    chat_type: str = "private",
    thread_id: int | None = None,
    business_connection_id: str | None = None,
    language_code: str | None = None,
    migrate_to_chat_id: int | None = None,
) -> Update:
    sender = chat_id if user_id is None else user_id
    message: dict[str, Any] = {
        "message_id": next(_ids),
        "date": 1_700_000_000,
        "chat": {"id": chat_id, "type": chat_type},
        "from": {"id": sender, "is_bot": False, "first_name": "u"},
        "text": text,
    }
    if language_code is not None:
        message["from"]["language_code"] = language_code
    if migrate_to_chat_id is not None:  # the service message a group's upgrade leaves
        del message["text"]
        message["migrate_to_chat_id"] = migrate_to_chat_id
    if thread_id is not None:
        message["message_thread_id"] = thread_id
        message["is_topic_message"] = True
        message["chat"]["is_forum"] = True
    if business_connection_id is not None:
        message["business_connection_id"] = business_connection_id
        return Update.model_validate({"update_id": next(_ids), "business_message": message})
    return Update.model_validate({"update_id": next(_ids), "message": message})


def poll_update() -> Update:
    """An update with neither chat nor user: a poll state change."""
    option = {"persistent_id": "o1", "text": "a", "voter_count": 0}
    poll = {
        "id": "p1",
        "question": "?",
        "options": [option, {**option, "persistent_id": "o2"}],
        "total_voter_count": 0,
        "is_closed": False,
        "is_anonymous": True,
        "type": "regular",
        "allows_multiple_answers": False,
        "allows_revoting": False,
        "members_only": False,
    }
    return Update.model_validate({"update_id": next(_ids), "poll": poll})
