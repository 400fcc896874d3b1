"""ForwardingRequestHandler: the webhook of a worker in partitioned mode.

Several workers sit behind a load balancer that routes at random. A worker that
receives an update of a partition it does not own appends the raw update to
that partition's stream in Redis and answers the webhook at once: the update is
acknowledged once it is stored. The partition's owner reads it and feeds it to
its dispatcher (``UpdateFeeder``), so sessions stay where they are and only
updates move. An update of a partition the worker owns runs here, in order with
what was forwarded before it, and its handler's answer goes back in the webhook
response as with aiogram's own handler (unless the feeder is idle in a blocking
read: then it goes through the stream too, see ``UpdateFeeder``, and like every
forwarded update's, its answer is a Bot API call).

Forwards go out one batch at a time (group commit): the updates that arrive
while a batch's commands are out wait for them, then go together, one ``XADD``
per partition; the busier the worker, the more updates each command carries.
Bodies that are not updates are answered 400, naming the first thing wrong. The
commonest updates are routed from their raw JSON without being parsed in full
(their owner parses them); one of those whose JSON is well formed but not a
valid update is logged by its owner (``forward.bad_update``) instead.

Updates without a chat or user (no session) run where they arrive.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import orjson
from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Update
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web
from pydantic import ValidationError

from actorsess._partitions import Partitions
from actorsess.aiogram._feeder import UpdateFeeder
from actorsess.aiogram._keys import strategy_part
from actorsess.exceptions import PartitionNotOwnedError


class _Unknown(enum.Enum):
    UNKNOWN = "unknown"


#: ``_chat_of_raw`` could not tell: the update is parsed in full.
UNKNOWN = _Unknown.UNKNOWN


class ForwardingRequestHandler(SimpleRequestHandler):
    """aiogram's ``SimpleRequestHandler`` for partitioned mode (see the module docstring).

    ``register(app, path=...)`` also starts the worker's ``Partitions`` and the
    feeder with the app, and on shutdown gives every partition up (their
    sessions written first) before the dispatcher's own shutdown closes the
    managers.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        bot: Bot,
        partitions: Partitions,
        *,
        strategy: FSMStrategy = FSMStrategy.USER_IN_CHAT,
        trim_interval: float = 5.0,
        secret_token: str | None = None,
        **data: Any,
    ) -> None:
        """Serve ``dispatcher`` for ``bot`` as one of several partitioned workers.

        Args:
            dispatcher: The bot's dispatcher, with its ``SessionMiddleware`` /
                ``ActorFSMStorage`` on managers made with ``partitions``.
            bot: The bot.
            partitions: This worker's ``Partitions`` (the managers' too).
            strategy: The key strategy of the sessions (as given to
                ``SessionMiddleware`` and the FSM): it decides which chat an
                update's sessions belong to.
            trim_interval: Seconds between the trims of the streams of this worker's
                partitions (each first writes the dirty sessions): what the streams
                keep in Redis is about this long a stretch of forwarded updates.
            secret_token: As for ``SimpleRequestHandler``.
            data: Extra data for handlers, as for ``SimpleRequestHandler``.
        """
        super().__init__(
            dispatcher, bot, handle_in_background=False, secret_token=secret_token, **data
        )
        self.partitions = partitions
        self._strategy = strategy
        if not trim_interval > 0:
            raise ValueError(f"trim_interval must be > 0 seconds, got {trim_interval!r}")
        self.feeder = UpdateFeeder(
            dispatcher, bot, partitions, self.chat_of, trim_interval=trim_interval, data=data
        )
        #: Updates to forward in the next XADDs, by partition, and their shared outcome.
        self._batch: dict[int, list[bytes]] = {}
        self._sent: asyncio.Future[dict[int, Exception]] | None = None
        #: The batch whose XADDs are out (one at a time).
        self._sending: asyncio.Task[dict[int, Exception]] | None = None

    def register(self, app: web.Application, /, path: str, **kwargs: Any) -> None:
        super().register(app, path=path, **kwargs)
        app.on_startup.append(self._on_startup)
        # First of all shutdown callbacks: the managers must still run while the
        # partitions' sessions are written.
        app.on_shutdown.insert(0, self._on_shutdown)

    async def _on_startup(self, app: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        """Join the workers and start feeding the partitions this one gets."""
        self.feeder.start()
        await self.partitions.start()

    async def stop(self) -> None:
        """Give every partition up (sessions written, streams trimmed), then stop."""
        while (out := self._sent or self._sending) is not None:
            await asyncio.wait([out])  # every update taken is stored (or refused) first
        await self.partitions.stop()
        await self.feeder.stop()
        await self.partitions.store.release_connections()

    def chat_of(self, update: Update) -> str | None:
        """The chat an update's sessions belong to (the chat part of their keys)."""
        context = UserContextMiddleware.resolve_event_context(update)
        return self._chat_part(context.chat_id, context.user_id)

    def _chat_part(self, chat_id: int | None, user_id: int | None) -> str | None:
        # The topic and the business connection are parts of a key too, but never its
        # chat part: the partition depends on the chat and the user alone.
        part = strategy_part(self._strategy, chat_id, user_id, None, None)
        return None if part is None else part.partition(":")[0]

    def _chat_of_raw(self, raw: bytes) -> str | _Unknown | None:
        """``chat_of`` read off the raw JSON of the commonest updates (a message, an
        edited one, a callback query), without parsing the whole update: most updates
        a worker receives are forwarded, and their owner parses them. ``UNKNOWN`` for
        anything else (parsed then). Should this ever place a chat other than aiogram
        does, the owner's handler borrows the session: slower, still right."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return UNKNOWN
        if type(body) is not dict or len(body) != 2 or type(body.get("update_id")) is not int:
            return UNKNOWN
        try:
            if (event := body.get("message") or body.get("edited_message")) is not None:
                chat, sender = event["chat"]["id"], event.get("from")
            elif (event := body.get("callback_query")) is not None:
                message, sender = event.get("message"), event["from"]
                chat = None if message is None else message["chat"]["id"]
            else:
                return UNKNOWN
            user = None if sender is None else sender["id"]
        except (KeyError, TypeError):
            return UNKNOWN
        if type(chat) not in (int, type(None)) or type(user) not in (int, type(None)):
            return UNKNOWN
        return self._chat_part(chat, user)

    def _parse(self, bot: Bot, raw: bytes) -> Update:
        """The update in ``raw``; raises the 400 answer naming the first thing wrong."""
        try:
            return Update.model_validate_json(raw, context={"bot": bot})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise web.HTTPBadRequest(
                text=f"not a Telegram update: {where}: {first['msg']} ({exc.error_count()} errors)"
            ) from None

    async def _handle_request(self, bot: Bot, request: web.Request) -> web.Response:
        raw = await request.read()
        update: Update | None = None
        chat = self._chat_of_raw(raw)
        if chat is UNKNOWN:
            update = self._parse(bot, raw)
            chat = self.chat_of(update)
        if chat is None:
            update = update or self._parse(bot, raw)
            result = await self.dispatcher.feed_update(bot, update, **self.data)
            return web.Response(body=self._build_response_writer(bot=bot, result=result))
        assert isinstance(chat, str)
        partition = self.partitions.partition_of(chat)
        if self.feeder.can_run_here(partition):
            update = update or self._parse(bot, raw)
            try:
                result = await self.feeder.run_here(partition, chat, update)
            except PartitionNotOwnedError:
                pass  # moved while it waited: forwarded below
            else:
                return web.Response(body=self._build_response_writer(bot=bot, result=result))
        try:
            await self._forward(partition, raw)
        except Exception as exc:
            self.partitions.log.warning(
                "forward.failed", partition=partition, error=f"{type(exc).__name__}: {exc}"
            )
            # Not acknowledged: Telegram sends it again.
            return web.Response(status=503, text="could not forward the update")
        return web.json_response({}, dumps=bot.session.json_dumps)

    async def _forward(self, partition: int, raw: bytes) -> None:
        self._batch.setdefault(partition, []).append(raw)
        sent = self._sent
        if sent is None:
            sent = self._sent = asyncio.get_running_loop().create_future()
            if self._sending is None:
                asyncio.get_running_loop().call_soon(self._send_batch)
            # else: sent once the batch that is out is back
        failed = await asyncio.shield(sent)
        if partition in failed:
            raise failed[partition]

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, {}
        sent, self._sent = self._sent, None
        assert sent is not None and self._sending is None
        task = asyncio.get_running_loop().create_task(self.partitions.store.forward(batch))
        self._sending = task

        def done(task: asyncio.Task[dict[int, Exception]]) -> None:
            self._sending = None
            if task.cancelled():
                sent.cancel()
            elif task.exception() is not None:
                sent.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                sent.set_result(task.result())
            if self._sent is not None:
                self._send_batch()  # what arrived while this batch was out

        task.add_done_callback(done)
