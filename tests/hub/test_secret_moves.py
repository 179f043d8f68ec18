"""Clear registry passwords moved into the secret store: atomically with the release, and
for rows stored before the secret store existed (hub migration 22)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

from test_registry import GOOD, OPEN

from hub.secrets import SecretBox
from hub.testing import RunningHub, start_hub

RACERS = 8


def _doc(name: str, i: int) -> dict[str, object]:
    return {
        "name": name,
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1", "environment": {"N": str(i)}}],
        "registry_auth": [{"server": OPEN, "username": "u", "password": f"pw-{i}"}],
    }


def _stored_secret(hub: RunningHub, name: str) -> str | None:
    with sqlite3.connect(hub.data_dir / "hub.db") as db:
        row = db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
    return None if row is None else SecretBox.load(hub.data_dir).open(name, row[0])


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
