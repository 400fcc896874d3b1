"""A real polling bot process stopped by a real SIGTERM flushes every session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_under_load_flushes_everything(redis_url: str) -> None:
    """SIGTERM mid-traffic: every reply the bot sent is counted in Redis afterwards."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    users, messages = 40, 10
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bot_process", redis_url, str(users), str(messages), "3600"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("HANDLED"):
                break
        else:
            raise AssertionError(
                f"bot exited early: {process.stderr.read() if process.stderr else ''}"
            )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    stopped = [line for line in out.splitlines() if line.startswith("STOPPED")]
    assert stopped, out + err
    replies = int(stopped[-1].split()[1])
    assert replies >= users * messages
    keys = [f"actorsess:session:123456789:{c}:{c}" for c in range(1, users + 1)]
    raw: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
    client.close()
    apples = [int(value.rsplit(b'"apple":', 1)[1].rstrip(b"}")) for value in raw if value]
    assert len(apples) == users
    # each user starts at 1 apple and gains one per handled message
    assert sum(apples) - users == replies


def test_sigkill_loses_at_most_the_last_flush_window(redis_url: str) -> None:
    """SIGKILL mid-traffic: what is missing is only what changed in the last flush window."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    users, messages, flush_interval = 20, 10, 0.2
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bot_process",
            redis_url,
            str(users),
            str(messages),
            str(flush_interval),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    sent_at: list[tuple[float, int]] = []
    try:
        for line in process.stdout:
            if line.startswith("SENT"):
                sent_at.append((time.monotonic(), int(line.split()[1])))
                if sent_at[-1][0] - sent_at[0][0] > 1.5:
                    break
        killed_at = time.monotonic()
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    handled = sent_at[-1][1]
    keys = [f"actorsess:session:123456789:{c}:{c}" for c in range(1, users + 1)]
    raw: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
    client.close()
    stored = sum(int(v.rsplit(b'"apple":', 1)[1].rstrip(b"}")) - 1 for v in raw if v)
    lost = handled - stored
    # Replies sent in the last flush window plus one write's time may be missing; no more.
    window_start = killed_at - flush_interval - 0.3
    in_window = handled - max((n for t, n in sent_at if t <= window_start), default=0)
    assert 0 <= lost <= in_window, (lost, in_window)
