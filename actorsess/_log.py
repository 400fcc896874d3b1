"""The library's default logger: quiet below INFO until the application configures
structlog.

structlog prints every level until it is configured, and the library's debug events
(one per load batch, one per eviction) would flood an unconfigured bot's output. So
until ``structlog.configure()`` has been called, debug events are dropped; after
that, the application's own configuration decides, as for any structlog logger.
A ``logger=`` given to the manager is used as it is.
"""

from __future__ import annotations

from typing import Any

import structlog


class DefaultLogger:
    __slots__ = ("_logger",)

    def __init__(self) -> None:
        self._logger = structlog.get_logger("actorsess")

    def debug(self, event: str, **fields: Any) -> None:
        if structlog.is_configured():
            self._logger.debug(event, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)
