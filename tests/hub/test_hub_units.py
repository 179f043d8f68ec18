"""Pure parts of the hub: config loading, fleet picture, status merging, notifier, store."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_agent.protocol import OutboxEntry, ServiceReport, StatusSnapshot, SyncRequest
from hub.config import load_config
from hub.errors import ConfigError, Forbidden, InvalidRequest, TokenUsedUp
from hub.fleet import Connectivity, Drift, connectivity, drift, merge_status
from hub.notify import TargetNotifier
from hub.store import AuditRecord, EnrollmentTokenRecord, NewDevice, SyncBatch
from hub.store.records import entry_row
from hub.sync_decode import SyncBounds, decode_sync_body
from hub.wire import parse

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_config_file_and_env_overrides(tmp_path: Path):
    path = tmp_path / "hub.toml"
    path.write_text(
        '[server]\ndata_dir = "/srv/hub"\nport = 9000\n[limits]\nmax_body_bytes = 2048\n'
    )
    config = load_config(
        path,
        env={"EDGE_HUB_SERVER_PORT": "9443", "EDGE_HUB_SERVER_PUBLIC_NAMES": "a.example, 10.0.0.5"},
    )
    assert config.server.port == 9443
    assert config.server.public_names == ["a.example", "10.0.0.5"]
    assert config.limits.max_body_bytes == 2048
    assert config.sqlite_path == Path("/srv/hub/hub.db")


def test_env_only_config():
    config = load_config(None, env={"EDGE_HUB_SERVER_DATA_DIR": "/d"})
    assert config.server.data_dir == Path("/d") and config.server.port == 8443


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ('[server]\ndata_dir = "/d"\nport = "many"\n', {}, "server.port"),
        ('[server]\ndata_dir = "/d"\n[limits]\nmax_body_bytes = 1\n', {}, "limits.max_body_bytes"),
        ('[server]\ndata_dir = "/d"\ncolour = 1\n', {}, "server.colour"),
        ("[server]\nport = 1\n", {}, "server.data_dir"),
        ('[server]\ndata_dir = "/d"\n', {"EDGE_HUB_LIMITS_NOPE": "1"}, "limits.nope"),
        ('[server]\ndata_dir = "/d"\n', {"EDGE_HUB_FLEET_STALE_AFTER_S": "1"}, "fleet"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, toml: str, env: dict[str, str], named: str):
    path = tmp_path / "hub.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert named in err.value.message


def test_connectivity_thresholds():
    assert connectivity(None, NOW, 90, 3600) is Connectivity.STALE
    assert connectivity(NOW - timedelta(seconds=30), NOW, 90, 3600) is Connectivity.ONLINE
    assert connectivity(NOW - timedelta(seconds=91), NOW, 90, 3600) is Connectivity.OFFLINE
    assert connectivity(NOW - timedelta(hours=2), NOW, 90, 3600) is Connectivity.STALE


def test_drift():
    assert drift(0, 0) is Drift.NO_TARGET
    assert drift(3, 3) is Drift.IN_SYNC
    assert drift(3, 2) is Drift.DRIFTED
    assert drift(3, 4) is Drift.DRIFTED  # running something else than its target


def test_merge_status_full_replaces_delta_patches():
    svc = ServiceReport(name="web", state="running")
    full = merge_status({}, StatusSnapshot(full=True, state="converged", services=[svc]))
    assert full["state"] == "converged" and full["services"][0]["name"] == "web"
    assert full["last_error"] is None
    delta = merge_status(full, StatusSnapshot(full=False, last_error="boom"))
    assert delta["state"] == "converged" and delta["last_error"] == "boom"
    again = merge_status(delta, StatusSnapshot(full=True, state="idle"))
    assert again["services"] is None and again["last_error"] is None


async def test_notifier_wakes_subscribers_and_forgets_them():
    notifier = TargetNotifier()
    with notifier.subscribe("d1") as event:
        assert notifier.waiting() == 1
        notifier.notify("d1")
        assert await event.wait_until(asyncio.get_running_loop().time() + 1)
    assert notifier.waiting() == 0
    with notifier.subscribe("d1") as event:
        assert not event.is_set()  # a fresh subscription is not woken by an old notify
        notifier.close()
        assert event.is_set()


def _device(i: int) -> NewDevice:
    return NewDevice(f"dev-{i}", "h", "1", "ab", "sha256:x", NOW + timedelta(days=30))


async def test_store_enroll_is_atomic_and_sync_acks_by_position(store: Any):
    # each backend: the ``store`` fixture of tests/pgkit.py
    audit = AuditRecord("admin", "token.create", "et_1", "ok", NOW)
    token = EnrollmentTokenRecord(
        "et_1", "h", 1, 1, NOW + timedelta(hours=1), {"a": "b"}, NOW, "admin"
    )
    await store.create_enrollment_token(token, audit)
    first, second = await asyncio.gather(
        store.enroll_device("et_1", "h", _device(1), NOW),
        store.enroll_device("et_1", "h", _device(2), NOW),
        return_exceptions=True,
    )
    assert not isinstance(first, BaseException) and first.tags == {"a": "b"}
    assert isinstance(second, TokenUsedUp)
    assert [d.id for d in await store.list_devices()] == ["dev-1"]

    def batch(*seqs: int) -> SyncBatch:
        return SyncBatch(
            [entry_row(OutboxEntry(seq=s, kind="event", created_at=NOW, payload={})) for s in seqs],
            None,
            0,
            0,
        )

    results = await asyncio.gather(
        *(store.ingest_sync("dev-1", batch(1, 4, 7), NOW) for _ in range(5))
    )
    assert [r.acked_seq for r in results] == [7] * 5
    assert sum(r.inserted for r in results) == 3
    with pytest.raises(Forbidden):
        await store.ingest_sync("dev-9", batch(1), NOW)
    assert [e.seq for e in await store.list_events("dev-1", 0, 100)] == [1, 4, 7]


async def test_group_commit_failing_job_rolls_back_alone(tmp_path: Path):
    import sqlite3

    from hub.store.writer import GroupCommitWriter

    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    writer = GroupCommitWriter(conn, max_group=16)
    await writer.run(lambda db: db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    writer.start()

    def insert(k: int, fail: bool = False):
        def job(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO t VALUES (?)", (k,))
            if fail:
                raise ValueError(f"job {k} refuses")
            return k

        return job

    results = await asyncio.gather(
        writer.submit(insert(1)),
        writer.submit(insert(2, fail=True)),
        writer.submit(insert(3)),
        writer.submit(insert(1)),  # duplicate key: IntegrityError, this job only
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], ValueError)
    assert type(results[3]).__name__ == "StoreError"
    assert writer.groups == 1  # all four ran in one transaction
    assert await writer.run(lambda db: db.execute("SELECT k FROM t ORDER BY k").fetchall()) == [
        (1,),
        (3,),
    ]
    await writer.stop()


def _reference_sync(body: bytes) -> object:
    """What the SyncRequest model alone makes of a body: (request, rows) or the error."""
    try:
        req = parse(SyncRequest, body)
    except InvalidRequest as exc:
        return ("error", exc.status, exc.fields)
    return req.model_copy(update={"entries": []}), [entry_row(e) for e in req.entries]


def _sync_outcome(body: bytes) -> object:
    try:
        return decode_sync_body(body, SyncBounds(2**24, 5000, 1000))
    except InvalidRequest as exc:
        return ("error", exc.status, exc.fields)


AT = "2026-01-01T00:00:00.000001+00:00"
SYNC_BODIES: list[object] = [
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": AT, "payload": {}}]},
    {
        "protocol": 2,
        "entries": [
            {"seq": 5, "kind": "log", "created_at": AT, "payload": {"a": [1, {"b": None}]}},
            {"kind": "event", "payload": {"x": 1.5}},
            {"seq": 9, "kind": "status", "payload": {}},
            {"created_at": "2026-01-01T01:00:00Z", "kind": "audit", "payload": {"é": "ü"}},
        ],
        "status": {"full": True, "state": "idle"},
        "applied_revision": 3,
    },
    {"protocol": 1, "entries": [{"seq": 1, "kind": "log", "created_at": AT, "payload": {}}]},
    {"entries": [{"seq": 1, "kind": "log", "created_at": "2026-01-01T02:00:00", "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": "7", "kind": "log", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": 17672256, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": True, "kind": "log", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 0, "kind": "log", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 2**63, "kind": "log", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"kind": "log", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "gossip", "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": ["log"], "created_at": AT, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": "soon", "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": AT, "payload": [1]}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": AT}]},
    {
        "protocol": 2,
        "entries": [{"seq": 1, "kind": "log", "created_at": AT, "payload": {}, "x": 0}],
    },
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": None, "payload": {}}]},
    {"protocol": 2, "entries": [{"seq": 1, "kind": "log", "created_at": AT, "payload": {}}, 5]},
    {"protocol": 2, "entries": [{"seq": 2, "kind": "log", "created_at": AT, "payload": {}}] * 2},
    {"protocol": 2, "entries": {}},
    {"protocol": "2", "entries": []},
    {"protocol": 3, "entries": []},
    {"protocol": 2, "entries": [], "status": {"full": "maybe"}},
    {"protocol": 2, "entries": [], "surprise": 1},
    [],
    "not an object",
]


@pytest.mark.parametrize("doc", SYNC_BODIES)
def test_fast_sync_parse_matches_the_model(doc: object):
    body = json.dumps(doc).encode()
    assert _sync_outcome(body) == _reference_sync(body)


def test_fast_sync_parse_handles_malformed_json():
    for body in (b"", b"{", b'{"entries": [}', b"\xff"):
        outcome = _sync_outcome(body)
        reference = _reference_sync(body)
        assert outcome[:2] == reference[:2] == ("error", 400)  # type: ignore[index]


def test_edge_hub_version_prints_the_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ARM build's smoke test runs ``edge-hub --version``: it must exist and exit 0."""
    from hub import __version__
    from hub.cli import hub_main

    with pytest.raises(SystemExit) as exited:
        hub_main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"edge-hub {__version__}"
