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


def _logged_events() -> dict[str, set[str]]:
    """Every ``session.*`` event the library logs, with the fields it passes (read
    from the source: calls like ``log.info("session.flush", sessions=...)``)."""
    import ast
    from pathlib import Path

    events: dict[str, set[str]] = {}
    root = Path(__file__).resolve().parent.parent / "actorsess"
    for module in root.rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"debug", "info", "warning", "error"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("session.")
            ):
                fields = {kw.arg for kw in node.keywords if kw.arg is not None}
                events.setdefault(str(node.args[0].value), set()).update(fields)
    return events


def _documented_events() -> dict[str, set[str]]:
    """The docs' table of log events: event -> the names written in its row."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
    table = page.read_text().split("## Log events", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, set[str]] = {}
    for row in table.splitlines():
        if not row.startswith("| `session."):
            continue
        first, rest = row.split("|")[1], "|".join(row.split("|")[2:])
        names = set(re.findall(r"`([a-z_]+)`", rest))
        for event in re.findall(r"`(session\.[a-z_]+)`", first):
            documented[event] = names
    return documented


def test_every_event_and_field_is_documented_and_tested() -> None:
    from pathlib import Path

    logged, documented = _logged_events(), _documented_events()
    assert set(logged) == set(documented), set(logged) ^ set(documented)
    for event, fields in logged.items():
        assert fields <= documented[event], (event, fields - documented[event])
    tests = "".join(p.read_text() for p in Path(__file__).resolve().parent.glob("*.py"))
    untested = [event for event in logged if f'"{event}"' not in tests]
    assert not untested, untested
