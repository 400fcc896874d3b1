"""Webhook worker processes (harness.webhook_bot) and a client that feeds them updates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from actorsess.testing import message_update
from harness.webhook_worker import WebhookWorker

ROOT = Path(__file__).resolve().parent.parent


def start_worker(
    redis_url: str, log: Path, extra_env: dict[str, str] | None = None, **settings: object
) -> WebhookWorker:
    """Start one worker; ``settings`` become ACTORSESS_* variables (lease_time=1 ...),
    ``extra_env`` is added as it is."""
    env = {**(extra_env or {}), "ACTORSESS_REDIS_URL": redis_url}
    env.update({f"ACTORSESS_{k.upper()}": str(v) for k, v in settings.items()})
    return WebhookWorker("harness.webhook_bot", log, env=env, cwd=ROOT).start()


@contextmanager
def workers(
    redis_url: str,
    tmp: Path,
    count: int,
    extra_env: dict[str, str] | None = None,
    **settings: object,
) -> Iterator[list[WebhookWorker]]:
    started: list[WebhookWorker] = []
    try:
        for i in range(count):
            started.append(start_worker(redis_url, tmp / f"worker{i}.log", extra_env, **settings))
        yield started
    finally:
        for worker in started:
            worker.kill()


def stop(worker: WebhookWorker) -> None:
    """SIGTERM, then wait: the worker writes everything and releases its leases."""
    assert worker.stop() == 0, worker.output()


@dataclass
class Feed:
    """Counts per chat of updates sent and of those acknowledged (HTTP 200: handled)."""

    sent: dict[int, int] = field(default_factory=dict)
    acked: dict[int, int] = field(default_factory=dict)

    async def post(self, http: aiohttp.ClientSession, url: str, chat: int) -> bool:
        self.sent[chat] = self.sent.get(chat, 0) + 1
        try:
            async with http.post(url, json=message_update(chat, "apple")) as response:
                await response.read()
                ok = response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False
        if ok:
            self.acked[chat] = self.acked.get(chat, 0) + 1
        return ok
