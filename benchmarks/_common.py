"""Shared helpers for the benchmark scripts: a private Redis, command counts, tables."""

from __future__ import annotations

import gc
import logging
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import redis
import structlog


class CollectorWatch:
    """Counts the garbage collector's runs while active, and the time they stopped
    the program: the pauses that make the tails of the latency columns."""

    def __init__(self) -> None:
        self.full_collections = 0
        self.pause_s = 0.0
        self._began = 0.0

    def __enter__(self) -> CollectorWatch:
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        self.pause_s += time.perf_counter() - self._began
        if info["generation"] == 2:
            self.full_collections += 1


def quiet_logs() -> None:
    # structlog's production setup: filtered levels cost a no-op call, and the
    # logger is bound once (uncached, every event binds a new logger: ~10 µs).
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    logging.getLogger("aiogram").setLevel(logging.WARNING)


def redis_commands(url: str) -> int:
    """Total commands the server has executed (INFO commandstats), scripts' inner ones included."""
    return sum(redis_command_calls(url).values())


def redis_command_calls(url: str) -> dict[str, int]:
    """Calls per command the server has executed so far (INFO commandstats), scripts'
    inner ones included: ``{"set": 120, "evalsha": 12, ...}``."""
    client = redis.Redis.from_url(url)
    stats: dict[str, Any] = client.info("commandstats")
    client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_cpu_seconds(url: str) -> float:
    """User + system CPU the server has used so far (INFO cpu)."""
    client = redis.Redis.from_url(url)
    cpu: dict[str, Any] = client.info("cpu")
    client.close()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def flush_redis(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.config_resetstat()
    client.close()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    try:
        version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[2]
    except (OSError, IndexError):
        version = "?"
    import os

    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"Redis {version.removeprefix('v=')}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (what the README shows)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
        "| " + " | ".join("-" * w for w in widths) + " |",
    ]
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    return str(value)
