"""Webhook worker processes (examples.shared_webhook) and a client that feeds them updates."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from actorsess import RedisStorage, SessionManager

ROOT = Path(__file__).resolve().parent.parent
BOT_ID = 123456789  # examples.shared_webhook.OFFLINE_TOKEN
_update_ids = itertools.count(1)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(redis_url: str, log: Path, **settings: object) -> Worker:
    """Start one worker; ``settings`` become ACTORSESS_* variables (lease_time=1 ...)."""
    env = {**os.environ, "ACTORSESS_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
    env.update({f"ACTORSESS_{k.upper()}": str(v) for k, v in settings.items()})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.shared_webhook", "--port", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                return Worker(process, int(line.split()[1]), log)
        if process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("worker did not start within 30 s")


@contextmanager
def workers(redis_url: str, tmp: Path, count: int, **settings: object) -> Iterator[list[Worker]]:
    tmp.mkdir(parents=True, exist_ok=True)
    started = [start_worker(redis_url, tmp / f"worker{i}.log", **settings) for i in range(count)]
    try:
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def stop(worker: Worker, timeout: float = 30) -> None:
    """SIGTERM, then wait: the worker writes everything and releases its leases."""
    worker.process.terminate()
    worker.process.wait(timeout)
    assert worker.process.returncode == 0, worker.output()


def update(chat: int) -> dict[str, Any]:
    n = next(_update_ids)
    return {
        "update_id": n,
        "message": {
            "message_id": n,
            "date": 1_700_000_000,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": False, "first_name": "u"},
            "text": "apple",
        },
    }


@dataclass
class Feed:
    """Counts per chat of updates sent and of those acknowledged (HTTP 200: handled)."""

    sent: dict[int, int] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)

    async def post(self, http: aiohttp.ClientSession, url: str, chat: int) -> bool:
        self.sent[chat] = self.sent.get(chat, 0) + 1
        try:
            async with http.post(url, json=update(chat)) as response:
                await response.read()
                ok = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False
        if ok:
            self.acked[chat] = self.acked.get(chat, 0) + 1
        return ok


async def stored_apples(redis_url: str, chats: list[int]) -> dict[int, int]:
    """Apples per chat as stored in Redis (read with a plain local-mode manager)."""
    reader = SessionManager(RedisStorage.from_url(redis_url), initial=lambda: {"apple": 0})
    async with reader:
        values = await reader.get_many([f"session:{BOT_ID}:{c}:{c}" for c in chats])
    return {c: values[f"session:{BOT_ID}:{c}:{c}"]["apple"] for c in chats}
