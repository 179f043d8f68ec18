"""Issue 10 (Logs 2): how a device's log shipping policy resolves from its groups (pure)."""

from __future__ import annotations

import pytest

from edge_agent.protocol import DEFAULT_LOG_PATTERN, MAX_LOG_PATTERNS
from hub.config import LogPolicyConfig
from hub.log_policy import GroupPolicy, resolve
from hub.selector import parse

DEFAULT = LogPolicyConfig()
BERLIN = {"site": "berlin", "role": "kiosk"}


def g(name: str, selector: str, mode: str, pattern: str | None = None) -> GroupPolicy:
    return GroupPolicy(name, parse(selector), mode, pattern)


@pytest.mark.parametrize(
    ("groups", "mode", "patterns", "deciding"),
    [
        ([], "errors", [DEFAULT_LOG_PATTERN], []),  # the hub's default
        ([g("paris", "site=paris", "all")], "errors", [DEFAULT_LOG_PATTERN], []),
        ([g("b", "site=berlin", "none")], "none", [], ["b"]),
        ([g("b", "site=berlin", "errors")], "errors", [DEFAULT_LOG_PATTERN], ["b"]),
        ([g("b", "site=berlin", "errors", "oops")], "errors", ["oops"], ["b"]),
        # the most permissive wins
        ([g("b", "site=berlin", "none"), g("k", "role=kiosk", "all")], "all", [], ["k"]),
        ([g("b", "site=berlin", "errors", "x"), g("k", "role", "none")], "errors", ["x"], ["b"]),
        # equally permissive errors groups: a line either asked for is shipped
        (
            [g("b", "site=berlin", "errors", "x"), g("k", "role=kiosk", "errors")],
            "errors",
            ["x", DEFAULT_LOG_PATTERN],
            ["b", "k"],
        ),
        (
            [g("b", "site", "errors", "x"), g("k", "role", "errors", "x")],
            "errors",
            ["x"],
            ["b", "k"],
        ),
    ],
)
def test_resolve(
    groups: list[GroupPolicy], mode: str, patterns: list[str], deciding: list[str]
) -> None:
    policy, names = resolve(BERLIN, groups, DEFAULT)
    assert (policy.mode, policy.patterns, names) == (mode, patterns, deciding)


def test_default_mode_is_configurable_and_too_many_patterns_ship_all() -> None:
    policy, _ = resolve(BERLIN, [], LogPolicyConfig(default_mode="all"))
    assert (policy.mode, policy.patterns) == ("all", [])
    many = [g(f"g{i}", "site", "errors", f"p{i}") for i in range(MAX_LOG_PATTERNS + 1)]
    assert resolve(BERLIN, many, DEFAULT)[0].mode == "all"
    with pytest.raises(ValueError, match=r"regular expression"):
        LogPolicyConfig(default_pattern="(")
