"""What a release may do on each device: set per group, resolved per device, checked here.

A group may set a device policy (``edge_agent.device_policy.DevicePolicy``). A device no
such group matches gets ``device_policy.default`` (restrictive). When several groups with
a policy match a device, the **most permissive** wins, field by field, as for log
policies (``hub.log_policy``): lists are joined, a flag is on if any group turns it on,
a limit is the highest (none if any group sets none), ``require_limits`` only if every
deciding group requires them. A device put in a group that allows something may do it.

The hub refuses (``PolicyRefused``, 422) a target set or rollout whose release the
effective policy of any device it would reach refuses; the rollout engine checks again
when it issues each device's target (its groups may have changed). The resolved policy
travels in the signed target, only to agents that list the ``device_policy`` feature,
and the agent refuses a target its policy refuses (``edge_agent.lifecycle``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.device_policy import DevicePolicy, Violation, describe, violations
from edge_agent.models import Release
from hub.config import DevicePolicyConfig
from hub.errors import PolicyRefused
from hub.selector import Selector, matches, parse
from hub.store import DeviceRecord, HubStore

FEATURE = "device_policy"
MAX_NAMED = 20  # refusals named in one error's fields


@dataclass(frozen=True)
class GroupDevicePolicy:
    """One group's device policy and its selector."""

    name: str
    selector: Selector
    policy: DevicePolicy


def merge(policies: list[DevicePolicy]) -> DevicePolicy:
    """Return the most permissive combination of ``policies`` (at least one)."""

    def joined(field: str) -> list[str]:
        return list(dict.fromkeys(v for p in policies for v in getattr(p, field)))

    def highest(field: str) -> Any:
        values = [getattr(p, field) for p in policies]
        return None if None in values else max(values)

    return DevicePolicy(
        bind_paths=joined("bind_paths"),
        docker_socket=any(p.docker_socket for p in policies),
        privileged=any(p.privileged for p in policies),
        host_network=any(p.host_network for p in policies),
        devices=joined("devices"),
        cap_add=joined("cap_add"),
        port_addresses=joined("port_addresses"),
        max_mem_bytes=highest("max_mem_bytes"),
        max_cpus=highest("max_cpus"),
        require_limits=all(p.require_limits for p in policies),
        security_opt=joined("security_opt"),
        sysctls=joined("sysctls"),
        root_user=any(p.root_user for p in policies),
    )


def resolve(
    tags: dict[str, str], groups: list[GroupDevicePolicy], default: DevicePolicyConfig
) -> tuple[DevicePolicy, list[str]]:
    """Return a device's policy and the groups it comes from (none: the hub's default)."""
    matching = [g for g in groups if matches(g.selector, tags)]
    if not matching:
        return default.default, []
    return merge([g.policy for g in matching]), [g.name for g in matching]


async def group_policies(store: HubStore) -> list[GroupDevicePolicy]:
    """Return every group's device policy from the store."""
    return [
        GroupDevicePolicy(name, parse(selector), DevicePolicy.model_validate(doc))
        for name, selector, doc in await store.group_device_policies()
    ]


async def effective_policy(
    store: HubStore, config: DevicePolicyConfig, device: DeviceRecord
) -> tuple[DevicePolicy, list[str]]:
    """Return the policy ``device`` resolves to now, and the groups that decide it."""
    return resolve(dict(device.tags), await group_policies(store), config)


def refusal_fields(
    device_id: str, groups: list[str], found: list[Violation]
) -> list[dict[str, Any]]:
    """Return one error field per violation, naming device, groups, service and option."""
    source = ", ".join(groups) if groups else "(hub default)"  # a field value: short
    return [
        {
            "field": f"release.services.{v.service}.{v.option}",
            "message": v.message,
            "device_id": device_id,
            "groups": source,
            "service": v.service,
            "option": v.option,
            "policy_field": v.field,
        }
        for v in found
    ]


def _deciding(groups: list[str]) -> str:
    return f"group(s) {', '.join(groups)}" if groups else "the hub's default policy"


def check(device_id: str, groups: list[str], policy: DevicePolicy, release: Release) -> None:
    """Raise PolicyRefused if ``policy`` (of ``device_id``, from ``groups``) refuses ``release``."""
    found = violations(policy, release)
    if not found:
        return
    raise PolicyRefused(
        f"device {device_id} ({_deciding(groups)}): {describe(found)}",
        fields=refusal_fields(device_id, groups, found)[:MAX_NAMED],
    )


def is_read_by(features: frozenset[str] | None) -> bool:
    """Return whether an agent with ``features`` reads Target.policy."""
    return features is not None and FEATURE in features


async def policy_for_target(
    store: HubStore, config: DevicePolicyConfig, device_id: str, release: Release
) -> DevicePolicy | None:
    """Check ``release`` against the device's policy; return what its target carries.

    PolicyRefused if the policy refuses the release; None for an unknown device (storing
    the target says NotFound) and for an agent that would not read the field.
    """
    device = await store.get_device(device_id)
    if device is None:
        return None
    policy, groups = await effective_policy(store, config, device)
    check(device_id, groups, policy, release)
    return policy if is_read_by(await store.device_features(device_id)) else None


async def check_devices(
    store: HubStore, config: DevicePolicyConfig, devices: list[DeviceRecord], release: Release
) -> None:
    """Raise PolicyRefused naming every device of ``devices`` whose policy refuses ``release``."""
    groups_now = await group_policies(store)
    refused: list[str] = []
    fields: list[dict[str, Any]] = []
    for device in devices:
        policy, groups = resolve(dict(device.tags), groups_now, config)
        found = violations(policy, release)
        if found:
            refused.append(f"device {device.id} ({_deciding(groups)}): {describe(found, limit=2)}")
            fields += refusal_fields(device.id, groups, found)
    if refused:
        more = f"; and {len(refused) - 3} more device(s)" if len(refused) > 3 else ""
        raise PolicyRefused(
            f"release {release.ref} refused on {len(refused)} device(s): "
            + "; ".join(refused[:3])
            + more,
            fields=fields[:MAX_NAMED],
        )
