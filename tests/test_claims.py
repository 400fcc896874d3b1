"""One process per key space in local mode: a second process is refused at start, a
dead one's claim is taken over (real processes, real redis-server and SQLite)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from actorsess import (
    KeySpaceInUseError,
    RedisStorage,
    SessionConfig,
    SessionManager,
    SqliteStorage,
)
from actorsess.testing import RedisServer

from .conftest import Events
from .helpers import counter

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process


ROOT = Path(__file__).resolve().parent.parent

# A bot process in miniature: starts a manager, writes one session, says so, and
# serves until killed.
_HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from actorsess import RedisStorage, SessionConfig, SessionManager, SqliteStorage

    async def main(kind, where, ownership):
        storage = SqliteStorage(where) if kind == "sqlite" else RedisStorage.from_url(where)
        config = SessionConfig(ownership=ownership, flush_interval=0.05)
        async with SessionManager(storage, initial=dict, config=config) as m:
            await m.update("held", lambda d: d.update(n=1))
            print("ready", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@contextmanager
def holder(kind: str, where: str, ownership: str = "local") -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kind, where, ownership],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        for line in process.stdout:  # log lines come first
            if line.strip() == "ready":
                break
        else:
            pytest.fail(f"the holder process exited: {process.stderr.read()}")
        yield process
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def storage_of(kind: str, where: str) -> SqliteStorage | RedisStorage:
    return SqliteStorage(where) if kind == "sqlite" else RedisStorage.from_url(where)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_second_local_process_is_refused_and_a_dead_ones_claim_is_taken_over(
    kind: str, tmp_path: Path, redis_url: str, redis_client: object
) -> None:
    """Two local-mode processes on one SQLite file or one Redis key prefix would lose
    updates silently; the second is refused at start naming the first, and once the
    first is SIGKILLed a new process starts at once."""
    where = str(tmp_path / "bot.sqlite3") if kind == "sqlite" else redis_url
    with holder(kind, where) as first:
        manager = SessionManager(storage_of(kind, where), initial=counter)
        with pytest.raises(KeySpaceInUseError, match=f"pid {first.pid}"):
            async with manager:
                pass
        first.send_signal(signal.SIGKILL)
        first.wait()
    async with SessionManager(storage_of(kind, where), initial=counter) as after:
        await after.update("k", lambda d: d.update(n=1))


async def test_local_and_shared_processes_never_mix(redis_url: str, redis_client: object) -> None:
    """A local-mode manager is refused while shared-mode processes serve the key prefix,
    and the other way round; shared-mode processes share it among themselves."""
    with holder("redis", redis_url, "shared"):
        with pytest.raises(KeySpaceInUseError, match="ownership='shared'"):
            async with SessionManager(RedisStorage.from_url(redis_url), initial=counter):
                pass
        shared = SessionConfig(ownership="shared")
        async with SessionManager(RedisStorage.from_url(redis_url), initial=counter, config=shared):
            pass
    with holder("redis", redis_url, "local") as local:
        shared = SessionConfig(ownership="shared")
        with pytest.raises(KeySpaceInUseError, match=f"pid {local.pid}"):
            async with SessionManager(
                RedisStorage.from_url(redis_url), initial=counter, config=shared
            ):
                pass


async def test_managers_of_one_process_share_their_key_space(
    tmp_path: Path, redis_url: str, redis_client: object
) -> None:
    """Several managers (namespaces) of one process on one SQLite file or Redis prefix
    are one claimant: all start."""
    path = tmp_path / "one.sqlite3"
    async with (
        SessionManager(SqliteStorage(path), initial=counter) as a,
        SessionManager(SqliteStorage(path), initial=counter) as b,
        SessionManager(RedisStorage.from_url(redis_url), initial=counter) as c,
        SessionManager(RedisStorage.from_url(redis_url), initial=counter) as d,
    ):
        for m in (a, b, c, d):
            await m.update(f"k{id(m)}", lambda s: s.update(n=1))


async def test_a_claim_taken_by_another_process_or_not_renewable_is_reported(
    events: Events,
) -> None:
    """While running, the claim is renewed every second: another process's marker in its
    place is an error (``session.claim_lost``), a storage that cannot be reached a warning
    (``session.claim_renew_failed``); the bot goes on serving its cached sessions."""

    import redis.asyncio as redis_asyncio

    with RedisServer() as server:
        m = SessionManager(RedisStorage.from_url(server.url), initial=counter, logger=events.logger)
        async with m:
            await m.update("k", lambda s: s.update(n=1))
            raw = redis_asyncio.Redis.from_url(server.url)
            await raw.set("actorsess:\x00owner", "local|elsewhere|1|other", px=5000)
            await raw.aclose()
            await logged(events, "session.claim_lost")  # at the next renewal (1 s)
            lost = events.named("session.claim_lost")[0]
            assert lost["space"] == "actorsess:" and "elsewhere" in lost["holder"]
            server.stop()
            await logged(events, "session.claim_renew_failed")
            await m.update("k", lambda s: s.update(n=2))  # cached: still served
            server.start()


async def logged(events: Events, name: str, within: float = 10.0) -> None:
    """Return once ``name`` was logged (the claim is renewed every second)."""
    import asyncio

    for _ in range(int(within / 0.05)):
        if events.named(name):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} was not logged within {within}s")
