"""Environment overrides per group and per device, and how they resolve for one device. Pure.

Overrides map service name -> {VAR: value}. For one device (``resolve_overrides``):

- every group whose selector matches the device's tags contributes its overrides;
- two matching groups that set the same service variable to *different* values
  conflict: ``OverrideConflict`` names the service, variable and groups — unless the
  device's own overrides set that variable, because the device wins over every group;
- the device's own overrides are applied last.

Services the release does not have are dropped by ``for_release`` (a group's overrides
serve many releases); explicit overrides in a set-target request win over all of these.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hub.errors import InvalidRequest, OverrideConflict
from hub.selector import Selector, matches

Overrides = dict[str, dict[str, str]]


@dataclass(frozen=True)
class GroupOverrides:
    """What resolution needs of a group: its name, selector and overrides."""

    name: str
    selector: Selector
    overrides: Overrides


def resolve_overrides(
    device_tags: dict[str, str], device_overrides: Overrides, groups: Iterable[GroupOverrides]
) -> Overrides:
    """Return the device's overrides: matching groups' merged, then the device's own."""
    merged: Overrides = {}
    source: dict[tuple[str, str], str] = {}
    for group in sorted(groups, key=lambda g: g.name):
        if not matches(group.selector, device_tags):
            continue
        for service, env in group.overrides.items():
            for var, value in env.items():
                own = device_overrides.get(service, {})
                if var in own:
                    continue
                held = merged.setdefault(service, {})
                if var in held and held[var] != value:
                    raise OverrideConflict(
                        f"groups {source[service, var]!r} and {group.name!r} both match and "
                        f"set {service}.{var} to different values; set it on the device or "
                        "change one group"
                    )
                held[var] = value
                source[service, var] = group.name
    for service, env in device_overrides.items():
        merged.setdefault(service, {}).update(env)
    return {s: env for s, env in merged.items() if env}


def for_release(overrides: Overrides, services: Iterable[str]) -> Overrides:
    """Return only the overrides of services the release has."""
    names = set(services)
    return {s: dict(env) for s, env in overrides.items() if s in names}


def merge_explicit(resolved: Overrides, explicit: Overrides) -> Overrides:
    """Return ``resolved`` with the request's explicit overrides on top (per variable)."""
    out = {s: dict(env) for s, env in resolved.items()}
    for service, env in explicit.items():
        out.setdefault(service, {}).update(env)
    return out


def change_env(
    overrides: Overrides,
    service: str,
    set_vars: dict[str, str],
    unset: Iterable[str],
    max_vars: int,
) -> Overrides:
    """Return ``overrides`` with the service's variables set and unset, within ``max_vars``.

    ``max_vars`` bounds the variables of all services of one group or device together.
    """
    out = {s: dict(env) for s, env in overrides.items()}
    env = out.setdefault(service, {})
    for var in unset:
        env.pop(var, None)
    env.update(set_vars)
    if not env:
        del out[service]
    total = sum(len(e) for e in out.values())
    if total > max_vars:
        raise InvalidRequest(
            f"set: {total} override variables would be over the bound of {max_vars} "
            "per group or device (limits.max_override_vars)",
            fields=[{"field": "set", "message": f"at most {max_vars} variables"}],
        )
    return out
