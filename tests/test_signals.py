"""Real polling bot processes stopped by real signals: SIGTERM flushes all, SIGKILL little."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from harness.bot_process import spawn, stored_gains

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process


def test_sigterm_under_load_flushes_everything(redis_url: str) -> None:
    """SIGTERM mid-traffic: every reply the bot sent is counted in Redis afterwards."""
    redis.Redis.from_url(redis_url).flushdb()
    users, messages = 40, 10
    process = spawn(redis_url, users, messages, 3600)
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
    sessions, gained = stored_gains(redis_url, users)
    assert sessions == users
    assert gained == replies


def test_sigkill_loses_at_most_the_last_flush_window(redis_url: str) -> None:
    """SIGKILL mid-traffic: what is missing is only what changed in the last flush window."""
    redis.Redis.from_url(redis_url).flushdb()
    users, messages, flush_interval = 20, 10, 0.2
    process = spawn(redis_url, users, messages, flush_interval)
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
    _, stored = stored_gains(redis_url, users)
    lost = handled - stored
    # Replies sent in the last flush window plus one write's time may be missing; no more.
    window_start = killed_at - flush_interval - 0.3
    in_window = handled - max((n for t, n in sent_at if t <= window_start), default=0)
    assert 0 <= lost <= in_window, (lost, in_window)
