"""Schema migrations: an ordered chain of functions that upgrade stored sessions.

A manager given ``migrations=[step_1, step_2, ...]`` is at schema version
``len(migrations)`` and writes that version into every record it stores (see
``actorsess._record``). A record written at an older schema is upgraded on
load by the steps it has not been through, each taking the session's JSON data
(what ``json.loads`` gives: dicts, lists, str, numbers) and returning the next
shape, before the codec validates it. The chain only grows: a step, once
released, is never changed or removed, because records written before it still
need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from actorsess.exceptions import CorruptSessionError

#: One step: the session's JSON data at schema ``n`` -> its data at schema ``n + 1``.
Migration = Callable[[Any], Any]


class Migrations:
    """The chain of steps of one manager; ``schema`` is how many there are."""

    __slots__ = ("_steps", "schema")

    def __init__(self, steps: Sequence[Migration]) -> None:
        if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
            raise TypeError(
                "migrations must be a list of functions (data -> data), oldest first, "
                f"got {type(steps).__name__}"
            )
        for number, step in enumerate(steps, start=1):
            if not callable(step):
                raise TypeError(
                    f"migrations[{number - 1}] (step {number}) must be a function "
                    f"(data -> data), got {type(step).__name__}"
                )
        self._steps = list(steps)
        self.schema = len(self._steps)

    def needed(self, key: str, schema: int) -> bool:
        """True if a record at ``schema`` needs upgrading; raises for one written by a
        newer chain (a deploy rolled back), which this manager cannot read safely."""
        if schema > self.schema:
            raise CorruptSessionError(
                key,
                f"record is at schema {schema}, newer than this manager's {self.schema} "
                f"({self.schema} migrations declared): written by a newer version of the bot",
            )
        return schema < self.schema

    def upgrade(self, key: str, schema: int, body: bytes) -> bytes:
        """``body`` (JSON at ``schema``) taken through the remaining steps, as JSON.

        A failing step raises CorruptSessionError naming the key and the step; the
        stored record is not touched."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CorruptSessionError(key, f"record at schema {schema} is not JSON: {exc}") from exc
        for number in range(schema + 1, self.schema + 1):
            step = self._steps[number - 1]
            try:
                data = step(data)
                if data is None:
                    raise TypeError("it returned None (a step must return the new data)")
            except Exception as exc:
                name = getattr(step, "__name__", repr(step))
                raise CorruptSessionError(
                    key,
                    f"migration step {number} ({name}) failed on a record at schema "
                    f"{number - 1}: {type(exc).__name__}: {exc}",
                ) from exc
        try:
            return orjson.dumps(data)
        except TypeError as exc:
            raise CorruptSessionError(
                key, f"migration step {self.schema} returned data JSON cannot hold: {exc}"
            ) from exc
