"""Parsers for compose value syntaxes: durations, sizes, ports, volumes, devices.

Pure; each raises ValueError with a message for the field it was given.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)b?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_duration(value: Any) -> float:
    """Return seconds from a Go-style duration (``1m30s``, ``10s``, ``1h``, ``500ms``)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)  # compose reads a bare number as seconds here
    text = str(value).strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration (e.g. 1m30s, 10s, 500ms): {value!r}")
    return total


def parse_size(value: Any) -> int:
    """Return bytes from ``512m``, ``1g``, ``1.5GB``, ``100k`` or a plain number."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value).strip())
    if m is None:
        raise ValueError(f"not a size (e.g. 512m, 1g): {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def boolean(value: Any) -> bool:
    """Return a YAML boolean, also from an interpolated "true"/"false" string."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"must be true or false, not {value!r}")


def parse_command(value: Any) -> list[str]:
    """Return a command in list form; a string is split as a shell would (no expansion)."""
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [scalar(v) for v in value]
    raise ValueError("must be a string or a list of strings")


def scalar(value: Any) -> str:
    """Return a YAML scalar as compose stringifies it (``true``, ``1``, ``1.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise ValueError(f"must be a scalar, not {type(value).__name__}")
    return str(value)


def string_list(value: Any) -> list[str]:
    """Return a string or list of scalars as a list of strings."""
    if isinstance(value, list):
        return [scalar(v) for v in value]
    return [scalar(value)]


def key_values(value: Any, sep: str = "=") -> dict[str, str | None]:
    """Return a map or a ``["K=V", "K"]`` list as a dict (a bare ``K`` maps to None)."""
    if isinstance(value, dict):
        return {str(k): None if v is None else scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, str | None] = {}
        for item in value:
            key, found, val = scalar(item).partition(sep)
            out[key] = val if found else None
        return out
    raise ValueError("must be a mapping or a list of KEY=VALUE")


def _port_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    lo, hi = int(first), int(last or first)
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"bad port range {text!r}")
    return list(range(lo, hi + 1))


_SHORT_PORT = re.compile(
    r"^(?:(?:\[(?P<ip6>[0-9a-fA-F:.]+)\]|(?P<ip>\d+\.\d+\.\d+\.\d+)):)?"
    r"(?:(?P<host>[0-9-]*):)?(?P<container>[0-9]+(?:-[0-9]+)?)(?:/(?P<proto>[a-z]+))?$"
)


def parse_port(value: Any) -> list[dict[str, Any]]:
    """Return PortMapping documents for a short-syntax port (``127.0.0.1:80-81:80-81/udp``)."""
    m = _SHORT_PORT.match(scalar(value).strip())
    if m is None:
        raise ValueError(f"not a port (e.g. 8080:80, 127.0.0.1:53:53/udp): {value!r}")
    host_ip = m.group("ip6") or m.group("ip")
    return port_docs(m.group("container"), m.group("host") or None, host_ip, m.group("proto"))


def port_docs(
    container: str, host: str | None, host_ip: str | None, proto: str | None
) -> list[dict[str, Any]]:
    """Return one PortMapping document per container port of a (ranged) mapping."""
    protocol = proto or "tcp"
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol {protocol!r} is not supported (tcp or udp)")
    targets = _port_range(container)
    hosts: list[int | None] = [None] * len(targets)
    if host:
        hosts = list(_port_range(host))
        if len(hosts) != len(targets):
            raise ValueError(
                f"host range {host} and container range {container} differ in length "
                "(a host range for one container port is not supported)"
            )
    extra = {"host_ip": host_ip} if host_ip else {}
    return [
        {"container": c, "host": h, "protocol": protocol, **extra}
        for c, h in zip(targets, hosts, strict=True)
    ]


_MOUNT_FLAGS = {"ro": True, "rw": False, "readonly": True}
IGNORED_MOUNT_FLAGS = ("cached", "delegated", "consistent")  # no effect on Linux


def split_short_volume(text: str) -> tuple[str | None, str, list[str]]:
    """Split ``source:target[:flags]`` (or ``target``) into (source, target, flags)."""
    parts = text.split(":")
    if len(parts) == 1:
        return None, parts[0], []
    if len(parts) > 3:
        raise ValueError(f"not a volume (source:target[:ro]): {text!r}")
    flags = parts[2].split(",") if len(parts) == 3 else []
    return parts[0], parts[1], [f for f in flags if f]


def read_only_flag(flags: list[str]) -> tuple[bool, list[str]]:
    """Return (read_only, unknown flags) from short-syntax volume flags."""
    read_only = False
    unknown = []
    for flag in flags:
        if flag in _MOUNT_FLAGS:
            read_only = _MOUNT_FLAGS[flag]
        elif flag not in IGNORED_MOUNT_FLAGS:
            unknown.append(flag)
    return read_only, unknown


def is_relative_path(source: str) -> bool:
    """Return whether a bind source is relative to the compose file (or a home dir)."""
    return source.startswith((".", "~"))


def parse_device(value: Any) -> dict[str, str]:
    """Return a DeviceMapping document from ``/dev/a[:/dev/b[:rwm]]`` or the long form."""
    if isinstance(value, dict):
        unknown = set(value) - {"source", "target", "permissions"}
        if unknown:
            raise ValueError(f"unsupported key(s): {', '.join(sorted(unknown))}")
        host = scalar(value.get("source"))
        doc = {"host": host, "container": scalar(value.get("target") or host)}
        if value.get("permissions"):
            doc["permissions"] = scalar(value["permissions"])
        return doc
    parts = scalar(value).split(":")
    if not parts[0].startswith("/") or len(parts) > 3:
        raise ValueError(f"not a device path (/dev/x[:/dev/y[:rwm]]): {value!r}")
    doc = {"host": parts[0], "container": parts[1] if len(parts) > 1 else parts[0]}
    if len(parts) == 3:
        doc["permissions"] = parts[2]
    return doc


def parse_extra_hosts(value: Any) -> list[str]:
    """Return ``name:address`` entries from a list (``name:ip`` / ``name=ip``) or a map."""
    if isinstance(value, dict):
        return [f"{k}:{scalar(v)}" for k, v in value.items()]
    out = []
    for item in string_list(value):
        name, eq, addr = item.partition("=")
        if not eq:
            name, colon, addr = item.partition(":")
            if not colon:
                raise ValueError(f"not name:address: {item!r}")
        out.append(f"{name}:{addr}")
    return out


def parse_tmpfs(value: Any) -> dict[str, str]:
    """Return container path -> options from ``/run`` or ``/run:size=64m`` entries."""
    out = {}
    for item in string_list(value):
        path, _, options = item.partition(":")
        if not path.startswith("/"):
            raise ValueError(f"tmpfs path must be absolute: {item!r}")
        out[path] = options
    return out
