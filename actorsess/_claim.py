"""One process per key space in local mode: the claim taken at start.

In ``ownership="local"`` a process assumes that it alone writes its keys. A
second process on the same key space (a bot started twice, a deploy that
overlaps the old instance) would lose updates silently: the version fence
refuses one writer's records, and every refusal is a lost change. So a
manager claims its key space when it starts and refuses to run when another
process holds it (KeySpaceInUseError). Processes in ``ownership="shared"``
claim it together and keep local-mode processes out.

A claim on Redis is a marker key with an expiry, renewed every second. A
holder on this host is refused at once while its process runs, and taken over
at once when it is gone (or had this very pid: a container restarted); a
holder on another host is waited for until its marker expires (``_TTL``), and
refused only if it keeps renewing it. SQLite's claim is a file lock, which the
kernel drops with the process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from typing import Any

from actorsess._clock import Clock
from actorsess.exceptions import KeySpaceInUseError
from actorsess.storage.base import ClaimableStorage, Claimant

#: How long a marker lives unless renewed, and how often it is renewed.
_TTL = 5.0
_RENEW_EVERY = 1.0
#: How often a start waiting for a foreign holder's marker to expire looks again.
_POLL = 0.25

# Random per process: managers of one process share one claimant per mode, and a
# later process with the same pid (a restarted container) is told apart.
_PROCESS_NONCE = secrets.token_hex(8)


def process_claimant(mode: str) -> Claimant:
    return Claimant(mode, socket.gethostname(), os.getpid(), _PROCESS_NONCE)


class KeySpaceClaim:
    """Claims ``space`` on ``storage`` for this process; renews it while running."""

    __slots__ = ("_claimant", "_clock", "_log", "_space", "_storage", "_task")

    def __init__(
        self, storage: ClaimableStorage, space: str, mode: str, clock: Clock, log: Any
    ) -> None:
        self._storage = storage
        self._space = space
        self._claimant = process_claimant(mode)
        self._clock = clock
        self._log = log
        self._task: asyncio.Task[None] | None = None

    async def acquire(self, timeout: float) -> None:
        """Take the claim, or raise KeySpaceInUseError naming who holds it. Each try
        waits for storage at most ``timeout``; an unreachable storage is logged."""
        deadline = self._clock.now() + _TTL + _POLL
        ttl_ms = round(_TTL * 1000)
        while True:
            try:
                async with asyncio.timeout(timeout):
                    holder = await self._storage.claim(self._space, self._claimant, ttl_ms)
            except Exception as exc:
                # Storage unreachable: start anyway (loads fail until it is back, as
                # without a claim); the renewal takes the claim once it answers.
                reason = (
                    "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
                )
                self._log.warning("session.claim_failed", space=self._space, error=reason)
                break
            if holder is None:
                break
            if isinstance(holder, Claimant) and self._gone(holder):
                if holder.mode == "local":
                    await self._storage.unclaim(self._space, holder)
                    continue
                # The shared marker names the last shared process to renew it; others
                # still running renew it within a second, so it is only stale if it
                # stays unchanged past that (then it expires on its own).
                await asyncio.sleep(_POLL)
                continue
            if self._clock.now() >= deadline or not self._elsewhere(holder):
                described = holder.describe() if isinstance(holder, Claimant) else holder
                raise KeySpaceInUseError(
                    repr(self._storage), self._space, described, self._claimant.mode
                )
            await asyncio.sleep(_POLL)  # a holder elsewhere: alive only if it renews
        self._task = asyncio.get_running_loop().create_task(self._renew_forever())

    def _elsewhere(self, holder: Claimant | str) -> bool:
        """A holder whose liveness can only be told by its marker's renewals: one
        on another host (on this host a live pid is known to be alive now)."""
        return isinstance(holder, Claimant) and holder.host != self._claimant.host

    def _gone(self, holder: Claimant) -> bool:
        """A holder on this host whose process is not running any more."""
        mine = self._claimant
        if holder.host != mine.host or holder.nonce == mine.nonce:
            return False
        if holder.pid == mine.pid:
            return True  # an earlier process with our pid (a restarted container)
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, run by another user
        return False

    async def _renew_forever(self) -> None:
        ttl_ms = round(_TTL * 1000)
        while True:
            await asyncio.sleep(_RENEW_EVERY)
            try:
                holder = await self._storage.claim(self._space, self._claimant, ttl_ms)
            except Exception as exc:
                self._log.warning(
                    "session.claim_renew_failed", error=f"{type(exc).__name__}: {exc}"
                )
                continue
            if holder is not None:
                described = holder.describe() if isinstance(holder, Claimant) else holder
                self._log.error("session.claim_lost", space=self._space, holder=described)

    async def release(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            async with asyncio.timeout(1.0):
                await self._storage.unclaim(self._space, self._claimant)
        except Exception as exc:  # the marker expires on its own
            self._log.warning("session.unclaim_failed", error=f"{type(exc).__name__}: {exc}")
