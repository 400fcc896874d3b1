"""Capped exponential backoff with jitter for retried writes."""

from __future__ import annotations

import random


class Backoff:
    """Delay before retry ``attempt`` (1-based): ``base * 2**(attempt-1)``, capped, jittered.

    Jitter keeps several processes that lost Redis together from hammering it
    in lockstep when it returns; half the delay is kept so retries are never
    immediate.
    """

    __slots__ = ("_base", "_cap", "_rng")

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self._base: float = base
        self._cap: float = cap
        self._rng: random.Random = rng or random.Random()

    def delay(self, attempt: int) -> float:
        ceiling = min(self._cap, self._base * 2.0 ** min(max(attempt - 1, 0), 32))
        jitter: float = self._rng.random()
        return ceiling / 2 + jitter * ceiling / 2
