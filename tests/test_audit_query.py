"""One audit query over hub and device records: ``edgectl audit`` exports (json, jsonl,
csv) return exactly the records matching the filters, across many pages; bad
parameters are refused naming the field. Real hub process, real store and syncer."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import urllib.error
from collections.abc import Iterator
from typing import Any

import pytest
from hubproc import HubProcess
from synckit import open_device

from edge_agent.enroll import ca_fingerprint, enroll
from edge_agent.outbox import AuditRow

Key = tuple[str, int]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A hub with two devices (berlin, paris) that synced audit records, and hub records."""
    work = tmp_path_factory.mktemp("hub")
    hub = HubProcess(work / "data").start()
    ids = {site: asyncio.run(_device(hub, work / site, site)) for site in ("berlin", "paris")}
    hub._call("POST", "/api/v1/groups", {"name": "berlin", "selector": "site=berlin"})
    hub.disable(ids["paris"])
    for _ in range(3):
        hub.create_token()
    yield {"hub": hub, "ids": ids}
    hub.stop()


async def _device(hub: HubProcess, data: Any, site: str) -> str:
    """Enroll a device tagged ``site``, write 4 audit records in its store, sync them."""
    fp = ca_fingerprint(hub.ca_path.read_text())
    identity = await enroll(hub.url, hub.create_token(site=site), data, ca_sha256=fp, hostname=site)
    dev = await open_device(data)
    try:
        for i in range(4):
            row = AuditRow(f"tech:{site}", "service.restart", f"web{i}", "ok", {"i": i})
            await dev.store.append_audit(row)
        await dev.syncer.sync_once()
    finally:
        await dev.close()
    return identity.device_id


def _truth(hub: HubProcess, hub_where: str, device_where: str, args: tuple[Any, ...]) -> set[Key]:
    """Return the records the filters match, read straight from the hub's SQLite file."""
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True)
    try:
        n = hub_where.count("?")
        hub_rows = db.execute(f"SELECT id FROM audit WHERE {hub_where}", args[:n]).fetchall()
        dev_rows = db.execute(
            f"SELECT id FROM device_audit WHERE {device_where}", args[n:]
        ).fetchall()
    finally:
        db.close()
    return {("hub", i) for (i,) in hub_rows} | {("device", i) for (i,) in dev_rows}


def _export(hub: HubProcess, fmt: str, *filters: str) -> list[Key]:
    assert hub.running is not None
    done = hub.running.edgectl_sync("audit", "--format", fmt, "--limit", "2", *filters)
    assert done.returncode == 0, done.stderr
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        return [(r["source"], int(r["id"])) for r in rows]
    if fmt == "jsonl":
        records = [json.loads(line) for line in done.stdout.splitlines()]
    else:
        records = json.loads(done.stdout)
    return [(r["source"], int(r["id"])) for r in records]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_audit_export_returns_exactly_the_matching_records(fleet: dict[str, Any], fmt: str) -> None:
    hub, ids = fleet["hub"], fleet["ids"]
    berlin, paris = ids["berlin"], ids["paris"]
    cases: list[tuple[tuple[str, ...], str, str, tuple[Any, ...]]] = [
        ((), "1", "1", ()),
        (("--device", berlin), "target = ?", "device_id = ?", (berlin, berlin)),
        (("--group", "berlin"), "target = ?", "device_id = ?", (berlin, berlin)),
        (("--device", paris, "--source", "hub"), "target = ?", "0", (paris,)),
        (
            ("--actor", "admin", "--action", "token.create"),
            "actor = 'admin' AND action = 'token.create'",
            "0",
            (),
        ),
        (("--action", "device.*"), "action LIKE 'device.%'", "0", ()),
        (("--actor", "tech:paris"), "0", "actor = 'tech:paris'", ()),
    ]
    for filters, hub_where, device_where, args in cases:
        got = _export(hub, fmt, *filters)
        assert len(got) == len(set(got)), (filters, got)  # nothing twice across pages
        expected = _truth(hub, hub_where, device_where, args)
        assert expected, filters  # a filter that matched nothing would prove nothing
        assert set(got) == expected, filters


def test_audit_export_time_range(fleet: dict[str, Any]) -> None:
    hub = fleet["hub"]
    db = sqlite3.connect(f"file:{hub.data_dir / 'hub.db'}?mode=ro", uri=True)
    ats = sorted(
        a for (a,) in db.execute("SELECT at FROM audit UNION ALL SELECT at FROM device_audit")
    )
    db.close()
    since, until = ats[len(ats) // 3], ats[2 * len(ats) // 3]
    got = _export(hub, "jsonl", "--since", since, "--until", until)
    expected = _truth(hub, "at >= ? AND at < ?", "at >= ? AND at < ?", (since, until) * 2)
    assert expected and set(got) == expected
    assert _export(hub, "jsonl", "--since", "30d") == _export(hub, "jsonl")


def test_audit_listing_marks_sources_and_hub_source_address(fleet: dict[str, Any]) -> None:
    hub = fleet["hub"]
    page = hub._get("/api/v1/audit?limit=1000")
    sources = {r["source"] for r in page["audit"]}
    assert sources == {"hub", "device"}
    tokens = [r for r in page["audit"] if r["action"] == "token.create"]
    assert tokens and all(r["source_addr"] == "127.0.0.1" for r in tokens)
    devices = [r for r in page["audit"] if r["source"] == "device"]
    assert all(r["chain_broken"] is None and r["device_id"] for r in devices)


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("cursor=1.2", 400, "cursor"),
        ("cursor=1.7.3", 400, "cursor"),
        ("since=yesterday", 400, "since"),
        ("until=2026-13-01", 400, "until"),
        ("source=both", 400, "source"),
        ("group=nope", 404, None),
    ],
)
def test_audit_query_bad_parameters_refused(
    fleet: dict[str, Any], query: str, status: int, field: str | None
) -> None:
    hub = fleet["hub"]
    with pytest.raises(urllib.error.HTTPError) as err:
        hub._get(f"/api/v1/audit?{query}")
    assert err.value.code == status
    body = json.loads(err.value.read())
    if field is not None:
        assert [f["field"] for f in body["fields"]] == [field]
