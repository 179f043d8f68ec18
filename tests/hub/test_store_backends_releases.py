"""Releases, rollouts, release signing and group policies on each backend (SQLite and
PostgreSQL; the ``store`` fixture of tests/pgkit.py): same records, same errors with the
same messages, the audit rows in the same transaction (none when a write is refused), and
the writes that must hold across hub processes tried from two PostgresStores at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent import release_trust as rt
from hub.errors import Conflict, NotFound
from hub.store import AuditRecord
from hub.store import sqlite_rows as rows
from hub.store.postgres import PostgresStore
from hub.store.records import GroupRecord, ReleaseRecord, RolloutRecord, SealedSecret

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
KEYS = [rt.generate_key() for _ in range(2)]


def _audit(action: str, target: str = "x", actor: str = "admin", at: datetime = NOW) -> AuditRecord:
    return AuditRecord(actor, action, target, "ok", at, {})


async def _actions(store: Any) -> list[tuple[str, str]]:
    return [(a.action, a.target) for a in await store.list_audit(0, 10_000)]


def _release(version: str, source: str = "", name: str = "app") -> ReleaseRecord:
    images = [{"service": "web", "image": "reg/web:1", "pinned": "reg/web@sha256:" + "a" * 64}]
    return ReleaseRecord(
        name,
        version,
        f'{{"name":"{name}","version":"{version}"}}',
        source or f'{{"v":"{version}"}}',
        images,
        NOW,
        "alice",
    )


async def _secrets(store: Any) -> list[tuple[Any, ...]]:
    found = await store._read(
        "SELECT name, sealed, key_id, created_at, created_by, updated_at, updated_by "
        "FROM secrets ORDER BY name"
    )
    return [tuple(r) for r in found]


@pytest.fixture
async def two_stores(pg_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two PostgresStores on one database: they stand for two hub processes."""
    one, two = PostgresStore(pg_url, pool_max=4), PostgresStore(pg_url, pool_max=4)
    await one.open()
    await two.open()
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


# releases ---------------------------------------------------------------------------


async def test_a_release_is_created_once_and_found_again(store: Any):
    created, is_new = await store.create_release(_release("1"), _audit("release.create", "a@1"))
    assert is_new and created.id > 0
    assert (created.name, created.version, created.created_at, created.created_by) == (
        "app",
        "1",
        NOW,
        "alice",
    )
    assert created.images == _release("1").images and created.retired_at is None
    assert await store.get_release("app", "1") == created
    assert await store.get_release("app", "2") is None
    # The same release again: found, not created; its audit row is written all the same.
    again, is_new = await store.create_release(_release("1"), _audit("release.create", "a@1b"))
    assert (again, is_new) == (created, False)
    # Other content under the same version: refused, nothing written.
    before = await _actions(store)
    with pytest.raises(Conflict, match=r"release app@1 exists with different content") as e:
        await store.create_release(_release("1", source="{}"), _audit("release.create", "bad"))
    assert e.value.fields == [{"field": "release.version", "message": "already used"}]
    assert await _actions(store) == before
    assert await store.get_release("app", "1") == created
    assert before == [("release.create", "a@1"), ("release.create", "a@1b")]


async def test_releases_page_by_id_oldest_first(store: Any):
    for n in range(1, 8):
        await store.create_release(_release(str(n)), _audit("release.create"))
    seen, after = [], 0
    while page := await store.list_releases(after, 3):
        assert len(page) <= 3
        seen += [r.version for r in page]
        after = page[-1].id
    assert seen == [str(n) for n in range(1, 8)]
    everything = await store.list_releases(0, 100)
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert await store.list_releases(everything[-1].id, 100) == []


async def test_registry_passwords_are_sealed_with_a_new_release_only(store: Any):
    secrets = [
        (SealedSecret("reg-b", "k1:BBBB", "k1"), _audit("secret.put", "reg-b", "alice")),
        (SealedSecret("reg-a", "k1:AAAA", "k1"), _audit("secret.put", "reg-a", "alice")),
    ]
    await store.create_release(_release("1"), _audit("release.create", "app@1"), secrets)
    stamp = rows.ts(NOW)
    assert await _secrets(store) == [
        ("reg-a", "k1:AAAA", "k1", stamp, "alice", stamp, "alice"),
        ("reg-b", "k1:BBBB", "k1", stamp, "alice", stamp, "alice"),
    ]
    # Each secret's audit row, then the release's, in one transaction.
    assert await _actions(store) == [
        ("secret.put", "reg-b"),
        ("secret.put", "reg-a"),
        ("release.create", "app@1"),
    ]
    # The same release again, or a refused one: no secret stored, none replaced.
    other = [(SealedSecret("reg-a", "k2:XXXX", "k2"), _audit("secret.put", "reg-a", "bob"))]
    await store.create_release(_release("1"), _audit("release.create", "app@1"), other)
    with pytest.raises(Conflict):
        await store.create_release(_release("1", "{}"), _audit("release.create"), other)
    assert [s[1] for s in await _secrets(store)] == ["k1:AAAA", "k1:BBBB"]
    # A new release naming a secret that exists replaces its value; created_* stay.
    later = NOW + timedelta(hours=1)
    replaced = [
        (SealedSecret("reg-a", "k2:YYYY", "k2"), _audit("secret.put", "reg-a", "bob", later))
    ]
    await store.create_release(_release("2"), _audit("release.create", "app@2"), replaced)
    assert (await _secrets(store))[0] == (
        "reg-a",
        "k2:YYYY",
        "k2",
        stamp,
        "alice",
        rows.ts(later),
        "bob",
    )


async def test_a_release_is_retired_once(store: Any):
    await store.create_release(_release("1"), _audit("release.create"))
    with pytest.raises(NotFound, match=r"^no release app@9$"):
        await store.retire_release("app", "9", "bad", _audit("release.retire"))
    at = NOW + timedelta(minutes=5)
    retired = await store.retire_release(
        "app", "1", "CVE", _audit("release.retire", "app@1", "bob", at)
    )
    assert (retired.retired_at, retired.retired_by, retired.retired_reason) == (at, "bob", "CVE")
    assert await store.get_release("app", "1") == retired
    before = await _actions(store)
    with pytest.raises(
        Conflict, match=r"^release app@1 was retired at 2026-01-01T00:05:00\+00:00 by bob$"
    ):
        await store.retire_release("app", "1", "again", _audit("release.retire", "app@1"))
    assert await _actions(store) == before
    assert before[-1] == ("release.retire", "app@1")
    assert (await store.get_release("app", "1")).retired_reason == "CVE"


async def test_concurrent_creates_of_one_release_store_it_once(store: Any):
    results = await asyncio.gather(
        *(store.create_release(_release("1"), _audit("release.create")) for _ in range(10)),
        *(store.create_release(_release(str(n)), _audit("release.create")) for n in range(2, 7)),
    )
    assert sum(is_new for _, is_new in results) == 1 + 5
    assert len({r.id for r, _ in results[:10]}) == 1
    assert [r.version for r in await store.list_releases(0, 100)].count("1") == 1


async def test_two_hub_processes_create_and_retire_releases_consistently(
    two_stores: tuple[PostgresStore, PostgresStore],
):
    one, two = two_stores
    creates = []
    for n in range(10):
        for s in (one, two):
            creates += [s.create_release(_release(str(n)), _audit("release.create"))]
    creates += [two.create_release(_release("0", "{}"), _audit("release.create"))]
    results = await asyncio.gather(*creates, return_exceptions=True)
    assert isinstance(results[-1], Conflict) and "different content" in str(results[-1])
    assert sum(r[1] for r in results[:-1]) == 10  # type: ignore[index]
    listed = await one.list_releases(0, 100)
    # Each once, in the order the processes created them (ids grow).
    assert sorted(r.version for r in listed) == [str(n) for n in range(10)]
    assert [r.id for r in listed] == sorted({r.id for r in listed})
    retires = await asyncio.gather(
        *(s.retire_release("app", "3", "x", _audit("release.retire")) for s in (one, two) * 3),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in retires) == 1
    assert all(isinstance(r, Conflict) for r in retires if isinstance(r, Exception))
    audit = await two.list_audit(0, 100)
    assert sum(a.action == "release.retire" for a in audit) == 1
    assert sum(a.action == "release.create" for a in audit) == 20


# rollouts ---------------------------------------------------------------------------


def _rollout(
    rid: str, status: str = "running", created: datetime = NOW, updated: datetime = NOW
) -> RolloutRecord:
    return RolloutRecord(
        rid, "app@1", '{"group":"g"}', f'{{"stage":0,"id":"{rid}"}}', status, created, "a", updated
    )


async def test_rollouts_are_stored_listed_and_counted(store: Any):
    later = NOW + timedelta(seconds=1)
    for rollout in (
        _rollout("ro-b", "done", created=later),
        _rollout("ro-c"),
        _rollout("ro-a", "paused"),
        _rollout("RO-z", "running", created=later),
    ):
        await store.create_rollout(rollout, [], [_audit("rollout.start", rollout.id)])
    assert await store.get_rollout("ro-c") == _rollout("ro-c")
    assert await store.get_rollout("ro-x") is None
    # Oldest first, then by id in byte order (upper case first), as SQLite orders text.
    assert [r.id for r in await store.list_rollouts()] == ["ro-a", "ro-c", "RO-z", "ro-b"]
    running = await store.list_rollouts(["running", "paused"])
    assert [r.id for r in running] == ["ro-a", "ro-c", "RO-z"]
    assert await store.list_rollouts([]) == []
    assert await store.rollout_counts() == {"done": 1, "running": 2, "paused": 1}
    before = await _actions(store)
    with pytest.raises(Conflict, match=r"^rollout 'ro-a' exists$") as e:
        await store.create_rollout(_rollout("ro-a"), [], [_audit("rollout.start", "again")])
    assert e.value.fields == [{"field": "id"}]
    assert await _actions(store) == before and len(before) == 4


async def test_a_rollout_is_saved_only_over_the_state_it_was_planned_from(store: Any):
    await store.create_rollout(_rollout("ro-1"), [], [])
    t1, t2 = NOW + timedelta(seconds=1), NOW + timedelta(seconds=2)
    paused = replace(_rollout("ro-1", "paused", updated=t1), state='{"stage":1}')
    await store.save_rollout(paused, NOW, [_audit("rollout.pause", "ro-1")])
    assert await store.get_rollout("ro-1") == paused
    before = await _actions(store)
    # Planned from the state before the pause: refused, nothing written.
    with pytest.raises(Conflict, match=r"^rollout ro-1 changed meanwhile; try again$"):
        await store.save_rollout(_rollout("ro-1", "done", updated=t2), NOW, [_audit("x")])
    with pytest.raises(NotFound, match=r"^no rollout 'ro-9'$"):
        await store.save_rollout(_rollout("ro-9", updated=t2), NOW, [_audit("x")])
    assert await store.get_rollout("ro-1") == paused
    assert await _actions(store) == before == [("rollout.pause", "ro-1")]
    await store.save_rollout(_rollout("ro-1", "running", updated=t2), t1, [])
    assert (await store.get_rollout("ro-1")).status == "running"


async def test_a_new_rollout_ends_the_ones_it_supersedes_or_nothing(store: Any):
    await store.create_rollout(_rollout("ro-1"), [], [])
    await store.create_rollout(_rollout("ro-2"), [], [])
    t1 = NOW + timedelta(seconds=1)
    await store.save_rollout(_rollout("ro-2", "paused", updated=t1), NOW, [])
    ended = [(_rollout("ro-1", "superseded", updated=t1), NOW)]
    # ro-2 was read before its pause: the whole create is refused.
    stale = [*ended, (_rollout("ro-2", "superseded", updated=t1), NOW)]
    with pytest.raises(Conflict, match=r"^rollout ro-2 changed meanwhile; try again$"):
        await store.create_rollout(_rollout("ro-3"), stale, [_audit("rollout.start", "ro-3")])
    assert await store.get_rollout("ro-3") is None
    assert (await store.get_rollout("ro-1")).status == "running"
    assert await _actions(store) == []
    await store.create_rollout(
        _rollout("ro-3"), ended, [_audit("rollout.supersede", "ro-1"), _audit("rollout.start")]
    )
    assert (await store.get_rollout("ro-1")).status == "superseded"
    assert await store.rollout_counts() == {"superseded": 1, "paused": 1, "running": 1}
    assert await _actions(store) == [("rollout.supersede", "ro-1"), ("rollout.start", "x")]


async def test_concurrent_saves_of_one_rollout_let_exactly_one_win(store: Any):
    await store.create_rollout(_rollout("ro-1"), [], [])
    saves = [
        store.save_rollout(
            _rollout("ro-1", f"s{i}", updated=NOW + timedelta(seconds=i + 1)),
            NOW,
            [_audit("rollout.step", f"s{i}")],
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*saves, return_exceptions=True)
    won = [i for i, r in enumerate(results) if r is None]
    assert len(won) == 1 and all(isinstance(r, Conflict) for r in results if r is not None)
    assert (await store.get_rollout("ro-1")).status == f"s{won[0]}"
    assert await _actions(store) == [("rollout.step", f"s{won[0]}")]


async def test_two_hub_processes_superseding_one_rollout_start_one_new_rollout(
    two_stores: tuple[PostgresStore, PostgresStore],
):
    one, two = two_stores
    await one.create_rollout(_rollout("ro-0"), [], [])
    t1 = NOW + timedelta(seconds=1)
    ended = [(_rollout("ro-0", "superseded", updated=t1), NOW)]
    creates = [
        s.create_rollout(_rollout(f"ro-{s is two}-{i}"), ended, [_audit("rollout.start")])
        for i in range(5)
        for s in (one, two)
    ]
    # And the same new id from both processes, with nothing to supersede.
    creates += [s.create_rollout(_rollout("ro-same"), [], []) for s in (one, two)]
    results = await asyncio.gather(*creates, return_exceptions=True)
    assert sum(r is None for r in results[:-2]) == 1
    assert all("changed meanwhile" in str(r) for r in results[:-2] if r is not None)
    assert sum(r is None for r in results[-2:]) == 1
    assert any(isinstance(r, Conflict) and "'ro-same' exists" in str(r) for r in results[-2:])
    assert await two.rollout_counts() == {"superseded": 1, "running": 2}
    assert len(await one.list_audit(0, 100)) == 1


# release signing --------------------------------------------------------------------


def _root(version: int) -> rt.SignedRoot:
    doc = rt.RootDoc(
        version=version, threshold=1, keys=[rt.public_b64(k) for k in KEYS], expires=LATER
    )
    return rt.SignedRoot(root=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, KEYS[:1]))


def _manifest(version: int, signers: int = 1) -> rt.SignedManifest:
    doc = rt.ManifestDoc(version=version, expires=LATER, releases={"app@1": "sha256:" + "0" * 64})
    return rt.SignedManifest(
        manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, KEYS[:signers])
    )


async def test_release_roots_form_a_contiguous_chain(store: Any):
    assert await store.release_roots() == []
    with pytest.raises(
        Conflict, match=r"^release root v2 is not the next version \(the hub holds v0\)$"
    ):
        await store.add_release_root(_root(2), _audit("trust.root"))
    for v in (1, 2):
        await store.add_release_root(_root(v), _audit("trust.root", f"v{v}"))
    for v in (2, 4):
        with pytest.raises(Conflict, match=r"\(the hub holds v2\)$") as e:
            await store.add_release_root(_root(v), _audit("trust.root", "bad"))
        assert e.value.fields == [{"field": "root.version", "message": "must be 3"}]
    assert await store.release_roots() == [_root(1), _root(2)]
    assert await _actions(store) == [("trust.root", "v1"), ("trust.root", "v2")]


async def test_release_manifests_newest_first_and_replaced_by_version(store: Any):
    top = 2**63 - 1  # the largest version a manifest may have
    for v in (3, 1, top, 2):
        await store.put_release_manifest(_manifest(v), _audit("trust.manifest", str(v)))
    assert [m.manifest.version for m in await store.release_manifests(3)] == [top, 3, 2]
    assert [m.manifest.version for m in await store.release_manifests(100)] == [top, 3, 2, 1]
    await store.put_release_manifest(_manifest(2, signers=2), _audit("trust.manifest", "2+"))
    held = {m.manifest.version: m for m in await store.release_manifests(100)}
    assert held[2] == _manifest(2, signers=2) and len(held) == 4
    assert len(await _actions(store)) == 5


async def test_two_hub_processes_adding_the_same_root_version_keep_the_chain(
    two_stores: tuple[PostgresStore, PostgresStore],
):
    one, two = two_stores
    for v in range(1, 6):
        results = await asyncio.gather(
            *(s.add_release_root(_root(v), _audit("trust.root")) for s in (one, two, one, two)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 1
        assert all(
            isinstance(r, Conflict) and f"(the hub holds v{v})" in str(r)
            for r in results
            if r is not None
        )
    assert [r.root.version for r in await two.release_roots()] == [1, 2, 3, 4, 5]
    assert len(await one.list_audit(0, 100)) == 5


# group device and log policies ------------------------------------------------------


async def test_group_policies_are_set_listed_by_name_and_cleared(store: Any):
    for name in ("b", "a-1", "B", "c"):
        group = GroupRecord(name, f"site={name}", {}, NOW, "admin")
        await store.create_group(group, 10, _audit("group.create", name))
    setters = (store.set_group_device_policy, store.set_group_log_policy)
    for setter in setters:
        with pytest.raises(NotFound, match=r"^no group 'zz'$"):
            await setter("zz", {"x": 1}, _audit("group.policy", "zz"))
    assert len(await _actions(store)) == 4
    await store.set_group_device_policy("b", {"reboot": False}, _audit("device_policy", "b"))
    await store.set_group_device_policy("B", {"reboot": True}, _audit("device_policy", "B"))
    await store.set_group_device_policy("a-1", {"n": [1, 2]}, _audit("device_policy", "a-1"))
    await store.set_group_log_policy("c", {"level": "warn"}, _audit("log_policy", "c"))
    # Byte order of names, as SQLite orders text: "B" before "a-1" before "b".
    assert await store.group_device_policies() == [
        ("B", "site=B", {"reboot": True}),
        ("a-1", "site=a-1", {"n": [1, 2]}),
        ("b", "site=b", {"reboot": False}),
    ]
    assert await store.group_log_policies() == [("c", "site=c", {"level": "warn"})]
    await store.set_group_device_policy("B", None, _audit("device_policy", "B"))
    await store.set_group_log_policy("c", None, _audit("log_policy", "c"))
    assert [p[0] for p in await store.group_device_policies()] == ["a-1", "b"]
    assert await store.group_log_policies() == []
    assert len(await _actions(store)) == 4 + 6
    # A deleted group's policies go with it.
    await store.delete_group("b", _audit("group.delete", "b"))
    assert [p[0] for p in await store.group_device_policies()] == ["a-1"]
