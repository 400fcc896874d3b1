"""FakeClock: time that moves only when a test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any


class FakeClock:
    """A ``Clock`` whose ``now()`` advances only through ``advance()``.

    Waiters whose deadline is reached are woken by ``advance``; a set event
    wakes them at once, as with the real clock.
    """

    def __init__(self, start: float = 1000.0) -> None:
        """Start the clock.

        Args:
            start: What ``now()`` returns until the first ``advance()``.
        """
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        """The fake time: ``start`` plus every ``advance()`` so far."""
        return self._now

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` until the fake time has moved ``timeout`` seconds on
        (None: as long as it takes); whether it was set."""
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        loop = asyncio.get_running_loop()
        timer: asyncio.Future[None] = loop.create_future()
        if timeout is not None:
            heapq.heappush(self._timers, (self._now + timeout, next(self._seq), timer))
        event_wait = loop.create_task(event.wait())
        try:
            pending: set[asyncio.Future[Any]] = {event_wait, timer}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            event_wait.cancel()
            if not timer.done():
                timer.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        """Move time forward, wake every waiter whose deadline passed, let them run."""
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.done():
                timer.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
