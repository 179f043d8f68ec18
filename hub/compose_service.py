"""Map one compose service onto a ``Service`` document (pure; notes go to ``Notes``).

Each supported key has a handler; a handler raising ValueError refuses its key with that
message. Keys without a handler are refused by name: nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub import compose_values as cv
from hub.compose_interp import InterpolationError, parse_dotenv
from hub.compose_networks import map_service_networks
from hub.compose_report import Notes
from hub.compose_volumes import map_volumes

MAX_ENV_FILE_BYTES = 1024 * 1024
_EXPOSE = re.compile(r"^\d{1,5}(-\d{1,5})?(/(tcp|udp))?$")
_CONDITIONS = {
    "service_started": "started",
    "service_healthy": "healthy",
    "service_completed_successfully": "completed",
}
# Docker's values when a compose healthcheck leaves one out.
_HEALTH_DEFAULTS = {"interval_s": 30.0, "timeout_s": 30.0, "retries": 3, "start_period_s": 0.0}
_HEALTH_DURATIONS = {
    "interval": "interval_s",
    "timeout": "timeout_s",
    "start_period": "start_period_s",
}
# Compose keys whose Service field has another name.
_TARGET_FIELDS = {
    "env_file": "environment",
    "tmpfs": "tmpfs",
    "stop_grace_period": "stop_timeout_s",
    "logging": "log_limits",
    "mem_limit": "mem_limit_bytes",
    "deploy": "cpus / mem_limit_bytes",
}
_WHY_REFUSED = {
    "build": "the agent builds nothing: build the image in CI, push it, and name it in `image`",
    "secrets": "not supported: name hub secrets as environment variables with "
    "x-edgefleet-secret-env: {VAR: secret-name} (edgectl secret set NAME)",
    "configs": "not supported: bake the file into the image or bind-mount an absolute path",
    "extends": "not supported: share settings with YAML anchors and merge keys (<<: *x)",
    "links": "not needed: services reach each other by name on the release network",
    "external_links": "not supported: the agent only connects its own containers",
    "volumes_from": "not supported: share a named volume instead",
    "profiles": "not supported: a release runs all its services; make one release per profile",
    "scale": "not supported: the agent runs one container per service",
}


@dataclass
class ServiceMapper:
    """Build the document of one service; refusals and notes go to ``notes``."""

    name: str
    notes: Notes
    base_dir: Path | None
    variables: Mapping[str, str]
    volumes: set[str]
    networks: set[str]
    doc: dict[str, Any] = field(default_factory=dict)
    env_files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    tmpfs: dict[str, str] = field(default_factory=dict)

    def refuse(self, key: str, message: str) -> None:
        """Refuse ``key`` of this service."""
        self.notes.refuse(self.name, key, message)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Return the service document (valid only if nothing was refused)."""
        for key, value in spec.items():
            key = str(key)
            if key == SECRET_ENV_KEY:  # compose ignores x- keys; the hub reads this one
                handler = _secret_env
            elif key.startswith("x-"):
                self.notes.ignored(self.name, key, "extension field (x-), ignored as compose does")
                continue
            else:
                handler = HANDLERS.get(key)
            if handler is None:
                self.refuse(key, _WHY_REFUSED.get(key, "not supported by the agent"))
                continue
            try:
                handler(self, value)
            except ValueError as exc:
                self.refuse(key, str(exc))
                continue
            except (TypeError, AttributeError, KeyError) as exc:
                self.refuse(key, f"malformed value ({type(exc).__name__}: {exc})")
                continue
            if key != "container_name":
                self.notes.mapped(self.name, key, "to " + _TARGET_FIELDS.get(key, key))
        return self._finish(spec)

    def _finish(self, spec: dict[str, Any]) -> dict[str, Any]:
        environment = {**self.env_files, **self.env}
        if environment:
            self.doc["environment"] = environment
        if self.aliases and self.doc.get("network_mode") == "host":
            # The host's network has no aliases: the name means nothing there.
            self.notes.ignored(
                self.name, "container_name", "network_mode host: no network to alias it on"
            )
        elif self.aliases:
            self.doc["aliases"] = self.aliases
        if self.tmpfs:
            self.doc["tmpfs"] = self.tmpfs
        if "image" not in spec:
            self.refuse("image", "required: the agent runs images from a registry")
        if "restart" not in spec:
            self.doc["restart"] = "no"
            self.notes.warn(
                self.name, "restart", "not set: 'no' as in compose, an exited container stays "
                "down (set restart: unless-stopped to keep it running)"
            )  # fmt: skip
        return {"name": self.name, **self.doc}


def _set(field_name: str, parse: Callable[[Any], Any]) -> Callable[[ServiceMapper, Any], None]:
    def handle(m: ServiceMapper, value: Any) -> None:
        m.doc[field_name] = parse(value)

    return handle


# A service's environment variables whose values are hub secrets: {VAR: secret-name}.
SECRET_ENV_KEY = "x-edgefleet-secret-env"


def _secret_env(m: ServiceMapper, value: Any) -> None:
    names = cv.key_values(value)
    empty = sorted(k for k, v in names.items() if not v)
    if empty:
        raise ValueError(f"no secret named for {', '.join(empty)}")
    m.doc["secret_env"] = {k: str(v) for k, v in names.items()}


def _environment(m: ServiceMapper, value: Any) -> None:
    for key, val in cv.key_values(value).items():
        if val is not None:
            m.env[key] = val
        elif key in m.variables:
            m.env[key] = m.variables[key]
        else:
            m.notes.warn(m.name, f"environment.{key}", "no value and not set: left out")


def _env_file(m: ServiceMapper, value: Any) -> None:
    entries = value if isinstance(value, list) else [value]
    for i, entry in enumerate(entries):
        spec = entry if isinstance(entry, dict) else {"path": entry}
        try:
            m.env_files.update(_read_env_file(m, spec))
        except ValueError as exc:
            m.refuse(f"env_file.{i}" if isinstance(value, list) else "env_file", str(exc))


def _read_env_file(m: ServiceMapper, spec: dict[str, Any]) -> dict[str, str]:
    unknown = set(spec) - {"path", "required"}
    if unknown:
        raise ValueError(f"unsupported key(s): {', '.join(sorted(unknown))}")
    path = Path(cv.scalar(spec.get("path")))
    if m.base_dir is None:
        # No compose directory: the text came over REST. Any path would name a file of
        # the hub's host, whose contents would end up in the release: never read it.
        raise ValueError(
            f"{path}: the compose file's directory is unknown (sent over REST), so no "
            "env_file is read; put the variables under environment, or import with edgectl"
        )
    if not path.is_absolute():
        path = m.base_dir / path
    if not path.is_file():
        if not cv.boolean(spec.get("required", True)):
            m.notes.ignored(m.name, "env_file", f"{path} does not exist (required: false)")
            return {}
        raise ValueError(f"{path} does not exist")
    if path.stat().st_size > MAX_ENV_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_ENV_FILE_BYTES} bytes")
    try:
        found = parse_dotenv(path.read_text(), m.variables)
    except (ValueError, InterpolationError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    m.notes.mapped(m.name, "env_file", f"{len(found)} variable(s) read from {path.name}")
    return found


def _ports(m: ServiceMapper, value: Any) -> None:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value if isinstance(value, list) else [value]):
        try:
            out += _long_port(m, i, item) if isinstance(item, dict) else cv.parse_port(item)
        except ValueError as exc:
            m.refuse(f"ports.{i}", str(exc))
    m.doc["ports"] = out


def _long_port(m: ServiceMapper, i: int, item: dict[str, Any]) -> list[dict[str, Any]]:
    for key in set(item) - {"target", "published", "host_ip", "protocol", "mode"}:
        if key in ("name", "app_protocol"):
            m.notes.ignored(m.name, f"ports.{i}.{key}", "descriptive only")
        else:
            m.refuse(f"ports.{i}.{key}", "not supported by the agent")
    if item.get("mode", "ingress") not in ("ingress", "host"):
        raise ValueError(f"mode {item['mode']!r} is not supported")
    if "target" not in item:
        raise ValueError("target (the container port) is required")
    published = item.get("published")
    host = None if published in (None, "") else cv.scalar(published)
    host_ip = cv.scalar(item["host_ip"]) if item.get("host_ip") else None
    protocol = cv.scalar(item["protocol"]) if item.get("protocol") else None
    return cv.port_docs(cv.scalar(item["target"]), host, host_ip, protocol)


def _expose(m: ServiceMapper, value: Any) -> None:
    items = cv.string_list(value)
    bad = [e for e in items if not _EXPOSE.match(e)]
    if bad:
        raise ValueError(f"not a port (8080 or 8080/udp): {', '.join(bad)}")
    m.doc["expose"] = items


def _restart(m: ServiceMapper, value: Any) -> None:
    policy = cv.scalar(value)
    if policy.startswith("on-failure:"):
        raise ValueError(
            f"{policy!r}: a retry limit cannot be honoured (the agent restarts with backoff "
            "and reports a crash loop); use on-failure"
        )
    if policy not in ("always", "on-failure", "no", "unless-stopped"):
        raise ValueError(f"unknown policy {policy!r}")
    m.doc["restart"] = policy


def _healthcheck(m: ServiceMapper, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping")
    known = {"test", "disable", "retries", *_HEALTH_DURATIONS}
    for key in sorted(set(value) - known):
        m.refuse(f"healthcheck.{key}", "not supported by the agent")
    if cv.boolean(value.get("disable", False)):
        m.doc["healthcheck"] = {"test": ["NONE"]}
        return
    test = value.get("test")
    if test is None:
        raise ValueError("test is required (the image's own test cannot be combined)")
    if _health_test(test) == ["NONE"]:
        m.doc["healthcheck"] = {"test": ["NONE"]}
        return
    check: dict[str, Any] = {"test": _health_test(test), **_HEALTH_DEFAULTS}
    for key, name in _HEALTH_DURATIONS.items():
        if key in value:
            check[name] = cv.parse_duration(value[key])
    if "retries" in value:
        check["retries"] = int(value["retries"])
    m.doc["healthcheck"] = check


def _health_test(test: Any) -> list[str]:
    if isinstance(test, str):
        return ["NONE"] if test == "NONE" else ["CMD-SHELL", test]
    parts = cv.string_list(test)
    if not parts or parts[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise ValueError('test list must start with "CMD", "CMD-SHELL" or "NONE"')
    return ["NONE"] if parts[0] == "NONE" else parts


def _depends_on(m: ServiceMapper, value: Any) -> None:
    if isinstance(value, list):
        m.doc["depends_on"] = {cv.scalar(n): {} for n in value}
        return
    if not isinstance(value, dict):
        raise ValueError("must be a list or a mapping")
    deps: dict[str, dict[str, str]] = {}
    for name, spec in value.items():
        spec = spec or {}
        for key in sorted(set(spec) - {"condition", "required", "restart"}):
            m.refuse(f"depends_on.{name}.{key}", "not supported by the agent")
        if not cv.boolean(spec.get("required", True)):
            m.refuse(f"depends_on.{name}.required", "optional dependencies are not supported")
        if cv.boolean(spec.get("restart", False)):
            m.refuse(f"depends_on.{name}.restart", "restarting dependents is not supported")
        condition = spec.get("condition", "service_started")
        if condition not in _CONDITIONS:
            m.refuse(f"depends_on.{name}.condition", f"unknown condition {condition!r}")
            continue
        deps[str(name)] = {"condition": _CONDITIONS[condition]}
    m.doc["depends_on"] = deps


def _labels(m: ServiceMapper, value: Any) -> None:
    m.doc["labels"] = {k: v or "" for k, v in cv.key_values(value).items()}


def _container_name(m: ServiceMapper, value: Any) -> None:
    alias = cv.scalar(value)
    m.aliases.append(alias)
    m.notes.mapped(
        m.name, "container_name", f"the agent names containers itself; {alias!r} is kept "
        "as an extra alias on the release's networks"
    )  # fmt: skip


def _sysctls(m: ServiceMapper, value: Any) -> None:
    found = cv.key_values(value)
    missing = [k for k, v in found.items() if v is None]
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}")
    m.doc["sysctls"] = found


def _tmpfs(m: ServiceMapper, value: Any) -> None:
    m.tmpfs.update(cv.parse_tmpfs(value))


def _stop_grace_period(m: ServiceMapper, value: Any) -> None:
    m.doc["stop_timeout_s"] = cv.parse_duration(value)


def _cpus(value: Any) -> float:
    return float(cv.scalar(value))


def _logging(m: ServiceMapper, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping")
    for key in sorted(set(value) - {"driver", "options"}):
        m.refuse(f"logging.{key}", "not supported by the agent")
    driver = value.get("driver", "json-file")
    if driver != "json-file":
        m.refuse("logging.driver", f"{driver!r}: only json-file (the agent reads its logs)")
    limits: dict[str, int] = {}
    for key, opt in (value.get("options") or {}).items():
        try:
            if key == "max-size":
                limits["max_size_bytes"] = cv.parse_size(opt)
            elif key == "max-file":
                limits["max_files"] = int(cv.scalar(opt))
            else:
                m.refuse(f"logging.options.{key}", "not supported (max-size, max-file are)")
        except ValueError as exc:
            m.refuse(f"logging.options.{key}", str(exc))
    if limits:
        m.doc["log_limits"] = limits


def _network_mode(m: ServiceMapper, value: Any) -> None:
    mode = cv.scalar(value)
    if mode != "host":
        raise ValueError(
            f"{mode!r} is not supported: only host; leave it out to join the release's networks"
        )
    m.doc["network_mode"] = "host"


def _devices(m: ServiceMapper, value: Any) -> None:
    m.doc["devices"] = [cv.parse_device(d) for d in _as_list(value)]


def _as_list(value: Any) -> list[Any]:
    """Return ``value`` as a list (a single item becomes a one-item list)."""
    return value if isinstance(value, list) else [value]


def _int_or_str(value: Any) -> str:
    return cv.scalar(value)


def _mem_limit(m: ServiceMapper, value: Any) -> None:
    m.doc["mem_limit_bytes"] = cv.parse_size(value)


def _deploy(m: ServiceMapper, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError("must be a mapping")
    for key in sorted(set(value) - {"resources", "replicas"}):
        m.refuse(f"deploy.{key}", "swarm-only: not supported by the agent")
    if "replicas" in value:
        if int(cv.scalar(value["replicas"])) != 1:
            m.refuse("deploy.replicas", "the agent runs one container per service")
        else:
            m.notes.ignored(m.name, "deploy.replicas", "1 is what the agent runs")
    resources = value.get("resources") or {}
    for key in sorted(set(resources) - {"limits"}):
        m.refuse(f"deploy.resources.{key}", "not supported by the agent (limits are)")
    limits = resources.get("limits") or {}
    for key in sorted(set(limits) - {"cpus", "memory"}):
        m.refuse(f"deploy.resources.limits.{key}", "not supported by the agent")
    _limit(m, "cpus", "cpus", limits, _cpus)
    _limit(m, "memory", "mem_limit_bytes", limits, cv.parse_size)


def _limit(
    m: ServiceMapper, key: str, name: str, limits: dict[str, Any], parse: Callable[[Any], Any]
) -> None:
    if key not in limits:
        return
    try:
        value = parse(limits[key])
    except ValueError as exc:
        m.refuse(f"deploy.resources.limits.{key}", str(exc))
        return
    if name in m.doc and m.doc[name] != value:
        m.refuse(f"deploy.resources.limits.{key}", f"differs from the service's {name}")
    m.doc[name] = value


HANDLERS: dict[str, Callable[[ServiceMapper, Any], None]] = {
    "image": _set("image", cv.scalar),
    "command": _set("command", cv.parse_command),
    "entrypoint": _set("entrypoint", cv.parse_command),
    "environment": _environment,
    "env_file": _env_file,
    "ports": _ports,
    "expose": _expose,
    "volumes": map_volumes,
    "tmpfs": _tmpfs,
    "restart": _restart,
    "healthcheck": _healthcheck,
    "depends_on": _depends_on,
    "labels": _labels,
    "container_name": _container_name,
    "networks": map_service_networks,
    "network_mode": _network_mode,
    "user": _set("user", _int_or_str),
    "working_dir": _set("working_dir", cv.scalar),
    "hostname": _set("hostname", cv.scalar),
    "stop_signal": _set("stop_signal", cv.scalar),
    "stop_grace_period": _stop_grace_period,
    "security_opt": _set("security_opt", cv.string_list),
    "cap_add": _set("cap_add", cv.string_list),
    "cap_drop": _set("cap_drop", cv.string_list),
    "dns": _set("dns", cv.string_list),
    "extra_hosts": _set("extra_hosts", cv.parse_extra_hosts),
    "read_only": _set("read_only", cv.boolean),
    "privileged": _set("privileged", cv.boolean),
    "init": _set("init", cv.boolean),
    "devices": _devices,
    "sysctls": _sysctls,
    "logging": _logging,
    "mem_limit": _mem_limit,
    "cpus": _set("cpus", _cpus),
    "deploy": _deploy,
}
