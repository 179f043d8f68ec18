"""Clear registry passwords moved into the secret store: atomically with the release, and
for rows stored before the secret store existed (hub migration 22)."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hubdb import run_sql
from test_hub_sync import sync
from test_registry import GOOD, OPEN
from test_secrets import FEATURES, capable

from edge_agent.models import Target
from edge_agent.protocol import SignedTarget
from edge_agent.signing import sign_target, verify_target
from hub.secrets import SecretBox
from hub.testing import RunningHub, hub_store_backend, start_hub

RACERS = 8


def _doc(name: str, i: int) -> dict[str, object]:
    return {
        "name": name,
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1", "environment": {"N": str(i)}}],
        "registry_auth": [{"server": OPEN, "username": "u", "password": f"pw-{i}"}],
    }


def _stored_secret(hub: RunningHub, name: str) -> str | None:
    found = run_sql(hub.work_dir, "SELECT sealed FROM secrets WHERE name = ?", name)
    return None if not found else SecretBox.load(hub.data_dir).open(name, found[0][0])


async def test_a_refused_release_create_leaves_no_moved_secret_behind(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub")
    try:
        name = "race-" + uuid.uuid4().hex[:8]
        answers = await asyncio.gather(
            *(
                hub.api("POST", "/api/v1/releases", {"release": _doc(name, i)})
                for i in range(RACERS)
            )
        )
        won = [i for i, (status, _) in enumerate(answers) if status == 201]
        assert len(won) == 1, answers
        assert all(s == 409 for i, (s, _) in enumerate(answers) if i not in won), answers
        # the winner's password, not one of a refused create's (which stored nothing)
        assert _stored_secret(hub, f"registry.{name}.1.0") == f"pw-{won[0]}"
        _, audit = await hub.api("GET", "/api/v1/audit?action=secret.set")
        assert len(audit["audit"]) == 1, audit
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


def _clear(auths: list[dict[str, Any]], value: str) -> list[dict[str, Any]]:
    """Return registry_auth as a hub before migration 19 stored it: the password in clear."""
    return [{"server": a["server"], "username": a["username"], "password": value} for a in auths]


def _back_to_before_the_secret_store(hub: RunningHub, value: str) -> None:
    """Rewrite the stopped hub's rows as they were stored before migration 19."""
    key = serialization.load_pem_private_key((hub.data_dir / "signing.key").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    with sqlite3.connect(hub.data_dir / "hub.db") as db:
        for rid, document, source in db.execute("SELECT id, document, source FROM releases"):
            doc, src = json.loads(document), json.loads(source)
            doc["registry_auth"] = _clear(doc["registry_auth"], value)
            src["registry_auth"] = _clear(src["registry_auth"], value)
            db.execute(
                "UPDATE releases SET document = ?, source = ? WHERE id = ?",
                (json.dumps(doc), json.dumps(src, sort_keys=True, separators=(",", ":")), rid),
            )
        for device_id, revision, document in db.execute(
            "SELECT device_id, revision, document FROM targets"
        ).fetchall():
            payload = json.loads(base64.b64decode(json.loads(document)["payload"]))
            auths = payload["release"]["registry_auth"]
            payload["release"]["registry_auth"] = _clear(auths, value)
            signed = sign_target(Target.model_validate(payload), key)
            db.execute(
                "UPDATE targets SET document = ? WHERE device_id = ? AND revision = ?",
                (signed.model_dump_json(), device_id, revision),
            )
        db.execute("DELETE FROM secrets")
        db.execute("DELETE FROM schema_migrations WHERE version = 22")
        db.execute("DROP TABLE IF EXISTS secret_moves")
        db.execute("ALTER TABLE devices DROP COLUMN release_trust_stale")  # also migration 22


def _rows_with(hub: RunningHub, value: str) -> list[str]:
    with sqlite3.connect(hub.data_dir / "hub.db") as db:
        found = [r[0] for r in db.execute("SELECT document || source FROM releases")]
        for (document,) in db.execute("SELECT document FROM targets"):
            found.append(base64.b64decode(json.loads(document)["payload"]).decode())
    return [row for row in found if value in row]


@pytest.mark.skipif(
    hub_store_backend() == "postgres",
    reason="rewrites the SQLite file as a hub before migration 19 stored it; a PostgreSQL "
    "database never held a clear password (its moves: tests/hub/test_store_backends_secrets.py)",
)
async def test_clear_registry_passwords_stored_before_the_secret_store_are_moved_at_start(
    tmp_path: Path,
) -> None:
    value, name = "pw-" + uuid.uuid4().hex, "old-" + uuid.uuid4().hex[:8]
    hub = start_hub(tmp_path / "hub")
    try:
        device = await hub.enroll(await hub.create_token(), tmp_path / "dev")
        await capable(hub, device)
        doc = _doc(name, 1)
        assert (await hub.api("POST", "/api/v1/releases", {"release": doc}))[0] == 201
        await hub.set_target(device.device_id, doc)
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
    _back_to_before_the_secret_store(hub, value)
    assert len(_rows_with(hub, value)) == 2  # the release and the target hold it in clear
    hub = start_hub(tmp_path / "hub", port=hub.port)
    try:
        assert _rows_with(hub, value) == []
        assert _stored_secret(hub, f"registry.{name}.1.0") == value
        _, audit = await hub.api("GET", "/api/v1/audit?action=secret.move")
        assert {e["target"] for e in audit["audit"]} == {f"registry.{name}.1.0"}, audit
        _, release = await hub.api("GET", f"/api/v1/releases/{name}@1")
        assert release["release"]["registry_auth"][0]["password_secret"] == f"registry.{name}.1.0"
        body = {"protocol": 3, "epoch": "e1", "features": FEATURES, "entries": []}
        _, got = await sync(hub, device, body)
        signed = SignedTarget.model_validate(got["target"])
        public = serialization.load_pem_private_key(
            (hub.data_dir / "signing.key").read_bytes(), None
        ).public_key()
        target = verify_target(
            signed, public, device_id=device.device_id, applied_revision=0, now=datetime.now(UTC)
        )  # signed again by the hub's key, same revision
        assert target.secrets == {f"registry.{name}.1.0": value}
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]


async def test_a_refused_target_set_leaves_no_moved_secret_behind(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "hub")
    try:
        name = "tgt-" + uuid.uuid4().hex[:8]
        status, body = await hub.api("POST", "/api/v1/releases", {"release": _doc(name, 1)})
        assert status == 201, body
        other = _doc(name, 2)  # same name and version, another password: same secret name
        path = "/api/v1/devices/dev-0000000000000000/target"
        status, err = await hub.api("POST", path, {"release": other})
        assert status == 404, err
        assert _stored_secret(hub, f"registry.{name}.1.0") == "pw-1"  # not replaced
        _, audit = await hub.api("GET", "/api/v1/audit?action=secret.set")
        assert len(audit["audit"]) == 1, audit
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
