"""Machine instructions per cached turn, counted by valgrind (callgrind), against a
bare ``asyncio.Lock`` + dict doing the same increment.

Timings on a shared machine move by 10% between runs; instruction counts do not
(the same binary, inputs and environment give the same total, whatever else runs).
So this is the benchmark for comparing two versions of the hot path: run it from
each tree and compare the counts. Each shape runs in its own process under
callgrind twice, with ``--turns`` and with 11 x ``--turns`` turns; the difference
over the extra turns is the cost of one turn, start-up and warm-up cancelled out.

    .venv/bin/python -m benchmarks.turn_instructions [--turns 2000]

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from typing import Any

from actorsess import MemoryStorage, SessionConfig, SessionManager
from benchmarks._common import machine, table

KEYS = [f"chat:{i}" for i in range(100)]
SHAPES = {
    "asyncio.Lock + dict": "bare",
    "actorsess, strict_json=False": "unchecked",
    "actorsess (default)": "default",
}


class _Silent:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


async def _bare(turns: int) -> None:
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    data: dict[str, dict[str, int]] = {key: {"n": 0} for key in KEYS}
    for i in range(turns):
        key = KEYS[i % 100]
        async with locks[key]:
            data[key]["n"] += 1


async def _actorsess(turns: int, strict_json: bool) -> None:
    # No flush inside the run: only the turn is counted.
    config = SessionConfig(strict_json=strict_json, flush_interval=3600)
    manager = SessionManager(
        MemoryStorage(), initial=lambda: {"n": 0}, config=config, logger=_Silent()
    )
    async with manager:
        for key in KEYS:  # loaded and cached before the counted turns
            async with manager.session(key):
                pass
        for i in range(turns):
            async with manager.session(KEYS[i % 100]) as session:
                session["n"] += 1


def _run_shape(shape: str, turns: int) -> None:
    if shape == "bare":
        asyncio.run(_bare(turns))
    else:
        asyncio.run(_actorsess(turns, strict_json=shape == "default"))


def _instructions(shape: str, turns: int) -> int:
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out.name}",
                sys.executable,
                "-m",
                "benchmarks.turn_instructions",
                "--run",
                shape,
                "--turns",
                str(turns),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{run.stderr}")
    return int(found.group(1))


def per_turn(shape: str, turns: int) -> float:
    return (_instructions(shape, 11 * turns) - _instructions(shape, turns)) / (10 * turns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--run", choices=sorted(SHAPES.values()), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one measured process, started by the parent under callgrind
        _run_shape(args.run, args.turns)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    counts = {name: per_turn(shape, args.turns) for name, shape in SHAPES.items()}
    bare = counts["asyncio.Lock + dict"]
    rows = [[name, f"{count:,.0f}", f"{count / bare:.2f}x"] for name, count in counts.items()]
    print(f"\ninstructions per cached turn (callgrind), {10 * args.turns} turns; {machine()}\n")
    print(table(["shape", "instructions per turn", "vs bare lock"], rows))


if __name__ == "__main__":
    main()
