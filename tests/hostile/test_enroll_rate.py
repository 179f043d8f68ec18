"""Item 16: unauthenticated refusals are rate-limited per source and audited in counted,
aggregated rows — a client can no longer turn every refused request into an fsynced row.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.ratelimit import SourceLimiter
from hub.refusals import RefusalAudit
from hub.store import AuditRecord
from hub.testing import RunningHub, make_key_and_csr, start_hub

N = 40
BURST = 5


def _hub(tmp_path: Path, **limits: Any) -> RunningHub:
    return start_hub(tmp_path / "hub", sections={"limits": limits})


@pytest.fixture
def limited_hub(tmp_path: Path) -> Iterator[RunningHub]:
    # A window longer than the test: only the shutdown flush can write the counts.
    hub = _hub(
        tmp_path, auth_failure_burst=BURST, auth_failure_per_s=0.01, refusal_audit_window_s=3600
    )
    yield hub
    hub.kill()


async def _bad_enrollments(hub: RunningHub, n: int) -> list[tuple[int, str | None]]:
    body = {"token": "et_000000000000.not-a-secret", "csr_pem": make_key_and_csr()[1]}
    answers = []
    connector = aiohttp.TCPConnector(ssl=hub.ssl_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(n):
            async with session.post(hub.url + "/v1/enroll", json=body) as resp:
                await resp.read()
                answers.append((resp.status, resp.headers.get("Retry-After")))
    return answers


def _stored_audit(hub: RunningHub, action: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT outcome, detail FROM audit WHERE action = ? ORDER BY id", (action,)
        ).fetchall()
    finally:
        db.close()
    return [{"outcome": o, **json.loads(d)} for o, d in rows]


async def test_bad_enrollments_get_429_after_the_bound_and_few_counted_audit_rows(
    limited_hub: RunningHub,
) -> None:
    answers = await _bad_enrollments(limited_hub, N)
    assert [s for s, _ in answers[:BURST]] == [401] * BURST
    assert {s for s, _ in answers[BURST:]} == {429}
    assert all(r is not None and int(r) >= 1 for _, r in answers[BURST:])
    _, health = await limited_hub.request("GET", "/healthz")
    assert health["rate_limit"]["limited"] == N - BURST
    assert health["refusal_audit"]["refusals"] == N

    assert limited_hub.stop() == 0  # the shutdown flush writes what is pending
    rows = _stored_audit(limited_hub, "device.enroll")
    assert sum(r["count"] for r in rows) == N  # exact: nothing dropped
    assert len(rows) <= 4, rows  # first + aggregate, for denied and for limited
    by_outcome = {
        o: sum(r["count"] for r in rows if r["outcome"] == o) for o in ("denied", "limited")
    }
    assert by_outcome == {"denied": BURST, "limited": N - BURST}
    assert all(r["peer"] == "127.0.0.1" for r in rows)


async def test_refusal_counts_are_flushed_every_window(tmp_path: Path) -> None:
    hub = _hub(tmp_path, auth_failure_burst=1000, refusal_audit_window_s=0.3)
    try:
        answers = await _bad_enrollments(hub, 12)
        assert {s for s, _ in answers} == {401}
        deadline = time.monotonic() + 20
        while True:
            _, body = await hub.api("GET", "/api/v1/audit?limit=1000")
            rows = [a for a in body["audit"] if a["action"] == "device.enroll"]
            if sum(a["detail"]["count"] for a in rows) == 12 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert sum(a["detail"]["count"] for a in rows) == 12
        assert len(rows) < 12
    finally:
        assert hub.stop() == 0


async def test_unknown_operator_tokens_are_rate_limited_per_source(
    limited_hub: RunningHub,
) -> None:
    statuses = []
    for _ in range(BURST + 3):
        status, _ = await limited_hub.request(
            "POST", "/api/v1/devices/dev-x/disable", token="adm_wrong"
        )
        statuses.append(status)
    assert statuses == [401] * BURST + [429] * 3
    status, body = await limited_hub.api("GET", "/api/v1/devices")  # same source: waits too
    assert status == 429 and body["error"] == "rate_limited"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        # (time, op) with burst 2, 1 token/s: "c" charge, "r" retry_after -> result
        ([(0, "r")], [None]),
        ([(0, "c"), (0, "r")], [None]),
        ([(0, "c"), (0, "c"), (0, "r")], [1]),
        ([(0, "c"), (0, "c"), (0.5, "r"), (1.0, "r")], [1, None]),
        ([(0, "c"), (0, "c"), (0, "c"), (100, "r")], [None]),
    ],
)
def test_source_limiter_table(events: list[tuple[float, str]], expected: list[int | None]) -> None:
    limiter = SourceLimiter(burst=2, per_s=1.0, max_sources=10)
    got = []
    for at, op in events:
        if op == "c":
            limiter.charge("10.0.0.1", at)
        else:
            got.append(limiter.retry_after("10.0.0.1", at))
    assert got == expected
    assert limiter.retry_after("10.0.0.2", 0) is None  # other sources are not affected


def test_source_limiter_forgets_the_least_recent_source_beyond_its_bound() -> None:
    limiter = SourceLimiter(burst=1, per_s=0.001, max_sources=2)
    for peer in ("a", "b", "c"):
        limiter.charge(peer, 0)
    assert limiter.stats()["tracked_sources"] == 2 and limiter.stats()["forgotten_sources"] == 1
    assert limiter.retry_after("a", 0) is None and limiter.retry_after("c", 0) is not None


class _AuditSink:
    """The store boundary of RefusalAudit: records rows, or fails while ``failing``."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.failing = False

    async def record_audit(self, row: Any) -> None:
        if self.failing:
            raise OSError("disk full")
        self.rows.append(row)


def _refusal(reason: str, target: str = "-") -> Any:

    return AuditRecord(
        "anonymous", "device.enroll", target, "denied", datetime.now(UTC), {"reason": reason}
    )


async def test_refusal_audit_counts_are_exact_and_survive_a_failed_flush() -> None:
    sink = _AuditSink()
    audit = RefusalAudit(sink, window_s=3600, max_groups=100)  # type: ignore[arg-type]
    for i in range(10):
        await audit.record("10.0.0.1", _refusal("unknown_token", target=f"t{i}"))
    for _ in range(3):
        await audit.record("10.0.0.2", _refusal("unknown_token"))
    assert len(sink.rows) == 2  # one at once per group
    sink.failing = True
    with pytest.raises(OSError):
        await audit.flush()
    assert audit.stats()["pending"] == 11  # kept for the next flush
    await audit.record("10.0.0.1", _refusal("unknown_token"))  # during the outage
    sink.failing = False
    await audit.stop()
    counts = {}
    for row in sink.rows:
        counts[row.detail["peer"]] = counts.get(row.detail["peer"], 0) + row.detail["count"]
    assert counts == {"10.0.0.1": 11, "10.0.0.2": 3}
    assert len(sink.rows) <= 5
    assert audit.stats() == {"refusals": 14, "audit_rows": len(sink.rows), "pending": 0}
