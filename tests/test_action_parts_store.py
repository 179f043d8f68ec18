"""The hub's store of result parts (migration 15): each (action, part) once, only the
device's own action, within the per-action bound with the cut lines counted."""

from __future__ import annotations

import json
import sqlite3

from hub.store.records import PartsBound
from hub.store.sqlite_actions import observe
from hub.store.sqlite_schema import MIGRATIONS

NOW = "2026-01-01T00:00:00+00:00"


def db_with_action() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    for number, _what, statements in MIGRATIONS:
        if number in (12, 15):
            for sql in statements:
                db.execute(sql)
    db.execute(
        "INSERT INTO actions (id, device_id, kind, args, created_by, created_at, expires_at, "
        "signed, state, state_at) VALUES ('act-1', 'dev-a', 'logs', '{}', 'op', ?, ?, '', "
        "'delivered', ?)",
        (NOW, NOW, NOW),
    )
    return db


def part(seq: int, no: int, lines: list[str], action: str = "act-1") -> tuple[int, str, str, str]:
    doc = {"type": "action", "id": action, "kind": "logs", "state": "part", "part": no}
    return (seq, "event", NOW, json.dumps({**doc, "lines": lines}, separators=(",", ":")))


def stored(db: sqlite3.Connection) -> list[tuple[int, list[str]]]:
    found = db.execute("SELECT part_no, lines FROM action_parts ORDER BY part_no").fetchall()
    return [(n, json.loads(lines)) for n, lines in found]


def test_a_part_sent_twice_is_stored_once() -> None:
    db = db_with_action()
    observe(db, "dev-a", [part(1, 1, ["a", "b"])], 0, NOW, 1 << 20, PartsBound())
    observe(db, "dev-a", [part(2, 1, ["a", "b"]), part(3, 2, ["c"])], 0, NOW, 1 << 20)
    assert stored(db) == [(1, ["a", "b"]), (2, ["c"])]
    assert db.execute(
        "SELECT parts, lines, bytes, cut_lines FROM action_part_totals"
    ).fetchall() == [(2, 3, 6, 0)]


def test_another_devices_part_is_ignored() -> None:
    db = db_with_action()
    observe(db, "dev-b", [part(1, 1, ["x"])], 0, NOW, 1 << 20)
    observe(db, "dev-a", [part(2, 1, ["x"], action="act-none")], 0, NOW, 1 << 20)
    assert stored(db) == []


def test_the_bound_keeps_the_first_lines_and_counts_the_cut() -> None:
    db = db_with_action()
    bound = PartsBound(max_lines=3, max_bytes=1000)
    entries = [part(1, 1, ["a", "b"]), part(2, 2, ["c", "d"]), part(3, 3, ["e"])]
    observe(db, "dev-a", entries, 0, NOW, 1 << 20, bound)
    assert stored(db) == [(1, ["a", "b"]), (2, ["c"]), (3, [])]
    assert db.execute("SELECT lines, cut_lines FROM action_part_totals").fetchall() == [(3, 2)]
    by_bytes = db_with_action()
    observe(by_bytes, "dev-a", [part(1, 1, ["aaaa", "bbbb"])], 0, NOW, 1 << 20, PartsBound(10, 6))
    assert stored(by_bytes) == [(1, ["aaaa"])]
