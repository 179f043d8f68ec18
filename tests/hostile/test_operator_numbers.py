"""Item 18 (operator API): numbers and encodings that used to be 500s are clear 4xx,
and every refusal is audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.testing import DeviceIdentity, RunningHub, start_hub

RELEASE = {
    "name": "app",
    "version": "1",
    "services": [{"name": "web", "image": "127.0.0.1:5000/busybox:1"}],
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(tmp_path_factory.mktemp("hub"))
    yield running
    assert running.stop() == 0, running.log()[-3000:]


@pytest.fixture
async def device(hub: RunningHub, tmp_path: Path) -> DeviceIdentity:
    return await hub.enroll(await hub.create_token(), tmp_path / "d")


async def _audit_rows(hub: RunningHub) -> list[dict[str, Any]]:
    status, body = await hub.api("GET", "/api/v1/audit?limit=1000")
    assert status == 200
    return list(body["audit"])


def _fields(body: Any) -> list[str]:
    return [f.get("field") for f in body["fields"]]


@pytest.mark.parametrize("expires", [1e21, 10**21, 2**63])
async def test_target_expires_in_s_beyond_any_date_is_422_and_audited(
    hub: RunningHub, device: DeviceIdentity, expires: Any
) -> None:
    status, body = await hub.api(
        "POST",
        f"/api/v1/devices/{device.device_id}/target",
        {"release": RELEASE, "expires_in_s": expires},
    )
    assert status == 422, body
    assert "expires_in_s" in _fields(body)
    rows = [a for a in await _audit_rows(hub) if a["target"] == device.device_id][1:]
    assert [(a["action"], a["outcome"]) for a in rows] == [
        ("target.set", "rejected")
    ]  # after enroll
    status, _ = await hub.api("GET", f"/api/v1/devices/{device.device_id}/target")
    assert status == 404  # nothing changed


@pytest.mark.parametrize("field", ["expires_in_s", "uses"])
async def test_token_numbers_beyond_64_bits_are_422(hub: RunningHub, field: str) -> None:
    status, body = await hub.api("POST", "/api/v1/enrollment-tokens", {field: 1e21})
    assert status == 422, body
    assert field in _fields(body)


@pytest.mark.parametrize("after", [str(2**63), str(2**64), "9" * 40])
async def test_after_beyond_64_bits_is_400_on_audit_and_events(
    hub: RunningHub, device: DeviceIdentity, after: str
) -> None:
    for path in ("/api/v1/audit", f"/api/v1/devices/{device.device_id}/events"):
        status, body = await hub.api("GET", f"{path}?after={after}")
        assert status == 400, (path, body)
        assert "after" in _fields(body)
    status, body = await hub.api("GET", f"/api/v1/audit?after={2**63 - 1}")
    assert status == 200 and body["audit"] == []  # the largest value is still fine


async def _raw(hub: RunningHub, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(hub.host, hub.port, ssl=hub.ssl_context())
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/devices"), ("POST", "/api/v1/devices/dev-raw/disable")],
)
async def test_non_ascii_authorization_is_401_and_refusal_audited(
    hub: RunningHub, method: str, path: str
) -> None:
    answer = await _raw(
        hub,
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\xc3(\r\nConnection: close\r\n\r\n",
    )
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"401", answer[:300]
    if method == "POST":
        rows = [a for a in await _audit_rows(hub) if a["target"] == "dev-raw"]
        assert [(a["actor"], a["outcome"]) for a in rows] == [("anonymous", "denied")]


class _StoreFailingOnDisable:
    """The real store, except that disabling a device fails as a defect would."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def set_device_disabled(self, *args: Any) -> Any:
        raise RuntimeError("simulated defect below the handler")


async def test_unexpected_failure_inside_an_audited_action_is_audited(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from hub.app import create_app
    from hub.config import build_config
    from hub.context import HUB

    app = create_app(build_config({"server": {"data_dir": str(tmp_path / "data")}}, env={}))
    real = app[HUB].store
    app[HUB].store = _StoreFailingOnDisable(real)  # type: ignore[assignment]
    token = (tmp_path / "data" / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/v1/devices/dev-x/disable", headers=auth)
        assert resp.status == 500
        assert "simulated" not in await resp.text()
        rows = (await (await client.get("/api/v1/audit", headers=auth)).json())["audit"]
    assert [(a["action"], a["target"], a["outcome"]) for a in rows] == [
        ("device.disable", "dev-x", "error")
    ]
