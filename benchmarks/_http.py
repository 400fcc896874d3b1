"""A minimal keep-alive HTTP/1.1 client for the multi-process benchmark's driver.

The driver shares two cores with the workers and Redis, so its own cost per
request decides how much CPU is left for what is measured. aiohttp's client
spends about 0.4 ms of CPU per POST; this one sends prebuilt bytes on a
pooled connection and parses only the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Connection:
    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def post(self, request: bytes) -> int:
        """Send one prebuilt request; return the response status (body read and dropped)."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self._reader.readexactly(length)
        return status

    def close(self) -> None:
        self._writer.close()


class Pool:
    """``size`` keep-alive connections to one server; a request borrows one."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self._host = host
        self._port = port
        self._path = path
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    def request(self, payload: dict[str, Any]) -> bytes:
        body = json.dumps(payload).encode()
        return (
            f"POST {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def post(self, request: bytes) -> int:
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = Connection(*await asyncio.open_connection(self._host, self._port))
            self._all.append(connection)
        try:
            status = await connection.post(request)
        except BaseException:
            connection.close()
            self._all.remove(connection)
            raise
        self._idle.append(connection)
        return status

    def close(self) -> None:
        for connection in self._all:
            connection.close()
        self._all.clear()
        self._idle.clear()
