"""The agent's local API as a contract: a property-based fuzzer (schemathesis) drives a
REAL agent process (enrolled at a real hub, on the real engine) through the OpenAPI
document the agent itself serves, over its HTTPS LAN listener with a technician token
of the operate role.

Checks: no 5xx, every status one the document lists, answers matching their schemas and
content types, and requests the document calls invalid refused (4xx). The device is
managed by the hub, so a fuzzed local apply without ``"force": true`` is refused (409)
and nothing reaches the engine; pause and pin are real holds, bounded by the agent's
configuration. Examples per operation: ``EDGEFLEET_FUZZ_EXAMPLES`` (default 12).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
import schemathesis
from agentproc import AgentProcess
from fleetkit import hub_agent, retire
from fuzzkit import FUZZ_SETTINGS, checks_for, loopback_session
from hubproc import HubProcess, free_port
from urllib3.exceptions import InsecureRequestWarning


class Device:
    """The running agent, its LAN port and an operate token for it."""

    def __init__(self, agent: AgentProcess, port: int, token: str) -> None:
        self.agent, self.port, self.token = agent, port, token

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def fuzz_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    work = tmp_path_factory.mktemp("fuzzagent")
    hub = HubProcess(work / "hub").start()
    port = free_port()
    agent = hub_agent(
        work / "agent",
        hub.url,
        hub.ca_path,
        hub.create_token(site="berlin"),
        hub={"sync_interval_s": 0.5, "backoff_cap_s": 1.0, "long_poll_s": 1.0},
        # a fuzzed follow=true ends after 1 s (a follow lasts until the client goes away)
        api={"lan_listen": f"127.0.0.1:{port}", "technician_skew_s": 0, "logs_follow_max_s": 1},
    )
    body = {"name": "fuzz", "role": "operate", "scope": "site=berlin", "expires_in_s": 3600}
    token = str(hub._call("POST", "/api/v1/technicians", body)["token"])
    loop = asyncio.new_event_loop()  # the agent's helpers are bound to one loop
    loop.run_until_complete(agent.start())
    try:
        yield Device(agent, port, token)
    finally:

        async def stop() -> None:
            async with aiodocker.Docker() as docker:
                await retire(agent, docker)

        loop.run_until_complete(stop())
        loop.close()
        hub.stop()


def _get(device: Device, path: str) -> Any:
    context = ssl.create_default_context(cafile=str(device.agent.data_dir / "hub-ca.pem"))
    context.check_hostname = False  # the device certificate names the device
    request = urllib.request.Request(
        device.url + path, headers={"Authorization": f"Bearer {device.token}"}
    )
    with urllib.request.urlopen(request, context=context) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def agent_schema(fuzz_device: Device) -> Any:
    return schemathesis.openapi.from_dict(_get(fuzz_device, "/v1/openapi.json"))


schema = schemathesis.pytest.from_fixture("agent_schema")
SUCCEEDED: set[str] = set()


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzzed_local_api_requests_get_no_server_error_and_match_the_document(
    case: Any, fuzz_device: Device
) -> None:
    with warnings.catch_warnings(), loopback_session() as session:
        # verify=False: the LAN certificate names the device, not 127.0.0.1 (requests
        # cannot skip only the name check); what is under test is the API, not TLS.
        warnings.simplefilter("ignore", InsecureRequestWarning)
        answer = case.call_and_validate(
            base_url=fuzz_device.url,
            session=session,
            checks=checks_for(case),
            headers={"Authorization": f"Bearer {fuzz_device.token}"},
            verify=False,
            timeout=30,
        )
    if 200 <= answer.status_code < 300:
        SUCCEEDED.add(f"{case.method.upper()} {case.path}")


def test_the_fuzzer_reached_the_agent_handlers() -> None:
    """Runs after the fuzzing (file order): the token was accepted, so the handlers ran."""
    wanted = {"GET /v1/status", "GET /v1/containers", "GET /v1/audit", "POST /v1/pause"}
    assert wanted <= SUCCEEDED, sorted(SUCCEEDED)


def test_every_local_route_is_in_the_agent_document(fuzz_device: Device, tmp_path: Path) -> None:
    from edge_agent.api import create_api
    from edge_agent.config import ApiConfig
    from edge_agent.openapi import served_routes

    class NoAgent:
        config = None

    served = {(m, p) for m, p, _ in served_routes(create_api(NoAgent(), ApiConfig()))}  # type: ignore[arg-type]
    paths = _get(fuzz_device, "/v1/openapi.json")["paths"]
    assert served == {(m.upper(), p) for p, ops in paths.items() for m in ops}
    assert len(served) >= 12
