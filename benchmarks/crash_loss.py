"""What a hard crash loses: SIGKILL a busy polling bot, count what storage is missing.

For each flush_interval the bot (harness/bot_process.py: real polling against
LocalBotAPI, sessions in Redis) runs under steady traffic and is SIGKILLed;
the replies it had sent are compared with the apples stored in Redis. The Redis
commands the bot ran while it served them (INFO commandstats, those inside
scripts included) give the other side of the trade: what each update costs in
Redis calls at that interval (``0`` is write-through: every change written
before its handler's reply).

    .venv/bin/python -m benchmarks.crash_loss [--intervals 0 0.1 0.5 1 2]
"""

from __future__ import annotations

import argparse
import signal
import time

from actorsess.testing import RedisServer
from benchmarks._common import flush_redis, machine, redis_commands, table
from harness.bot_process import spawn, stored_gains

USERS = 20


def run_once(url: str, flush_interval: float, run_for: float) -> tuple[int, int, float, int]:
    """(replies sent, apples stored, updates/s, Redis commands while serving them)."""
    flush_redis(url)
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
    commands = redis_commands(url)
    assert first is not None
    rate = (last[1] - first[1]) / (last[0] - first[0])
    return last[1], stored_gains(url, USERS)[1], rate, commands


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.0, 0.1, 0.5, 1.0, 2.0])
    parser.add_argument("--run-for", type=float, default=3.0)
    args = parser.parse_args()
    rows = []
    with RedisServer() as server:
        for interval in args.intervals:
            handled, stored, rate, commands = run_once(server.url, interval, args.run_for)
            lost = handled - stored
            rows.append(
                [
                    f"{interval:g}s" if interval else "0 (write-through)",
                    handled,
                    stored,
                    lost,
                    rate,
                    rate * interval,
                    f"{lost / max(rate * interval, 1):.2f}",
                    f"{commands / max(handled, 1):.3f}",
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
                "Redis cmds/update",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
