"""Wait-for cycles between session turns, found by the wait that closes one.

A block that opens its own key again, or two tasks that each hold one session and
wait for the other's, would wait forever. Every wait for a held turn arms a check
that runs if the wait lasts ``CHECK_AFTER`` (ordinary contention is over long
before): it follows holder -> the session that holder waits for -> its holder ...
and if the chain comes back to the waiting task, that wait ends with
SessionDeadlockError naming the keys; its block rolls back and the others go on.

Nothing here runs on the fast path. A turn records only its SessionTurn as the
holder (no ``asyncio.current_task()``, which costs a quarter of a cached turn);
the check finds that turn's task by looking for it in the frames of each task's
await chain, which is affordable for the rare wait that lasts. A wait costs a
dict entry; one sweep per event loop checks the waits that have lasted.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from contextlib import _AsyncGeneratorContextManager
from types import MethodType
from typing import Any

from actorsess._actor import SessionActor
from actorsess._group import SessionGroup
from actorsess._turn import SessionTurn
from actorsess.exceptions import SessionDeadlockError

#: Seconds a wait lasts before it is checked for a cycle.
CHECK_AFTER = 0.05

# What each waiting task waits for, since when, and whether it was checked, across
# every manager of the process: a cycle can run through two managers (a session
# namespace and the FSM). Entries leave when their wait ends.
_waiting: dict[asyncio.Task[Any], tuple[SessionActor[Any], float, bool]] = {}
# Waits ended by the check, with the cycle found.
_broken: dict[asyncio.Task[Any], list[str]] = {}
# One sweep per event loop looks at the waits that have lasted (no timer per wait).
_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.TimerHandle] = (
    weakref.WeakKeyDictionary()
)


async def wait_for_turn(actor: SessionActor[Any]) -> None:
    """``actor.acquire()``, ended with SessionDeadlockError if the wait closes a cycle."""
    task = asyncio.current_task()
    if task is None:
        await actor.acquire()
        return
    loop = asyncio.get_running_loop()
    _waiting[task] = (actor, loop.time(), False)
    if loop not in _sweeps:
        _sweeps[loop] = loop.call_later(CHECK_AFTER, _sweep, loop)
    try:
        await actor.acquire()
    except asyncio.CancelledError:
        cycle = _broken.pop(task, None)
        if cycle is None:
            raise
        task.uncancel()
        raise SessionDeadlockError(cycle) from None
    finally:
        entry = _waiting.get(task)
        if entry is not None and entry[0] is actor:
            del _waiting[task]


def _sweep(loop: asyncio.AbstractEventLoop) -> None:
    """Check, once each, the waits of ``loop`` that have lasted ``CHECK_AFTER``."""
    del _sweeps[loop]
    due = loop.time() - CHECK_AFTER
    pending = False
    for task, (actor, since, checked) in list(_waiting.items()):
        if checked or task.get_loop() is not loop:
            continue
        if since > due:
            pending = True
            continue
        _waiting[task] = (actor, since, True)
        _check(task)
    if pending:
        _sweeps[loop] = loop.call_later(CHECK_AFTER, _sweep, loop)


def _check(task: asyncio.Task[Any]) -> None:
    if not _holds_a_turn(task):
        return
    cycle = find_cycle(task)
    if cycle is None or any(t in _broken for t, _ in cycle):
        return  # no cycle, or one already being broken
    # The wait that closed the cycle is the one that began last: it gives way.
    position = max(range(len(cycle)), key=lambda i: _waiting[cycle[i][0]][1])
    victim = cycle[position][0]
    _broken[victim] = [key for _, key in cycle[position:] + cycle[:position]]
    victim.cancel()


def find_cycle(task: asyncio.Task[Any]) -> list[tuple[asyncio.Task[Any], str]] | None:
    """The (waiting task, key it waits for) steps of a wait-for cycle through ``task``,
    starting with ``task``, or None."""
    steps: list[tuple[asyncio.Task[Any], str]] = []
    seen: set[asyncio.Task[Any]] = set()
    waiter = task
    while waiter not in seen:
        seen.add(waiter)
        entry = _waiting.get(waiter)
        if entry is None:
            return None
        actor = entry[0]
        steps.append((waiter, actor.key))
        holder = _holder_task(actor)
        if holder is None:
            return None
        if holder is task:
            return steps
        waiter = holder
    return None


def _holder_task(actor: SessionActor[Any]) -> asyncio.Task[Any] | None:
    held = actor.held
    if not isinstance(held, SessionTurn):
        return None  # free, handed over and not yet running, or held by get()/delete()
    for task in asyncio.all_tasks():
        if _awaits_within(task, held):
            return task
    return None


def _awaits_within(task: asyncio.Task[Any], turn: object) -> bool:
    return any(found is turn for found in _objects_held_by(task))


def _holds_a_turn(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` holds any session's turn: without one it closes no cycle, and
    most long waits (a task waiting for its first turn) end the check here."""
    for found in _objects_held_by(task):
        if isinstance(found, SessionTurn):
            actor = found._actor
            if actor is not None and actor.held is found:
                return True
    return False


def _objects_held_by(task: asyncio.Task[Any]) -> Iterator[object]:
    """What the coroutines of ``task``'s await chain refer to: their locals and stack
    (``async with`` keeps its bound ``__aexit__`` there, which the collector's view of
    a suspended coroutine includes), the turns of a ``sessions(...)`` group, and the
    locals of the generators behind ``@asynccontextmanager`` blocks (aiogram's event
    isolation). Types are compared exactly, never looked up by attribute: the frames
    of a handler hold pydantic models (the update, the message), whose failed
    attribute lookups cost several times a hit."""
    awaitable: Any = task.get_coro()
    for _ in range(200):  # await chains are short; a bound keeps the look cheap
        if awaitable is None:
            return
        for ref in gc.get_referents(awaitable):
            owner = ref.__self__ if type(ref) is MethodType else ref
            yield owner
            if type(owner) is SessionGroup:
                yield from owner.held_turns()  # several sessions held by one block
            elif type(owner) is _AsyncGeneratorContextManager:
                yield from gc.get_referents(owner.gen)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
