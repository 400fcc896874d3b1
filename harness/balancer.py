"""Balancer: a load balancer in front of webhook workers that routes every request at
random, as one without sticky sessions does, for this project's tests.

Backends can be added and removed while it runs (a worker joining or leaving).
A backend that cannot be reached, or does not answer within ``timeout``,
gets the request answered with 502 / 504: not acknowledged, as Telegram would
see it.
"""

from __future__ import annotations

import random

import aiohttp
from aiohttp import web


class Balancer:
    """``async with Balancer() as balancer:`` serves ``balancer.url``."""

    def __init__(self, *, timeout: float = 5.0, seed: int = 1) -> None:
        self.backends: list[str] = []
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def __aenter__(self) -> Balancer:
        app = web.Application()
        app.router.add_post("/webhook", self._route)
        self._client = aiohttp.ClientSession(timeout=self._timeout)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _route(self, request: web.Request) -> web.Response:
        if not self.backends:
            return web.Response(status=503, text="no backend")
        backend = self._rng.choice(self.backends)
        body = await request.read()
        assert self._client is not None
        try:
            async with self._client.post(
                backend, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                return web.Response(status=response.status, body=await response.read())
        except TimeoutError:
            return web.Response(status=504, text=f"{backend} did not answer")
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"{backend}: {type(exc).__name__}")
