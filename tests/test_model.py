"""Model-based test: random interleavings against a plain dict, stored state converges."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actorsess import MemoryStorage, SessionConfig, SessionManager, StorageError, WriteItem
from actorsess.storage.base import Conflict

from .helpers import counter, racy_increment

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])


class FlakyStorage(MemoryStorage):
    """Writes fail while ``failing`` is set (as if Redis were down)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        if self.failing:
            raise ConnectionError("storage is down")
        return await super().write_many(items, ttl_ms)


class Boom(Exception):
    pass


class SessionsModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.storage = FlakyStorage()
        self.model: dict[str, int] = {}
        self.manager = self._new_manager()

    def _new_manager(self) -> SessionManager[dict[str, int]]:
        config = SessionConfig(
            max_cached=3,
            flush_interval=3600,
            retry_base_delay=0.001,
            retry_max_delay=0.002,
            close_timeout=5,
        )
        return SessionManager(self.storage, initial=counter, config=config)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(key=KEYS, delta=st.integers(-5, 5))
    def update(self, key: str, delta: int) -> None:
        self.run(self.manager.update(key, lambda s: s.update(n=s["n"] + delta)))
        self.model[key] = self.model.get(key, 0) + delta

    @rule(key=KEYS, count=st.integers(1, 20))
    def concurrent_blocks(self, key: str, count: int) -> None:
        async def all_of_them() -> None:
            await asyncio.gather(*(racy_increment(self.manager, key) for _ in range(count)))

        self.run(all_of_them())
        self.model[key] = self.model.get(key, 0) + count

    @rule(key=KEYS, delta=st.integers(1, 5))
    def rolled_back_block(self, key: str, delta: int) -> None:
        async def fail() -> None:
            try:
                async with self.manager.session(key) as s:
                    s["n"] += delta
                    raise Boom
            except Boom:
                pass

        self.run(fail())

    @rule(key=KEYS)
    def read(self, key: str) -> None:
        assert self.run(self.manager.get(key)) == {"n": self.model.get(key, 0)}

    @rule(failing=st.booleans())
    def storage_health(self, failing: bool) -> None:
        self.storage.failing = failing

    @precondition(lambda self: not self.storage.failing)
    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self.run(self.manager.delete(key))
        self.model.pop(key, None)

    @rule()
    def flush(self) -> None:
        try:
            self.run(self.manager.flush())
        except StorageError:
            assert self.storage.failing
            return
        self.check_storage()

    @precondition(lambda self: not self.storage.failing)
    @rule()
    def restart(self) -> None:
        self.run(self.manager.close())
        self.check_storage()
        self.manager = self._new_manager()

    def check_storage(self) -> None:
        for key in ["a", "b", "c", "d", "e", "f"]:
            raw = self.storage.raw("actorsess:" + key)
            expected = self.model.get(key, 0)
            if expected == 0:
                # Absent, a tombstone (deleted) or a counter at 0.
                assert raw is None or raw.endswith((b":", b'{"n":0}')), (key, raw)
            else:
                assert raw is not None and raw.endswith(b'{"n":%d}' % expected), (key, raw)

    @invariant()
    def cache_is_bounded(self) -> None:
        stats = self.manager.stats()
        assert stats.cached - stats.parked <= 3
        assert stats.parked <= stats.dirty + stats.active

    def teardown(self) -> None:
        self.storage.failing = False
        try:
            self.run(self.manager.close())
            self.check_storage()
        finally:
            self.loop.close()


SessionsModel.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestSessionsModel = SessionsModel.TestCase


async def test_soak_with_a_flaky_storage_keeps_exact_totals() -> None:
    """100k updates, 20k keys, a cache of 1,000, storage failing 10%: exact totals, flat memory."""
    import gc

    rng = random.Random(11)

    class TenPercentFailing(MemoryStorage):
        async def write_many(
            self, items: Sequence[WriteItem], ttl_ms: int | None
        ) -> list[Conflict]:
            if rng.random() < 0.1:
                raise ConnectionError("injected")
            return await super().write_many(items, ttl_ms)

        async def load_many(self, keys: Sequence[str]) -> Any:
            if rng.random() < 0.1:
                raise ConnectionError("injected")
            return await super().load_many(keys)

    storage = TenPercentFailing()
    config = SessionConfig(
        max_cached=1000,
        flush_interval=0.01,
        max_batch=500,
        retry_base_delay=0.001,
        retry_max_delay=0.01,
        max_dirty=5000,
    )
    keys = [f"k{i}" for i in range(20_000)]
    expected: dict[str, int] = {}
    live_objects: list[int] = []
    async with SessionManager(storage, initial=counter, config=config) as m:

        async def bump(key: str) -> None:
            try:
                await m.update(key, lambda s: s.update(n=s["n"] + 1))
            except StorageError:
                return  # load failed: the update did not happen
            expected[key] = expected.get(key, 0) + 1

        for round_ in range(200):
            await asyncio.gather(*(bump(rng.choice(keys)) for _ in range(500)))
            if round_ % 50 == 49:
                gc.collect()
                live_objects.append(len(gc.get_objects()))
        stats = m.stats()
    assert stats.cached - stats.parked <= 1000
    assert sum(expected.values()) > 80_000
    # storage now holds every update that was acknowledged, and nothing else
    stored = {k[len("actorsess:") :]: v for k, v in storage._records.items()}
    for key, n in expected.items():
        assert stored[key][0].endswith(b'{"n":%d}' % n)
    # memory flat: live objects in the last quarter within 15% of the second quarter
    assert live_objects[-1] < live_objects[1] * 1.15, live_objects
