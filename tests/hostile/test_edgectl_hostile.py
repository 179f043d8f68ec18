"""Item 21: edgectl's human output never passes device-supplied control characters on.

A device chooses its hostname at enrollment and its state and error text in every
sync; an escape sequence there must not reach the operator's terminal. ``--json`` stays
exact (JSON escapes control characters itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import edgectl
from hub.testing import RunningHub, start_hub

EVIL_HOSTNAME = "pwn\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202eevil\r\n"
EVIL_STATE = "converged\x1b[8m\x9b2J"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    running = start_hub(tmp_path / "hub")
    yield running
    assert running.stop() == 0


def _has_controls(text: str) -> list[str]:
    bad = {c for c in text if (ord(c) < 32 and c != "\n") or 0x7F <= ord(c) < 0xA0}
    return sorted(hex(ord(c)) for c in bad | ({"\u202e"} & set(text)))


async def test_edgectl_devices_table_escapes_a_hostile_hostname_and_state(
    hub: RunningHub, tmp_path: Path
) -> None:
    device = await hub.enroll(await hub.create_token(), tmp_path / "d", hostname=EVIL_HOSTNAME)
    status, _ = await hub.request(
        "POST",
        "/v1/sync",
        json_body={"entries": [], "status": {"state": EVIL_STATE}},
        ssl_context=device.ssl_context(),
    )
    assert status == 200

    human = await hub.edgectl("devices")
    assert human.returncode == 0, human.stderr
    assert _has_controls(human.stdout) == [], human.stdout
    assert "pwn" in human.stdout and "\\x1b" in human.stdout  # shown, escaped

    raw = await hub.edgectl("--json", "devices")
    (row,) = [d for d in json.loads(raw.stdout)["devices"] if d["id"] == device.device_id]
    assert row["hostname"] == EVIL_HOSTNAME and row["state"] == EVIL_STATE  # exact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain host-1", "plain host-1"),
        ("a\x1b[31mb", "a\\x1b[31mb"),
        ("tab\there", "tab\\x09here"),
        ("c1\x9bx", "c1\\x9bx"),
        ("bidi\u202eabc", "bidi\\u202eabc"),
        ("ünïcödé", "ünïcödé"),
    ],
)
def test_sanitize_escapes_control_and_format_characters(text: str, shown: str) -> None:
    assert edgectl.sanitize(text) == shown
