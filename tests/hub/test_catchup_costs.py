"""Issue 9, catch-up: what one full batch costs the hub, and the bounds that must still hold."""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.protocol import compact_entries
from hub.errors import InvalidRequest
from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice, SyncBatch
from hub.store.sqlite import SqliteStore
from hub.sync_decode import SyncBounds, decode_sync_body, decode_sync_job, job_result
from hub.testing import start_hub

BOUNDS = SyncBounds(2**24, 5000, 1000)
AT = "2026-01-01T00:00:00.000001+00:00"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _agent_batch(n: int = 5000) -> bytes:
    """A request as the agent sends a catch-up batch: n log lines, protocol 3, compact."""
    rng = random.Random(9)
    rows = []
    for seq in range(1, n + 1):
        line = (
            f"12:00:{seq % 60:02d}.{seq % 1000:03d} INFO  http.access GET /api/v1/items/"
            f"{rng.randrange(5000)} 200 {rng.randrange(1, 400)}ms ua=edge-client/1.4 "
            f"user=user{rng.randrange(40)} took=1{rng.randrange(100)}ms"
        )
        payload = {"service": "web", "ts": 1767225600.123 + seq, "stream": "stdout", "line": line}
        rows.append((seq, "log", AT, json.dumps(payload, separators=(",", ":"))))
    head = '{"protocol":3,"applied_revision":0,"known_target_revision":0,"status":null,'
    return (head + f'"epoch":"ab12","features":[],"entries":{compact_entries(rows)}}}').encode()


def test_a_full_agent_batch_decodes_to_its_rows():
    """Its cost against the JSON parse is measured in benchmarks/bench_hub_decode.py."""
    body = _agent_batch()
    req, rows = decode_sync_body(body, BOUNDS)
    assert len(rows) == 5000 and req.epoch == "ab12"
    assert [r[0] for r in rows] == list(range(1, 5001))
    assert rows[0][3] == json.dumps(json.loads(rows[0][3]), separators=(",", ":"))


def _entry(payload: str) -> bytes:
    return (
        f'{{"protocol":3,"epoch":"e","entries":[{{"seq":1,"created_at":"{AT}","kind":"log",'
        f'"payload":{{"ok":1.5,"line":"fine"}}}},{{"kind":"log","payload":{payload}}}]}}'
    ).encode()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ('{"x":NaN}', "entries.1.payload.x"),
        ('{"x":Infinity}', "entries.1.payload.x"),
        ('{"a":{"b":[1,-Infinity]}}', "entries.1.payload.a.b.1"),
        ('{"x":1e999}', "entries.1.payload.x"),
        ('{"x":-1E+400}', "entries.1.payload.x"),
        ('{"x":1' + "0" * 310 + ".5}", "entries.1.payload.x"),
        ('{"line":"NaN and Infinity are words here","n":1e300}', None),
        ('{"line":"1e999 in a string"}', None),
    ],
)
def test_non_finite_numbers_in_a_fast_path_batch_are_refused_by_name(
    payload: str, field: str | None
):
    body = _entry(payload)
    if field is None:
        _, rows = decode_sync_body(body, BOUNDS)
        assert [r[0] for r in rows] == [1, 2]
        return
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(body, BOUNDS)
    assert caught.value.fields[0]["field"] == field


def test_non_finite_number_in_the_head_of_a_fast_path_batch_is_refused_by_name():
    body = (
        '{"protocol":3,"epoch":"e","status":{"full":true,"counters":{"a":1}},'
        f'"entries":[{{"seq":1,"created_at":"{AT}","kind":"log","payload":{{}}}}],'
        '"applied_revision":1e999}'
    ).encode()
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(body, BOUNDS)
    assert caught.value.fields[0]["field"] == "applied_revision"


def _decode_workers(pid: int) -> list[int]:
    """Return the hub's sync decode worker processes (spawned children, not the tracker)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = []
    for kid in kids:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes()
            if b"spawn_main" in cmd:
                workers.append(int(kid))
    return workers


def test_decode_workers_are_started_with_the_hub_not_by_the_first_large_body(tmp_path: Path):
    """A cold pool made the first catch-up request after a hub start wait 1-2 s for a worker."""
    running = start_hub(
        tmp_path, sections={"limits": {"parse_workers": 2, "prestart_parse_workers": True}}
    )
    try:
        deadline = time.monotonic() + 30
        while len(_decode_workers(running.process.pid)) < 2:
            assert time.monotonic() < deadline, "no decode workers started without a request"
            time.sleep(0.05)
    finally:
        assert running.stop() == 0, running.log()[-3000:]


def test_hub_without_prestart_spawns_no_decode_worker_until_a_large_body(tmp_path: Path):
    """Test hubs set prestart_parse_workers = false: dozens of hub starts per suite run
    each spawned two worker processes that no test body needed. (With prestart the
    workers exist before the hub prints that it listens: the pool spawns on submit.)"""
    running = start_hub(tmp_path, sections={"limits": {"prestart_parse_workers": False}})
    try:
        assert _decode_workers(running.process.pid) == []
    finally:
        assert running.stop() == 0, running.log()[-3000:]


def test_decode_worker_ships_the_rows_the_loop_would_decode():
    """What a worker ships equals the in-process decode (its cost is measured in
    benchmarks/bench_hub_decode.py)."""
    body = _agent_batch()
    job = decode_sync_job(gzip.compress(body), "gzip", BOUNDS)
    req, rows = job_result(pickle.loads(pickle.dumps(job)))
    assert (req, rows) == decode_sync_body(body, BOUNDS)


async def test_wal_stays_bounded_while_a_device_catches_up_without_pause(tmp_path: Path):
    """PASSIVE checkpoints never reset a WAL the writer keeps appending to: it grew by the
    whole catch-up (60 MB for 200,000 lines). Over ``wal_max_bytes`` it is now truncated."""
    bound = 1024 * 1024
    store = SqliteStore(tmp_path / "hub.db", wal_max_bytes=bound, checkpoint_interval_s=0.05)
    await store.open()
    wal = tmp_path / "hub.db-wal"
    try:
        token = EnrollmentTokenRecord("et_1", "h", 1, 1, NOW + timedelta(hours=1), {}, NOW, "a")
        await store.create_enrollment_token(token, AuditRecord("a", "t", "et_1", "ok", NOW))
        device = NewDevice("dev-1", "h", "1", "ab", "sha256:x", NOW + timedelta(days=30))
        await store.enroll_device("et_1", "h", device, NOW)
        line = "x" * 300
        sizes = []
        for first in range(1, 80_001, 1000):  # ~35 MB of WAL frames, back to back
            rows = [(s, "log", AT, f'{{"line":"{line}{s}"}}') for s in range(first, first + 1000)]
            await store.ingest_sync("dev-1", SyncBatch(rows, None, 0, 0), NOW)
            sizes.append(wal.stat().st_size)
        assert len(await store.list_events("dev-1", 79_990, 100)) == 10
    finally:
        await store.close()
    # The writer truncates after the group that crossed the bound: the bound plus one
    # group's pages (~0.5 MB here), never the whole catch-up (40 MB before).
    assert max(sizes) < 2 * bound, f"WAL reached {max(sizes):,} bytes (bound {bound:,})"
