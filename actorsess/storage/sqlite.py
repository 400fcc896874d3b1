"""SqliteStorage: the embedded durable default (stdlib sqlite3, WAL, off the event loop).

All database work runs on one dedicated thread, so the event loop never
blocks on disk and the connection is never shared between threads. Each batch
is one transaction.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from actorsess._record import TOMBSTONE_TTL_S, tombstone, version_of
from actorsess.storage.base import (
    NEWER_VERSION,
    AtomicStorage,
    BadValue,
    ClaimableStorage,
    Claimant,
    Conflict,
    LoadResult,
    PreparableStorage,
    ScannableStorage,
    Storage,
    WriteItem,
)

R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actorsess_sessions (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    version INTEGER NOT NULL DEFAULT -1,
    expires_at REAL
) WITHOUT ROWID
"""
_UPSERT = (
    "INSERT INTO actorsess_sessions (key, value, version, expires_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, version = excluded.version, "
    "expires_at = excluded.expires_at"
)
# SQLite limits bound parameters per statement (32766 in modern builds; 999 in old ones).
_CHUNK = 900
# An expired row (a deleted one is stored expired) loads as a tombstone of its version
# until it is purged, TOMBSTONE_TTL_S after it expired; purges run every this many writes.
_PURGE_EVERY = 200


class _FileClaims:
    """Exclusive locks (``flock``) on the database files this process serves.

    A lock belongs to an open file, so it is taken once per process and file and
    counted: every SqliteStorage of this process on the file shares it (managers of
    one process may share a file), and another process cannot take it. The kernel
    drops it when the process dies, so a crash leaves nothing behind. Process-wide
    by nature, hence the one shared instance below.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[int, int]] = {}  # real path -> (fd, users)

    def take(self, path: str, claimant: Claimant) -> str | None:
        """Take the lock for one more user; None, or who holds it elsewhere."""
        with self._lock:
            held = self._held.get(path)
            if held is not None:
                self._held[path] = (held[0], held[1] + 1)
                return None
            fd = os.open(path + ".owner", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                return f"a process in ownership='local' ({holder or 'unknown'})"
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {claimant.host}, pid {claimant.pid}".encode(), 0)
            self._held[path] = (fd, 1)
            return None

    def drop(self, path: str) -> None:
        with self._lock:
            held = self._held.pop(path, None)
            if held is None:
                return
            fd, users = held
            if users > 1:
                self._held[path] = (fd, users - 1)
            else:
                os.close(fd)  # releases the flock


_file_claims = _FileClaims()


class SqliteStorage(Storage, AtomicStorage, ScannableStorage, ClaimableStorage, PreparableStorage):
    """Sessions in one SQLite file (WAL mode, ``synchronous=NORMAL``).

    A manager in local mode claims the file at start (an exclusive ``flock`` on
    ``<path>.owner``), so a second process on the same file is refused with
    KeySpaceInUseError instead of silently losing updates.
    """

    def __init__(self, path: str | Path, *, timer: Callable[[], float] = time.time) -> None:
        """Open (at first use) or create the file.

        Args:
            path: The database file; its folder is created. ``":memory:"`` keeps
                the sessions in this process only.
            timer: The wall clock TTL expiry is stored against, in seconds.
        """
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._timer = timer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actorsess-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._writes = 0
        self._closed = False
        self._claimed = False
        #: One lock per file, however the path was spelt.
        self._real_path = os.path.realpath(self._path)

    def __repr__(self) -> str:
        return f"<SqliteStorage {self._path}>"

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        if self._closed:
            # Used again after close() (a manager started again): reopen.
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="actorsess-sqlite"
            )
            self._closed = False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(_SCHEMA)
            self._conn = conn
        return fn(self._conn)

    async def prepare(self) -> None:
        """Open the file now (WAL mode, the table), not in the first load after start."""

        def opened(conn: sqlite3.Connection) -> None:
            pass

        await self._run(opened)

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        if not keys:
            return []
        wanted = list(keys)
        now = self._timer()

        def load(conn: sqlite3.Connection) -> dict[str, LoadResult]:
            found: dict[str, LoadResult] = {}
            for key, value, version, expires_at in _select(
                conn, "key, value, version, expires_at", wanted
            ):
                if expires_at is not None and expires_at <= now:
                    found[key] = tombstone(version)
                else:
                    found[key] = _as_record(value)
            return found

        found = await self._run(load)
        return [found.get(key) for key in wanted]

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        return await self._write(items, ttl_ms, all_or_nothing=False)

    def atomic_problem(self, keys: Sequence[str]) -> str | None:
        return None  # one transaction holds any number of keys

    async def write_all(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        return await self._write(items, ttl_ms, all_or_nothing=True)

    async def _write(
        self, items: Sequence[WriteItem], ttl_ms: int | None, *, all_or_nothing: bool
    ) -> list[Conflict]:
        if not items:
            return []
        now = self._timer()
        expires = None if ttl_ms is None else now + ttl_ms / 1000
        self._writes += 1
        purge = self._writes % _PURGE_EVERY == 0
        keys = [item.key for item in items]

        def write(conn: sqlite3.Connection) -> list[Conflict]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The version fence, read and applied inside one write transaction.
                versions = _stored_versions(conn, keys)
                refused: list[Conflict] = []
                rows: list[tuple[str, bytes, int, float | None]] = []
                for position, item in enumerate(items):
                    version = versions.get(item.key)
                    if version is not None and version >= item.version:
                        if version > item.version:
                            refused.append(Conflict(position, NEWER_VERSION))
                        continue  # the same version: a replay, already applied
                    versions[item.key] = item.version
                    if item.blob is None:  # a tombstone: stored already expired
                        rows.append((item.key, tombstone(item.version), item.version, now))
                    else:
                        rows.append((item.key, item.blob, item.version, expires))
                if refused and all_or_nothing:
                    conn.execute("ROLLBACK")
                    return refused
                conn.executemany(_UPSERT, rows)
                if purge:
                    conn.execute(
                        "DELETE FROM actorsess_sessions WHERE expires_at <= ?",
                        (now - TOMBSTONE_TTL_S,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return refused

        return await self._run(write)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        rows = [(key,) for key in keys]

        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM actorsess_sessions WHERE key = ?", rows)

        await self._run(delete)

    async def scan_keys(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        # Keyset pagination on the primary key: each page is one indexed range read,
        # so memory and time per page stay flat however large the table is.
        bound, compare = prefix, ">="
        while True:

            def page(conn: sqlite3.Connection, bound: str = bound, compare: str = compare) -> Any:
                query = f"SELECT key FROM actorsess_sessions WHERE key {compare} ? ORDER BY key"
                return conn.execute(query + " LIMIT ?", (bound, batch)).fetchall()

            keys: list[str] = [key for (key,) in await self._run(page)]
            wanted = [key for key in keys if key.startswith(prefix)]
            if wanted:
                yield wanted
            if len(wanted) < len(keys) or len(keys) < batch:
                return  # past the prefix's range, or the end of the table
            bound, compare = keys[-1], ">"

    async def put_raw(self, key: str, value: object) -> None:
        """Store ``value`` verbatim (tests that plant corrupt records)."""

        def put(conn: sqlite3.Connection) -> None:
            version = version_of(value) if isinstance(value, bytes) else -1
            conn.execute(_UPSERT, (key, value, version, None))

        await self._run(put)

    async def claim(self, space: str, claimant: Claimant, ttl_ms: int) -> str | None:
        """Claim the file for this process (the key prefix does not matter: one file is
        one key space); renewing is free, the lock lasts until ``close()``."""
        if self._path == ":memory:" or self._claimed:
            return None
        if claimant.mode != "local":
            return "SQLite, which only one process can serve (ownership='local')"
        holder = _file_claims.take(self._real_path, claimant)
        self._claimed = holder is None
        return holder

    async def unclaim(self, space: str, claimant: Claimant) -> None:
        return None  # held until close(): managers of this storage may still run

    async def close(self) -> None:
        if self._claimed:
            self._claimed = False
            _file_claims.drop(self._real_path)
        if self._closed:
            return

        def shut(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(shut)
        self._closed = True
        self._conn = None
        self._executor.shutdown(wait=False)


def _select(conn: sqlite3.Connection, columns: str, keys: list[str]) -> Iterator[Any]:
    """Rows of ``columns`` for ``keys``, in statements of at most ``_CHUNK`` keys."""
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        yield from conn.execute(
            f"SELECT {columns} FROM actorsess_sessions WHERE key IN ({marks})", chunk
        )


def _stored_versions(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    return dict(_select(conn, "key, version", keys))


def _as_record(value: object) -> LoadResult:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return BadValue(f"stored value is {type(value).__name__}, not bytes")
