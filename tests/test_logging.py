"""The default logger: quiet below INFO until the application configures structlog."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_BOT = textwrap.dedent(
    """
    import asyncio, logging, sys
    import structlog
    from actorsess import MemoryStorage, SessionConfig, SessionManager

    if sys.argv[1] == "configured":
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
        )

    async def main():
        config = SessionConfig(max_cached=2, flush_interval=0.01)
        async with SessionManager(MemoryStorage(), initial=dict, config=config) as m:
            for i in range(10):
                await m.update(f"k{i}", lambda s: s.update(n=1))
            await m.flush()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(("mode", "debug_shown"), [("unconfigured", False), ("configured", True)])
def test_debug_events_only_once_the_application_asks_for_them(mode: str, debug_shown: bool) -> None:
    """A bot that never configured structlog sees the flushes, not one line per load
    and eviction; one that configured DEBUG sees those too."""
    done = subprocess.run(
        [sys.executable, "-c", _BOT, mode], capture_output=True, text=True, timeout=60, check=True
    )
    out = done.stdout
    assert "session.flush" in out
    assert ("session.load" in out) is debug_shown
    assert ("session.evict" in out) is debug_shown
