"""Compose volumes: a service's mounts (short and long syntax) and the top-level volumes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.models import is_release_data_path
from hub import compose_values as cv
from hub.compose_report import Notes

if TYPE_CHECKING:
    from hub.compose_service import ServiceMapper

RELATIVE_BIND = (
    "bind source {source!r} is relative to a home directory or climbs out of the release's "
    "data directory, which has no meaning on a device: use ./path (under the release's "
    "data directory), an absolute path that exists on the device, or a named volume "
    "declared under top-level volumes"
)
RELEASE_DATA = (
    "relative bind source {source!r}: the agent places it under its data directory, "
    "releases/<release>/ (needs an agent with the device_policy feature)"
)
_LONG_KEYS = {"type", "source", "target", "read_only", "bind", "volume", "tmpfs", "consistency"}


def map_volumes(m: ServiceMapper, value: Any) -> None:
    """Set the service's volumes (and tmpfs mounts given in long syntax)."""
    mounts = []
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        try:
            mount = _long(m, i, item) if isinstance(item, dict) else _short(m, i, item)
        except ValueError as exc:
            m.refuse(f"volumes.{i}", str(exc))
            continue
        if mount is not None:
            mounts.append(mount)
    m.doc["volumes"] = mounts


def _short(m: ServiceMapper, i: int, item: Any) -> dict[str, Any]:
    source, target, flags = cv.split_short_volume(cv.scalar(item))
    if source is None:
        raise ValueError(_anonymous(target))
    read_only, unknown = cv.read_only_flag(flags)
    if unknown:
        raise ValueError(f"mount option(s) not supported: {', '.join(unknown)}")
    for flag in set(flags) & set(cv.IGNORED_MOUNT_FLAGS):
        m.notes.ignored(m.name, f"volumes.{i}", f"option {flag!r} has no effect on Linux")
    kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    return _mount(m, kind, source, target, read_only)


def _anonymous(target: str) -> str:
    return (
        f"anonymous volume {target!r} is not supported: name it (e.g. data:{target}) "
        "and declare it under top-level volumes"
    )


def _mount(m: ServiceMapper, kind: str, source: str, target: str, ro: bool) -> dict[str, Any]:
    if kind == "bind" and cv.is_relative_path(source):
        if not is_release_data_path(source):
            raise ValueError(RELATIVE_BIND.format(source=source))
        m.notes.mapped(m.name, "volumes", RELEASE_DATA.format(source=source))
    if kind == "volume" and source not in m.volumes:
        raise ValueError(f"named volume {source!r} is not declared under top-level volumes")
    return {"type": kind, "source": source, "target": target, "read_only": ro}


def _long(m: ServiceMapper, i: int, item: dict[str, Any]) -> dict[str, Any] | None:
    for key in sorted(set(item) - _LONG_KEYS):
        m.refuse(f"volumes.{i}.{key}", "not supported by the agent")
    kind = cv.scalar(item.get("type", "volume"))
    target = cv.scalar(item.get("target"))
    if "consistency" in item:
        m.notes.ignored(m.name, f"volumes.{i}.consistency", "has no effect on Linux")
    if kind == "tmpfs":
        m.tmpfs[target] = _tmpfs_options(item.get("tmpfs") or {})
        return None
    if kind not in ("volume", "bind"):
        raise ValueError(f"type {kind!r} is not supported (volume, bind, tmpfs)")
    _mount_options(m, i, item)
    if not item.get("source"):
        raise ValueError(_anonymous(target))
    ro = cv.boolean(item.get("read_only", False))
    return _mount(m, kind, cv.scalar(item["source"]), target, ro)


def _mount_options(m: ServiceMapper, i: int, item: dict[str, Any]) -> None:
    for key in item.get("bind") or {}:
        if key == "create_host_path":
            m.notes.warn(
                m.name, f"volumes.{i}.bind.create_host_path",
                "the agent does not create host paths: the source must exist on the device",
            )  # fmt: skip
        else:
            m.refuse(f"volumes.{i}.bind.{key}", "not supported by the agent")
    for key in item.get("volume") or {}:
        m.refuse(f"volumes.{i}.volume.{key}", "not supported by the agent")


def _tmpfs_options(spec: dict[str, Any]) -> str:
    options = []
    for key, value in spec.items():
        if key == "size":
            options.append(f"size={cv.parse_size(value)}")
        elif key == "mode":
            mode = value if isinstance(value, int) else int(cv.scalar(value), 8)
            options.append(f"mode={mode:o}")
        else:
            raise ValueError(f"tmpfs option {key!r} is not supported (size, mode are)")
    return ",".join(options)


def map_top_volumes(notes: Notes, value: Any) -> set[str]:
    """Return the declared named volumes; refuse what the agent cannot create."""
    if value is None:
        return set()
    if not isinstance(value, dict):
        notes.refuse(None, "volumes", "must be a mapping")
        return set()
    for name, spec in value.items():
        if not isinstance(spec, dict | None):
            notes.refuse(None, f"volumes.{name}", "must be a mapping (or empty)")
            continue
        for key, opt in (spec or {}).items():
            where = f"volumes.{name}.{key}"
            if key == "driver" and opt == "local":
                notes.ignored(None, where, "local is the driver the agent uses")
            elif key == "external" and opt is False:
                notes.ignored(None, where, "false is the default")
            elif str(key).startswith("x-"):
                notes.ignored(None, where, "extension field (x-), ignored as compose does")
            else:
                notes.refuse(None, where, "not supported: the agent creates its own volumes")
    return {str(n) for n in value}
