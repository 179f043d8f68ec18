"""GET /v1/prometheus on a real agent (real hub, real Docker engine), read with Prometheus'
own text parser: converges, restarts, outbox depth, sync lag and last sync move as it works.

Plus the hand-written exposition (``edge_agent.prom``) against that parser, as a table.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from fleetkit import hub_agent, running
from hubproc import free_port
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.prom import Exposition, Histogram
from hub.testing import RunningHub, start_hub

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Return every sample, keyed by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- the exposition writer, read back by the reference parser ---


def test_exposition_reads_back_with_the_prometheus_parser():
    out = Exposition("t")
    out.gauge("g", "help with \\ and\nnewline", [({"a": 'q"uo\\te\nx'}, 1.5), ({"a": "b"}, 0)])
    out.counter("c", "a counter", [({}, 7)])
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v)
    out.histogram("h_seconds", "a histogram", h)
    out.gauge("inf", "infinite", [({}, math.inf)])
    families = {f.name: f for f in text_string_to_metric_families(out.render())}
    assert families["t_g"].documentation == "help with \\ and\nnewline"
    assert {(s.labels["a"], s.value) for s in families["t_g"].samples} == {
        ('q"uo\\te\nx', 1.5),
        ("b", 0.0),
    }
    assert families["t_c"].type == "counter"
    assert [(s.name, s.value) for s in families["t_c"].samples] == [("t_c_total", 7.0)]
    buckets = [(s.labels.get("le"), s.value) for s in families["t_h_seconds"].samples]
    assert buckets[:3] == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    samples = parse(out.render())
    assert value(samples, "t_h_seconds_count") == 4 and value(samples, "t_h_seconds_sum") == 4.05
    assert value(samples, "t_inf") == math.inf


# --- a real agent ---


@pytest.fixture
def hub(tmp_path: Path) -> Any:
    # the crashing service runs on the host network (see below): the policy lets it
    running_hub = start_hub(
        tmp_path / "hub", sections={"device_policy.default": {"host_network": True}}
    )
    yield running_hub
    running_hub.stop()


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
async def agent(
    hub: RunningHub, tmp_path: Path, docker: aiodocker.Docker, metrics_port: int
) -> AsyncIterator[AgentProcess]:
    proc = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        await hub.create_token(uses=1),
        hub={
            "sync_interval_s": 0.5,
            "long_poll_s": 5.0,
            "backoff_base_s": 0.2,
            "backoff_cap_s": 1.0,
        },
        supervisor={"backoff_base_s": 0.2, "backoff_cap_s": 1.0, "crash_loop_exits": 1000},
        api={"prometheus_listen": f"127.0.0.1:{metrics_port}"},
    )
    async with running(docker, proc):
        yield proc


def queued_entries(samples: Samples) -> float:
    return sum(v for (n, _), v in samples.items() if n == "edgefleet_agent_outbox_entries")


async def scrape(agent: AgentProcess) -> Samples:
    conn = aiohttp.UnixConnector(path=str(agent.socket))
    async with (
        aiohttp.ClientSession(connector=conn) as session,
        session.get("http://agent/v1/prometheus") as resp,
    ):
        text = await resp.text()
        assert resp.status == 200, text
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(text)


async def until(
    agent: AgentProcess, check: Callable[[Samples], bool], timeout_s: float = 60.0
) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(agent)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched:\n{samples}\n{agent.log()}")
        await asyncio.sleep(0.2)


async def test_agent_metrics_move_with_converges_crashes_and_an_unreachable_hub(
    hub: RunningHub, agent: AgentProcess, images: TestImages, tmp_path: Path
):
    synced = await until(
        agent, lambda s: value(s, "edgefleet_agent_last_sync_timestamp_seconds") > 0
    )
    assert abs(value(synced, "edgefleet_agent_last_sync_timestamp_seconds") - time.time()) < 60
    device_id = (await agent.status())["device_id"]
    crashy = {"EXIT_CODE": "1", "CRASH_AFTER": "0"}
    release = {
        "name": "app",
        "version": "1",
        # host network: no release network to create (the engine's address pools are
        # shared by every test on this machine); the service only exits
        "services": [
            {
                "name": "crashy",
                "image": images.ref("crash"),
                "environment": crashy,
                "network_mode": "host",
            }
        ],
    }
    await hub.set_target(device_id, release)
    crashed = await until(
        agent,
        lambda s: (
            value(s, "edgefleet_agent_service_restarts_total", service="crashy") >= 2
            and value(s, "edgefleet_agent_converge_duration_seconds_count") >= 1
        ),
    )
    assert value(crashed, "edgefleet_agent_converges_total", outcome="converged") >= 1

    # The hub goes away: the crashes' events queue up, their age grows, failures count.
    port = hub.port
    assert hub.stop() == 0
    queued = await until(
        agent,
        lambda s: (
            queued_entries(s) > 0
            and value(s, "edgefleet_agent_outbox_oldest_age_seconds") > 1
            and value(s, "edgefleet_agent_hub_failures") > 0
        ),
    )
    assert sum(v for (n, _), v in queued.items() if n == "edgefleet_agent_outbox_bytes") > 0
    last_sync = value(queued, "edgefleet_agent_last_sync_timestamp_seconds")

    # Back: the queue drains and the last sync moves on.
    back = start_hub(hub.work_dir, port=port)
    try:
        await until(
            agent,
            lambda s: (
                value(s, "edgefleet_agent_last_sync_timestamp_seconds") > last_sync
                and value(s, "edgefleet_agent_hub_failures") == 0
            ),
        )
    finally:
        back.stop()


async def test_agent_metrics_on_the_prometheus_port_and_nothing_else(
    agent: AgentProcess, metrics_port: int
):
    await until(agent, lambda s: value(s, "edgefleet_agent_last_sync_timestamp_seconds") > 0)
    base = f"http://127.0.0.1:{metrics_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            samples = parse(await resp.text())
        assert value(samples, "edgefleet_agent_last_sync_timestamp_seconds") > 0
        for path in ("/v1/status", "/v1/prometheus", "/v1/audit"):  # figures only
            async with session.get(f"{base}{path}") as resp:
                assert resp.status == 404, path
