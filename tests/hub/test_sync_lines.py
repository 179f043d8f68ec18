"""Issue 9, catch-up: the lines body format (payloads stored as sent, not serialized again).

The decode is pure (tables of bodies); the agent/hub pair runs against a real hub process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hubproc import HubProcess
from synckit import enroll_device, open_device

from edge_agent.errors import HubRefused
from edge_agent.protocol import compact_entries, lines_body
from edge_agent.sync import SyncLimits
from hub.errors import InvalidRequest, PayloadTooLarge
from hub.sync_decode import SyncBounds, decode_sync_body, decode_sync_job, job_result

BOUNDS = SyncBounds(2**24, 5000, 1000)
AT = "2026-01-01T00:00:00.000001+00:00"
HEAD = '{"protocol":3,"epoch":"ab12","features":[],"applied_revision":0,"status":null}'


def _rows(n: int) -> list[tuple[int, str, str, str]]:
    return [
        (
            seq,
            "log" if seq % 7 else "event",
            AT,
            json.dumps({"service": "web", "ts": 1767225600.5 + seq, "line": f'é {seq}\t"q"'}),
        )
        for seq in range(1, n + 1)
    ]


def _json_body(rows: list[tuple[int, str, str, str]]) -> bytes:
    return (HEAD[:-1] + f',"entries":{compact_entries(rows)}}}').encode()


def _lines(rows: list[tuple[int, str, str, str]]) -> bytes:
    body = lines_body(HEAD, rows)
    assert body is not None
    return body.encode()


def test_lines_body_gives_the_rows_of_the_json_body_with_payloads_as_sent():
    rows = _rows(50)
    head_j, rows_j = decode_sync_body(_json_body(rows), BOUNDS)
    head_l, rows_l = decode_sync_body(_lines(rows), BOUNDS, lines=True)
    assert head_l == head_j
    assert [r[:3] for r in rows_l] == [r[:3] for r in rows_j]
    assert [r[3] for r in rows_l] == [r[3] for r in rows]  # the agent's text, unchanged
    assert [json.loads(r[3]) for r in rows_l] == [json.loads(r[3]) for r in rows_j]
    ok, *_ = result = decode_sync_job(*_gz(_lines(rows)), BOUNDS, True)
    assert ok == "ok" and job_result(tuple(result))[1] == rows_l


def _gz(body: bytes) -> tuple[bytes, str]:
    import gzip

    return gzip.compress(body), "gzip"


def test_status_only_lines_body_and_an_empty_batch_decode():
    head, rows = decode_sync_body(_lines([]), BOUNDS, lines=True)
    assert rows == [] and head.epoch == "ab12"


def _one(payload_line: str, entry: str = '{"kind":"log"}') -> bytes:
    first = f'{{"seq":1,"created_at":"{AT}","kind":"log"}}'
    return f'{HEAD[:-1]},"entries":[{first},{entry}]}}\n{{"ok":1.5}}\n{payload_line}'.encode()


@pytest.mark.parametrize(
    ("line", "field", "status"),
    [
        ('{"x":NaN}', "entries.1.payload.x", 422),
        ('{"x":Infinity}', "entries.1.payload.x", 422),
        ('{"a":{"b":[1,-Infinity]}}', "entries.1.payload.a.b.1", 422),
        ('{"x":1e999}', "entries.1.payload.x", 422),
        ('{"x":1' + "0" * 310 + ".5}", "entries.1.payload.x", 422),
        ('{"x":1', "entries.1.payload", 400),  # not JSON
        ("[1,2]", "entries.1.payload", 422),  # not an object: the model names it
        ('"text"', "entries.1.payload", 422),
    ],
)
def test_bad_payload_lines_are_refused_by_name(line: str, field: str, status: int):
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(_one(line), BOUNDS, lines=True)
    assert caught.value.fields[0]["field"] == field
    assert caught.value.status == status


@pytest.mark.parametrize(
    "line", ['{"line":"NaN and Infinity are words here","n":1e300}', '{"l":"1e999 in text"}']
)
def test_words_that_look_non_finite_are_kept(line: str):
    _, rows = decode_sync_body(_one(line), BOUNDS, lines=True)
    assert rows[1][3] == line


def test_line_count_must_match_the_entries():
    body = _one('{"a":1}') + b'\n{"b":2}'
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(body, BOUNDS, lines=True)
    assert caught.value.status == 400 and "3 payload lines for 2 entries" in caught.value.message


def test_a_payload_inside_an_entry_is_refused_in_the_lines_format():
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(_one("{}", '{"kind":"log","payload":{}}'), BOUNDS, lines=True)
    assert caught.value.fields[0]["field"] == "entries.1.payload"


def test_unknown_entry_key_and_bad_head_are_named_by_the_model():
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(_one("{}", '{"kind":"log","extra":1}'), BOUNDS, lines=True)
    assert caught.value.fields[0]["field"] == "entries.1.extra"
    with pytest.raises(InvalidRequest) as caught:
        decode_sync_body(b"{not json\n{}", BOUNDS, lines=True)
    assert caught.value.status == 400


def test_entry_count_bound_holds_in_the_lines_format():
    with pytest.raises(PayloadTooLarge):
        decode_sync_body(_lines(_rows(11)), SyncBounds(2**24, 10, 10), lines=True)


def test_lines_text_never_splits_a_payload():
    assert lines_body(HEAD, [(1, "log", AT, '{"a":"x"}\n')]) is None


async def test_agent_sends_lines_once_the_hub_lists_them(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub").start()
    try:
        ident = await enroll_device(hub, tmp_path / "dev")
        dev = await open_device(tmp_path / "dev", limits=SyncLimits(batch_max_entries=100))
        real = dev.syncer.client.sync
        formats: list[bool] = []

        async def watched(body_gz: bytes, lines: bool = False):  # type: ignore[no-untyped-def]
            formats.append(lines)
            return await real(body_gz, lines=lines)

        dev.syncer.client.sync = watched  # type: ignore[method-assign]
        payloads = [
            {"service": "web", "line": f'line {i} ünïcode \\ "q"', "ts": i + 0.5}
            for i in range(1000)
        ]
        await dev.store.append_many("log", payloads)
        try:
            result = await dev.syncer.sync_once()
        finally:
            await dev.close()
        assert result.drained and result.sent == 1000
        assert formats[0] is False and formats[-1] is True  # JSON until the hub said so
        stored = hub.events(ident.device_id)
        assert [p for _, _, p in stored] == payloads
    finally:
        hub.stop()


async def test_agent_falls_back_to_json_when_a_hub_refuses_lines(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub").start()
    try:
        ident = await enroll_device(hub, tmp_path / "dev")
        dev = await open_device(tmp_path / "dev", limits=SyncLimits(batch_max_entries=100))
        real = dev.syncer.client.sync
        refused = 0

        async def downgraded(body_gz: bytes, lines: bool = False):  # type: ignore[no-untyped-def]
            nonlocal refused
            if lines:  # a hub downgraded after it listed the format reads the body as JSON
                refused += 1
                raise HubRefused("POST /v1/sync: hub answered 400: not JSON", status=400)
            resp = await real(body_gz)
            return resp.model_copy(update={"body_formats": None})  # it does not list them

        await dev.store.append_many("log", [{"line": "before"}] * 150)
        assert (await dev.syncer.sync_once()).drained and dev.syncer.lines
        dev.syncer.client.sync = downgraded  # type: ignore[method-assign]
        await dev.store.append_many("log", [{"line": f"after {i}"} for i in range(250)])
        try:
            result = await dev.syncer.sync_once()
        finally:
            await dev.close()
        # Only the requests already on the wire (the window, 2) went out in lines.
        assert result.drained and 1 <= refused <= 2 and not dev.syncer.lines
        assert len(hub.events(ident.device_id)) == 400
    finally:
        hub.stop()


async def test_json_only_agent_never_sends_lines(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub").start()
    try:
        await enroll_device(hub, tmp_path / "dev")
        limits = SyncLimits(batch_max_entries=50, body_format="json")
        dev = await open_device(tmp_path / "dev", limits=limits)
        await dev.store.append_many("log", [{"line": str(i)} for i in range(200)])
        try:
            assert (await dev.syncer.sync_once()).drained
            assert not dev.syncer.lines
        finally:
            await dev.close()
    finally:
        hub.stop()
