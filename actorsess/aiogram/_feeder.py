"""UpdateFeeder: feeds the updates of this worker's partitions to its dispatcher.

A reader task reads the streams of the owned partitions (``XREAD``, many
entries per call; on Redis Cluster, one reader per slot: one ``XREAD`` cannot
span slots). A chat's updates run one after another in stream order, each as a
task of its own, different chats at once: an update whose chat has one running
waits in the chat's line with no task, and starts when that one ends. An update
the worker received itself for a partition it owns (``run_here``) skips the
stream: it waits for the next read that starts after it arrived, so every update
a receiver had acknowledged before is started first, and then runs like the
others. While the reader waits in a blocking read such an update goes through
the stream instead (its ``XADD`` wakes the reader), so it never waits for the
read's timeout.

A forwarded update was acknowledged when it was appended, so a failure of
storage does not end it: if none of its sessions could be opened (a load failed,
or a session of another partition was not lent in time) and it changed none, it
runs again in its place, its chat's next update still behind it, until storage
answers or the partition is lost. Any other failure of its handler is logged and
counts as handled, as in aiogram's polling.

Every ``trim_interval`` the feeder asks the managers to write what is dirty
and then drops the entries whose updates have all ended (``XTRIM MINID``, fenced
by the partition lease); the next owner of a partition reads only what is left.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.methods import TelegramMethod
from aiogram.types import Update

from actorsess._loans import LoanRequest, serve_loan
from actorsess._partitions import DELIVERY, FEEDING, Delivery, Partitions, Stamp
from actorsess.exceptions import (
    BackpressureTimeoutError,
    LeaseTimeoutError,
    PartitionNotOwnedError,
    StorageError,
)
from actorsess.storage._redis_partitions import Entry

#: Chat part of an update (see ``_forwarding.chat_of``), or None for "no chat".
ChatOf = Callable[[Update], str | None]
#: What runs for an update (or a loan request) in its chat's line.
Work = Callable[[], Coroutine[Any, Any, Any]]

# How long a read waits for entries when the last one found none. A partition gained
# while its reader waits cuts the wait short (its connection is dropped: rare).
_BLOCK_MS = 250
# Reads that find nothing, one after another, before the reader waits in a blocking
# read (while it does, an update received here for an owned partition goes through
# the stream, as its XADD is what wakes the reader): a short lull under load keeps
# such updates on the direct path.
_IDLE_READS = 3
# On Redis Cluster a reader serves one slot (a partition), whose share of the load is
# small: non-blocking reads there mostly find nothing (measured: 1.9 XREAD per update
# on spread chats, 0.8 blocking at once). So each read blocks at once, and for longer
# (a partition gained cuts the wait short): an idle worker then costs one read per
# owned partition every 2 s.
_IDLE_READS_PER_SLOT = 0
_BLOCK_MS_PER_SLOT = 2000
# A forwarded update none of whose sessions could be opened runs again after this
# long, doubling up to _RETRY_MOST, while its partition stays here.
_RETRY_FIRST = 0.05
_RETRY_MOST = 1.0
# Under load, the shortest time between the starts of two reads: each read then
# takes what came meanwhile, instead of one read per entry (Redis calls per update),
# for at most this much more latency.
_READ_GAP = 0.005


class _Read:
    """An entry read from a stream: its id, and how many of its updates still run."""

    __slots__ = ("id", "running")

    def __init__(self, entry_id: str) -> None:
        self.id = entry_id
        self.running = 0


class _Progress:
    """A partition's entries read and not yet trimmed, with their running updates."""

    __slots__ = ("done_upto", "entries", "tasks", "trimmed")

    def __init__(self) -> None:
        #: Entries not all of whose updates have ended, oldest first.
        self.entries: collections.deque[_Read] = collections.deque()
        #: The newest entry id all of whose updates (and those before) have ended.
        self.done_upto: str | None = None
        self.trimmed: str | None = None
        self.tasks: set[asyncio.Task[Any]] = set()


class _Waiting:
    """An update (or a loan request) waiting for its chat's update before it to end: it
    has no task until then, and starts in the context it was read in."""

    __slots__ = ("answer", "context", "partition", "progress", "record", "work")

    def __init__(
        self,
        partition: int,
        progress: _Progress,
        work: Work,
        record: _Read | None,
        context: contextvars.Context,
        answer: asyncio.Future[Any] | None,
    ) -> None:
        self.partition = partition
        self.progress = progress
        self.work = work
        self.record = record
        self.context = context
        #: Its outcome, for its sender (an update received here).
        self.answer = answer


def _settle(answer: asyncio.Future[Any], task: asyncio.Task[Any]) -> None:
    """Give ``answer`` the outcome of ``task``."""
    if answer.done():
        return
    if task.cancelled():
        answer.cancel()
    elif (error := task.exception()) is not None:
        answer.set_exception(error)
    else:
        answer.set_result(task.result())


def _cancel_if_cancelled(task: asyncio.Task[Any], answer: asyncio.Future[Any]) -> None:
    """Its sender gave up waiting (its request was cancelled): so does the update."""
    if answer.cancelled():
        task.cancel()


class _Reader:
    """Reads the streams of the owned partitions of one read group
    (``RedisPartitionStore.read_group``), and what waits for its next read."""

    __slots__ = ("after", "arrived", "blocking", "reading", "task", "wake")

    def __init__(self) -> None:
        #: Fed partitions of the group -> the id of the last entry read.
        self.after: dict[int, str] = {}
        #: Updates received here, waiting for the next read to start (and end).
        self.arrived: list[asyncio.Future[None]] = []
        self.blocking = False
        #: The read out now.
        self.reading: asyncio.Task[list[tuple[int, list[Entry]]]] | None = None
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class UpdateFeeder:
    """Reads owned partitions' streams into the dispatcher (see the module docstring)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        bot: Bot,
        partitions: Partitions,
        chat_of: ChatOf,
        *,
        read_count: int = 500,
        trim_interval: float = 5.0,
        data: dict[str, Any] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._bot = bot
        self._partitions = partitions
        self._store = partitions.store
        self._chat_of = chat_of
        self._read_count = read_count
        self._trim_interval = trim_interval
        self._data = data or {}
        self._log = partitions.log
        #: Readers by read group, and fed partitions -> their reader.
        self._readers: dict[int, _Reader] = {}
        self._fed: dict[int, _Reader] = {}
        self._progress: dict[int, _Progress] = {}
        #: Chats with an update running -> their updates waiting for it, in order (None
        #: until one waits).
        self._lines: dict[str, collections.deque[_Waiting] | None] = {}
        self._trimming: asyncio.Task[None] | None = None
        self._idle_reads, self._block_ms = (
            (_IDLE_READS_PER_SLOT, _BLOCK_MS_PER_SLOT)
            if self._store.cluster
            else (_IDLE_READS, _BLOCK_MS)
        )
        #: Updates fed so far (forwarded and received here).
        self.fed = 0

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        self._trimming = asyncio.get_running_loop().create_task(self._trim_forever())
        self._partitions.subscribe(self)

    async def stop(self) -> None:
        self._partitions.unsubscribe(self)
        tasks = [r.task for r in self._readers.values() if r.task is not None]
        if self._trimming is not None:
            tasks.append(self._trimming)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._trimming = None
        # Updates received here that wait for a read: they find their partition no
        # longer fed, and their handler forwards them instead.
        self._fed.clear()
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            self._release_arrived(reader.arrived)

    # -- PartitionListener ----------------------------------------------------------

    def gained(self, partition: int) -> None:
        group = self._store.read_group(partition)
        reader = self._readers.get(group)
        if reader is None:
            reader = self._readers[group] = _Reader()
            reader.task = asyncio.get_running_loop().create_task(self._read_forever(reader))
        # From the start of what is left: entries the last owner did not trim.
        reader.after[partition] = "0-0"
        self._fed[partition] = reader
        self._progress[partition] = _Progress()
        reader.wake.set()
        if reader.blocking and reader.reading is not None:
            reader.reading.cancel()  # it waits on the others: read again with this one

    def _stop_reading(self, partition: int) -> None:
        reader = self._fed.pop(partition, None)
        if reader is not None:
            reader.after.pop(partition, None)

    async def stop_feeding(self, partition: int) -> None:
        self._stop_reading(partition)
        progress = self._progress.get(partition)
        while progress is not None and progress.tasks:
            # (An update waiting behind one of these starts as that one ends.)
            await asyncio.wait(list(progress.tasks))

    async def let_go(self, partition: int) -> bool:
        return True

    async def settled(self, partition: int) -> None:
        # Its sessions are written: what its updates did is in storage.
        progress = self._progress.get(partition)
        if progress is not None and progress.done_upto is not None:
            await self._trim({partition: (progress, progress.done_upto)})
        self._progress.pop(partition, None)

    def lost(self, partition: int) -> None:
        self._stop_reading(partition)
        progress = self._progress.pop(partition, None)
        if progress is not None:
            for task in progress.tasks:
                task.cancel()  # storage refuses what they would write

    async def persist(self) -> bool:
        return True

    # -- updates received here ----------------------------------------------------

    def can_run_here(self, partition: int) -> bool:
        """Whether an update of ``partition`` received here may skip the stream now."""
        reader = self._fed.get(partition)
        return reader is not None and not reader.blocking and self._partitions.holds(partition)

    async def run_here(self, partition: int, chat: str, update: Update) -> Any:
        """Feed an update received here; returns the handler's result, or raises
        ``PartitionNotOwnedError`` if the partition moved meanwhile (then the
        caller forwards it)."""
        reader = self._fed.get(partition)
        if reader is not None:
            waiter = asyncio.get_running_loop().create_future()
            reader.arrived.append(waiter)
            reader.wake.set()
            await waiter
        if partition not in self._fed or not self._partitions.holds(partition):
            raise PartitionNotOwnedError(chat, partition)
        outcome = self._start(partition, chat, update)
        assert outcome is not None  # (one received here is answered)
        return await outcome

    # -- reading the streams -------------------------------------------------------------

    async def _read_forever(self, reader: _Reader) -> None:
        failures = 0
        empty = 0  # reads in a row that found nothing
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            if empty < _IDLE_READS:
                gap = last + _READ_GAP - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
            if not reader.after:
                self._release_arrived(reader.arrived)
                reader.wake.clear()
                await reader.wake.wait()
                continue
            arrived, reader.arrived = reader.arrived, []
            block = None if empty < self._idle_reads or arrived else self._block_ms
            last = loop.time()
            reader.blocking = block is not None
            asked = dict(reader.after)
            reading = reader.reading = loop.create_task(
                self._store.read(asked, self._read_count, block)
            )
            try:
                await asyncio.wait([reading])
            finally:
                reader.blocking = False
                reader.reading = None
                reading.cancel()  # done already, unless this reader is being stopped
            if reading.cancelled():  # cut short by a partition gained: read again now
                reader.arrived[:0] = arrived
                continue
            try:
                read = reading.result()
                failures = 0
            except Exception as exc:
                failures += 1
                self._log.warning("forward.read_failed", error=f"{type(exc).__name__}: {exc}")
                reader.arrived[:0] = arrived
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            empty = 0 if read else empty + 1
            # Lost and taken again while the read was out: read anew from what is left,
            # as what this read found may lie past an update that the loss cut short.
            stale = [p for p, upto in asked.items() if reader.after.get(p, upto) != upto]
            for partition, entries in read:
                if reader.after.get(partition) == asked[partition]:  # (else given up)
                    self._dispatch(reader, partition, entries)
            if stale:
                # An update received here may be of such a partition: it waits for the
                # read from what is left, where updates acknowledged before it are.
                reader.arrived[:0] = arrived
            else:
                self._release_arrived(arrived)

    @staticmethod
    def _release_arrived(arrived: list[asyncio.Future[None]]) -> None:
        for waiter in arrived:
            if not waiter.done():
                waiter.set_result(None)

    def _dispatch(self, reader: _Reader, partition: int, entries: list[Entry]) -> None:
        progress = self._progress[partition]
        for entry in entries:
            reader.after[partition] = entry.id
            ms, seq = (int(part) for part in entry.id.split("-"))
            record = _Read(entry.id)
            progress.entries.append(record)
            if entry.loan is not None:
                self._lend(partition, (ms, seq, 0), entry.loan, record)
            for index, raw in enumerate(entry.updates):
                try:
                    update = Update.model_validate_json(raw, context={"bot": self._bot})
                except ValueError as exc:
                    # Receivers forward only updates they parsed; log and skip.
                    self._log.error("forward.bad_update", partition=partition, error=str(exc))
                    continue
                chat = self._chat_of(update) or f"#{update.update_id}"
                record.running += 1
                self._start(partition, chat, update, (ms, seq, index), record)
            if record.running == 0:
                self._advance(progress)

    def _lend(self, partition: int, stamp: Stamp, raw: bytes, record: _Read) -> None:
        """Serve a loan request in its chat's line, as an update of the chat would run."""
        try:
            request = LoanRequest.decode(raw)
            chat = self._partitions.chat_of_key(request.key)
        except ValueError as exc:  # (InvalidKeyError too) written by no actorsess: skip
            self._log.error("loan.bad_request", partition=partition, error=str(exc))
            return
        record.running += 1
        self._chain(
            partition,
            chat,
            functools.partial(serve_loan, self._partitions, partition, stamp, request),
            record,
        )

    def _start(
        self,
        partition: int,
        chat: str,
        update: Update,
        stamp: Stamp | None = None,
        record: _Read | None = None,
    ) -> asyncio.Future[Any] | None:
        """Start one update after the chat's previous one; ``stamp`` and ``record`` (its
        stream entry) for a forwarded update, None for one received here (then the
        returned future gives its outcome)."""
        delivery = None if stamp is None else Delivery(stamp)
        delivering, feeding = DELIVERY.set(delivery), FEEDING.set(partition)
        try:
            work = functools.partial(self._feed, update, partition, delivery)
            return self._chain(partition, chat, work, record, answered=stamp is None)
        finally:
            FEEDING.reset(feeding)
            DELIVERY.reset(delivering)

    def _chain(
        self,
        partition: int,
        chat: str,
        work: Work,
        record: _Read | None,
        *,
        answered: bool = False,
    ) -> asyncio.Future[Any] | None:
        """Run ``work`` as a task, in the current context, once the chat's previous one
        has ended. Returns the task if it starts now; if it waits, a future of its
        outcome when ``answered``, else None."""
        progress, lines = self._progress[partition], self._lines
        if chat not in lines:
            lines[chat] = None  # running, nothing waiting
            return self._run(progress, chat, work, record, None)
        line = lines[chat]
        if line is None:
            line = lines[chat] = collections.deque()
        # It waits without a task: started by the previous one's end (see ``_next``).
        answer = asyncio.get_running_loop().create_future() if answered else None
        line.append(_Waiting(partition, progress, work, record, contextvars.copy_context(), answer))
        return answer

    def _run(
        self,
        progress: _Progress,
        chat: str,
        work: Work,
        record: _Read | None,
        context: contextvars.Context | None,
    ) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work(), context=context)
        progress.tasks.add(task)
        task.add_done_callback(functools.partial(self._ended, progress, chat, record))
        return task

    async def _feed(self, update: Update, partition: int, delivery: Delivery | None) -> Any:
        """Run one update; ``delivery`` for a forwarded one (None: received here, and its
        errors go back to its sender, who was not answered yet)."""
        self.fed += 1
        if delivery is None:
            return await self._dispatcher.feed_update(self._bot, update, **self._data)
        attempt = 0
        while True:
            try:
                result = await self._dispatcher.feed_update(self._bot, update, **self._data)
                error = delivery.failed
            except PartitionNotOwnedError:
                # Its lease could not be relied on when this update ran. It must not
                # count as handled (it would be trimmed away): drop the partition, so
                # that it is read again from its stream, by whoever owns it next.
                self._partitions.drop(partition, "an update of it ran while its lease had lapsed")
                return None
            except (StorageError, BackpressureTimeoutError, LeaseTimeoutError) as exc:
                error = exc
            except Exception as exc:
                self._update_failed(update, exc)  # as aiogram's polling does
                return None
            if error is None:
                if isinstance(result, TelegramMethod):
                    # Its webhook was answered already, so the answer is a call.
                    try:
                        await self._dispatcher.silent_call_request(self._bot, result)
                    except Exception as exc:  # (Telegram's own refusals aiogram logs)
                        self._update_failed(update, exc)
                return None
            if delivery.changed:
                # A change of it is kept (and written when storage answers): running it
                # again could make that change twice.
                self._update_failed(update, error)
                return None
            # Nothing of it happened, and it was acknowledged: it runs again, still
            # ahead of its chat's next update, until storage answers or the partition
            # is lost (then its next owner reads it again).
            attempt += 1
            self._log.warning(
                "forward.update_retry",
                partition=partition,
                update_id=update.update_id,
                attempt=attempt,
                error=f"{type(error).__name__}: {error}",
            )
            await asyncio.sleep(min(_RETRY_FIRST * 2 ** (attempt - 1), _RETRY_MOST))
            delivery.failed = None

    def _update_failed(self, update: Update, error: Exception) -> None:
        """A forwarded update whose handler failed is logged and counted as handled."""
        self._log.error(
            "forward.update_failed",
            update_id=update.update_id,
            error=f"{type(error).__name__}: {error}",
        )

    def _ended(
        self, progress: _Progress, chat: str, record: _Read | None, task: asyncio.Task[Any]
    ) -> None:
        progress.tasks.discard(task)
        if record is not None:
            record.running -= 1
            self._advance(progress)
        self._next(chat)

    def _next(self, chat: str) -> None:
        """Start the chat's next waiting update, now that the one before it has ended."""
        line = self._lines[chat]
        while line:
            waiting = line.popleft()
            answer = waiting.answer
            if answer is not None and answer.cancelled():
                continue  # its sender gave up before it started
            if self._progress.get(waiting.partition) is not waiting.progress:
                # Lost (its running updates were cancelled) or given up since it was read:
                # it must not start. If forwarded, the partition's next reading runs it;
                # if received here, its sender forwards it.
                if answer is not None:
                    answer.set_exception(PartitionNotOwnedError(chat, waiting.partition))
                continue
            task = self._run(waiting.progress, chat, waiting.work, waiting.record, waiting.context)
            if answer is not None:
                task.add_done_callback(functools.partial(_settle, answer))
                answer.add_done_callback(functools.partial(_cancel_if_cancelled, task))
            return
        del self._lines[chat]

    @staticmethod
    def _advance(progress: _Progress) -> None:
        """Move ``done_upto`` past the oldest entries all of whose updates have ended."""
        entries = progress.entries
        while entries and entries[0].running == 0:
            progress.done_upto = entries.popleft().id

    # -- trimming -------------------------------------------------------------------------

    async def _trim_forever(self) -> None:
        while True:
            await asyncio.sleep(self._trim_interval)
            marks = {
                p: (progress, progress.done_upto)
                for p, progress in self._progress.items()
                if progress.done_upto is not None and progress.done_upto != progress.trimmed
            }
            if not marks:
                continue
            try:
                if await self._partitions.persist():
                    await self._trim(marks)
            except Exception as exc:
                self._log.warning("forward.trim_failed", error=f"{type(exc).__name__}: {exc}")

    async def _trim(self, marks: dict[int, tuple[_Progress, str]]) -> None:
        """Trim each partition up to its mark, unless it was lost since the mark was
        taken: then an update counted as ended may have been cut short, and the
        partition's next reading (here, if the lease comes back) needs it."""
        before = {}
        for partition, (progress, upto) in marks.items():
            if self._progress.get(partition) is progress:
                ms, seq = upto.split("-")
                before[partition] = f"{ms}-{int(seq) + 1}"  # MINID keeps ids >= it
        await self._store.trim(self._partitions.token, before)
        for progress, upto in marks.values():
            progress.trimmed = upto
