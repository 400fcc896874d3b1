"""Cancellation at each await point leaves no stuck key and loses no committed write."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from actorsess import SessionConfig, SessionDeadlockError, SessionManager
from actorsess._actor import SessionActor

from .helpers import RecordingStorage, counter


async def test_cancelled_waiter_does_not_block_the_key() -> None:
    """A block cancelled while queued for its turn leaves the queue moving."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:
        release = asyncio.Event()

        async def holder() -> None:
            async with m.session("k") as s:
                await release.wait()
                s["n"] += 1

        async def waiter() -> None:
            async with m.session("k") as s:
                s["n"] += 100

        t_hold = asyncio.create_task(holder())
        await asyncio.sleep(0)
        t_wait = asyncio.create_task(waiter())
        t_next = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        t_wait.cancel()
        release.set()
        await t_hold
        await t_next
        with pytest.raises(asyncio.CancelledError):
            await t_wait
        assert await m.get("k") == {"n": 101}


async def test_waiter_cancelled_just_as_it_is_handed_the_turn_passes_it_on() -> None:
    """If the turn is handed over and the receiver is cancelled, the next waiter gets it."""
    actor: SessionActor[dict[str, int]] = SessionActor("k", "k")
    actor.held = True
    second = asyncio.create_task(actor.acquire())
    third = asyncio.create_task(actor.acquire())
    await asyncio.sleep(0)
    assert actor.release() is False  # the turn now belongs to `second`...
    second.cancel()  # ...which is cancelled before it could run
    results = await asyncio.gather(second, third, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] is None and actor.held
    assert actor.release() is True and not actor.held


async def test_cancel_inside_the_block_rolls_back() -> None:
    """A block cancelled mid-way commits nothing and frees the key."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:
        inside = asyncio.Event()

        async def slow() -> None:
            async with m.session("k") as s:
                s["n"] = 42
                inside.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(slow())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(1):
            assert await m.get("k") == {"n": 0}


async def test_cancel_during_load_frees_the_key_and_others_still_load() -> None:
    """Cancelling the block that waits for a load leaves the load usable by the next."""
    storage = RecordingStorage()
    storage.load_gate = asyncio.Event()
    async with SessionManager(storage, initial=counter) as m:
        first = asyncio.create_task(m.update("k", lambda s: s.update(n=1)))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(m.update("k", lambda s: s.update(n=s["n"] + 1)))
        await asyncio.sleep(0.01)
        first.cancel()
        storage.load_gate.set()
        await second
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await m.get("k") == {"n": 1}
        assert len(storage.load_batches) == 1


async def test_cancelled_persist_and_flush_leave_the_write_pending() -> None:
    """Cancelling persist()/flush() never cancels the write itself."""
    storage = RecordingStorage()
    storage.write_gate = asyncio.Event()
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(flush_interval=0.001)
    ) as m:
        await m.update("k", lambda s: s.update(n=1))
        for waiter in (m.persist("k"), m.flush()):
            task = asyncio.create_task(waiter)
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        storage.write_gate.set()
        await m.flush()
        assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'


@pytest.mark.parametrize("steps", range(1, 12))
async def test_cancel_at_each_step_of_a_busy_key(steps: int) -> None:
    """Cancel one of several contending blocks after N loop steps: totals stay exact."""
    storage = RecordingStorage()
    config = SessionConfig(flush_interval=0.001)
    async with SessionManager(storage, initial=counter, config=config) as m:
        done: list[int] = []

        async def bump(i: int) -> None:
            async with m.session("k") as s:
                n = s["n"]
                await asyncio.sleep(0)
                s["n"] = n + 1
            done.append(i)

        tasks = [asyncio.create_task(bump(i)) for i in range(6)]
        for _ in range(steps):
            await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with asyncio.timeout(1):
            assert await m.update("k", lambda s: s["n"]) == len(done)
        await m.flush()
        assert storage.raw("actorsess:k") == b'as1:%d:{"n":%d}' % (len(done), len(done))


async def test_flusher_cancelled_mid_write_keeps_the_session_dirty_and_reports_it() -> None:
    """close() past its timeout cancels a hanging write: the session stays dirty and is logged."""
    from .conftest import Events

    events = Events()
    storage = RecordingStorage()
    storage.write_gate = asyncio.Event()  # the write never completes
    config = SessionConfig(flush_interval=0.001, close_timeout=0.2, write_timeout=30)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    await m.update("k", lambda s: s.update(n=1))
    await storage.write_started.wait()
    await m.close()
    [entry] = events.named("session.unflushed")
    assert entry["keys"] == ["k"]
    assert m.stats().dirty == 1
    assert storage.raw("actorsess:k") is None


class _NoSearch(deque[asyncio.Future[None]]):
    """A waiter queue that fails the test if anything searches it."""

    def remove(self, value: asyncio.Future[None]) -> None:
        raise AssertionError("a cancelled waiter was searched for in the queue")


@pytest.mark.parametrize("order", ["newest first", "oldest first", "shuffled"])
async def test_cancelling_waiters_never_searches_the_queue(order: str) -> None:
    """Cancelling queued blocks costs O(1) each (40k waiters on one hot key would block
    the loop for seconds with a search per cancellation); the queue still hands the
    turn to the live waiters in order, and nothing is left behind."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:
        release = asyncio.Event()

        async def holder() -> None:
            async with m.session("k"):
                await release.wait()

        async def waiter(n: int) -> None:
            async with m.session("k") as s:
                s["n"] = s["n"] * 10 + n

        hold = asyncio.create_task(holder())
        await asyncio.sleep(0)
        actor = m._registry.peek("k")
        assert actor is not None
        actor.waiters = _NoSearch()
        waiters = [asyncio.create_task(waiter(i % 10)) for i in range(2000)]
        await asyncio.sleep(0)
        survivors = {3, 1500}
        doomed = [t for i, t in enumerate(waiters) if i not in survivors]
        if order == "newest first":
            doomed.reverse()
        elif order == "shuffled":
            random.Random(5).shuffle(doomed)
        for task in doomed:
            task.cancel()
            await asyncio.sleep(0)
        assert m.stats().active == 1 + len(survivors)
        release.set()
        await hold
        await asyncio.gather(*waiters, return_exceptions=True)
        assert await m.get("k") == {"n": 30}  # 3, then 1500 % 10 == 0
        assert not actor.waiters and not actor.held


async def test_a_block_that_opens_its_own_key_again_raises_instead_of_hanging() -> None:
    """Re-entry is a wait-for cycle of one: the inner block raises SessionDeadlockError
    naming the key, promptly; the outer block rolls back; the key stays usable."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:
        async with asyncio.timeout(2):
            with pytest.raises(SessionDeadlockError, match="'a'"):
                async with m.session("a") as outer:
                    outer["n"] = 5
                    async with m.session("a"):
                        pass
            with pytest.raises(SessionDeadlockError, match="'b'"):
                async with m.session("b"):
                    await m.update("b", lambda s: s.update(n=1))
        assert await m.get("a") == {"n": 0}
        await m.update("a", lambda s: s.update(n=1))
        assert await m.get("a") == {"n": 1}


async def test_two_tasks_waiting_for_each_others_session_do_not_hang() -> None:
    """Task one holds a and waits for b; task two holds b and waits for a: the wait that
    closes the cycle raises SessionDeadlockError, the other task completes."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:
        both = asyncio.Barrier(2)

        async def transfer(mine: str, theirs: str) -> str:
            async with m.session(mine) as own:
                own["n"] -= 1
                await both.wait()
                try:
                    await m.update(theirs, lambda s: s.update(n=s["n"] + 1))
                except SessionDeadlockError as exc:
                    return f"refused {exc.keys}"
                return "done"

        async with asyncio.timeout(2):
            results = await asyncio.gather(transfer("a", "b"), transfer("b", "a"))
        assert sorted(results)[0] == "done" and sorted(results)[1].startswith("refused")


async def test_a_long_wait_behind_a_busy_holder_is_not_taken_for_a_deadlock() -> None:
    """A holder that is merely slow (it waits for nothing of ours) keeps its waiters
    waiting, however long: no false alarm."""
    async with SessionManager(RecordingStorage(), initial=counter) as m:

        async def slow() -> None:
            async with m.session("k") as s:
                await asyncio.sleep(0.3)
                s["n"] += 1

        holder = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        await m.update("k", lambda s: s.update(n=s["n"] + 10))
        await holder
        assert await m.get("k") == {"n": 11}
