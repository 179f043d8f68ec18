"""Override resolution for one device: groups, the device, the request (pure tables)."""

from __future__ import annotations

import pytest

from hub.errors import InvalidRequest, OverrideConflict
from hub.overrides import (
    GroupOverrides,
    Overrides,
    change_env,
    for_release,
    merge_explicit,
    resolve_overrides,
)
from hub.selector import parse

BERLIN = {"site": "berlin", "role": "kiosk"}


def g(name: str, selector: str, overrides: Overrides) -> GroupOverrides:
    return GroupOverrides(name, parse(selector), overrides)


@pytest.mark.parametrize(
    ("tags", "device", "groups", "expected"),
    [
        pytest.param(BERLIN, {}, [], {}, id="no groups"),
        pytest.param(
            BERLIN,
            {},
            [g("b", "site=berlin", {"web": {"A": "1"}})],
            {"web": {"A": "1"}},
            id="matching group",
        ),
        pytest.param(BERLIN, {}, [g("p", "site=paris", {"web": {"A": "1"}})], {}, id="other group"),
        pytest.param(
            BERLIN,
            {"web": {"A": "dev"}},
            [g("b", "site=berlin", {"web": {"A": "grp", "B": "2"}})],
            {"web": {"A": "dev", "B": "2"}},
            id="device wins over group",
        ),
        pytest.param(
            BERLIN,
            {},
            [
                g("b", "site=berlin", {"web": {"A": "1"}}),
                g("k", "role=kiosk", {"web": {"B": "2"}, "db": {"C": "3"}}),
            ],
            {"web": {"A": "1", "B": "2"}, "db": {"C": "3"}},
            id="two groups, different variables",
        ),
        pytest.param(
            BERLIN,
            {},
            [g("b", "site=berlin", {"web": {"A": "1"}}), g("k", "role=kiosk", {"web": {"A": "1"}})],
            {"web": {"A": "1"}},
            id="two groups, same value: no conflict",
        ),
        pytest.param(
            BERLIN,
            {"web": {"A": "dev"}},
            [g("b", "site=berlin", {"web": {"A": "1"}}), g("k", "role=kiosk", {"web": {"A": "2"}})],
            {"web": {"A": "dev"}},
            id="the device settles a conflict between its groups",
        ),
        pytest.param(
            BERLIN,
            {},
            [g("b", "site=berlin", {"web": {"A": "1"}}), g("x", "site=paris", {"web": {"A": "2"}})],
            {"web": {"A": "1"}},
            id="a group that does not match cannot conflict",
        ),
    ],
)
def test_resolve_overrides(
    tags: dict[str, str], device: Overrides, groups: list[GroupOverrides], expected: Overrides
):
    assert resolve_overrides(tags, device, groups) == expected


def test_conflicting_groups_are_refused_naming_both_and_the_variable():
    groups = [
        g("kiosks", "role=kiosk", {"web": {"A": "2"}}),
        g("berlin", "site=berlin", {"web": {"A": "1"}}),
    ]
    with pytest.raises(OverrideConflict) as err:
        resolve_overrides(BERLIN, {"web": {"B": "x"}}, groups)
    assert "'berlin'" in err.value.message and "'kiosks'" in err.value.message
    assert "web.A" in err.value.message and err.value.status == 409


def test_for_release_drops_services_the_release_lacks_and_explicit_wins():
    resolved = {"web": {"A": "1", "B": "2"}, "db": {"C": "3"}}
    assert for_release(resolved, ["web"]) == {"web": {"A": "1", "B": "2"}}
    assert merge_explicit(
        {"web": {"A": "1", "B": "2"}}, {"web": {"A": "req"}, "x": {"D": "4"}}
    ) == {
        "web": {"A": "req", "B": "2"},
        "x": {"D": "4"},
    }


@pytest.mark.parametrize(
    ("before", "service", "set_vars", "unset", "expected"),
    [
        ({}, "web", {"A": "1"}, [], {"web": {"A": "1"}}),
        ({"web": {"A": "1"}}, "web", {"B": "2"}, ["A"], {"web": {"B": "2"}}),
        ({"web": {"A": "1"}}, "web", {}, ["A"], {}),  # an emptied service disappears
        ({"web": {"A": "1"}}, "db", {}, ["X"], {"web": {"A": "1"}}),  # unset of nothing
    ],
)
def test_change_env(
    before: Overrides, service: str, set_vars: dict[str, str], unset: list[str], expected: Overrides
):
    assert change_env(before, service, set_vars, unset, 10) == expected


def test_change_env_bound_counts_every_service():
    with pytest.raises(InvalidRequest, match=r"limits\.max_override_vars"):
        change_env({"web": {"A": "1", "B": "2"}}, "db", {"C": "3"}, [], 2)
    assert change_env({"web": {"A": "1", "B": "2"}}, "web", {"A": "x"}, [], 2)["web"]["A"] == "x"
