"""The hub's API as a contract: the OpenAPI document covers every route the hub serves,
and a property-based fuzzer (schemathesis) drives a REAL hub process through it.

The fuzzer sends generated requests (valid and invalid by the document) to every
operation — operator routes with the admin token, device routes with a real enrolled
device's client certificate — and checks: no 5xx, every status is one the document
lists, every answer matches its declared schema and content type, and a request the
document calls invalid is refused (4xx). Examples per operation are bounded
(``EDGEFLEET_FUZZ_EXAMPLES``, default 12) so the run takes about a minute.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fuzzkit import FUZZ_SETTINGS, checks_for, loopback_session

from edge_agent.openapi import Undescribed, described, openapi_document, served_routes
from hub.app import create_app
from hub.config import build_config
from hub.testing import DeviceIdentity, RunningHub, start_hub

# Long-polls would hold each example for its ``wait``; the fuzzer gets a short one.
LONG_POLL = ("GET", "/v1/target")


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningHub, Any]]:
    """A hub of its own (the fuzzer creates and refuses a lot) and an enrolled device."""
    work = tmp_path_factory.mktemp("fuzzhub")
    running = start_hub(work, sections={"limits": {"auth_failure_burst": 1_000_000}})

    async def enroll() -> DeviceIdentity:
        token = await running.create_token(uses=1, tags={"site": "fuzz"})
        return await running.enroll(token, work / "device")

    device = asyncio.run(enroll())
    yield running, device
    status = running.stop()
    assert status == 0, f"hub exited with {status}:\n{running.log()[-3000:]}"


def _document(hub: RunningHub) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(hub.work_dir / "data" / "ca.pem"))
    with urllib.request.urlopen(hub.url + "/api/v1/openapi.json", context=context) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


@pytest.fixture(scope="module")
def hub_schema(fuzz_hub: tuple[RunningHub, DeviceIdentity]) -> Any:
    """The document the running hub serves, loaded by the fuzzer."""
    hub, _ = fuzz_hub
    return schemathesis.openapi.from_dict(_document(hub))


schema = schemathesis.pytest.from_fixture("hub_schema")


SUCCEEDED: set[str] = set()  # operations that answered 2xx at least once


@schema.parametrize()
@FUZZ_SETTINGS
def test_fuzzed_requests_get_no_server_error_and_answers_match_the_document(
    case: Any, fuzz_hub: tuple[RunningHub, DeviceIdentity]
) -> None:
    hub, device = fuzz_hub
    if (case.method.upper(), case.path) == LONG_POLL and isinstance(case.query, dict):
        case.query["wait"] = 0
    kwargs: dict[str, Any] = {"verify": str(hub.work_dir / "data" / "ca.pem"), "timeout": 30}
    if case.path.startswith("/v1/"):
        kwargs["cert"] = (str(device.cert_path), str(device.key_path))
    elif case.path not in ("/healthz", "/api/v1/openapi.json"):
        kwargs["headers"] = {"Authorization": f"Bearer {hub.admin_token}"}
    with loopback_session() as session:
        answer = case.call_and_validate(
            base_url=hub.url, session=session, checks=checks_for(case), **kwargs
        )
    if 200 <= answer.status_code < 300:
        SUCCEEDED.add(f"{case.method.upper()} {case.path}")


def test_the_fuzzer_reached_the_handlers_not_only_the_refusals() -> None:
    """Runs after the fuzzing (file order): operations of both APIs succeeded with the
    admin token and with the device certificate, so the fuzzer did not only exercise
    authentication (operations on a named object mostly meet 404: ids are random)."""
    wanted = {
        "GET /api/v1/devices",
        "POST /api/v1/enrollment-tokens",
        "GET /api/v1/audit",
        "POST /v1/sync",
        "GET /v1/target",
    }
    assert wanted <= SUCCEEDED, sorted(SUCCEEDED)
    assert len(SUCCEEDED) >= 12, sorted(SUCCEEDED)


def _app(tmp_path: Path) -> Any:
    config = build_config(
        {"server": {"host": "127.0.0.1", "port": 0, "data_dir": str(tmp_path / "data")}}
    )
    return create_app(config)


def test_every_route_the_hub_serves_is_in_its_openapi_document(
    fuzz_hub: tuple[RunningHub, DeviceIdentity], tmp_path: Path
) -> None:
    hub, _ = fuzz_hub
    paths = _document(hub)["paths"]
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    served = {(method, path) for method, path, _ in served_routes(_app(tmp_path))}
    assert served == documented
    assert len(served) >= 40  # the operator and device APIs, not an empty router


def test_a_route_without_a_description_is_refused_when_the_document_is_built(
    tmp_path: Path,
) -> None:
    app = _app(tmp_path)

    async def undescribed(request: Any) -> Any:
        """A handler someone forgot to describe."""

    app.router.add_get("/api/v1/forgotten", undescribed)
    with pytest.raises(Undescribed, match="GET /api/v1/forgotten"):
        openapi_document(app, title="t", version="0")
    app2 = _app(tmp_path / "again")
    app2.router.add_get("/api/v1/remembered", described()(undescribed))
    assert "/api/v1/remembered" in openapi_document(app2, title="t", version="0")["paths"]


def test_error_answers_share_one_body_shape(fuzz_hub: tuple[RunningHub, DeviceIdentity]) -> None:
    hub, _ = fuzz_hub
    doc = _document(hub)
    error = doc["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "message"} and "fields" in error["properties"]
    ca = str(hub.work_dir / "data" / "ca.pem")
    with loopback_session() as session:
        admin = {"Authorization": f"Bearer {hub.admin_token}"}
        answer = session.get(hub.url + "/api/v1/devices/no-such-device", headers=admin, verify=ca)
        wrong = {"Authorization": "Bearer wrong"}
        refused = session.get(hub.url + "/api/v1/devices", headers=wrong, verify=ca)
    for got, status in ((answer, 404), (refused, 401)):
        assert got.status_code == status
        assert set(got.json()) == {"error", "message", "fields"}
