"""Release signing end to end: operator keys and edgectl, a real hub, a real agent.

The agent pins the release root at install (agent config ``[trust] release_root``).
The operators sign with ``edgectl`` (keys on their side only); the hub carries the
documents; the agent refuses what the operators did not vouch for — including targets
forged with the hub's own signing key (a compromised hub), a rollback to a withdrawn
release, and the replay of an older manifest after its store is wiped.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from agentproc import AgentProcess
from cryptography.hazmat.primitives import serialization
from docker_env import TestImages
from fleetkit import FAST, device_of, hub_agent, running, until
from hubproc import HubProcess

from edge_agent import release_trust as rt
from edge_agent.models import Release, Target
from edge_agent.signing import sign_target

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path / "hub").start()
    yield proc
    proc.stop()


def edgectl(hub: HubProcess, *args: str, ok: bool = True) -> Any:
    token = (hub.data_dir / "admin.token").read_text().strip()
    argv = ["--hub", hub.url, "--token", token, "--ca", str(hub.ca_path), "--json", *args]
    proc = subprocess.run(
        [sys.executable, "-m", "hub.edgectl", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert (proc.returncode == 0) == ok, f"edgectl {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout) if ok else proc.stderr


def create_release(hub: HubProcess, images: TestImages, version: str) -> dict[str, Any]:
    doc = {
        "name": "app",
        "version": version,
        # a variable per version: each release's container differs from the others'
        "services": [
            {"name": "web", "image": images.digest_ref("good"), "environment": {"V": version}}
        ],
    }
    return dict(hub._call("POST", "/api/v1/releases", {"release": doc})["release"])


def refusals(agent: AgentProcess) -> list[str]:
    db = sqlite3.connect(f"file:{agent.data_dir / 'agent.db'}?mode=ro", uri=True, timeout=10)
    try:
        found = db.execute(
            "SELECT detail FROM audit WHERE action = 'target.reject' ORDER BY id"
        ).fetchall()
    finally:
        db.close()
    return [json.loads(d)["reason"] for (d,) in found]


async def refused(agent: AgentProcess, reason: str) -> None:
    await until(
        lambda: any(reason in r for r in refusals(agent)), 45, f"a refusal naming {reason!r}"
    )


async def converged_on(hub: HubProcess, device: str, revision: int) -> None:
    def done() -> bool:
        view = hub.device(device)
        return bool(view.get("applied_revision") == revision and view.get("state") == "converged")

    await until(done, 90, f"revision {revision} to converge")


def inject(hub: HubProcess, device: str, target_of: Any) -> int:
    """Store a target signed with the hub's own key straight into its database (a hub
    compromised far enough to run code of its own: the key and the data are its)."""
    key = serialization.load_pem_private_key((hub.data_dir / "signing.key").read_bytes(), None)
    db = sqlite3.connect(hub.data_dir / "hub.db", timeout=10)
    try:
        with db:
            (top,) = db.execute(
                "SELECT target_revision FROM devices WHERE id = ?", (device,)
            ).fetchone()
            signed = sign_target(target_of(top + 1), key)  # type: ignore[arg-type]
            db.execute(
                "INSERT INTO targets VALUES (?,?,?,?,?)",
                (
                    device,
                    top + 1,
                    signed.model_dump_json(),
                    datetime.now(UTC).isoformat(),
                    "attacker",
                ),
            )
            db.execute("UPDATE devices SET target_revision = ? WHERE id = ?", (top + 1, device))
    finally:
        db.close()
    return int(top + 1)


async def test_a_compromised_hub_cannot_make_a_device_run_what_operators_did_not_sign(
    hub: HubProcess, tmp_path: Path, docker: aiodocker.Docker, images: TestImages
) -> None:
    keys = [str(tmp_path / f"op{i}.pem") for i in range(3)]
    for k in keys:
        edgectl(hub, "release", "keygen", "--out", k)
    members = [a for k in keys for a in ("--member", k)]
    edgectl(
        hub,
        "trust",
        "root",
        "init",
        "--key",
        keys[0],
        "--key",
        keys[1],
        "--threshold",
        "2",
        *members,
    )
    edgectl(hub, "trust", "root", "show", "--out", str(tmp_path / "root.json"))
    v1, v2, v3 = (create_release(hub, images, v) for v in ("1", "2", "3"))
    edgectl(hub, "release", "sign", "app@1", "--key", keys[0], "--key", keys[2])
    agent = hub_agent(
        tmp_path / "agent",
        hub.url,
        hub.ca_path,
        hub.create_token(),
        hub=FAST,
        trust={"release_root": str(tmp_path / "root.json")},
    )
    async with running(docker, agent):
        device = str(await until(lambda: device_of(agent), what="enrollment"))
        # the hub sends release signatures to agents that reported the feature at a sync
        await until(lambda: hub.device(device).get("last_contact"), what="a first sync")
        hub.set_target(device, v1)
        await converged_on(hub, device, 1)

        # arbitrary release: the hub deploys app@2, which no operator signed
        hub.set_target(device, v2)
        await refused(agent, "release app@2 is not vouched for by release manifest v1")

        # threshold k-1: one operator alone cannot vouch (manifest v2 stays pending, the
        # hub keeps sending v1, and the device refuses app@2 again)
        pending = edgectl(hub, "release", "sign", "app@2", "--key", keys[1])
        assert (pending["version"], pending["complete"]) == (2, False), pending
        hub.set_target(device, v2)
        await until(
            lambda: sum("app@2 is not vouched" in r for r in refusals(agent)) == 2,
            what="the second refusal of app@2",
        )

        # the second operator co-signs the pending manifest: now app@2 runs
        edgectl(hub, "release", "sign", "app@2", "--key", keys[2])
        hub.set_target(device, v2)
        await converged_on(hub, device, 4)

        # hub key alone: a target with a manifest the hub signed itself (a root of its own)
        hub_root = rt.generate_key()
        fake = rt.SignedRoot(
            root=rt.RootDoc(
                version=1, threshold=1, keys=[rt.public_b64(hub_root)], expires=_in(30)
            ),
            signatures=[],
        )
        fake = fake.model_copy(update={"signatures": rt.sign(rt.ROOT_TYPE, fake.root, [hub_root])})
        forged = _manifest(9, [v3], [hub_root])
        inject(
            hub,
            device,
            lambda r: _target(device, r, v3, rt.ReleaseTrust(roots=[fake], manifest=forged)),
        )
        await refused(agent, "release manifest v9 has 0 valid signature(s) of root v1's keys")

        # rollback: operators withdraw app@1 (manifest v3); a redeploy of app@1 is refused,
        # and so is the replay of the older manifest v2 that still listed it
        edgectl(hub, "release", "revoke", "app@1", "--key", keys[0], "--key", keys[1])
        hub.set_target(device, v1)
        await refused(agent, "release app@1 is not vouched for by release manifest v3")
        old = json.loads(_manifest_row(hub, 2))
        replay = rt.ReleaseTrust(manifest=rt.SignedManifest.model_validate(old))
        inject(hub, device, lambda r: _target(device, r, v1, replay))
        await refused(agent, "release manifest v2 is older than v3 already seen (rollback)")

        # replay after a store wipe: the pin and the manifest version live in anchor.json
        await agent.stop()
        (agent.data_dir / "agent.db").unlink()
        anchor = json.loads((agent.data_dir / "anchor.json").read_text())
        assert anchor["release_trust"]["manifest_version"] == 3
        await agent.start()
        inject(hub, device, lambda r: _target(device, r, v1, replay))
        await refused(agent, "release manifest v2 is older than v3 already seen (rollback)")

        # the hub drops the requirement: no signatures at all are sent
        db = sqlite3.connect(hub.data_dir / "hub.db", timeout=10)
        with db:
            db.execute("DELETE FROM release_roots")
            db.execute("DELETE FROM release_manifests")
        db.close()
        hub.set_target(device, v3)
        await refused(agent, "release app@3 carries no operator signatures")
        # what runs is still the last release the operators vouched for (the wiped store
        # reports no applied revision; the engine shows the containers)
        assert await _containers(docker, device) == ["app@2"]


async def _containers(docker: aiodocker.Docker, device: str) -> list[str]:
    from edge_agent.models import LABEL_DEVICE, LABEL_RELEASE

    filters = json.dumps({"label": [f"{LABEL_DEVICE}={device}"]})
    found = await docker.containers.list(all=True, filters=filters)
    return sorted({c._container["Labels"][LABEL_RELEASE] for c in found})


def _in(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def _manifest(version: int, releases: list[dict[str, Any]], keys: list[Any]) -> rt.SignedManifest:
    listed = {f"app@{r['version']}": rt.release_digest(Release.model_validate(r)) for r in releases}
    doc = rt.ManifestDoc(version=version, expires=_in(30), releases=listed)
    return rt.SignedManifest(manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, keys))


def _target(device: str, revision: int, release: dict[str, Any], trust: rt.ReleaseTrust) -> Target:
    return Target(
        device_id=device,
        revision=revision,
        release=Release.model_validate(release),
        release_trust=trust,
    )


def _manifest_row(hub: HubProcess, version: int) -> str:
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=10)
    try:
        (doc,) = db.execute(
            "SELECT document FROM release_manifests WHERE version = ?", (version,)
        ).fetchone()
    finally:
        db.close()
    return str(doc)


def test_rotation_is_accepted_by_the_old_keys_and_refused_by_the_new_keys_alone(
    hub: HubProcess, tmp_path: Path
) -> None:
    keys = [str(tmp_path / f"k{i}.pem") for i in range(4)]
    for k in keys:
        edgectl(hub, "release", "keygen", "--out", k)
    edgectl(hub, "trust", "root", "init", "--key", keys[0], "--key", keys[1], "--threshold", "2")
    new_members = ["--member", keys[2], "--member", keys[3], "--threshold", "2"]
    err = edgectl(
        hub, "trust", "root", "rotate", "--key", keys[2], "--key", keys[3], *new_members, ok=False
    )
    assert "root v2 has 0 valid signature(s) of root v1's keys, needs 2" in err
    err = edgectl(
        hub,
        "trust",
        "root",
        "rotate",
        "--key",
        keys[0],
        "--key",
        keys[2],
        "--key",
        keys[3],
        *new_members,
        ok=False,
    )
    assert "root v2 has 1 valid signature(s) of root v1's keys, needs 2" in err
    edgectl(hub, "trust", "root", "rotate", *[a for k in keys for a in ("--key", k)], *new_members)
    shown = edgectl(hub, "trust", "root", "show")
    assert [r["version"] for r in shown["roots"]] == [1, 2]
    # a signature upload by a key outside the root names the signature
    bad = rt.generate_key()
    doc = rt.ManifestDoc(version=1, expires=_in(1), releases={})
    body = rt.SignedManifest(manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, [bad]))
    with pytest.raises(urllib.error.HTTPError) as exc:
        hub._call("POST", "/api/v1/trust/manifest", body.model_dump(mode="json"))
    assert exc.value.code == 400
    answer = json.loads(exc.value.read())
    assert answer["fields"][0]["field"] == "signatures.0.key_id", answer
