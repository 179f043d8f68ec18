"""The device policy's security options (security_opt, sysctls, root user): a pure table."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.device_policy import PERMISSIVE, RESTRICTIVE, DevicePolicy, violations
from edge_agent.models import Release, Service
from hub.device_policy import merge


def _release(**service: Any) -> Release:
    return Release(
        name="app", version="1", services=[Service(name="web", image="img:1", **service)]
    )


# (options of service web, policy field that refuses it under the default policy)
REFUSED_BY_DEFAULT = [
    ({"security_opt": ["seccomp=unconfined"]}, "security_opt"),
    ({"security_opt": ["seccomp:unconfined"]}, "security_opt"),
    ({"security_opt": ["apparmor=unconfined"]}, "security_opt"),
    ({"security_opt": ["label=disable"]}, "security_opt"),
    ({"security_opt": ["systempaths=unconfined"]}, "security_opt"),
    ({"security_opt": ["seccomp=/etc/profile.json"]}, "security_opt"),
    ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "sysctls"),
    ({"user": "root"}, "root_user"),
    ({"user": "0"}, "root_user"),
    ({"user": "0:1000"}, "root_user"),
    ({"user": "root:root"}, "root_user"),
]


@pytest.mark.parametrize(("options", "field"), REFUSED_BY_DEFAULT)
def test_security_options_refused_by_default_name_the_policy_field(
    options: dict[str, Any], field: str
) -> None:
    [v] = violations(RESTRICTIVE, _release(**options))
    assert v.field == field and f"refused by policy {field}" in v.message, v


ALLOWED = [
    ({"security_opt": ["no-new-privileges"]}, DevicePolicy()),  # only hardens
    ({"security_opt": ["no-new-privileges:true"]}, DevicePolicy()),
    ({"security_opt": ["seccomp:unconfined"]}, DevicePolicy(security_opt=["seccomp=unconfined"])),
    ({"security_opt": ["apparmor=unconfined"]}, DevicePolicy(security_opt=["*"])),
    ({"sysctls": {"net.core.somaxconn": "1024"}}, DevicePolicy(sysctls=["net.core.somaxconn"])),
    ({"sysctls": {"net.core.somaxconn": "1024"}}, DevicePolicy(sysctls=["*"])),
    ({"user": "root"}, DevicePolicy(root_user=True)),
    ({"user": "1000:0"}, DevicePolicy()),
    ({"user": "app"}, DevicePolicy()),
]


@pytest.mark.parametrize(("options", "policy"), ALLOWED)
def test_security_options_allowed_when_the_policy_allows_them(
    options: dict[str, Any], policy: DevicePolicy
) -> None:
    assert violations(policy, _release(**options)) == []
    assert violations(PERMISSIVE, _release(**options)) == []


def test_a_sysctl_not_named_is_refused_even_when_another_is_allowed() -> None:
    policy = DevicePolicy(sysctls=["net.core.somaxconn"])
    [v] = violations(policy, _release(sysctls={"kernel.shmmax": "1"}))
    assert "kernel.shmmax" in v.message and "allowed: net.core.somaxconn" in v.message


def test_group_policies_merge_the_security_options_most_permissively() -> None:
    merged = merge(
        [
            DevicePolicy(sysctls=["a.b"], security_opt=["seccomp=unconfined"]),
            DevicePolicy(root_user=True),
        ]
    )
    assert merged.sysctls == ["a.b"] and merged.security_opt == ["seccomp=unconfined"]
    assert merged.root_user
    assert not merge([DevicePolicy(), DevicePolicy()]).root_user
