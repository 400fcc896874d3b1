"""WebhookWorker: a webhook bot process on a free port, for this project's
multi-process tests, benchmarks and demo.

The worker is any ``python -m <module> --port 0`` that prints ``READY <port>``
once it serves and exits cleanly on SIGTERM (see ``harness.webhook_bot``).
Its output goes to a log file, so a chatty worker can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp


class WebhookWorker:
    """One worker process: start it, post to ``url``, pause, kill or stop it."""

    def __init__(
        self,
        module: str,
        log: Path,
        *,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        path: str = "/webhook",
    ) -> None:
        """Prepare a worker; ``start()`` runs it and waits until it listens.

        Args:
            module: The module to run with ``python -m``; it takes ``--port 0`` and
                prints ``READY <port>`` once it listens.
            log: File that receives the process's output.
            args: More command-line arguments.
            env: More environment variables.
            cwd: Working directory of the process.
            path: The webhook path on its server.
        """
        self.log = log
        self._command = [sys.executable, "-m", module, "--port", "0", *(args or [])]
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._cwd = cwd
        self._path = path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> WebhookWorker:
        """Run the worker; returns it once it printed ``READY <port>`` (or raises
        after ``timeout`` seconds)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self._command, cwd=self._cwd, stdout=out, stderr=subprocess.STDOUT, env=self._env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.output()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"worker did not print READY within {timeout:g}s:\n{self.output()}")

    @property
    def url(self) -> str:
        """Where to post updates."""
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def pid(self) -> int:
        """The worker's process id."""
        assert self.process is not None, "worker not started"
        return self.process.pid

    def output(self) -> str:
        """Everything the worker printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGTERM, SIGSTOP, SIGCONT, ...) to the worker."""
        assert self.process is not None, "worker not started"
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.process is not None, "worker not started"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused worker cannot exit
            self.process.terminate()
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the worker (if it runs) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def poll_workers(
    workers: list[WebhookWorker], done: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> None:
    """Ask every worker ``GET /handled`` (see ``harness.webhook_bot``) until ``done``
    holds for their answers; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as client:
        while True:
            answers = await _handled(client, workers)
            if done(answers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not there within {timeout:g}s: {answers}")
            await asyncio.sleep(0.005)


async def _handled(
    client: aiohttp.ClientSession, workers: list[WebhookWorker]
) -> list[dict[str, Any]]:
    answers = []
    for worker in workers:
        async with client.get(f"http://127.0.0.1:{worker.port}/handled") as response:
            answers.append(await response.json())
    return answers


async def handled_counts(workers: list[WebhookWorker]) -> list[int]:
    """The updates each worker's handler ran so far (``GET /handled``)."""
    async with aiohttp.ClientSession() as client:
        return [answer["handled"] for answer in await _handled(client, workers)]


async def all_handled(workers: list[WebhookWorker], expected: int, timeout: float = 120) -> None:
    """Wait until the workers' handlers together ran ``expected`` updates (in
    partitioned mode a 200 means "stored in the stream", not "handled")."""
    await poll_workers(
        workers, lambda answers: sum(a["handled"] for a in answers) >= expected, timeout
    )
