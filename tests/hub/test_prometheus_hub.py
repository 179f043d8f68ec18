"""GET /metrics on a real hub, read with Prometheus' own text parser: values move as it works.

Also the SQL that counts devices by connectivity and drift at a scrape, against
``hub.fleet`` on a table of device rows, and the scrape's cost at 5,000 devices.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_access_matrix import _user
from test_hub_sync import entries, sync
from test_registry import GOOD, OPEN

from hub import __version__ as HUB_VERSION
from hub.access import Grant
from hub.fleet import connectivity, drift
from hub.store.records import iso_utc
from hub.store.sqlite import SqliteStore
from hub.testing import RunningHub, make_key_and_csr, start_hub

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ONLINE_AFTER_S = 2.0


def parse(text: str) -> Samples:
    """Return every sample of an exposition, keyed by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(hub: RunningHub, token: str | None = None) -> Samples:
    status, text = await hub.request("GET", "/metrics", token=token or hub.admin_token)
    assert status == 200, text
    assert isinstance(text, str)
    return parse(text)


async def until(
    hub: RunningHub, check: Callable[[Samples], bool], timeout_s: float = 20.0
) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await scrape(hub)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched: { {k: v for k, v in samples.items()} }")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def prom_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    sections = {
        "fleet": {"online_after_s": ONLINE_AFTER_S, "stale_after_s": 3600},
        "rollouts": {"tick_s": 3600},
    }
    hub = start_hub(tmp_path_factory.mktemp("prom"), sections=sections)
    yield hub
    assert hub.stop() == 0, hub.log()[-3000:]


async def test_metrics_sync_counts_and_latency_move(prom_hub: RunningHub, tmp_path: Path):
    hub = prom_hub
    device = await hub.enroll(await hub.create_token(tags={"site": "a"}), tmp_path / "d")
    before = await scrape(hub)
    assert (await sync(hub, device, {"entries": entries(1, 2, 3)}))[0] == 200
    assert (await sync(hub, device, {"entries": entries(1, 2, 3)}))[0] == 200  # stored once
    after = await scrape(hub)
    ok = ("edgefleet_hub_sync_requests_total", {"code": "200"})
    assert value(after, ok[0], **ok[1]) - value(before, ok[0], **ok[1]) == 2
    count = "edgefleet_hub_sync_duration_seconds_count"
    assert value(after, count) - value(before, count) == 2
    stored = "edgefleet_hub_sync_entries_stored_total"
    assert value(after, stored) - value(before, stored) == 3
    commits = "edgefleet_hub_store_commit_duration_seconds_count"
    assert value(after, commits) > value(before, commits)
    if not hub.store_url:  # the server's files are not the hub's to measure (0 on PostgreSQL)
        assert value(after, "edgefleet_hub_store_size_bytes", file="db") > 0
    assert value(after, "process_open_fds") > 0


async def test_metrics_device_going_offline_moves_connectivity(
    prom_hub: RunningHub, tmp_path: Path
):
    hub = prom_hub
    device = await hub.enroll(await hub.create_token(tags={"site": "b"}), tmp_path / "d")
    assert (await sync(hub, device, {"entries": []}))[0] == 200
    name = "edgefleet_hub_devices"
    online = await scrape(hub)
    assert value(online, name, connectivity="online", drift="no_target") >= 1
    offline_before = value(online, name, connectivity="offline", drift="no_target")
    # the device stays silent: past fleet.online_after_s it counts as offline
    await until(
        hub,
        lambda s: value(s, name, connectivity="offline", drift="no_target") > offline_before,
    )


async def test_metrics_long_poll_held_and_refusals(prom_hub: RunningHub, tmp_path: Path):
    hub = prom_hub
    device = await hub.enroll(await hub.create_token(), tmp_path / "d")
    poll = asyncio.create_task(
        hub.request("GET", "/v1/target?after=0&wait=3", ssl_context=device.ssl_context())
    )
    await until(hub, lambda s: value(s, "edgefleet_hub_long_polls_held") == 1)
    assert (await poll)[0] == 204  # the wait ran out: no target
    await until(hub, lambda s: value(s, "edgefleet_hub_long_polls_held") == 0)

    refusals = "edgefleet_hub_refusals_total"
    before = await scrape(hub)
    body = {"token": "eft-nope.nope", "csr_pem": make_key_and_csr()[1], "hostname": "h"}
    status, _ = await hub.request("POST", "/v1/enroll", json_body=body)
    assert status >= 400
    status, _ = await hub.request("GET", "/metrics", token="not-a-token")
    assert status == 401
    after = await scrape(hub)
    enroll = {"action": "device.enroll", "outcome": "denied"}
    access = {"action": "operator.access", "outcome": "denied"}
    assert value(after, refusals, **enroll) == value(before, refusals, **enroll) + 1
    assert value(after, refusals, **access) == value(before, refusals, **access) + 1


async def test_metrics_rollouts_by_status_move(prom_hub: RunningHub, tmp_path: Path):
    hub = prom_hub
    await hub.enroll(await hub.create_token(tags={"site": "r"}), tmp_path / "d")
    doc = {
        "name": "promapp",
        "version": "1",
        "services": [{"name": "web", "image": f"{OPEN}/{GOOD}:1"}],
    }
    assert (await hub.api("POST", "/api/v1/releases", {"release": doc}))[0] == 201
    assert (await hub.api("POST", "/api/v1/groups", {"name": "r", "selector": "site=r"}))[0] == 201
    before = value(await scrape(hub), "edgefleet_hub_rollouts", status="running")
    status, rollout = await hub.api(
        "POST", "/api/v1/rollouts", {"release": "promapp@1", "group": "r"}
    )
    assert status == 201, rollout
    after = await scrape(hub)
    assert value(after, "edgefleet_hub_rollouts", status="running") == before + 1
    assert ("edgefleet_hub_rollouts", (("status", "aborted"),)) in after  # every status shown


async def test_metrics_need_a_read_grant_on_every_device(prom_hub: RunningHub):
    hub = prom_hub
    status, _ = await hub.request("GET", "/metrics")
    assert status == 401
    scoped = await _user(hub, "prom-scoped", Grant.of("viewer", "site=a"))
    status, body = await hub.request("GET", "/metrics", token=scoped)
    assert status == 403, body
    fleet_viewer = await _user(hub, "prometheus", Grant.of("viewer", "all"))
    assert ("edgefleet_hub_info", (("version", HUB_VERSION),)) in await scrape(hub, fleet_viewer)


# --- the scrape-time SQL against hub.fleet, on a table of device rows ---

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CONTACTS = [
    None,
    NOW - timedelta(seconds=10),
    NOW - timedelta(seconds=600),
    NOW - timedelta(days=2),
]
REVISION_CASES: list[dict[str, Any]] = [
    {"target_revision": 0, "applied_revision": 0},
    {"target_revision": 3, "applied_revision": 3},
    {"target_revision": 3, "applied_revision": 2},
    {"target_revision": 3, "running_revision": 3, "rollout_state": "good"},
    {"target_revision": 3, "running_revision": 3, "running_local_seq": 4, "rollout_state": "good"},
    {"target_revision": 3, "running_revision": 3, "running_local_seq": 0, "rollout_state": "good"},
    {
        "target_revision": 3,
        "running_revision": 2,
        "applying_revision": 3,
        "rollout_state": "applying",
    },
    {"target_revision": 3, "applying_revision": 3, "rollout_state": "waiting_window"},
    {"target_revision": 3, "applying_revision": 3, "rollout_state": "settling"},
    {"target_revision": 3, "applying_revision": 3, "rollout_state": "rolled_back"},
    {"target_revision": 3, "running_revision": 3, "rollout_state": "settling"},
]
ROW_KEYS = ("running_revision", "running_local_seq", "applying_revision", "rollout_state")


def _insert_devices(path: Path, rows: list[tuple[datetime | None, dict[str, Any], bool]]) -> None:
    db = sqlite3.connect(path)
    with db:
        for i, (contact, case, disabled) in enumerate(rows):
            db.execute(
                "INSERT INTO devices (id, cert_serial, cert_fingerprint, cert_not_after, "
                "enrolled_at, enrollment_token, disabled, last_contact, applied_revision, "
                "target_revision, running_revision, running_local_seq, applying_revision, "
                "rollout_state) VALUES (?,'s','f',?,?,'t',?,?,?,?,?,?,?,?)",
                (
                    f"dev-{i:06d}",
                    iso_utc(NOW),
                    iso_utc(NOW),
                    int(disabled),
                    iso_utc(contact) if contact else None,
                    case.get("applied_revision", 0),
                    case["target_revision"],
                    *(case.get(k) for k in ROW_KEYS),
                ),
            )
    db.close()


async def test_fleet_counts_sql_agrees_with_hub_fleet(tmp_path: Path):
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        table = [
            (contact, case, i % 3 == 0)
            for i, (contact, case) in enumerate(itertools.product(CONTACTS, REVISION_CASES))
        ]
        _insert_devices(tmp_path / "hub.db", table)
        online_s, stale_s = 90.0, 3600.0
        got = await store.fleet_counts(
            NOW - timedelta(seconds=online_s), NOW - timedelta(seconds=stale_s)
        )
        expected: dict[tuple[str, str], tuple[int, int]] = {}
        for d in await store.list_devices():
            key = (
                connectivity(d.last_contact, NOW, online_s, stale_s).value,
                drift(
                    d.target_revision,
                    d.applied_revision,
                    **{k: getattr(d, k) for k in ROW_KEYS},
                ).value,
            )
            n, off = expected.get(key, (0, 0))
            expected[key] = (n + 1, off + int(d.disabled))
        assert got == expected
        assert len(got) >= 9  # the table reaches most of connectivity x drift
    finally:
        await store.close()


async def test_scrape_reads_at_5000_devices_are_aggregates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Time the store reads of one scrape at 5,000 SIMULATED device rows (no agents)."""
    store = SqliteStore(tmp_path / "hub.db")
    await store.open()
    try:
        cases = itertools.cycle(itertools.product(CONTACTS, REVISION_CASES))
        _insert_devices(
            tmp_path / "hub.db", [(c, r, False) for c, r in itertools.islice(cases, 5000)]
        )
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            counts = await store.fleet_counts(NOW - timedelta(seconds=90), NOW - timedelta(hours=1))
            await store.rollout_counts()
            store.writer_stats()
            timings.append(time.perf_counter() - started)
        assert sum(n for n, _ in counts.values()) == 5000
        timings.sort()
        with capsys.disabled():
            print(
                f"\nscrape store reads at 5000 devices: p50 {timings[10] * 1e3:.1f} ms, "
                f"max {timings[-1] * 1e3:.1f} ms"
            )
        assert timings[10] < 0.5  # generous: a shared 2-core machine
    finally:
        await store.close()


async def test_metrics_guessed_tokens_are_rate_limited_like_the_api(tmp_path: Path):
    limits = {"auth_failure_burst": 2, "auth_failure_per_s": 0.01}
    hub = start_hub(tmp_path / "hub", sections={"limits": limits})
    try:
        statuses = [(await hub.request("GET", "/metrics", token=f"guess-{i}"))[0] for i in range(4)]
        assert statuses[:2] == [401, 401] and statuses[-1] == 429, statuses
    finally:
        assert hub.stop() == 0, hub.log()[-3000:]
