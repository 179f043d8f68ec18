"""Fixtures for the hub tests: one real hub process per session, fresh devices per test.

The shared hub runs with small limits so the bound tests are cheap; tests that need a
hub of their own (restarts, SIGTERM) call ``hub.testing.start_hub`` themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pgkit import pg_url, store  # noqa: F401  (store: each backend in turn; tests/pgkit.py)

from hub.testing import DeviceIdentity, RunningHub, start_hub

SMALL_LIMITS = {
    "max_body_bytes": 256 * 1024,
    "max_decompressed_bytes": 1024 * 1024,
    "max_entries_per_batch": 500,
    "long_poll_max_wait_s": 2.0,
}


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """Return the session's hub process (SIGTERM at the end; its exit status is checked)."""
    running = start_hub(tmp_path_factory.mktemp("hub"), sections={"limits": SMALL_LIMITS})
    yield running
    status = running.stop()
    assert status == 0, f"hub exited with {status}:\n{running.log()[-3000:]}"


@pytest.fixture
async def device(hub: RunningHub, tmp_path: Path) -> DeviceIdentity:
    """Return a freshly enrolled device of the shared hub."""
    return await hub.enroll(await hub.create_token(tags={"site": "lab"}), tmp_path / "device")
