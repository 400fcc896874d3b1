"""What a hard crash loses: SIGKILL a busy polling bot, count what storage is missing.

For each flush_interval the bot (tests/bot_process.py: real polling against
LocalBotAPI, sessions in Redis) runs under steady traffic and is SIGKILLed;
the replies it had sent are compared with the apples stored in Redis.

    .venv/bin/python -m benchmarks.crash_loss [--intervals 0.1 0.5 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from actorsess.testing import RedisServer
from benchmarks._common import machine, table

ROOT = Path(__file__).resolve().parent.parent
USERS = 20


def run_once(url: str, flush_interval: float, run_for: float) -> tuple[int, int, float]:
    client = redis.Redis.from_url(url)
    client.flushdb()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bot_process", url, str(USERS), "5", str(flush_interval)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    first: tuple[float, int] | None = None
    last = (0.0, 0)
    for line in process.stdout:
        if line.startswith("SENT"):
            last = (time.monotonic(), int(line.split()[1]))
            first = first or last
            if last[0] - first[0] > run_for:
                break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first is not None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    keys = [f"actorsess:session:123456789:{c}:{c}" for c in range(1, USERS + 1)]
    raw: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
    client.close()
    stored = sum(int(v.rsplit(b'"apple":', 1)[1].rstrip(b"}")) - 1 for v in raw if v)
    return last[1], stored, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--run-for", type=float, default=3.0)
    args = parser.parse_args()
    rows = []
    with RedisServer() as server:
        for interval in args.intervals:
            handled, stored, rate = run_once(server.url, interval, args.run_for)
            lost = handled - stored
            rows.append(
                [
                    f"{interval:g}s",
                    handled,
                    stored,
                    lost,
                    rate,
                    rate * interval,
                    f"{lost / max(rate * interval, 1):.2f}",
                ]
            )
    print(f"\nSIGKILL under load, {USERS} users; {machine()}\n")
    print(
        table(
            [
                "flush_interval",
                "replies sent",
                "stored",
                "lost",
                "updates/s",
                "updates per window",
                "lost / window",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
