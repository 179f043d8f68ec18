"""docs/deployments.md's walkthrough, run as written by bash against a real hub.

The demo's device is SIMULATED (see test_rollouts): enrolled with the demo's tag, given
``examples/sample-release.json`` as demo.sh does, syncing the real protocol, no Docker.
The script is the document's block with only the hub's address and files (and a shorter
soak) put in; every command must exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_rollouts import SimDevice

from hub.testing import RunningHub, start_hub

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "deployments.md"


def walkthrough() -> str:
    """Return the shell block of the walkthrough section."""
    text = DOC.read_text()
    section = text.split("## Walkthrough:", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```text\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the walkthrough has one block of commands"
    return str(blocks[0])


@pytest.fixture(scope="module")
def demo_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(tmp_path_factory.mktemp("demo"), sections={"rollouts": {"tick_s": 0.1}})
    yield running
    assert running.stop() == 0, running.log()[-3000:]


def _script(hub: RunningHub) -> str:
    script = walkthrough()
    for old, new in (
        ("https://127.0.0.1:8443", hub.url),
        ("var/demo/hub/admin.token", str(hub.data_dir / "admin.token")),
        ("var/demo/hub/ca.pem", str(hub.ca_path)),
        ("--soak 30s", "--soak 1s"),  # both rollouts
    ):
        assert old in script, old
        script = script.replace(old, new)
    assert "--soak 30s" not in script
    return script


def _bash(script: str, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run the script as a user would: bash, edgectl on PATH, from the repository root."""
    shim = bin_dir / "edgectl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m hub.edgectl "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGECTL_", "EDGE_AGENT_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(REPO))
    out, err = bin_dir / "out.txt", bin_dir / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            ["bash", "-euxo", "pipefail", "-c", script],
            cwd=REPO,
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()  # and report what it printed so far
            code = proc.wait()
    return subprocess.CompletedProcess(proc.args, code, out.read_text(), err.read_text())


async def _keep_syncing(hub: RunningHub, device: SimDevice) -> None:
    while True:
        await device.sync(hub)
        await asyncio.sleep(0.1)


async def test_walkthrough_runs_as_written_against_a_real_hub(
    demo_hub: RunningHub, tmp_path: Path
) -> None:
    token = await demo_hub.create_token(tags={"site": "demo"})
    device = SimDevice(identity=await demo_hub.enroll(token, tmp_path / "dev"))
    sample = json.loads((REPO / "examples" / "sample-release.json").read_text())
    await demo_hub.set_target(device.identity.device_id, sample)
    task = asyncio.create_task(_keep_syncing(demo_hub, device))
    try:
        done = await asyncio.to_thread(_bash, _script(demo_hub), tmp_path)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if done.returncode != 0:
        _, rollouts = await demo_hub.api("GET", "/api/v1/rollouts")
        ids = [r["id"] for r in rollouts["rollouts"]]
        views = [(await demo_hub.api("GET", f"/api/v1/rollouts/{i}"))[1] for i in ids]
        raise AssertionError(
            f"{done.stderr[-3000:]}\n{done.stdout[-1500:]}\n{views}\n{device.received}"
        )
    out = done.stdout
    assert "127.0.0.1:5000/edgefleet/good@sha256:" in out  # release create/show: pinned
    assert re.search(r"^ro-\S+\s+demo-web@1\s+completed", out, re.M), out
    assert re.search(r"^ro-\S+\s+demo-web@2\s+completed", out, re.M), out
    assert re.search(r"^ro-\S+\s+demo-web@2\s+rolled_back", out, re.M), out
    assert device.received == ["sample@1", "demo-web@1", "demo-web@2", "demo-web@1"]
    _, group = await demo_hub.api("GET", "/api/v1/groups/demo-web")
    assert [m["id"] if isinstance(m, dict) else m for m in group["members"]] == [
        device.identity.device_id
    ]
    _, release = await demo_hub.api("GET", "/api/v1/releases/demo-web@1")
    assert release["retired"]["reason"] == "walkthrough: retired while still running", release
