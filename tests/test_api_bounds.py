"""The local API's bounds and refusals, on a real aiohttp server (no agent work is reached)."""

from __future__ import annotations

import hashlib

from aiohttp.test_utils import TestClient, TestServer

from edge_agent.api import create_api
from edge_agent.config import ApiConfig

TOKEN = "bob-token"


def _config(max_body: int) -> ApiConfig:
    return ApiConfig(
        max_body_bytes=max_body, technicians={"bob": hashlib.sha256(TOKEN.encode()).hexdigest()}
    )


async def test_oversized_body_is_413_and_bad_json_is_422() -> None:
    app = create_api(object(), _config(2048), lan=True)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        resp = await client.post("/v1/apply", data=b"x" * 4096, headers=auth)
        assert resp.status == 413
        assert "2048" in (await resp.json())["message"]
        resp = await client.post("/v1/apply", data=b"{not json", headers=auth)
        assert resp.status == 422
        assert (await resp.json())["error"] == "invalid_document"
        resp = await client.post("/v1/apply", data=b"{}")
        assert resp.status == 401
