"""Who holds which FSM session and which one each task waits for: a wait that would
close a cycle (two handlers writing each other's FSM state, a dialog waiting for the
update that waits for it) raises SessionDeadlockError at once instead of hanging.

The FSM layer records its holds with their task (ActorEventIsolation) and its waits
(writes from a task that does not hold the key), so the check costs the FSM path a
few dict operations and the core's hot path nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from actorsess.exceptions import SessionDeadlockError


class WaitGraph:
    __slots__ = ("_holders", "_waiting")

    def __init__(self) -> None:
        self._holders: dict[str, asyncio.Task[Any]] = {}
        self._waiting: dict[asyncio.Task[Any], str] = {}

    def hold(self, key: str, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._holders[key] = task

    def release(self, key: str, task: asyncio.Task[Any] | None) -> None:
        if self._holders.get(key) is task:
            del self._holders[key]

    @contextmanager
    def waiting(self, key: str) -> Iterator[None]:
        """Mark the current task as waiting for ``key``; raise if that closes a cycle."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        chain = [key]
        holder = self._holders.get(key)
        # Each step follows a distinct waiting task, so this ends within len + 1 steps.
        for _ in range(len(self._waiting) + 1):
            if holder is None:
                break
            if holder is task:
                raise SessionDeadlockError(chain)
            next_key = self._waiting.get(holder)
            if next_key is None:
                break
            chain.append(next_key)
            holder = self._holders.get(next_key)
        self._waiting[task] = key
        try:
            yield
        finally:
            if self._waiting.get(task) == key:
                del self._waiting[task]
