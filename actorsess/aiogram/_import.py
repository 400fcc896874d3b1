"""Switching a bot from aiogram's ``RedisStorage``: its FSM states and data, imported once.

aiogram keeps a state and its data under two keys built by its key builder
(``fsm:<chat>:<user>:state`` / ``...:data`` by default), as a plain string and
a JSON string; ``ActorFSMStorage`` keeps both in one session record under its
own key layout. ``import_aiogram_fsm`` walks aiogram's keys page by page (SCAN),
reads each key's state and data through aiogram's own storage object (so its
key builder and ``json_loads`` are honoured), and stores them as actorsess
records, so every user in the middle of a form goes on where they were.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiogram.fsm.storage.base import DEFAULT_DESTINY, DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.redis import RedisStorage as AiogramRedisStorage

from actorsess.aiogram._fsm import ActorFSMStorage
from actorsess.storage.redis import prefix_pattern

#: How many unreadable keys an ImportReport lists (all are counted).
MAX_LISTED = 100


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What ``import_aiogram_fsm`` did.

    Attributes:
        imported: FSM keys whose state and data now live in ActorFSMStorage.
        kept: FSM keys ActorFSMStorage already had a different record for: left as they were.
        deleted: aiogram keys removed (``delete=True``), once their import was in storage.
        unreadable: aiogram keys that could not be read back into a StorageKey (counted, first
            listed).
        unreadable_keys: The first of those keys, for inspection.
    """

    imported: int = 0
    kept: int = 0
    deleted: int = 0
    unreadable: int = 0
    unreadable_keys: tuple[str, ...] = ()


def parse_key(builder: DefaultKeyBuilder, raw: str, bot_id: int) -> StorageKey | None:
    """The StorageKey a ``DefaultKeyBuilder`` built ``raw`` from (its ``state`` or
    ``data`` key), or None for anything else (a ``lock`` key, another layout)."""
    sep = builder.separator
    head = builder.prefix + sep
    if not raw.startswith(head):
        return None
    parts = raw[len(head) :].split(sep)
    if len(parts) < 3 or parts[-1] not in ("state", "data"):
        return None
    parts.pop()
    try:
        if builder.with_bot_id:
            bot_id = int(parts.pop(0))
        business = None
        if builder.with_business_connection_id and parts and not _is_int(parts[0]):
            business = parts.pop(0)
        chat = int(parts.pop(0))
        # <thread>:<user> or <user>, then the destiny (which may hold separators).
        thread = None
        rest_after_two = len(parts) - 2
        if len(parts) >= 2 and _is_int(parts[1]) and (rest_after_two >= 1) == builder.with_destiny:
            thread = int(parts.pop(0))
        user = int(parts.pop(0))
    except (ValueError, IndexError):
        return None
    if builder.with_destiny == (not parts):
        return None
    destiny = sep.join(parts) if builder.with_destiny else DEFAULT_DESTINY
    return StorageKey(
        bot_id=bot_id,
        chat_id=chat,
        user_id=user,
        thread_id=thread,
        business_connection_id=business,
        destiny=destiny,
    )


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


async def import_aiogram_fsm(
    fsm: ActorFSMStorage,
    source: AiogramRedisStorage,
    *,
    bot_id: int | None = None,
    delete: bool = False,
    batch: int = 500,
) -> ImportReport:
    """Copy every FSM state and data aiogram's ``source`` holds into ``fsm``.

    Run it once, with the old bot stopped and before the new one starts taking
    updates (Telegram keeps them meanwhile). ``bot_id`` is the bot's id, needed
    when aiogram's keys do not carry it (``with_bot_id=False``, its default). A
    key ``fsm`` already holds a different record for is kept as it is.
    ``delete=True`` removes aiogram's keys once their import is in storage, so a
    second run finds nothing; without it, running again is harmless.
    """
    builder = source.key_builder
    if not isinstance(builder, DefaultKeyBuilder):
        raise TypeError(
            "import_aiogram_fsm reads keys built by aiogram's DefaultKeyBuilder; "
            f"got {type(builder).__name__}, whose keys cannot be read back"
        )
    if not builder.with_bot_id and bot_id is None:
        raise ValueError(
            "aiogram's keys do not carry the bot id (DefaultKeyBuilder(with_bot_id=False)): "
            "pass bot_id=<your bot's id> (the number before ':' in its token)"
        )
    imported = kept = deleted = unreadable = 0
    unreadable_keys: list[str] = []
    match = prefix_pattern(builder.prefix + builder.separator)
    page: dict[StorageKey, list[str]] = {}

    async def import_page() -> None:
        nonlocal imported, kept, deleted
        keys = list(page)
        outcomes = await asyncio.gather(*(_import_one(fsm, source, key) for key in keys))
        imported += sum(outcome == "imported" for outcome in outcomes)
        kept += sum(outcome == "kept" for outcome in outcomes)
        await fsm.manager.flush()
        if delete:
            raw_keys = [raw for key in keys for raw in page[key]]
            deleted += int(await source.redis.delete(*raw_keys))
        page.clear()

    async for raw_key in source.redis.scan_iter(match=match, count=batch):
        raw = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        key = parse_key(builder, raw, bot_id or 0)
        if key is None:
            if not raw.endswith(builder.separator + "lock"):
                unreadable += 1
                if len(unreadable_keys) < MAX_LISTED:
                    unreadable_keys.append(raw)
            continue
        page.setdefault(key, []).append(raw)
        if len(page) >= batch:
            await import_page()
    if page:
        await import_page()
    return ImportReport(imported, kept, deleted, unreadable, tuple(unreadable_keys))


async def _import_one(fsm: ActorFSMStorage, source: AiogramRedisStorage, key: StorageKey) -> str:
    state = await source.get_state(key)
    data = await source.get_data(key)
    record: dict[str, Any] = {"state": state, "data": data}
    turn = fsm.manager.session(fsm.key_for(key))
    async with turn:
        if turn.value == record:
            return "same"  # imported before (both of its keys come by)
        if not turn.is_new:
            return "kept"
        turn.value = record
        return "imported"
