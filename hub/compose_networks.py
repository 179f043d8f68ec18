"""Compose networks: the top-level networks (release networks) and a service's networks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hub import compose_values as cv
from hub.compose_report import Notes

if TYPE_CHECKING:
    from hub.compose_service import ServiceMapper

_SERVICE_NET_KEYS = {"aliases"}


def map_top_networks(notes: Notes, value: Any) -> dict[str, dict[str, Any]]:
    """Return NetworkSpec documents by name (``default`` excluded); refuse the rest."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        notes.refuse(None, "networks", "must be a mapping")
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        if not isinstance(spec, dict | None):
            notes.refuse(None, f"networks.{name}", "must be a mapping (or empty)")
            continue
        doc: dict[str, Any] = {}
        for key, opt in (spec or {}).items():
            where = f"networks.{name}.{key}"
            if key == "driver" and opt == "bridge":
                notes.ignored(None, where, "bridge is the driver the agent uses")
            elif key == "external" and opt is False:
                notes.ignored(None, where, "false is the default")
            elif key == "internal" and name != "default" and isinstance(opt, bool):
                doc["internal"] = opt
            elif str(key).startswith("x-"):
                notes.ignored(None, where, "extension field (x-), ignored as compose does")
            else:
                notes.refuse(None, where, _why_network(key))
        if name != "default":
            out[str(name)] = doc
    return out


def _why_network(key: str) -> str:
    if key == "ipam":
        return "IPAM is not supported: the agent's networks take addresses from Docker"
    if key == "external":
        return "not supported: the agent only uses the networks it creates for the release"
    return "not supported: release networks are scoped to the device by the agent"


def map_service_networks(m: ServiceMapper, value: Any) -> None:
    """Set the release networks the service joins; network aliases become aliases."""
    names = [cv.scalar(n) for n in value] if isinstance(value, list) else list(value or {})
    for name in names:
        if name != "default" and name not in m.networks:
            m.refuse(f"networks.{name}", "not declared under top-level networks")
    for name, spec in value.items() if isinstance(value, dict) else []:
        for key in sorted(set(spec or {}) - _SERVICE_NET_KEYS):
            m.refuse(f"networks.{name}.{key}", _why_attach(key))
        aliases = cv.string_list((spec or {}).get("aliases") or [])
        if aliases:
            m.aliases.extend(a for a in aliases if a not in m.aliases)
            m.notes.mapped(
                m.name, f"networks.{name}.aliases",
                "aliases apply on every network the service joins",
            )  # fmt: skip
    m.doc["networks"] = [str(n) for n in names]


def _why_attach(key: str) -> str:
    if key in ("ipv4_address", "ipv6_address", "link_local_ips"):
        return "static addresses are not supported: reach services by name"
    return "not supported by the agent"
