"""Secrets and the clear-password moves on each backend (the ``store`` fixture of
tests/pgkit.py runs each test on SQLite and on PostgreSQL), and with two hub processes on
one PostgreSQL database."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from test_store_backends import NOW, _audit, _chain_rows, _enrolled, _verify

from edge_agent.protocol import SignedTarget
from hub.errors import Conflict, NotFound
from hub.store.postgres import PostgresStore
from hub.store.records import SealedSecret

LATER = NOW + timedelta(hours=1)
DIGEST = "sha256:" + "a" * 64


def _sealed(name: str, value: str = "v", key: str = "k1") -> SealedSecret:
    return SealedSecret(name, f"{key}:{value}", key)


async def _sql(store: Any, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement written with ``?`` on the store's database; return its rows.

    Test setup only: rows of tables another part of the PostgreSQL store writes (issue 13:
    releases) and the ``secret_moves`` list, which only SQLite's migration 22 fills.
    """
    if isinstance(store, PostgresStore):
        n = 0
        while "?" in statement:
            n += 1
            statement = statement.replace("?", f"${n}", 1)
        conn = await asyncpg.connect(store.url)
        try:
            return [tuple(r) for r in await conn.fetch(statement, *args)]
        finally:
            await conn.close()
    db = sqlite3.connect(store.path)
    try:
        found = db.execute(statement, args).fetchall()
        db.commit()
        return found
    finally:
        db.close()


async def _listed(store: Any, kind: str, key: str) -> None:
    await _sql(store, "INSERT INTO secret_moves (kind, key) VALUES (?, ?)", kind, key)


def _release_doc(name: str, *, secret: str | None = None, clear: str | None = None) -> str:
    auth: dict[str, Any] = {"server": "127.0.0.1:5000", "username": "u"}
    auth.update({"password": clear} if clear else {"password_secret": "reg.pw"})
    service = {"name": "web", "image": f"127.0.0.1:5000/x@{DIGEST}"}
    if secret:
        service["secret_env"] = {"DB": secret}
    return json.dumps(
        {"name": name, "version": "1", "services": [service], "registry_auth": [auth]}
    )


async def _release(store: Any, document: str) -> int:
    """Store a release row as the release create does; return its id."""
    (rid,) = (
        await _sql(
            store,
            "INSERT INTO releases (name, version, document, source, created_at, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            json.loads(document)["name"],
            "1",
            document,
            document,
            "2026-01-01T00:00:00Z",
            "admin",
        )
    )[0]
    return rid


async def test_secrets_are_stored_replaced_listed_and_read_sealed(store: Any):
    created = await store.put_secrets(
        [_sealed("db.pass"), _sealed("api"), _sealed("db.pass", "w")],
        NOW,
        "ann",
        _audit("secret.set", "db.pass"),
    )
    assert created == [True, True, False]
    audits = len(await store.list_audit(0, 999))
    # replacing keeps who created it; no audit row when none is given
    assert await store.put_secrets([_sealed("api", "x", "k2")], LATER, "bob", None) == [False]
    assert len(await store.list_audit(0, 999)) == audits
    listed = await store.list_secrets()
    assert [(s.name, s.key_id, s.created_by, s.updated_by) for s in listed] == [
        ("api", "k2", "ann", "bob"),
        ("db.pass", "k1", "ann", "ann"),
    ]
    assert (listed[0].created_at, listed[0].updated_at) == (NOW, LATER)
    assert await store.sealed_secrets(["db.pass", "api", "none"]) == {
        "db.pass": _sealed("db.pass", "w"),
        "api": _sealed("api", "x", "k2"),
    }
    assert await store.sealed_secrets([]) == {}


async def test_a_secret_is_deleted_once_and_audited(store: Any):
    await store.put_secrets([_sealed("a"), _sealed("b")], NOW, "ann", None)
    await store.delete_secret("a", _audit("secret.delete", "a"))
    assert [s.name for s in await store.list_secrets()] == ["b"]
    with pytest.raises(NotFound, match="no secret 'a'"):
        await store.delete_secret("a", _audit("secret.delete", "a"))
    assert [r.action for r in await store.list_audit(0, 99)] == ["secret.delete"]


async def test_a_secret_a_release_names_cannot_be_deleted(store: Any):
    await store.put_secrets([_sealed("db.pass"), _sealed("reg.pw"), _sealed("db")], NOW, "a", None)
    await _release(store, _release_doc("app", secret="db.pass"))
    await _release(store, _release_doc("app2", secret="db.pass"))
    with pytest.raises(Conflict, match=r"'db.pass' is named by 2 release\(s\): app@1, app2@1"):
        await store.delete_secret("db.pass", _audit("secret.delete", "db.pass"))
    with pytest.raises(Conflict, match=r"'reg.pw' is named by 2 release\(s\)"):
        await store.delete_secret("reg.pw", _audit("secret.delete", "reg.pw"))
    await store.delete_secret("db", _audit("secret.delete", "db"))  # "db" only as a substring
    assert [s.name for s in await store.list_secrets()] == ["db.pass", "reg.pw"]


async def test_reseal_rewrites_what_changes_in_one_audited_transaction(store: Any):
    await store.put_secrets([_sealed("a"), _sealed("b", key="k2"), _sealed("c")], NOW, "x", None)

    def to_k2(s: SealedSecret) -> SealedSecret:
        return s if s.key_id == "k2" else SealedSecret(s.name, s.sealed.replace("k1", "k2"), "k2")

    assert await store.reseal_secrets(to_k2, _audit("secret.reseal", "all", key="k2")) == 2
    assert {s.key_id for s in await store.list_secrets()} == {"k2"}
    assert (await store.sealed_secrets(["a"]))["a"].sealed == "k2:v"
    assert await store.reseal_secrets(to_k2, _audit("secret.reseal", "all")) == 0
    details = [r.detail for r in await store.list_audit(0, 99)]
    assert details == [{"key": "k2", "resealed": 2}, {"resealed": 0}]

    def broken(s: SealedSecret) -> SealedSecret:
        if s.name == "c":
            raise ValueError("cannot open c")
        return SealedSecret(s.name, "k3:new", "k3")

    with pytest.raises(ValueError, match="cannot open c"):
        await store.reseal_secrets(broken, _audit("secret.reseal", "all"))
    # all or nothing: a and b (resealed before c failed) kept their values
    assert {s.key_id for s in await store.list_secrets()} == {"k2"}
    assert len(await store.list_audit(0, 99)) == 2


def _clear_target(revision: int, password: str) -> SignedTarget:
    release = json.loads(_release_doc("app", clear=password))
    payload = json.dumps({"revision": revision, "release": release}).encode()
    return SignedTarget(payload=base64.b64encode(payload).decode(), signature="sig")


async def test_a_target_holding_a_clear_password_is_moved_once(store: Any):
    await _enrolled(store, "dev-1")
    for password in ("pw-1", "pw-2"):
        await store.put_target(
            "dev-1", lambda r, p=password: _clear_target(r, p), _audit("target.set"), NOW
        )
    for key in ("dev-1 2", "dev-1 1", "dev-9 1"):
        await _listed(store, "target", key)
    pending = await store.pending_secret_moves()
    # only listed rows that exist, ordered by key
    assert [(k, key, src) for k, key, _, src in pending] == [
        ("target", "dev-1 1", ""),
        ("target", "dev-1 2", ""),
    ]
    assert pending[0][2] == _clear_target(1, "pw-1").model_dump_json()
    named = _clear_target(2, "moved").model_dump_json()
    audits = [replace(_audit("secret.move", "registry.app.1"), at=LATER, actor="hub")]
    before = len(await store.list_audit(0, 999))
    await store.move_secrets("target", "dev-1 2", named, "", [_sealed("registry.app.1")], audits)
    assert [p[1] for p in await store.pending_secret_moves()] == ["dev-1 1"]
    assert (await store.list_targets("dev-1", 1))[0].signed.model_dump_json() == named
    secret = (await store.list_secrets())[0]
    assert (secret.name, secret.created_at, secret.created_by) == ("registry.app.1", LATER, "hub")
    moved = (await store.list_audit(0, 999))[before:]
    assert [(r.action, r.actor) for r in moved] == [("secret.move", "hub")]


async def test_a_release_holding_a_clear_password_is_moved(store: Any):
    clear = _release_doc("app", clear="pw")
    rid = await _release(store, clear)
    await _release(store, _release_doc("other", clear="pw"))  # not listed: not pending
    await _listed(store, "release", str(rid))
    await _listed(store, "release", "999")  # listed, but no such row
    assert await store.pending_secret_moves() == [("release", str(rid), clear, clear)]
    named = _release_doc("app", secret="registry.app.1")
    audits = [_audit("secret.move", "registry.app.1")]
    await store.move_secrets("release", str(rid), named, named + " ", [_sealed("x")], audits)
    assert await store.pending_secret_moves() == []
    stored = await _sql(store, "SELECT document, source FROM releases WHERE id = ?", rid)
    assert stored == [(named, named + " ")]
    assert [s.name for s in await store.list_secrets()] == ["x"]


# -- two hub processes on one PostgreSQL database ------------------------------------


async def test_secret_writes_and_moves_across_two_hub_processes(pg_url: str):
    one, two = PostgresStore(pg_url, pool_max=4), PostgresStore(pg_url, pool_max=4)
    await one.open()
    await two.open()
    try:
        # one new name written from both at once: one creator, the rest replace it
        writes = [
            s.put_secrets([_sealed("n", f"{i}{j}")], NOW, f"p{j}", _audit("secret.set", "n"))
            for i in range(8)
            for j, s in enumerate((one, two))
        ]
        created = await asyncio.gather(*writes)
        assert sorted(c[0] for c in created) == [False] * 15 + [True]
        # a listed row moved by both processes at once: moved once, the other refused
        await _enrolled(one, "dev-1")
        await one.put_target("dev-1", lambda r: _clear_target(r, "pw"), _audit("t"), NOW)
        await _listed(one, "target", "dev-1 1")
        (kind, key, _, _), *_ = await two.pending_secret_moves()
        named = _clear_target(1, "named").model_dump_json()
        moves = [
            s.move_secrets(kind, key, named, "", [_sealed(f"m{j}")], [_audit("secret.move")])
            for j, s in enumerate((one, two))
        ]
        outcomes = await asyncio.gather(*moves, return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["Conflict", "NoneType"], outcomes
        assert "moved already" in str(next(o for o in outcomes if o is not None))
        assert [s.name for s in await one.list_secrets()] == [
            f"m{outcomes.index(None)}",
            "n",
        ]
        assert await one.pending_secret_moves() == []
        verdict = _verify(await _chain_rows(two))
        assert verdict.ok, verdict.reason
        assert [r.action for r in await one.list_audit(0, 999)].count("secret.move") == 1
    finally:
        await one.close()
        await two.close()
