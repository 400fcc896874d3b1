"""What a hard crash loses: SIGKILL a busy polling bot, count what storage is missing.

For each flush_interval the bot (tests/bot_process.py: real polling against
LocalBotAPI, sessions in Redis) runs under steady traffic and is SIGKILLed;
the replies it had sent are compared with the apples stored in Redis.

    .venv/bin/python -m benchmarks.crash_loss [--intervals 0.1 0.5 1.0]
"""

from __future__ import annotations

import argparse
import signal
import time

import redis

from actorsess.testing import RedisServer
from benchmarks._common import machine, table
from tests.bot_process import spawn, stored_gains

USERS = 20


def run_once(url: str, flush_interval: float, run_for: float) -> tuple[int, int, float]:
    redis.Redis.from_url(url).flushdb()
    process = spawn(url, USERS, 5, flush_interval)
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
    process.communicate()
    assert first is not None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return last[1], stored_gains(url, USERS)[1], rate


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
