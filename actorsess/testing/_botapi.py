"""LocalBotAPI: a small Telegram Bot API server on loopback, for bots with no network.

It answers what a polling bot needs (``getMe``, ``getUpdates`` with long
polling, ``sendMessage`` and a few no-op methods), serves updates from a queue
that simulated users fill, and records what the bot sent. ``dp.start_polling``
runs against it for real, over HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

from actorsess.testing._updates import text_message

_NO_OP_METHODS = {
    "deleteWebhook",
    "setWebhook",
    "close",
    "logOut",
    "answerCallbackQuery",
    "sendChatAction",
    "setMyCommands",
    "deleteMessage",
    "setMessageReaction",
}


class LocalBotAPI:
    """A fake Bot API server; use ``bot()`` to get an aiogram Bot talking to it."""

    def __init__(
        self,
        *,
        token: str = "123456789:LOCAL-actorsess-demo-token",
        bot_username: str = "actorsess_demo_bot",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Prepare the server; ``start()`` (or ``async with``) runs it.

        Args:
            token: The bot token it accepts; the bot id is its first part.
            bot_username: What ``getMe`` answers.
            host: Address to listen on.
            port: Port to listen on (0: a free one).
        """
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "actorsess demo",
            "username": bot_username,
        }
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._updates: list[dict[str, Any]] = []
        self._confirmed = 0
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._arrived = asyncio.Event()
        self._sent_changed = asyncio.Event()
        #: Every sendMessage call, in order: ``{"chat_id": int, "text": str, ...}``.
        self.sent: list[dict[str, Any]] = []
        #: Requests served, by Bot API method name.
        self.calls: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> LocalBotAPI:
        """Listen; returns this server."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> LocalBotAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._host}:{self._port}"

    def bot(self, **kwargs: Any) -> Bot:
        """An aiogram Bot whose requests go to this server."""
        api = TelegramAPIServer.from_base(self.base_url)
        return Bot(self.token, session=AiohttpSession(api=api), **kwargs)

    # -- simulated users -------------------------------------------------------

    def user_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str = "private",
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """Queue a text message from a user, as Telegram would deliver it."""
        message = text_message(
            next(self._message_ids),
            chat_id,
            text,
            user_id=user_id,
            chat_type=chat_type,
            thread_id=thread_id,
        )
        return self.enqueue({"message": message})

    def enqueue(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue any update payload; an ``update_id`` is assigned."""
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        self._arrived.set()
        return update

    @property
    def pending(self) -> int:
        """Updates queued and not yet confirmed by the bot."""
        return len(self._updates)

    async def wait_sent(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the bot has sent at least ``count`` messages; TimeoutError says how
        many it had sent."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.sent) < count:
                    self._sent_changed.clear()
                    await self._sent_changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"the bot sent {len(self.sent)} of the {count} messages waited for "
                f"within {timeout:g} s"
            ) from None

    # -- the API -----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.calls[method] += 1
        if request.match_info["token"] != self.token:
            return _reply({"ok": False, "error_code": 401, "description": "Unauthorized"}, 401)
        params: dict[str, Any] = dict(await request.post()) if request.can_read_body else {}
        params.update(request.query)
        if method == "getMe":
            return _ok(self.bot_user)
        if method == "getUpdates":
            return _ok(await self._get_updates(params))
        if method == "sendMessage":
            return _ok(self._send_message(params))
        if method in _NO_OP_METHODS:
            return _ok(True)
        return _reply(
            {
                "ok": False,
                "error_code": 404,
                "description": f"Not Found: method {method} is not simulated by LocalBotAPI",
            },
            404,
        )

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        timeout = float(params.get("timeout") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            except TimeoutError:
                pass
        return self._updates[:limit]

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        raw_chat = params.get("chat_id", "0")
        chat_id: int | str = int(raw_chat) if str(raw_chat).lstrip("-").isdigit() else raw_chat
        record = {"chat_id": chat_id, "text": params.get("text", "")}
        for extra in ("reply_markup", "parse_mode", "message_thread_id"):
            if extra in params:
                record[extra] = params[extra]
        self.sent.append(record)
        self._sent_changed.set()
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": self.bot_user,
            "text": record["text"],
        }


def _ok(result: Any) -> web.Response:
    return _reply({"ok": True, "result": result})


def _reply(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload), status=status, content_type="application/json")
