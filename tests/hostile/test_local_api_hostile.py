"""Item 22: the agent's local API under hostile input, on a real aiohttp server.

The agent object is a bare ``object()``: every request here must be answered by the API
layer itself (validation, refusal, the catch-all error handler) without reaching the
agent — a request that did reach it would fail with AttributeError, which is exactly the
unexpected-exception path the 500 test needs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edge_agent.api import MAX_AUDIT_LIMIT, create_api
from edge_agent.config import ApiConfig

TOKEN = "bob-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client() -> TestClient:
    config = ApiConfig(technicians={"bob": hashlib.sha256(TOKEN.encode()).hexdigest()})
    return TestClient(TestServer(create_api(object(), config, lan=True)))  # type: ignore[arg-type]


async def test_500_body_carries_an_error_id_not_the_exception_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="edge_agent.api")
    async with _client() as client:
        resp = await client.get("/v1/status", headers=AUTH)  # object() has no status()
        body = await resp.json()
    assert resp.status == 500
    assert "AttributeError" not in str(body) and "object" not in body["message"]
    assert body["error"] == "internal" and set(body) == {"error", "message", "fields"}
    error_id = re.search(r"internal error ([0-9a-f]{12});", body["message"]).group(1)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info, "the exception is logged under the error id"


@pytest.mark.parametrize("limit", ["-1", "0", "abc", str(MAX_AUDIT_LIMIT + 1), "1e3", "9" * 40])
async def test_audit_limit_out_of_bounds_is_422_naming_limit(limit: str) -> None:
    async with _client() as client:
        resp = await client.get(f"/v1/audit?limit={limit}", headers=AUTH)
        body = await resp.json()
    assert resp.status == 422, body
    assert body["error"] == "invalid_document"
    assert [f["field"] for f in body["fields"]] == ["limit"]
    assert str(MAX_AUDIT_LIMIT) in body["message"]


@pytest.mark.parametrize("name", ["x" * 5000, "UPPER", "a%20b", "-dash"])
async def test_restart_of_an_invalid_service_name_is_refused_before_audit(name: str) -> None:
    async with _client() as client:
        resp = await client.post(f"/v1/services/{name}/restart", headers=AUTH)
        body = await resp.json()
    assert resp.status == 422, body  # never reaches the agent (which would audit it)
    assert [f["field"] for f in body["fields"]] == ["name"]
    assert "x" * 100 not in body["message"]


async def test_non_ascii_authorization_is_401_not_500() -> None:
    async with _client() as client:
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(
            b"GET /v1/audit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3(\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
    assert head.split()[1] == b"401", head
