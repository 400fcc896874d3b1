"""aiogram_dialog, with its own test tools, on ActorFSMStorage and its isolation."""

from __future__ import annotations

import asyncio
from typing import Any

from aiogram import Dispatcher, F
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message
from aiogram_dialog import (
    BaseDialogManager,
    Dialog,
    DialogManager,
    StartMode,
    Window,
    setup_dialogs,
)
from aiogram_dialog.test_tools import BotClient, MockMessageManager
from aiogram_dialog.widgets.text import Format

from actorsess.aiogram import ActorFSMStorage


class Loading(StatesGroup):
    progress = State()


async def progress_of(dialog_manager: DialogManager, **kwargs: Any) -> dict[str, Any]:
    return {"progress": dialog_manager.dialog_data.get("progress", 0)}


async def test_background_updates_with_the_isolation_shared(
    redis_client: Any, redis_url: str
) -> None:
    """aiogram_dialog's background-update pattern (a task the handler starts updates
    the dialog through ``manager.bg()``) with ``fsm.create_isolation()`` given to both
    the dispatcher and ``setup_dialogs``: every update lands, nothing waits forever."""
    fsm = ActorFSMStorage.from_url(redis_url)
    isolation = fsm.create_isolation()
    dp = Dispatcher(storage=fsm, events_isolation=isolation)
    dp.include_router(
        Dialog(Window(Format("progress {progress}"), state=Loading.progress, getter=progress_of))
    )
    background: list[asyncio.Task[None]] = []

    async def work(manager: BaseDialogManager) -> None:
        for step in range(1, 4):
            await asyncio.sleep(0.02)
            await manager.update({"progress": step * 10})

    @dp.message(F.text == "/start")
    async def start(message: Message, dialog_manager: DialogManager) -> None:
        await dialog_manager.start(Loading.progress, mode=StartMode.RESET_STACK)
        background.append(asyncio.create_task(work(dialog_manager.bg())))

    messages = MockMessageManager()  # type: ignore[no-untyped-call]
    setup_dialogs(dp, message_manager=messages, events_isolation=isolation)
    client = BotClient(dp)
    await client.send("/start")
    async with asyncio.timeout(10):
        await asyncio.gather(*background)
    for _ in range(500):  # the dialog's updater renders each update in a task of its own
        if messages.last_message().text == "progress 30":
            break
        await asyncio.sleep(0.01)
    assert messages.last_message().text == "progress 30"
    await fsm.close()


async def test_fg_for_another_user_with_the_isolation_shared(
    redis_client: Any, redis_url: str
) -> None:
    """A handler of one user opens another user's dialog in the foreground
    (``manager.bg(user_id=...).fg()``) with the FSM isolation shared: it completes."""
    fsm = ActorFSMStorage.from_url(redis_url)
    isolation = fsm.create_isolation()
    dp = Dispatcher(storage=fsm, events_isolation=isolation)
    dp.include_router(
        Dialog(Window(Format("progress {progress}"), state=Loading.progress, getter=progress_of))
    )

    @dp.message(F.text == "/invite")
    async def invite(message: Message, dialog_manager: DialogManager) -> None:
        other = dialog_manager.bg(user_id=2, chat_id=2)
        async with other.fg() as theirs:
            await theirs.start(Loading.progress, mode=StartMode.RESET_STACK)

    messages = MockMessageManager()  # type: ignore[no-untyped-call]
    setup_dialogs(dp, message_manager=messages, events_isolation=isolation)
    client = BotClient(dp, user_id=1, chat_id=1)
    async with asyncio.timeout(10):
        await client.send("/invite")
    assert messages.last_message().chat.id == 2
    await fsm.close()
