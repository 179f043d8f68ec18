"""Logs on demand (the ``logs`` action) on a real agent process enrolled with a real hub.

A request to an offline device is answered after it reconnects; ``tail`` and ``grep``
return exactly the matching lines of a real container; ``follow`` streams lines written
after the request; the hub's per-action bound cuts and says so; ``edgectl logs`` prints
the lines; bad arguments are refused 422 naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from agentproc import AgentProcess
from fleetkit import FAST, device_of, hub_agent, running, until
from hubproc import HubProcess
from synckit import enroll_device

IMAGE = "edgefleet-test/good:1"
KNOWN = 60  # lines the fixed service writes: "known I" (every 7th also says ERROR)
FIXED = [
    "/bin/sh",
    "-c",
    f"i=0; while [ $i -lt {KNOWN} ]; do if [ $((i % 7)) -eq 0 ]; then echo known $i ERROR; "
    "else echo known $i; fi; i=$((i+1)); done; while true; do sleep 1; done",
]
LIVE = ["/bin/sh", "-c", "i=0; while true; do echo live $i; i=$((i+1)); sleep 0.2; done"]
RELEASE = {
    "name": "app",
    "version": "1",
    "services": [
        {"name": "fixed", "image": IMAGE, "command": FIXED},
        {"name": "live", "image": IMAGE, "command": LIVE},
    ],
}
BATCH = {"logs_batch_lines": 7, "logs_flush_s": 0.2}  # several parts for 60 lines
FINAL = ("succeeded", "failed", "refused", "expired")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub", EDGE_HUB_ACTIONS_LOGS_MAX_LINES="25").start()
    yield proc
    proc.stop()


def queue(hub: HubProcess, device: str, **args: Any) -> str:
    made = hub._call("POST", f"/api/v1/devices/{device}/actions", {"kind": "logs", "args": args})
    return str(made["id"])


def parts(hub: HubProcess, action_id: str, after: int = 0) -> dict[str, Any]:
    return dict(hub._call("GET", f"/api/v1/actions/{action_id}/parts?after={after}", None))


async def answered(hub: HubProcess, action_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait for the action to finish; return its last page with every part's lines."""
    page = await until(
        lambda: (p := parts(hub, action_id))["action"]["state"] in FINAL and not p["pending"] and p,
        timeout_s,
        f"action {action_id} to finish",
    )
    page["lines"] = [line for part in page["parts"] for line in part["lines"]]
    return dict(page)


def texts(lines: list[str]) -> list[str]:
    """Return the text of each answered line (``SERVICE TS STREAM TEXT``)."""
    return [line.split(" ", 3)[3] for line in lines]


@pytest.fixture
async def device(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker
) -> AsyncIterator[tuple[AgentProcess, str]]:
    agent = hub_agent(
        tmp_path / "agent", hub.url, hub.ca_path, hub.create_token(), hub=FAST, actions=BATCH
    )
    async with running(docker, agent):
        dev = str(await until(lambda: device_of(agent), what="enrollment"))
        hub.set_target(dev, RELEASE)
        await until(lambda: hub.device(dev).get("state") == "converged", 90, "convergence")
        yield agent, dev


async def test_tail_and_grep_return_exactly_the_matching_lines(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    _agent, dev = device
    want = [f"known {i}" + (" ERROR" if i % 7 == 0 else "") for i in range(KNOWN)]
    tail = await answered(hub, queue(hub, dev, service="fixed", tail=5))
    assert texts(tail["lines"]) == want[-5:], tail
    grep = await answered(hub, queue(hub, dev, service="fixed", grep="ERROR$", tail=3))
    assert texts(grep["lines"]) == [w for w in want if w.endswith("ERROR")][-3:]
    every = await answered(hub, queue(hub, dev, service="fixed", grep=r"^known 1\d$"))
    assert texts(every["lines"]) == [f"known {i}" for i in range(10, 20) if i != 14]
    assert all(line.startswith("fixed ") for line in every["lines"])
    assert tail["action"]["state"] == "succeeded" and tail["totals"]["cut_lines"] == 0
    assert every["action"]["result"]["parts"] >= 2  # 9 lines in batches of 7


async def test_the_hubs_bound_cuts_and_says_so(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    _agent, dev = device
    page = await answered(hub, queue(hub, dev, service="fixed", tail=KNOWN))
    assert texts(page["lines"]) == [f"known {i}" + " ERROR" * (i % 7 == 0) for i in range(25)]
    assert page["totals"]["lines"] == 25 and page["totals"]["cut_lines"] == KNOWN - 25
    assert page["action"]["result"]["lines"] == KNOWN  # what the device sent


async def test_follow_streams_lines_written_after_the_request(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    _agent, dev = device
    asked = time.time()
    action_id = queue(hub, dev, service="live", tail=0, follow=4)
    first = await until(lambda: (p := parts(hub, action_id))["parts"] and p, 30, "a first part")
    assert first["action"]["state"] == "delivered"  # still streaming
    page = await answered(hub, action_id)
    numbers = [int(t.split()[1]) for t in texts(page["lines"])]
    stamps = [float(line.split(" ")[1]) for line in page["lines"]]
    assert len(numbers) >= 10 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert min(stamps) >= asked - 1.0  # written after the request (tail 0: no history)
    assert page["action"]["result"]["ended"] == "follow_deadline"
    assert page["action"]["result"]["parts"] >= 2  # sent as they came, not at the end


async def test_a_request_to_an_offline_device_is_answered_after_it_reconnects(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    agent, dev = device
    await agent.kill()
    action_id = queue(hub, dev, service="fixed", tail=2)
    await asyncio.sleep(1.0)
    assert parts(hub, action_id)["action"]["state"] == "queued"
    await agent.start()
    page = await answered(hub, action_id)
    assert texts(page["lines"]) == [f"known {KNOWN - 2}", f"known {KNOWN - 1}"]


async def test_edgectl_logs_prints_the_lines(
    hub: HubProcess, device: tuple[AgentProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.edgectl import main as edgectl

    _agent, dev = device
    admin = (hub.data_dir / "admin.token").read_text().strip()
    common = ["--hub", hub.url, "--ca", str(hub.ca_path), "--token", admin]
    loop = asyncio.get_running_loop()
    with pytest.raises(SystemExit) as done:
        await loop.run_in_executor(
            None, edgectl, [*common, "logs", dev, "fixed", "--tail", "3", "--since", "1h"]
        )
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert [line.split(" ", 3)[3] for line in out.splitlines()] == [
        f"known {i}" for i in (57, 58, 59)
    ]
    assert re.search(r"request act-[0-9a-f]{16}: (queued|delivered|answering)", err), err


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"tail": -1}, "args.tail"),
        ({"grep": "("}, "args.grep"),
        ({"grep": "x" * 300}, "args.grep"),
        ({"since": "yesterday"}, "args.since"),
        ({"until": "2026-01-01T00:00:00"}, "args.until"),  # no zone
        ({"since": 100, "until": 50}, "args.until"),
        ({"follow": 999_999}, "args.follow"),
        ({"service": "../x"}, "args.service"),
        ({"lines": 5}, "args.lines"),
    ],
)
async def test_bad_arguments_are_refused_422_by_name(
    hub: HubProcess, tmp_path: Path, args: dict[str, Any], field: str
) -> None:
    identity = await enroll_device(hub, tmp_path / "d")
    path = f"/api/v1/devices/{identity.device_id}/actions"
    with pytest.raises(urllib.error.HTTPError) as err:
        hub._call("POST", path, {"kind": "logs", "args": args})
    body = json.loads(err.value.read())
    assert err.value.code == 422 and body["fields"][0]["field"] == field, body
    assert hub._call("GET", f"/api/v1/actions?device={identity.device_id}", None)["actions"] == []


def cancel(hub: HubProcess, action_id: str) -> dict[str, Any]:
    return dict(hub._call("POST", f"/api/v1/actions/{action_id}/cancel", None))


async def test_cancel_stops_a_follow_on_the_device(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    _agent, dev = device
    action_id = queue(hub, dev, service="live", tail=0, follow=300)
    await until(lambda: parts(hub, action_id)["parts"], 30, "a first part")
    asked = time.monotonic()
    made = cancel(hub, action_id)
    assert (made["kind"], made["args"]) == ("cancel", {"action": action_id})
    page = await answered(hub, action_id, 30)
    assert time.monotonic() - asked < 20  # not the 300 s follow
    assert page["action"]["state"] == "succeeded"
    assert page["action"]["result"]["ended"] == "cancelled" and page["lines"]
    done = await answered(hub, made["id"])
    assert done["action"]["result"] == {"action": action_id, "was": "running", "cancelled": True}
    with pytest.raises(urllib.error.HTTPError) as err:
        cancel(hub, action_id)  # finished: nothing to cancel
    assert err.value.code == 409


async def test_a_request_cancelled_before_it_reached_the_device_never_runs(
    hub: HubProcess, device: tuple[AgentProcess, str]
) -> None:
    agent, dev = device
    await agent.kill()
    action_id = queue(hub, dev, service="fixed", tail=5)
    cancelled = cancel(hub, action_id)["id"]
    await agent.start()
    page = await answered(hub, action_id)
    assert page["action"]["state"] == "failed" and page["action"]["reason"] == "cancelled"
    assert page["parts"] == []
    assert (await answered(hub, cancelled))["action"]["result"]["was"] == "queued"


async def test_edgectl_logs_shows_the_state_while_an_offline_device_has_not_answered(
    hub: HubProcess, device: tuple[AgentProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.edgectl import main as edgectl

    agent, dev = device
    await agent.kill()
    admin = (hub.data_dir / "admin.token").read_text().strip()
    common = ["--hub", hub.url, "--ca", str(hub.ca_path), "--token", admin]
    loop = asyncio.get_running_loop()
    run = loop.run_in_executor(None, edgectl, [*common, "logs", dev, "fixed", "--tail", "1"])
    await until(lambda: hub._call("GET", f"/api/v1/actions?device={dev}", None)["actions"])
    await asyncio.sleep(1.0)  # edgectl polls the queued request meanwhile
    await agent.start()
    with pytest.raises(SystemExit) as done:
        await run
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert out.splitlines()[-1].endswith(f"known {KNOWN - 1}")
    states = re.findall(r"request act-[0-9a-f]{16}: (\w+)", err)
    assert states[0] == "queued" and len(states) >= 2, err  # then delivered, answering, ...
