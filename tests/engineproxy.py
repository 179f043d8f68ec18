"""A pass-through proxy of the Docker Engine API on a unix socket that records each call.

Tests point a ``DockerRuntime`` at it (``docker_url="unix://<path>"``) to see which engine
round trips an operation makes; every call still goes to the real engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from aiohttp import web

ENGINE_SOCKET = "/var/run/docker.sock"
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_VERSION = re.compile(r"^/v[0-9.]+")


class EngineProxy:
    """Forward every request to the engine; remember ``(method, path)`` without version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[str, str]] = []
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The ``docker_url`` to give a runtime."""
        return f"unix://{self.path}"

    async def start(self) -> EngineProxy:
        """Listen on the unix socket."""
        self._http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(ENGINE_SOCKET))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.path)).start()
        return self

    async def close(self) -> None:
        """Stop listening and close the engine connection."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        self.calls.append((request.method, _VERSION.sub("", request.path)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._http.request(
            request.method,
            f"http://engine{request.path_qs}",
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            return web.Response(status=upstream.status, body=body, headers=out)
