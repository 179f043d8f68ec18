"""``GET /v1/logs`` on a real agent's local API, read from its store, on a real engine.

The kept lines of a real container (tail, grep, text and NDJSON), 422 naming a bad
field, ``follow`` streaming lines written after the request until the client goes away,
the bounded number of followers (503 + Retry-After, counted), and a technician's read
over the HTTPS LAN listener audited like the other reads.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import device_of, running
from hubproc import HubProcess
from test_technician_holds_e2e import audit_rows, device, hub, release, runs  # noqa: F401
from test_technicians_e2e import issue

from edge_agent.config import ApiConfig
from edge_agent.errors import InvalidDocument
from edge_agent.log_api import parse_query

pytestmark = pytest.mark.docker
FOLLOW_MAX_S = 10


@pytest.fixture
async def agent(
    tmp_path: Path, docker: aiodocker.Docker, images: TestImages, device_id: str
) -> AsyncIterator[AgentProcess]:
    proc = AgentProcess(
        device_id,
        tmp_path / "a",
        api={"logs_max_followers": 1, "logs_max_tail": 500, "logs_follow_max_s": FOLLOW_MAX_S},
        logs={"flush_interval_s": 0.2},
    )
    async with running(docker, proc):
        assert (await proc.call("POST", "/v1/apply", release(images, "1")))[0] == 202
        await docker_env.wait_for(lambda: runs(proc, docker, "1"), timeout_s=60)
        yield proc


async def get(agent: AgentProcess, path: str) -> tuple[int, str, dict[str, str]]:
    conn = aiohttp.UnixConnector(path=str(agent.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as session,
        session.get(f"http://agent{path}") as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


async def ticks(agent: AgentProcess, n: int) -> list[dict[str, Any]]:
    """Wait until the store has ``n`` lines of web; return the last n as NDJSON rows."""

    async def enough() -> Any:
        code, text, _ = await get(agent, f"/v1/logs?service=web&tail={n}")
        rows = [json.loads(line) for line in text.splitlines()]
        return rows if code == 200 and len(rows) == n else None

    return list(await docker_env.wait_for(enough, timeout_s=30, interval_s=0.3))


async def test_logs_answers_the_kept_lines_from_the_store(agent: AgentProcess) -> None:
    rows = await ticks(agent, 3)
    assert [r["line"] for r in rows] == ["tick"] * 3 and rows[0]["service"] == "web"
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    code, text, headers = await get(agent, "/v1/logs?service=web&tail=2&format=text")
    assert code == 200 and headers["Content-Type"].startswith("text/plain"), text
    lines = text.splitlines()
    assert len(lines) == 2 and all(x.startswith("web ") and x.endswith(" tick") for x in lines)
    code, text, _ = await get(agent, "/v1/logs?grep=^nomatch$&tail=5")
    assert (code, text) == (200, "")
    since = rows[-1]["ts"]
    code, text, _ = await get(agent, f"/v1/logs?service=web&since={since}")
    assert code == 200 and all(json.loads(x)["ts"] >= since for x in text.splitlines())


BAD_QUERIES = [
    ("tail=501", "tail"),
    ("tail=-1", "tail"),
    ("grep=(", "grep"),
    ("since=yesterday", "since"),
    ("since=2026-01-01T00:00:00", "since"),  # no zone
    ("service=../x", "service"),
    ("follow=maybe", "follow"),
    ("format=xml", "format"),
    ("limit=0", "limit"),
]


@pytest.mark.parametrize(("query", "field"), BAD_QUERIES)
def test_a_bad_logs_query_names_the_field(query: str, field: str) -> None:
    config = ApiConfig(logs_max_tail=500)
    with pytest.raises(InvalidDocument) as info:
        parse_query(dict(urllib.parse.parse_qsl(query)), config, 1e9)
    assert [f["field"] for f in info.value.errors] == [field]


def test_logs_query_defaults_and_ages() -> None:
    config = ApiConfig(logs_max_tail=50)
    q = parse_query({}, config, 1e9)
    assert (q.tail, q.since, q.follow, q.text) == (50, None, False, False)  # 100 capped
    q = parse_query({"since": "2h", "follow": "true", "format": "text"}, config, 1e9)
    assert (q.tail, q.since, q.follow, q.text) == (None, 1e9 - 7200, True, True)
    assert parse_query({"since": "1970-01-01T00:01:00+00:00"}, config, 0).since == 60


async def test_logs_refuses_a_bad_query_on_a_real_agent(agent: AgentProcess) -> None:
    for query, field in BAD_QUERIES:
        code, text, _ = await get(agent, f"/v1/logs?{query}")
        body = json.loads(text)
        assert code == 422 and [f["field"] for f in body["fields"]] == [field], body


async def test_logs_follow_streams_new_lines_and_bounds_the_followers(
    agent: AgentProcess,
) -> None:
    start = time.time()
    conn = aiohttp.UnixConnector(path=str(agent.socket))
    async with aiohttp.ClientSession(connector=conn) as session:
        resp = await session.get("http://agent/v1/logs?service=web&tail=1&follow=true")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith(
            "application/x-ndjson"
        )
        got: list[dict[str, Any]] = []
        while len(got) < 4:  # one of history, then lines written after the request
            got.append(json.loads(await asyncio.wait_for(resp.content.readline(), 20)))
        assert all(r["ts"] > start for r in got[1:]) and got[0]["ts"] < got[-1]["ts"]
        assert [r["id"] for r in got] == sorted({r["id"] for r in got})  # none twice

        code, text, headers = await get(agent, "/v1/logs?follow=true")  # over the bound
        assert code == 503 and headers["Retry-After"], text
        assert json.loads(text)["fields"] == [{"field": "follow", "message": "busy"}]
        resp.close()  # the client goes away: its follower slot is free again

    async def free_again() -> bool:
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(agent.socket))
        ) as s:
            r = await s.get("http://agent/v1/logs?follow=true&tail=0")
            ok = r.status == 200
            r.close()
            return ok

    await docker_env.wait_for(free_again, timeout_s=15, interval_s=0.3)
    st = await agent.status()
    assert st["counters"]["api_log_followers_refused"] >= 1, st["counters"]


async def test_a_follow_ends_after_its_bound(agent: AgentProcess) -> None:
    start = time.monotonic()
    code, text, _ = await get(agent, "/v1/logs?service=web&tail=0&follow=true")
    took = time.monotonic() - start
    assert code == 200 and FOLLOW_MAX_S <= took < FOLLOW_MAX_S + 10, took
    assert text.count("tick") >= 3  # the lines written meanwhile, then the end


async def test_a_technicians_logs_read_is_audited(
    hub: HubProcess,  # noqa: F811
    device: tuple[AgentProcess, int],  # noqa: F811
    docker: aiodocker.Docker,
    images: TestImages,
) -> None:
    agent, port = device
    device_id = device_of(agent) or ""
    hub.set_target(device_id, release(images, "1"))
    await docker_env.wait_for(lambda: runs(agent, docker, "1"), timeout_s=60)
    alice = issue(hub, "alice", "read", "site=berlin")
    ctx = ssl.create_default_context(cafile=str(agent.data_dir / "hub-ca.pem"))
    ctx.check_hostname = False
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        url = f"https://127.0.0.1:{port}/v1/logs?tail=5&format=text"
        async with session.get(url, headers={"Authorization": f"Bearer {alice}"}) as resp:
            assert resp.status == 200, await resp.text()
    _, rows = await agent.call("GET", "/v1/audit?limit=1000")
    reads = [r for r in audit_rows(rows, "api.read") if r["object"] == "/v1/logs"]
    assert [r["actor"].split("@")[0] for r in reads] == ["technician:alice"], reads
