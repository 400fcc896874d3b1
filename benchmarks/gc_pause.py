"""What cached idle sessions cost the garbage collector: one full collection's time
with N sessions of a typical small dict cached, against containers of the same
N encoded sessions and against the process without them.

Each row builds its cache in a fresh child process (so nothing of one row stays
in the next), then times ``gc.collect()`` (a full, generation-2 collection)
``--rounds`` times, ``--repeats`` processes per row with the rows alternating;
the median is shown, and how much the sessions add: to the bare process for the
plain containers, to a running manager with nothing cached for actorsess.

    .venv/bin/python -m benchmarks.gc_pause [--sessions 1000000] [--rounds 9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any

import cachetools
import orjson

from actorsess import MemoryStorage, SessionConfig, SessionManager
from benchmarks._common import machine, quiet_logs, table

ROWS = {
    "empty": "nothing cached (the process alone)",
    "manager": "actorsess, a running manager with nothing cached",
    "dict": "dict[str, bytes] of the encoded sessions",
    "lru": "cachetools.LRUCache[str, bytes]",
    "ordered": "OrderedDict[str, bytes]",
    "live": "actorsess, every session live (max_live=max_cached)",
    "default": "actorsess default (max_live=1024)",
}


def typical() -> dict[str, Any]:
    return {"n": 0, "name": "alice", "items": [1, 2, 3], "lang": "en", "step": "ask_name"}


def keys(n: int) -> list[str]:
    return [f"session:42:{i}:{i}" for i in range(n)]


def collect_ms(rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def actorsess_cache(n: int, max_live: int, rounds: int) -> float:
    config = SessionConfig(max_cached=n + 1, max_live=max_live, max_batch=10_000)
    async with SessionManager(MemoryStorage(), initial=typical, config=config) as manager:
        names = keys(n)
        for start in range(0, n, 10_000):
            await manager.get_many(names[start : start + 10_000])
        del names  # a list of a million keys is the benchmark's, not the cache's
        assert manager.stats().cached == n
        return collect_ms(rounds)


def measure(row: str, n: int, rounds: int) -> float:
    """Build ``row``'s cache of ``n`` sessions here and time full collections."""
    blob = orjson.dumps(typical())
    held: object
    if row == "empty":
        held = None
    elif row == "dict":
        held = {key: blob for key in keys(n)}
    elif row == "lru":
        lru: cachetools.LRUCache[str, bytes] = cachetools.LRUCache(n + 1)
        for key in keys(n):
            lru[key] = blob
        held = lru
    elif row == "ordered":
        held = OrderedDict((key, blob) for key in keys(n))
    elif row == "manager":
        return asyncio.run(actorsess_cache(0, 1024, rounds))
    else:
        max_live = n + 1 if row == "live" else 1024
        return asyncio.run(actorsess_cache(n, max_live, rounds))
    result = collect_ms(rounds)
    del held
    return result


def run_row(row: str, sessions: int, rounds: int) -> float:
    command = [sys.executable, "-m", "benchmarks.gc_pause", "--row", row]
    command += ["--sessions", str(sessions), "--rounds", str(rounds)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3, help="child processes per row")
    parser.add_argument("--row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:  # one row, in a child process started below
        quiet_logs()
        print(measure(args.row, args.sessions, args.rounds))
        return
    runs: dict[str, list[float]] = {row: [] for row in ROWS}
    for _ in range(args.repeats):  # rows alternate, so a noisy moment hits them all
        for row in ROWS:
            runs[row].append(run_row(row, args.sessions, args.rounds))
    results = {row: statistics.median(times) for row, times in runs.items()}
    rows = []
    for row, ms in results.items():
        # What the sessions add: over the bare process for the plain containers,
        # over a running manager with nothing cached for actorsess.
        base = results["manager" if row in ("live", "default") else "empty"]
        added = "" if row in ("empty", "manager") else f"{max(0.0, ms - base):.1f}"
        rows.append([ROWS[row], f"{ms:.1f}", added])
    print(
        f"\nfull garbage collection with {args.sessions:,} cached idle sessions "
        f"(median of {args.repeats} processes x {args.rounds} collections); {machine()}\n"
    )
    print(table(["what is cached", "gc.collect() ms", "added by the sessions, ms"], rows))


if __name__ == "__main__":
    main()
