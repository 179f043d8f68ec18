"""PostgresStore is a drop-in HubStore: the same method signatures as the interface (and as
SqliteStore), targets that carry secrets, and names listed in SQLite's (byte) order even on a
database whose default collation sorts text by language."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from pgkit import fresh_database
from test_store_backends import NOW, _audit, _enrolled, _target

from hub.errors import Conflict, NotFound
from hub.store import HubStore
from hub.store.postgres import PostgresStore
from hub.store.records import AuditRecord, GroupRecord, SealedSecret, UserRecord
from hub.store.sqlite import SqliteStore

NAMES = ["b", "B", "a_1", "a-2", "A", "Z9", "z", "é"]  # byte order: A B Z9 a-2 a_1 b z é


def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls", [PostgresStore, SqliteStore])
def test_every_interface_method_has_the_interfaces_signature(cls: type):
    differ = []
    for name in sorted(HubStore.__abstractmethods__):
        want, have = getattr(HubStore, name), getattr(cls, name)
        if _shape(want) != _shape(have):
            differ.append(f"{name}: {inspect.signature(have)} is not {inspect.signature(want)}")
        if inspect.iscoroutinefunction(want) != inspect.iscoroutinefunction(have):
            differ.append(f"{name}: async on one side only")
    assert differ == []


async def test_a_target_with_secrets_stores_them_and_their_audit_in_its_transaction(store: Any):
    await _enrolled(store, "dev-1", "dev-2")
    later = NOW + timedelta(minutes=5)
    secret_audit = AuditRecord("hub", "secret.set", "reg.pw", "ok", later, {"via": "target"})
    secrets = [(SealedSecret("reg.pw", "k1:v", "k1"), secret_audit)]
    before = len(await store.list_audit(0, 999))
    record = await store.put_target("dev-1", _target, _audit("target.set", "dev-1"), NOW, secrets)
    assert record.revision == 1
    (listed,) = await store.list_secrets()
    assert (listed.name, listed.created_at, listed.created_by) == ("reg.pw", later, "hub")
    assert (await store.sealed_secrets(["reg.pw"]))["reg.pw"].sealed == "k1:v"
    added = (await store.list_audit(0, 999))[before:]
    assert [(a.action, a.target) for a in added] == [
        ("secret.set", "reg.pw"),
        ("target.set", "dev-1"),
    ]
    # A refused target leaves no secret and no audit row behind.
    await store.set_device_disabled("dev-2", True, _audit("device.disable", "dev-2"))
    count = len(await store.list_audit(0, 999))
    other = [(SealedSecret("other", "k1:w", "k1"), _audit("secret.set", "other"))]
    with pytest.raises(Conflict, match="disabled"):
        await store.put_target("dev-2", _target, _audit("target.set", "dev-2"), NOW, other)
    with pytest.raises(NotFound, match="no device 'dev-9'"):
        await store.put_target("dev-9", _target, _audit("target.set", "dev-9"), NOW, other)
    assert [s.name for s in await store.list_secrets()] == ["reg.pw"]
    assert len(await store.list_audit(0, 999)) == count


@pytest.fixture
async def language_sorted_pg() -> AsyncIterator[PostgresStore]:
    """A PostgresStore on a database whose default collation is ICU en-US."""
    async for url in fresh_database(icu_locale="en-US"):
        store = PostgresStore(url)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def _populate(store: Any) -> None:
    await _enrolled(store, *(f"dev-{n}" for n in NAMES))
    for n, name in enumerate(NAMES):
        group = GroupRecord(name, f"site={n}", {}, NOW, "admin")
        await store.create_group(group, 100, _audit("group.create", name))
        await store.add_user(UserRecord(name, NOW, "admin"), _audit("user.add", name))
        await store.add_team(name, NOW, _audit("team.add", name))
        await store.set_team_member(name, NAMES[0], True, _audit("team.member", name))
        await store.set_team_grant(name, "viewer", f"group:{name}", True, _audit("team.grant"))
    await store.put_secrets([SealedSecret(n, "k1:v", "k1") for n in NAMES], NOW, "a", None)


async def test_names_are_listed_in_sqlites_byte_order_whatever_the_databases_collation(
    language_sorted_pg: PostgresStore, tmp_path: Any
):
    sqlite = SqliteStore(tmp_path / "hub.db")
    await sqlite.open()
    try:
        lists: dict[str, list[Any]] = {}
        for label, store in (("sqlite", sqlite), ("postgres", language_sorted_pg)):
            await _populate(store)
            lists[label] = [
                [d.id for d in await store.list_devices()],
                await store.retention_devices(),
                [g.name for g in await store.list_groups()],
                [u.name for u in await store.list_users()],
                [t.name for t in await store.list_teams()],
                [s.name for s in await store.list_secrets()],
                await store.user_grants(NAMES[0]),
            ]
        assert lists["postgres"] == lists["sqlite"]
        assert lists["sqlite"][2] == sorted(NAMES, key=lambda n: n.encode())
    finally:
        await sqlite.close()
