"""Operator access and dashboard sessions on each backend (the ``store`` fixture of
tests/pgkit.py runs each test on SQLite and on PostgreSQL): users, teams, grants, user
tokens and their bound, sessions and theirs; and the bounds with two hub processes on one
PostgreSQL database."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from test_store_backends import NOW, _audit, _chain_rows, _verify

from hub.errors import Conflict, NotFound, StoreError
from hub.store.postgres import PostgresStore
from hub.store.records import SessionRecord, UserRecord, UserTokenRecord

LATER = NOW + timedelta(hours=1)


async def _audit_count(store: Any) -> int:
    return len(await store.list_audit(0, 100_000))


async def _users(store: Any, *names: str) -> None:
    for name in names:
        await store.add_user(UserRecord(name, NOW, "admin"), _audit("user.create", name))


def _token(id_: str, user: str, at=NOW, expires=None) -> UserTokenRecord:
    return UserTokenRecord(id_, user, f"sha-{id_}", at, expires)


async def test_users_are_created_once_listed_by_name_and_disabled(store: Any):
    await _users(store, "bob", "Alice", "_ops", "alice")
    assert [u.name for u in await store.list_users()] == ["Alice", "_ops", "alice", "bob"]
    assert await store.get_user("bob") == UserRecord("bob", NOW, "admin", False)
    assert await store.get_user("nobody") is None
    audits = await _audit_count(store)
    with pytest.raises(Conflict, match="user 'bob' exists"):
        await store.add_user(UserRecord("bob", LATER, "eve"), _audit("user.create", "bob"))
    assert (await store.get_user("bob")).created_by == "admin"
    await store.set_user_disabled("bob", True, _audit("user.disable", "bob"))
    assert (await store.get_user("bob")).disabled is True
    await store.set_user_disabled("bob", False, _audit("user.enable", "bob"))
    assert (await store.get_user("bob")).disabled is False
    with pytest.raises(NotFound, match="no user 'carol'"):
        await store.set_user_disabled("carol", True, _audit("user.disable", "carol"))
    # the refused writes wrote no audit row; the two accepted ones did
    assert await _audit_count(store) == audits + 2


async def test_teams_members_and_grants(store: Any):
    await _users(store, "ann", "bob")
    await store.add_team("ops", NOW, _audit("team.create", "ops"))
    await store.add_team("dev", LATER, _audit("team.create", "dev"))
    with pytest.raises(Conflict, match="team 'ops' exists"):
        await store.add_team("ops", NOW, _audit("team.create", "ops"))
    for team, user in [("ops", "bob"), ("ops", "ann"), ("ops", "ann"), ("dev", "bob")]:
        await store.set_team_member(team, user, True, _audit("team.member", team))
    await store.set_team_grant("ops", "operator", "site=a", True, _audit("team.grant", "ops"))
    await store.set_team_grant("ops", "operator", "site=a", True, _audit("team.grant", "ops"))
    await store.set_team_grant("ops", "auditor", "all", True, _audit("team.grant", "ops"))
    await store.set_team_grant("dev", "viewer", "all", True, _audit("team.grant", "dev"))
    audits = await _audit_count(store)
    with pytest.raises(NotFound, match="no team 'qa'"):
        await store.set_team_member("qa", "bob", True, _audit("team.member", "qa"))
    with pytest.raises(NotFound, match="no user 'zed'"):
        await store.set_team_member("ops", "zed", True, _audit("team.member", "ops"))
    with pytest.raises(NotFound, match="no team 'qa'"):
        await store.set_team_grant("qa", "viewer", "all", True, _audit("team.grant", "qa"))
    with pytest.raises(NotFound, match=r"team 'ops' has no grant viewer on 'all'"):
        await store.set_team_grant("ops", "viewer", "all", False, _audit("team.grant", "ops"))
    with pytest.raises(NotFound, match="no team 'qa'"):
        await store.delete_team("qa", _audit("team.delete", "qa"))
    assert await _audit_count(store) == audits
    teams = await store.list_teams()
    assert [(t.name, t.created_at, t.members, t.grants) for t in teams] == [
        ("dev", LATER, ("bob",), (("viewer", "all"),)),
        ("ops", NOW, ("ann", "bob"), (("auditor", "all"), ("operator", "site=a"))),
    ]
    assert await store.user_grants("bob") == [
        ("dev", "viewer", "all"),
        ("ops", "auditor", "all"),
        ("ops", "operator", "site=a"),
    ]
    assert await store.user_grants("nobody") == []
    await store.set_team_member("ops", "bob", False, _audit("team.member", "ops"))
    await store.set_team_grant("ops", "auditor", "all", False, _audit("team.grant", "ops"))
    assert await store.user_grants("bob") == [("dev", "viewer", "all")]
    assert await store.user_grants("ann") == [("ops", "operator", "site=a")]
    # a deleted team takes its members and grants with it (a new one of its name has none)
    await store.delete_team("ops", _audit("team.delete", "ops"))
    await store.add_team("ops", LATER, _audit("team.create", "ops"))
    assert [(t.name, t.members, t.grants) for t in await store.list_teams()] == [
        ("dev", ("bob",), (("viewer", "all"),)),
        ("ops", (), ()),
    ]
    assert await store.user_grants("ann") == []
    assert await _audit_count(store) == audits + 4


async def test_user_tokens_bound_listing_revocation_and_use(store: Any):
    with pytest.raises(NotFound, match="no user 'ann'"):
        await store.add_user_token(_token("t0", "ann"), 3, _audit("token.create"))
    await _users(store, "ann", "bob")
    await store.add_user_token(_token("t2", "ann"), 3, _audit("token.create", "t2"))
    await store.add_user_token(_token("t1", "ann"), 3, _audit("token.create", "t1"))
    # expired at NOW+1h: not active once a later token is created
    expiring = _token("t3", "ann", NOW, expires=NOW + timedelta(minutes=30))
    await store.add_user_token(expiring, 3, _audit("token.create", "t3"))
    await store.add_user_token(_token("tb", "bob"), 3, _audit("token.create", "tb"))
    with pytest.raises(Conflict, match=r"user 'ann' holds 3 active tokens.*max_tokens_per_user"):
        await store.add_user_token(_token("t4", "ann"), 3, _audit("token.create", "t4"))
    assert await store.get_user_token("t4") is None
    await store.add_user_token(_token("t5", "ann", LATER), 3, _audit("token.create", "t5"))
    with pytest.raises(Conflict, match="holds 3 active tokens"):
        await store.add_user_token(_token("t6", "ann", LATER), 3, _audit("token.create", "t6"))
    with pytest.raises(NotFound, match="user 'bob' has no token 't1'"):
        await store.revoke_user_token("bob", "t1", _audit("token.revoke", "t1"))
    revoke = _audit("token.revoke", "t1")
    await store.revoke_user_token("ann", "t1", revoke)
    # idempotent: the first revocation's time stays
    await store.revoke_user_token("ann", "t1", _audit("token.revoke", "t1"))
    await store.add_user_token(_token("t6", "ann", LATER), 3, _audit("token.create", "t6"))
    await store.touch_user_token("t2", LATER)
    await store.touch_user_token("no-such-token", LATER)
    listed = await store.list_user_tokens("ann")
    assert [t.id for t in listed] == ["t1", "t2", "t3", "t5", "t6"]  # created_at, then id
    assert await store.get_user_token("t2") == UserTokenRecord(
        "t2", "ann", "sha-t2", NOW, None, LATER, None
    )
    assert (await store.get_user_token("t1")).revoked_at == revoke.at
    assert (await store.get_user_token("t3")).expires_at == NOW + timedelta(minutes=30)
    assert [t.id for t in await store.list_user_tokens("bob")] == ["tb"]
    assert await store.list_user_tokens("nobody") == []


def _session(n: int, created=NOW, seen=NOW) -> SessionRecord:
    return SessionRecord(f"h{n}", "user:ann", "t1", f"csrf{n}", created, seen)


async def test_sessions_bound_expiry_touch_and_delete(store: Any):
    # nothing expires under this window
    none = {"idle_before": NOW - timedelta(hours=3), "created_before": NOW - timedelta(days=3)}
    await store.add_session(_session(1), 3, **none)
    await store.add_session(_session(2, seen=NOW - timedelta(hours=2)), 3, **none)
    await store.add_session(_session(3, created=NOW - timedelta(days=2)), 3, **none)
    assert await store.get_session("h1") == _session(1)
    assert await store.get_session("nobody") is None
    with pytest.raises(StoreError, match="constraint"):
        await store.add_session(_session(1), 9, **none)
    with pytest.raises(Conflict, match=r"holds 3 live dashboard sessions.*max_sessions"):
        await store.add_session(_session(4), 3, **none)
    # h2 is idle under this window: deleted, still 2 held, refused, and the refused add's
    # deletion rolled back with it
    idle = {"idle_before": NOW - timedelta(minutes=90), "created_before": NOW - timedelta(days=3)}
    with pytest.raises(Conflict, match="holds 2 live"):
        await store.add_session(_session(4), 2, **idle)
    assert await store.get_session("h2") is not None
    # expired sessions (idle, or created too long ago) are deleted before counting
    later = {"idle_before": NOW - timedelta(minutes=90), "created_before": NOW - timedelta(days=1)}
    await store.add_session(_session(4), 2, **later)
    assert await store.get_session("h2") is None and await store.get_session("h3") is None
    with pytest.raises(Conflict, match="holds 2 live"):
        await store.add_session(_session(5), 2, **later)
    await store.touch_session("h1", LATER)
    await store.touch_session("gone", LATER)
    assert (await store.get_session("h1")).last_seen_at == LATER
    await store.delete_session("h1")
    await store.delete_session("h1")
    assert await store.get_session("h1") is None
    await store.add_session(_session(5), 2, **later)
    assert await store.get_session("h5") == _session(5)


# -- two hub processes on one PostgreSQL database ------------------------------------


async def _two(pg_url: str) -> tuple[PostgresStore, PostgresStore]:
    one, two = PostgresStore(pg_url, pool_max=4), PostgresStore(pg_url, pool_max=4)
    await one.open()
    await two.open()
    return one, two


async def test_access_bounds_and_names_hold_across_two_hub_processes(pg_url: str):
    one, two = await _two(pg_url)
    try:
        # one name, created from both processes at once: one user, the others Conflict
        adds = [
            s.add_user(UserRecord("ann", NOW, f"p{i}"), _audit("user.create", "ann"))
            for i in range(6)
            for s in (one, two)
        ]
        outcomes = await asyncio.gather(*adds, return_exceptions=True)
        assert sum(o is None for o in outcomes) == 1
        assert all(isinstance(o, Conflict) for o in outcomes if o is not None), outcomes
        # twelve tokens for one user from both processes under a bound of 5
        tokens = [
            s.add_user_token(_token(f"t{i}{n}", "ann"), 5, _audit("token.create"))
            for i in range(6)
            for n, s in enumerate((one, two))
        ]
        outcomes = await asyncio.gather(*tokens, return_exceptions=True)
        assert sum(o is None for o in outcomes) == 5, outcomes
        assert all(isinstance(o, Conflict) for o in outcomes if o is not None), outcomes
        assert len(await one.list_user_tokens("ann")) == 5
        # sessions under a bound of 4, from both processes
        window = {"idle_before": NOW - timedelta(hours=1), "created_before": NOW}
        sessions = [
            s.add_session(_session(i * 2 + n), 4, **window)
            for i in range(10)
            for n, s in enumerate((one, two))
        ]
        outcomes = await asyncio.gather(*sessions, return_exceptions=True)
        assert sum(o is None for o in outcomes) == 4, outcomes
        assert all(isinstance(o, Conflict) for o in outcomes if o is not None), outcomes
        # a team deleted by one process while the other adds members: never a member
        # row of a missing team, never a database error
        await one.add_team("ops", NOW, _audit("team.create", "ops"))
        await _users(one, *(f"u{i}" for i in range(8)))
        racing = [two.set_team_member("ops", f"u{i}", True, _audit("m")) for i in range(8)]
        racing.insert(4, one.delete_team("ops", _audit("team.delete", "ops")))
        outcomes = await asyncio.gather(*racing, return_exceptions=True)
        assert all(o is None or isinstance(o, NotFound) for o in outcomes), outcomes
        assert await two.list_teams() == [] and await two.user_grants("u1") == []
        verdict = _verify(await _chain_rows(one))
        assert verdict.ok, verdict.reason
    finally:
        await one.close()
        await two.close()
