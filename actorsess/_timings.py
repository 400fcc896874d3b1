"""Distributions behind the metrics: how long turns wait and hold, loads and flushes take.

Each is a fixed-bucket histogram (Prometheus' cumulative ``le`` buckets) kept
as plain counts, observed only off the cached turn's fast path: per load batch,
per flush round, per turn that had to wait. How long turns hold their session
is observed only once asked for (``SessionManager.observe_turns()``, which the
Prometheus collector calls): then ``session()`` counts every turn and hands one
in ``SAMPLE_EVERY`` out as a ``TimedTurn`` (in ``_turn``); until then the fast
path is untouched.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import NamedTuple

#: Upper bounds of the time buckets, in seconds (100 µs to 10 s).
SECONDS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
SECONDS += (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds of the batch size buckets, in sessions.
SESSIONS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
#: Upper bounds of the batch bytes buckets.
BYTES = tuple(float(4**n * 256) for n in range(9))  # 256 B to 16 MiB

#: One turn in this many has its hold time measured (while turns are observed); a
#: power of two, so that picking them is a bit mask.
SAMPLE_EVERY = 16


class HistogramSnapshot(NamedTuple):
    """A histogram as Prometheus reads it: cumulative counts per upper bound."""

    #: Upper bounds; the implicit last one is +Inf.
    bounds: tuple[float, ...]
    #: Observations at or below each bound, then the total (the +Inf bucket).
    cumulative: tuple[int, ...]
    #: Sum of all observed values.
    total: float

    @property
    def observations(self) -> int:
        return self.cumulative[-1]


class Histogram:
    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value

    def snapshot(self) -> HistogramSnapshot:
        running, cumulative = 0, []
        for count in list(self._counts):  # (read from a scrape thread: copy first)
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), self._total)


def _seconds() -> Histogram:
    return Histogram(SECONDS)


@dataclasses.dataclass(slots=True)
class Timings:
    """The histograms of one manager (see ``SessionManager.histograms()``)."""

    #: Seconds a turn waited for the holder before it (turns that waited only).
    turn_wait_seconds: Histogram = dataclasses.field(default_factory=_seconds)
    #: Seconds a block held its session (sampled, while turns are observed).
    turn_hold_seconds: Histogram = dataclasses.field(default_factory=_seconds)
    #: Seconds a batched load took.
    load_seconds: Histogram = dataclasses.field(default_factory=_seconds)
    #: Seconds a successful batched write took.
    flush_seconds: Histogram = dataclasses.field(default_factory=_seconds)
    #: Sessions per successful batched write.
    flush_sessions: Histogram = dataclasses.field(default_factory=lambda: Histogram(SESSIONS))
    #: Bytes per successful batched write.
    flush_bytes: Histogram = dataclasses.field(default_factory=lambda: Histogram(BYTES))

    def snapshots(self) -> dict[str, HistogramSnapshot]:
        return {
            field.name: getattr(self, field.name).snapshot() for field in dataclasses.fields(self)
        }
