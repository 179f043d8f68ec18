"""Secrets on a real hub process (issue 11, "Secrets"): write-only, sealed at rest,
named by releases, delivered only in the targets of the devices that need them."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from hubdb import dump_text, run_sql
from test_hub_sync import sync
from test_registry import BASIC, GOOD, OPEN

from edge_agent.protocol import AGENT_FEATURES
from hub.testing import DeviceIdentity, RunningHub, start_hub

FEATURES = sorted(AGENT_FEATURES)


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def release(name: str, version: str = "1", **service: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1", **service}],
    }


def hub_files_bytes(hub: RunningHub) -> bytes:
    """Return every byte the hub keeps: its database files (with the WAL; on PostgreSQL every
    row as text) and its log."""
    data = dump_text(hub.work_dir).encode() if hub.store_url else b""
    for path in sorted(hub.data_dir.rglob("*")):
        if path.is_file() and path.name.startswith("hub.db"):
            data += path.read_bytes()
    return data + hub.log_path.read_bytes()


async def capable(hub: RunningHub, device: DeviceIdentity) -> None:
    """Make the device report this agent's features (as a real agent does at sync)."""
    body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": []}
    assert (await sync(hub, device, body))[0] == 200


def payload(signed: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(signed["payload"]))


async def test_secret_value_is_write_only_and_sealed_at_rest(tmp_path: Path):
    own = start_hub(tmp_path / "hub")
    try:
        value = "v-" + uuid.uuid4().hex
        name = unique()
        status, body = await own.api("PUT", f"/api/v1/secrets/{name}", {"value": value})
        assert status == 201, body
        assert body["name"] == name and value not in json.dumps(body)
        status, again = await own.api("POST", f"/api/v1/secrets/{name}", {"value": value + "2"})
        assert status == 200 and again["created_at"] == body["created_at"]
        status, listed = await own.api("GET", "/api/v1/secrets")
        assert status == 200 and [s["name"] for s in listed["secrets"]] == [name]
        _, audit = await own.api("GET", "/api/v1/audit?limit=1000")
        rows = [a for a in audit["audit"] if a["action"] == "secret.set"]
        assert [(a["target"], a["outcome"]) for a in rows] == [(name, "ok"), (name, "ok")]
        everything = json.dumps([body, again, listed, audit])
        assert value not in everything
        keys = list((own.data_dir / "secret-keys").glob("*.key"))
        assert len(keys) == 1 and stat.S_IMODE(os.stat(keys[0]).st_mode) == 0o600
    finally:
        assert own.stop() == 0
    assert value.encode() not in hub_files_bytes(own)


async def test_bad_secret_name_and_empty_value_are_422_naming_the_field(hub: RunningHub):
    status, err = await hub.api("PUT", "/api/v1/secrets/Bad Name", {"value": "x"})
    assert status == 422 and err["fields"][0]["field"] == "name"
    status, err = await hub.api("PUT", f"/api/v1/secrets/{unique()}", {"value": ""})
    assert status == 422 and err["fields"][0]["field"] == "value"


async def test_release_naming_an_unknown_secret_is_422_naming_it_and_stores_nothing(
    hub: RunningHub,
):
    name, missing = unique("rel"), unique("nope")
    doc = release(name, secret_env={"DB_PASSWORD": missing})
    status, err = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 422 and err["error"] == "unknown_secret", err
    assert missing in err["message"]
    assert err["fields"] == [
        {"field": "release.services.0.secret_env.DB_PASSWORD", "message": f"no secret {missing!r}"}
    ]
    assert (await hub.api("GET", f"/api/v1/releases/{name}@1"))[0] == 404


async def test_secret_env_and_environment_naming_one_variable_is_refused(hub: RunningHub):
    doc = release(unique("rel"), environment={"A": "1"}, secret_env={"A": "x"})
    status, err = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 422 and "both environment and secret_env" in json.dumps(err)


async def test_clear_registry_password_is_moved_into_the_secret_store(tmp_path: Path):
    own = start_hub(tmp_path / "hub")
    try:
        name = unique("rel")
        doc = release(name)
        doc["services"][0]["image"] = f"{BASIC}/{GOOD}:1"  # pinning needs the password
        doc["registry_auth"] = [{"server": BASIC, "username": "edge", "password": "edgepass"}]
        status, body = await own.api("POST", "/api/v1/releases", {"release": doc})
        assert status == 201, body
        moved = f"registry.{name}.1.0"
        assert body["release"]["registry_auth"] == [
            {"server": BASIC, "username": "edge", "password": None, "password_secret": moved}
        ]
        status, again = await own.api("POST", "/api/v1/releases", {"release": doc})
        assert status == 200 and again["release"] == body["release"]
        doc["registry_auth"][0]["password"] = "other"
        assert (await own.api("POST", "/api/v1/releases", {"release": doc}))[0] == 409
        _, listed = await own.api("GET", "/api/v1/secrets")
        assert [s["name"] for s in listed["secrets"]] == [moved]
        status, err = await own.api("DELETE", f"/api/v1/secrets/{moved}")
        assert status == 409 and f"{name}@1" in err["message"]
    finally:
        assert own.stop() == 0
    assert b"edgepass" not in hub_files_bytes(own)


async def test_delete_refused_while_a_release_names_the_secret(hub: RunningHub):
    secret, free, name = unique(), unique(), unique("rel")
    for s in (secret, free):
        assert (await hub.api("PUT", f"/api/v1/secrets/{s}", {"value": "x"}))[0] == 201
    doc = release(name, secret_env={"TOKEN": secret})
    assert (await hub.api("POST", "/api/v1/releases", {"release": doc}))[0] == 201
    status, err = await hub.api("DELETE", f"/api/v1/secrets/{secret}")
    assert status == 409 and f"{name}@1" in err["message"]
    assert (await hub.api("DELETE", f"/api/v1/secrets/{free}")) == (200, {"deleted": free})
    assert (await hub.api("DELETE", f"/api/v1/secrets/{free}"))[0] == 404


async def test_target_naming_a_secret_is_refused_for_an_agent_without_the_feature(
    hub: RunningHub, device: DeviceIdentity
):
    secret = unique()
    assert (await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": "x"}))[0] == 201
    old = {"protocol": 3, "epoch": "e1", "features": ["healthcheck"], "entries": []}
    assert (await sync(hub, device, old))[0] == 200
    doc = release(unique("rel"), secret_env={"TOKEN": secret})
    path = f"/api/v1/devices/{device.device_id}/target"
    status, err = await hub.api("POST", path, {"release": doc})
    assert status == 409 and "secrets" in err["message"], err
    assert err["fields"] == [{"field": "release", "message": "needs feature secrets"}]


async def test_only_the_device_whose_target_names_a_secret_receives_its_value(
    hub: RunningHub, tmp_path: Path
):
    token = await hub.create_token(uses=2, tags={"site": "lab"})
    named = await hub.enroll(token, tmp_path / "a")
    other = await hub.enroll(token, tmp_path / "b")
    for d in (named, other):
        await capable(hub, d)
    secret, value = unique(), "v-" + uuid.uuid4().hex
    assert (await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": value}))[0] == 201
    await hub.set_target(named.device_id, release(unique("rel"), secret_env={"TOKEN": secret}))
    await hub.set_target(other.device_id, release(unique("rel")))
    first = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": []}
    _, got = await sync(hub, named, first)
    target = payload(got["target"])
    assert target["secrets"] == {secret: value}
    assert target["release"]["services"][0]["secret_env"] == {"TOKEN": secret}
    status, polled = await hub.request(
        "GET", "/v1/target?after=0&wait=0", ssl_context=named.ssl_context()
    )
    assert status == 200 and payload(polled)["secrets"] == {secret: value}
    _, got = await sync(hub, other, first)
    assert value not in json.dumps(payload(got["target"]))
    # the hub's own copy, and what operators see of it, name the secret only
    status, view = await hub.api("GET", f"/api/v1/devices/{named.device_id}/target")
    assert (
        status == 200
        and value not in json.dumps(view)
        and value not in str(base64.b64decode(view["signed"]["payload"]))
    )
    assert value.encode() not in hub_files_bytes(hub)


async def test_rotate_key_reseals_every_secret_and_delivery_still_opens(
    hub: RunningHub, device: DeviceIdentity
):
    await capable(hub, device)
    secret, value = unique(), "v-" + uuid.uuid4().hex
    _, before = await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": value})
    await hub.set_target(device.device_id, release(unique("rel"), secret_env={"TOKEN": secret}))
    done = await rotate(hub)
    assert done.returncode == 0, done.stderr
    _, listed = await hub.api("GET", "/api/v1/secrets")
    keys = {s["name"]: s["key_id"] for s in listed["secrets"]}
    assert keys[secret] != before["key_id"] and keys[secret] in done.stdout
    assert len(set(keys.values())) == 1  # every secret under the new key
    body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": []}
    _, got = await sync(hub, device, body)
    assert payload(got["target"])["secrets"] == {secret: value}
    _, after = await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": value})
    assert after["key_id"] == keys[secret]  # the running hub seals under the new key


async def rotate(hub: RunningHub) -> Any:
    import asyncio
    import subprocess
    import sys

    config = str(hub.work_dir / "hub.toml")
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hub.cli", "secrets", "rotate-key", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_edgectl_secret_reads_values_from_a_file_or_stdin_and_never_prints_them(
    hub: RunningHub, tmp_path: Path
):
    name, value = unique(), "v-" + uuid.uuid4().hex
    (tmp_path / "v").write_text(value + "\n")
    done = await hub.edgectl("secret", "set", name, "--value-file", str(tmp_path / "v"))
    assert done.returncode == 0, done.stderr
    assert value not in done.stdout + done.stderr and name in done.stdout
    listed = await hub.edgectl("secret", "list")
    assert listed.returncode == 0 and name in listed.stdout and value not in listed.stdout
    gone = await hub.edgectl("secret", "delete", name)
    assert gone.returncode == 0 and f"deleted secret {name}" in gone.stdout
    empty = await hub.edgectl("secret", "set", name, "--value-file", "/dev/null")
    assert empty.returncode == 2 and "empty" in empty.stderr


async def test_target_is_held_when_its_secret_does_not_open(
    hub: RunningHub, device: DeviceIdentity
):
    """Never a target without its values: a value that does not open holds the target."""
    await capable(hub, device)
    secret = unique()
    _, made = await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": "x"})
    await hub.set_target(device.device_id, release(unique("rel"), secret_env={"T": secret}))
    damaged = f"{made['key_id']}:AAAA"  # a damaged value
    run_sql(hub.work_dir, "UPDATE secrets SET sealed = ? WHERE name = ?", damaged, secret)
    body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": []}
    status, got = await sync(hub, device, body)
    assert status == 200 and got["target"] is None
    status, _ = await hub.request(
        "GET", "/v1/target?after=0&wait=0.2", ssl_context=device.ssl_context()
    )
    assert status == 204
    assert f"secret {secret!r} does not open" in hub.log()


async def test_compose_names_secrets_with_an_extension_key(hub: RunningHub):
    secret, name = unique(), unique("rel")
    text = (
        "services:\n"
        "  web:\n"
        f"    image: {OPEN}/{GOOD}:1\n"
        "    environment: {MODE: prod}\n"
        f"    x-edgefleet-secret-env: {{DB_PASSWORD: {secret}}}\n"
    )
    form = {"compose": {"name": name, "version": "1", "text": text}}
    status, err = await hub.api("POST", "/api/v1/releases", form)
    assert status == 422 and err["error"] == "unknown_secret", err
    assert err["fields"][0]["field"] == "release.services.0.secret_env.DB_PASSWORD"
    assert (await hub.api("PUT", f"/api/v1/secrets/{secret}", {"value": "x"}))[0] == 201
    status, body = await hub.api("POST", "/api/v1/releases", form)
    assert status == 201, body
    service = body["release"]["services"][0]
    assert service["secret_env"] == {"DB_PASSWORD": secret}
    assert service["environment"] == {"MODE": "prod"}
