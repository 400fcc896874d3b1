"""How ``ForwardingRequestHandler`` places an update without parsing it in full: the
chat read off the raw JSON of the commonest updates must be the one aiogram's own
parse gives, under every key strategy; anything else is parsed in full."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiogram import Bot, Dispatcher
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Update

from actorsess import Partitions, RedisStorage
from actorsess.aiogram import ForwardingRequestHandler
from actorsess.aiogram._forwarding import UNKNOWN
from actorsess.testing._updates import text_message
from harness.webhook_bot import OFFLINE_TOKEN

BOT = Bot(OFFLINE_TOKEN)
SENDER = {"id": 7, "is_bot": False, "first_name": "Ann"}


def group_message(**extra: Any) -> dict[str, Any]:
    return {**text_message(5, -100, "hi", user_id=7, chat_type="supergroup"), **extra}


def without_sender() -> dict[str, Any]:
    message = group_message(sender_chat={"id": -100, "type": "supergroup"})
    del message["from"]
    return message


#: Updates as Telegram posts them: those read off the raw JSON, and some that are not.
UPDATES: dict[str, dict[str, Any]] = {
    "private message": {"update_id": 1, "message": text_message(1, 42, "hi")},
    "group message": {"update_id": 2, "message": group_message()},
    "topic message": {
        "update_id": 3,
        "message": text_message(3, -100, "hi", user_id=7, chat_type="supergroup", thread_id=9),
    },
    "message sent as the group": {"update_id": 4, "message": without_sender()},
    "edited message": {"update_id": 5, "edited_message": {**group_message(), "edit_date": 2}},
    "callback on a message": {
        "update_id": 6,
        "callback_query": {
            "id": "c1",
            "from": SENDER,
            "chat_instance": "ci",
            "data": "x",
            "message": group_message(),
        },
    },
    "callback on an inline message": {
        "update_id": 7,
        "callback_query": {"id": "c2", "from": SENDER, "chat_instance": "ci", "data": "x"},
    },
    "business message": {
        "update_id": 8,
        "business_message": {**group_message(), "business_connection_id": "bc:1"},
    },
    "inline query": {
        "update_id": 9,
        "inline_query": {"id": "q", "from": SENDER, "query": "", "offset": ""},
    },
}
#: Those that are not read off the raw JSON.
PARSED = {"business message", "inline query"}


@pytest.mark.parametrize("strategy", list(FSMStrategy))
@pytest.mark.parametrize("name", list(UPDATES))
def test_the_chat_read_off_the_raw_json_is_the_one_aiograms_parse_gives(
    name: str, strategy: FSMStrategy
) -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    handler = ForwardingRequestHandler(Dispatcher(), BOT, Partitions(storage), strategy=strategy)
    raw = orjson.dumps(UPDATES[name])
    read = handler._chat_of_raw(raw)
    if name in PARSED:
        assert read is UNKNOWN
    else:
        assert read == handler.chat_of(Update.model_validate_json(raw, context={"bot": BOT}))


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"update_id": "1", "message": {}}',
        b'{"update_id": 1, "message": {"chat": {"id": "5"}}}',
        b'{"update_id": 1, "message": {"chat": 5}}',
        b'{"update_id": 1, "message": {"chat": {"id": 5}}, "callback_query": {}}',
        b'{"update_id": 1, "callback_query": {"id": "c"}}',
    ],
)
def test_a_body_not_shaped_like_a_common_update_is_parsed_in_full(body: bytes) -> None:
    storage = RedisStorage.from_url("redis://127.0.0.1:1/0")
    handler = ForwardingRequestHandler(Dispatcher(), BOT, Partitions(storage))
    assert handler._chat_of_raw(body) is UNKNOWN
