"""hub.access as tables: roles, grants, scopes, and the sound selector-in-scope check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.access import (
    ADMIN,
    MIN_ROLE,
    Grant,
    Permission,
    Principal,
    Role,
    check_selector,
    in_scope,
    require,
    require_all,
    selector_within,
)
from hub.errors import Forbidden
from hub.selector import matches, parse

BERLIN_DEPLOYER = Principal("bob", (Grant.of("deployer", "site=berlin"),))
BERLIN_VIEWER = Principal("vic", (Grant.of("viewer", "site=berlin"),))
MIXED = Principal("mia", (Grant.of("viewer", "all"), Grant.of("deployer", "site=berlin")))


def test_every_permission_has_a_declared_minimum_role() -> None:
    assert set(MIN_ROLE) == set(Permission)


@pytest.mark.parametrize(
    ("who", "permission", "allowed"),
    [
        (BERLIN_VIEWER, Permission.DEVICES_READ, True),
        (BERLIN_VIEWER, Permission.AUDIT_READ, True),
        (BERLIN_VIEWER, Permission.TARGETS_WRITE, False),
        (BERLIN_VIEWER, Permission.ROLLOUTS_WRITE, False),
        (BERLIN_DEPLOYER, Permission.DEVICES_READ, True),  # deployer includes viewer
        (BERLIN_DEPLOYER, Permission.ROLLOUTS_WRITE, True),
        (BERLIN_DEPLOYER, Permission.RELEASES_WRITE, True),
        (BERLIN_DEPLOYER, Permission.USERS_WRITE, False),
        (BERLIN_DEPLOYER, Permission.TOKENS_CREATE, False),
        (ADMIN, Permission.USERS_WRITE, True),
        (Principal("nobody"), Permission.DEVICES_READ, False),
    ],
)
def test_role_table(who: Principal, permission: Permission, allowed: bool) -> None:
    assert who.allows(permission) is allowed


def test_scope_is_the_union_of_grants_per_permission() -> None:
    assert MIXED.scope_for(Permission.DEVICES_READ) is None  # viewer on all
    assert [str(s) for s in MIXED.scope_for(Permission.TARGETS_WRITE) or []] == ["site=berlin"]
    assert BERLIN_VIEWER.scope_for(Permission.TARGETS_WRITE) == []


def test_admin_routes_need_the_permission_on_all() -> None:
    require_all(ADMIN, Permission.USERS_WRITE)
    scoped_admin = Principal("sam", (Grant.of("admin", "site=berlin"),))
    require(scoped_admin, Permission.USERS_WRITE)
    with pytest.raises(Forbidden, match="scope 'all'"):
        require_all(scoped_admin, Permission.USERS_WRITE)


@pytest.mark.parametrize(
    ("tags", "inside"),
    [({"site": "berlin"}, True), ({"site": "paris"}, False), ({}, False)],
)
def test_device_in_scope(tags: dict[str, str], inside: bool) -> None:
    assert in_scope(BERLIN_DEPLOYER.scope_for(Permission.TARGETS_WRITE), tags) is inside
    assert in_scope(None, tags)


@pytest.mark.parametrize(
    ("selector", "scope", "inside"),
    [
        ("site=berlin", "site=berlin", True),
        ("site=berlin,app=web", "site=berlin", True),
        ("site in (berlin)", "site=berlin", True),
        ("site=berlin", "site in (berlin, munich)", True),
        ("site in (berlin, munich)", "site in (berlin, munich, hamburg)", True),
        ("site in (berlin, paris)", "site=berlin", False),
        ("app=web", "site=berlin", False),
        ("site!=paris", "site=berlin", False),  # matches devices without a site
        ("site", "site=berlin", False),
        ("site=berlin", "site", True),
        ("site=berlin", "site!=paris", True),
        ("site=paris", "site!=paris", False),
        ("!site", "site!=paris", True),
        ("site notin (paris, rome)", "site!=paris", True),
        ("site!=rome", "site!=paris", False),
        ("!site", "!site", True),
        ("site=berlin", "!site", False),
        ("site=berlin,tier=prod", "site=berlin,tier=prod", True),
        ("site=berlin", "site=berlin,tier=prod", False),
    ],
)
def test_selector_within_scope(selector: str, scope: str, inside: bool) -> None:
    assert selector_within(parse(selector), parse(scope)) is inside


def test_a_selector_outside_the_scope_is_refused_naming_both_and_what_to_add() -> None:
    with pytest.raises(Forbidden) as caught:
        check_selector(BERLIN_DEPLOYER, Permission.ROLLOUTS_WRITE, parse("app=web"))
    message = caught.value.message
    assert "'app=web'" in message and "'site=berlin'" in message and "add" in message
    check_selector(BERLIN_DEPLOYER, Permission.ROLLOUTS_WRITE, parse("app=web,site=berlin"))
    check_selector(ADMIN, Permission.ROLLOUTS_WRITE, parse("app=web"))


def test_unknown_role_names_the_choices() -> None:
    with pytest.raises(ValueError, match="viewer, deployer, admin"):
        Role.named("root")


KEYS = st.sampled_from(["site", "app"])
VALUES = st.sampled_from(["a", "b", "c"])


@st.composite
def requirement_text(draw: st.DrawFn) -> str:
    key, kind = draw(KEYS), draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    if kind in ("=", "!="):
        return f"{key}{kind}{draw(VALUES)}"
    if kind in ("in", "notin"):
        values = draw(st.lists(VALUES, min_size=1, max_size=3))
        return f"{key} {kind} ({', '.join(values)})"
    return key if kind == "exists" else f"!{key}"


SELECTORS = st.lists(requirement_text(), min_size=1, max_size=3).map(",".join)
TAGS = st.dictionaries(KEYS, VALUES, max_size=2)


@given(SELECTORS, SELECTORS, TAGS)
def test_selector_within_is_sound(selector: str, scope: str, tags: dict[str, str]) -> None:
    """Whenever a selector is judged inside a scope, every device it matches is in scope."""
    sel, sco = parse(selector), parse(scope)
    if selector_within(sel, sco) and matches(sel, tags):
        assert matches(sco, tags)
