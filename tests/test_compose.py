"""Compose import: table tests over real compose files, interpolation, value syntaxes.

Pure (no I/O but reading tests/compose/) except the last test, which deploys an imported
multi-service release to a real agent process on the real Docker engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import docker_env
import pytest
from agentproc import AgentProcess
from docker_env import TestImages
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.models import Release
from hub import compose_values as cv
from hub.compose import ComposeImport, import_compose
from hub.compose_interp import InterpolationError, Interpolator, parse_dotenv
from hub.errors import ComposeError

FILES = Path(__file__).parent / "compose"


def load(file: str, env: dict[str, str] | None = None, **kw: Any) -> ComposeImport:
    """Import tests/compose/<file> with the file's directory as base_dir."""
    path = FILES / file
    return import_compose(
        path.read_text(),
        base_dir=path.parent,
        env=env if env is not None else {},
        env_file=kw.pop("env_file", None),
        name=kw.pop("name", "app"),
        version="1",
        **kw,
    )


def text(src: str, env: dict[str, str] | None = None, **kw: Any) -> ComposeImport:
    """Import compose text with no directory."""
    return import_compose(src, base_dir=None, env=env or {}, env_file=None, name="app", version="1")


def svc(result: ComposeImport, name: str) -> dict[str, Any]:
    """Return service ``name`` of the imported release, with the model's defaults."""
    release = Release.model_validate(result.release)
    found = {s.name: s for s in release.services}[name]
    return found.model_dump(mode="json")


def refused(src: str | None = None, *, name: str | None = None, **kw: Any) -> dict[str, str]:
    """Return refused field -> message of a compose text or file that must be refused."""
    with pytest.raises(ComposeError) as info:
        load(name, **kw) if name else text(src or "")
    assert info.value.status == 422
    return {f["field"]: f["message"] for f in info.value.fields}


# (file, service, Service field, expected value) -- each file also validates as Release.
FILE_CASES = [
    ("wordpress.yml", "db", "command", ["--default-authentication-plugin=mysql_native_password"]),
    ("wordpress.yml", "db", "expose", ["3306", "33060"]),
    ("wordpress.yml", "db", "volumes", [
        {"type": "volume", "source": "db_data", "target": "/var/lib/mysql", "read_only": False}
    ]),
    ("wordpress.yml", "wordpress", "ports", [
        {"container": 80, "host": 80, "protocol": "tcp", "host_ip": "0.0.0.0"}
    ]),
    ("wordpress.yml", "wordpress", "restart", "always"),
    ("wordpress.yml", "wordpress", "environment", {
        "WORDPRESS_DB_HOST": "db", "WORDPRESS_DB_USER": "wordpress",
        "WORDPRESS_DB_PASSWORD": "wordpress", "WORDPRESS_DB_NAME": "wordpress",
    }),
    ("prometheus-grafana.yml", "prometheus", "healthcheck", {
        "test": ["CMD-SHELL", "wget -q --spider http://localhost:9090/-/healthy || exit 1"],
        "interval_s": 30.0, "timeout_s": 5.0, "retries": 5, "start_period_s": 60.0,
    }),
    ("prometheus-grafana.yml", "prometheus", "aliases", ["prometheus"]),
    ("prometheus-grafana.yml", "prometheus", "volumes", [
        {"type": "bind", "source": "/opt/monitoring/prometheus", "target": "/etc/prometheus",
         "read_only": True},
        {"type": "volume", "source": "prom_data", "target": "/prometheus", "read_only": False},
    ]),
    ("prometheus-grafana.yml", "grafana", "depends_on", {"prometheus": {"condition": "started"}}),
    ("prometheus-grafana.yml", "grafana", "environment", {
        "GF_SECURITY_ADMIN_USER": "admin", "GF_SECURITY_ADMIN_PASSWORD": "pw",
        "GF_USERS_ALLOW_SIGN_UP": "false",
    }),
    ("traefik.yml", "reverse-proxy", "command", [
        "--api.insecure=true", "--providers.docker", "--entrypoints.web.address=:80"
    ]),
    ("traefik.yml", "reverse-proxy", "security_opt", ["no-new-privileges:true"]),
    ("traefik.yml", "reverse-proxy", "ports", [
        {"container": 80, "host": 80, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 8080, "host": 8080, "protocol": "tcp", "host_ip": "127.0.0.1"},
    ]),
    ("traefik.yml", "whoami", "labels", {
        "traefik.enable": "true",
        "traefik.http.routers.whoami.rule": "Host(`whoami.localhost`)",
        "traefik.http.routers.whoami.entrypoints": "web",
        "com.example.empty": "",
    }),
    ("anchors.yml", "api", "environment", {"TZ": "Europe/Berlin", "LOG_LEVEL": "debug"}),
    ("anchors.yml", "worker", "environment", {"TZ": "Europe/Berlin", "LOG_LEVEL": "info"}),
    ("anchors.yml", "worker", "restart", "unless-stopped"),
    ("anchors.yml", "worker", "log_limits", {"max_size_bytes": 1024 * 1024, "max_files": 2}),
    ("anchors.yml", "api", "healthcheck", {
        "test": ["CMD", "wget", "-q", "-O-", "http://localhost:8080/health"],
        "interval_s": 10.0, "timeout_s": 2.0, "retries": 3, "start_period_s": 0.0,
    }),
    ("long-syntax.yml", "gateway", "ports", [
        {"container": 1883, "host": 1883, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 5683, "host": 5683, "protocol": "udp", "host_ip": "127.0.0.1"},
        {"container": 9001, "host": None, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 7000, "host": 7000, "protocol": "udp", "host_ip": "127.0.0.1"},
        {"container": 7001, "host": 7001, "protocol": "udp", "host_ip": "127.0.0.1"},
        {"container": 6001, "host": 6001, "protocol": "tcp", "host_ip": "::1"},
        {"container": 5000, "host": None, "protocol": "tcp", "host_ip": "127.0.0.1"},
        {"container": 3000, "host": None, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 4000, "host": None, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 4001, "host": None, "protocol": "tcp", "host_ip": "0.0.0.0"},
        {"container": 4002, "host": None, "protocol": "tcp", "host_ip": "0.0.0.0"},
    ]),
    ("long-syntax.yml", "gateway", "volumes", [
        {"type": "volume", "source": "mqtt_data", "target": "/mosquitto/data", "read_only": False},
        {"type": "bind", "source": "/etc/mosquitto", "target": "/mosquitto/config",
         "read_only": True},
        {"type": "bind", "source": "/etc/localtime", "target": "/etc/localtime",
         "read_only": True},
    ]),
    ("long-syntax.yml", "gateway", "tmpfs", {"/run/cache": "size=67108864,mode=1777",
                                             "/tmp": "size=16m"}),
    ("homeassistant.yml", "homeassistant", "network_mode", "host"),
    ("homeassistant.yml", "homeassistant", "privileged", True),
    ("homeassistant.yml", "homeassistant", "init", True),
    ("homeassistant.yml", "homeassistant", "cap_add", ["NET_ADMIN", "NET_RAW"]),
    ("homeassistant.yml", "homeassistant", "cap_drop", ["MKNOD"]),
    ("homeassistant.yml", "homeassistant", "devices", [
        {"host": "/dev/ttyUSB0", "container": "/dev/ttyUSB0", "permissions": "rwm"},
        {"host": "/dev/ttyACM0", "container": "/dev/ttyACM0", "permissions": "rwm"},
    ]),
    ("options.yml", "frontend", "user", "101:101"),
    ("options.yml", "frontend", "working_dir", "/srv"),
    ("options.yml", "frontend", "hostname", "front"),
    ("options.yml", "frontend", "read_only", True),
    ("options.yml", "frontend", "stop_signal", "SIGQUIT"),
    ("options.yml", "frontend", "stop_timeout_s", 90.0),
    ("options.yml", "frontend", "extra_hosts", ["gateway.local:10.0.0.1", "printer:10.0.0.9"]),
    ("options.yml", "frontend", "dns", ["1.1.1.1"]),
    ("options.yml", "frontend", "sysctls", {"net.core.somaxconn": "1024"}),
    ("options.yml", "frontend", "aliases", ["web-front", "www"]),
    ("options.yml", "frontend", "networks", ["front", "back"]),
    ("options.yml", "frontend", "cpus", 0.25),
    ("options.yml", "frontend", "mem_limit_bytes", 64 * 1024 * 1024),
    ("options.yml", "frontend", "healthcheck", {
        "test": ["NONE"], "interval_s": 5.0, "timeout_s": 3.0, "retries": 3, "start_period_s": 0.0
    }),
    ("options.yml", "frontend", "restart", "no"),
    ("options.yml", "api", "depends_on", {"migrate": {"condition": "completed"}}),
    ("options.yml", "api", "healthcheck", {
        "test": ["NONE"], "interval_s": 5.0, "timeout_s": 3.0, "retries": 3, "start_period_s": 0.0
    }),
]  # fmt: skip


@pytest.mark.parametrize(("file", "service", "field", "expected"), FILE_CASES)
def test_compose_file_maps(file: str, service: str, field: str, expected: Any) -> None:
    """Each sample file imports; the named field of the named service is as expected."""
    result = load(file, env={"GRAFANA_PASSWORD": "pw"})
    assert svc(result, service)[field] == expected


def test_release_networks_from_top_level_networks() -> None:
    """Each compose network becomes a release network; internal is kept."""
    result = load("options.yml")
    assert result.release["networks"] == {"front": {}, "back": {"internal": True}}


def test_import_report_names_service_and_key() -> None:
    """container_name (alias), version and x- are in the report with service and key."""
    report = load("prometheus-grafana.yml", env={"GRAFANA_PASSWORD": "pw"}).report
    mapped = {(i.service, i.key): i.message for i in report.mapped}
    assert "extra alias" in mapped[("prometheus", "container_name")]
    assert mapped[("grafana", "image")] == "to image"
    ignored = {(i.service, i.key): i.message for i in report.ignored}
    assert "obsolete" in ignored[(None, "version")]
    report = load("anchors.yml").report
    assert {(i.service, i.key) for i in report.ignored} >= {
        (None, "x-defaults"),
        (None, "x-health"),
    }
    assert "ignored  x-health: extension field (x-), ignored as compose does" in report.lines()


def test_extension_fields_ignored_in_service_volume_network() -> None:
    """x- keys in a service, a volume and a network are ignored and reported."""
    src = (
        "name: proj\nservices:\n  a:\n    image: x\n    restart: always\n    x-owner: ops\n"
        "volumes:\n  v:\n    x-note: 1\nnetworks:\n  n:\n    x-note: 1\n"
    )
    ignored = {i.field for i in text(src).report.ignored}
    assert ignored == {"name", "services.a.x-owner", "volumes.v.x-note", "networks.n.x-note"}


UNSUPPORTED = {
    "secrets", "configs", "volumes.ext.external", "networks.back.ipam",
    "networks.outside.external", "services.web.build", "services.web.secrets",
    "services.web.configs", "services.web.extends", "services.web.links",
    "services.web.profiles", "services.web.tty", "services.web.stdin_open", "services.web.pid",
    "services.web.ipc", "services.web.ulimits", "services.web.shm_size", "services.web.restart",
    "services.web.network_mode", "services.web.deploy.placement",
    "services.web.deploy.update_config", "services.web.deploy.replicas",
    "services.web.deploy.resources.reservations", "services.web.deploy.resources.limits.pids",
    "services.web.healthcheck.start_interval",
    "services.web.volumes.1", "services.web.volumes.2", "services.web.volumes.3",
    "services.web.volumes.4", "services.web.ports.0", "services.web.ports.1",
    "services.web.logging.driver", "services.web.depends_on.db.restart",
    "services.db.networks.back.ipv4_address",
}  # fmt: skip


def test_every_unsupported_key_refused_by_name_in_one_error() -> None:
    """All refusals come in one ComposeError, each naming its key and service."""
    fields = refused(name="unsupported.yml")
    assert set(fields) == UNSUPPORTED
    assert "build the image in CI" in fields["services.web.build"]
    assert "anchors" in fields["services.web.extends"]


def test_relative_bind_mount_maps_to_the_release_data_directory() -> None:
    """Issue 11: ./data is a path of the release's data directory on the device."""
    result = load("nodered-relative.yml")
    mount = {"type": "bind", "source": "./data", "target": "/data", "read_only": False}
    assert svc(result, "node-red")["volumes"] == [mount]
    mapped = [m.message for m in result.report.mapped if m.service == "node-red"]
    assert any("'./data'" in m and "releases/<release>/" in m for m in mapped), mapped


def test_relative_bind_out_of_the_data_directory_refused_with_what_to_use() -> None:
    """../x and ~/x have no meaning on a device: refused, naming what to use instead."""
    src = "services:\n  a:\n    image: x\n    volumes:\n      - ../up:/u\n      - ~/h:/h\n"
    fields = refused(src)
    assert set(fields) == {"services.a.volumes.0", "services.a.volumes.1"}
    message = fields["services.a.volumes.0"]
    assert "'../up'" in message and "./path" in message and "named volume" in message


def test_gitea_imports_with_its_relative_bind() -> None:
    """A public file with one relative bind imports; external: false is not refused."""
    assert svc(load("gitea.yml"), "server")["volumes"][0]["source"] == "./gitea"


def test_unsupported_key_not_in_list_is_refused_not_dropped() -> None:
    """A key the importer does not know is refused, never silently dropped."""
    fields = refused("services:\n  a:\n    image: x\n    runtime: nvidia\n    platform: arm64\n")
    assert set(fields) == {"services.a.runtime", "services.a.platform"}


def test_env_heavy_file_reads_dotenv_env_file_and_interpolates() -> None:
    """The .env beside the file, env_file (relative), every interpolation form."""
    result = load("envheavy/docker-compose.yml", env={"FROM_HOST": "from-host"})
    app = svc(result, "app")
    assert app["image"] == "docker.io/acme/app:2.1"
    assert app["ports"][0]["host"] == 8081  # export HTTP_PORT=8081 in .env
    assert app["mem_limit_bytes"] == 128 * 1024 * 1024  # inline comment stripped
    assert app["cpus"] == 0.5
    assert app["environment"] == {
        "DB_URL": "postgres://db:5432/app",
        "APP_MODE": "production",  # environment wins over env_file
        "FROM_FILE": "2.1",
        "APP_EMPTY_DEFAULT": "fallback",
        "APP_EMPTY_DASH": "",
        "APP_NESTED": "2.1",
        "APP_PRICE": "$5",
        "APP_ALT": "tagged",
        "APP_MISSING": "",
        "app.dotted.name": "yes",  # YAML 1.2: yes stays a string
        "FROM_HOST": "from-host",
    }
    warnings = {(w.service, w.key): w.message for w in result.report.warnings}
    assert "NOT_SET_ANYWHERE" in warnings[("app", "environment.APP_MISSING")]


def test_caller_env_wins_over_dotenv_and_env_file_replaces_it(tmp_path: Path) -> None:
    """The caller's environment wins over .env; --env-file is read instead of .env."""
    result = load("envheavy/docker-compose.yml", env={"TAG": "9", "FROM_HOST": "x"})
    assert svc(result, "app")["image"] == "docker.io/acme/app:9"
    other = tmp_path / "other.env"
    other.write_text("TAG=7\nREGISTRY=reg.local:5000\n")
    result = load("envheavy/docker-compose.yml", env={"FROM_HOST": "x"}, env_file=other)
    app = svc(result, "app")
    assert app["image"] == "reg.local:5000/acme/app:7"
    assert app["ports"][0]["host"] == 8080  # HTTP_PORT came from .env, not read now


def test_required_variable_refused_naming_service_and_key() -> None:
    """${VAR:?err} with VAR unset refuses the key, with the message."""
    fields = refused(name="prometheus-grafana.yml")
    key = "services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD"
    assert list(fields) == [key]
    assert "GRAFANA_PASSWORD" in fields[key] and "set GRAFANA_PASSWORD" in fields[key]


def test_env_file_needs_a_directory_and_an_existing_file(tmp_path: Path) -> None:
    """A relative env_file with no base_dir, or a missing one, is refused by name."""
    src = "services:\n  a:\n    image: x\n    restart: always\n    env_file: app.env\n"
    fields = refused(src)
    assert "directory is unknown" in fields["services.a.env_file"]
    path = tmp_path / "compose.yml"
    path.write_text(src)
    with pytest.raises(ComposeError) as info:
        import_compose(src, base_dir=tmp_path, env=None, env_file=None, name="a", version="1")
    assert "does not exist" in info.value.fields[0]["message"]


INTERPOLATION = [
    ("${VAR}", {"VAR": "v"}, "v"),
    ("$VAR/x", {"VAR": "v"}, "v/x"),
    ("${VAR}", {}, ""),
    ("${VAR:-d}", {}, "d"),
    ("${VAR:-d}", {"VAR": ""}, "d"),
    ("${VAR-d}", {"VAR": ""}, ""),
    ("${VAR-d}", {}, "d"),
    ("${VAR:?err}", {"VAR": "v"}, "v"),
    ("${VAR:+r}", {"VAR": "v"}, "r"),
    ("${VAR:+r}", {"VAR": ""}, ""),
    ("${VAR+r}", {"VAR": ""}, "r"),
    ("$$", {}, "$"),
    ("$${VAR}", {"VAR": "v"}, "${VAR}"),
    ("a $ b", {}, "a $ b"),
    ("${A:-${B:-x}}", {}, "x"),
    ("${A:-${B:-x}}", {"B": "b"}, "b"),
    ("${A:-pre-${B}-post}", {"B": "b"}, "pre-b-post"),
    ("${A:-}", {}, ""),
    ("${VAR:-a:b}", {}, "a:b"),
]


@pytest.mark.parametrize(("template", "variables", "expected"), INTERPOLATION)
def test_interpolation(template: str, variables: dict[str, str], expected: str) -> None:
    """Each interpolation form renders as docker compose renders it."""
    assert Interpolator(variables).render(template) == expected


@pytest.mark.parametrize(
    ("template", "variables", "needle"),
    [
        ("${VAR:?must be set}", {}, "must be set"),
        ("${VAR:?must be set}", {"VAR": ""}, "must be set"),
        ("${VAR?gone}", {}, "gone"),
        ("${VAR", {}, "invalid"),
        ("${VAR:-x", {}, "missing"),
        ("${1abc}", {}, "invalid"),
        ("${VAR!x}", {}, "invalid"),
    ],
)
def test_interpolation_errors(template: str, variables: dict[str, str], needle: str) -> None:
    """Required variables and malformed ${...} raise with a message."""
    with pytest.raises(InterpolationError, match=needle):
        Interpolator(variables).render(template)


def test_unset_variable_is_empty_with_a_warning_naming_service_and_key() -> None:
    """An unset ${VAR} becomes empty and is reported (not only logged)."""
    result = text("services:\n  a:\n    image: 'img:${TAG}'\n    restart: always\n")
    assert svc(result, "a")["image"] == "img:"
    assert [(w.service, w.key) for w in result.report.warnings] == [("a", "image")]


def test_dotenv_syntax() -> None:
    """Comments, export, quotes, inline comments, interpolation of earlier lines."""
    parsed = parse_dotenv(
        "# c\nexport A=1\nB='${A} lit'\nC=\"x\\ty ${A}\"\nD=${A}2 # comment\nE\nF=\n",
        {"E": "from-env"},
    )
    assert parsed == {"A": "1", "B": "${A} lit", "C": "x\ty 1", "D": "12", "E": "from-env", "F": ""}


DURATIONS = [
    ("1m30s", 90.0), ("10s", 10.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5s", 1.5),
    ("2h45m", 9900.0), ("0", 0.0), (30, 30.0), ("100us", 0.0001),
]  # fmt: skip


@pytest.mark.parametrize(("value", "seconds"), DURATIONS)
def test_durations(value: Any, seconds: float) -> None:
    """Go-style durations, as compose writes them, in seconds."""
    assert cv.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["10", "1x", "s", "", "1m 30s", True])
def test_bad_durations(value: Any) -> None:
    """A duration without a unit (as a string) or with junk is refused."""
    with pytest.raises(ValueError):
        cv.parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [("512m", 512 * 2**20), ("1g", 2**30), ("1GB", 2**30), ("100k", 102400), (4096, 4096),
     ("1.5g", int(1.5 * 2**30)), ("64M", 64 * 2**20), ("2048", 2048)],
)  # fmt: skip
def test_sizes(value: Any, size: int) -> None:
    """Byte sizes as compose writes them."""
    assert cv.parse_size(value) == size


PORTS = [
    ("80", [(80, None, "tcp", None)]),
    (8080, [(8080, None, "tcp", None)]),
    ("8000:80", [(80, 8000, "tcp", None)]),
    ("53:53/udp", [(53, 53, "udp", None)]),
    ("127.0.0.1:8001:8001", [(8001, 8001, "tcp", "127.0.0.1")]),
    ("127.0.0.1::5000", [(5000, None, "tcp", "127.0.0.1")]),
    ("[::1]:6001:6001", [(6001, 6001, "tcp", "::1")]),
    ("3000-3001", [(3000, None, "tcp", None), (3001, None, "tcp", None)]),
    ("9090-9091:8080-8081", [(8080, 9090, "tcp", None), (8081, 9091, "tcp", None)]),
    ("0.0.0.0:5000-5001:5000-5001/udp",
     [(5000, 5000, "udp", "0.0.0.0"), (5001, 5001, "udp", "0.0.0.0")]),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), PORTS)
def test_short_ports(value: Any, expected: list[tuple[Any, ...]]) -> None:
    """Short-syntax ports: ranges, protocol, host IP (v4 and v6)."""
    got = [
        (d["container"], d["host"], d["protocol"], d.get("host_ip")) for d in cv.parse_port(value)
    ]
    assert got == expected


@pytest.mark.parametrize("value", ["80:80/sctp", "8000-8010:80", "70000", "a:b", "1-2:3-5"])
def test_bad_short_ports(value: str) -> None:
    """Unsupported protocols, uneven ranges and junk are refused."""
    with pytest.raises(ValueError):
        cv.parse_port(value)


def test_unquoted_ports_are_yaml_12_strings() -> None:
    """`- 22:22` is the string "22:22" (YAML 1.2, as compose reads it), not 1342."""
    result = text("services:\n  a:\n    image: x\n    restart: always\n    ports:\n      - 22:22\n")
    assert svc(result, "a")["ports"][0]["host"] == 22


HEALTHCHECKS = [
    ({"test": "curl -f http://localhost"}, ["CMD-SHELL", "curl -f http://localhost"]),
    ({"test": ["CMD", "true"]}, ["CMD", "true"]),
    ({"test": ["CMD-SHELL", "exit 0"]}, ["CMD-SHELL", "exit 0"]),
    ({"test": ["NONE"]}, ["NONE"]),
    ({"test": "NONE"}, ["NONE"]),
    ({"disable": True}, ["NONE"]),
    ({"disable": True, "test": ["CMD", "x"]}, ["NONE"]),
]


@pytest.mark.parametrize(("spec", "test"), HEALTHCHECKS)
def test_healthcheck_forms(spec: dict[str, Any], test: list[str]) -> None:
    """String, CMD list, CMD-SHELL, NONE and disable: true."""
    src = json.dumps({"services": {"a": {"image": "x", "restart": "always", "healthcheck": spec}}})
    assert svc(text(src), "a")["healthcheck"]["test"] == test


def test_healthcheck_defaults_are_dockers() -> None:
    """Left-out healthcheck values are Docker's (30 s, 30 s, 3, 0), not the model's."""
    src = json.dumps(
        {"services": {"a": {"image": "x", "restart": "always", "healthcheck": {"test": "true"}}}}
    )
    hc = svc(text(src), "a")["healthcheck"]
    assert (hc["interval_s"], hc["timeout_s"], hc["retries"], hc["start_period_s"]) == (
        30.0, 30.0, 3, 0.0
    )  # fmt: skip


def test_healthcheck_without_test_refused() -> None:
    """Only an interval (inheriting the image's test) cannot be expressed: refused."""
    src = json.dumps({"services": {"a": {"image": "x", "healthcheck": {"interval": "5s"}}}})
    assert "test is required" in refused(src)["services.a.healthcheck"]


def test_model_validation_errors_name_the_service_field() -> None:
    """What the Release model refuses is named under the service, with the rest."""
    src = json.dumps(
        {
            "services": {
                "Web": {"image": "x", "build": "."},
                "b": {"image": "y", "depends_on": ["c"]},
            }
        }
    )
    fields = refused(src)
    assert "services.Web.build" in fields and "services.Web.name" in fields


def test_dependency_on_unknown_service_refused() -> None:
    """depends_on naming no service is refused by the release's graph check."""
    src = json.dumps({"services": {"b": {"image": "y", "depends_on": ["c"]}}})
    assert any("unknown" in m for m in refused(src).values())


def test_anchor_bomb_refused_at_the_node_bound() -> None:
    """An alias bomb is refused once it expands past max_nodes (the bound is a parameter)."""
    lines = ["x-a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 7):
        lines.append(f"x-{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 10)}]")
    bomb = "\n".join(lines) + "\nservices:\n  a:\n    image: x\n"
    with pytest.raises(ComposeError, match="more than 1000 values"):
        import_compose(bomb, base_dir=None, env={}, env_file=None, name="a", version="1",
                       max_nodes=1000)  # fmt: skip
    with pytest.raises(ComposeError, match="values once anchors"):
        text(bomb)


def test_not_a_mapping_and_bad_yaml_refused() -> None:
    """A list, a scalar or broken YAML is refused with a message."""
    for src in ("- a\n- b\n", "just text", "services: [\n"):
        with pytest.raises(ComposeError):
            text(src)


# --- a multi-service compose release on a real agent ------------------------------------


@pytest.fixture
async def agent(
    tmp_path: Path, device_id: str, docker: aiodocker.Docker
) -> AsyncIterator[AgentProcess]:
    """Yield a running agent for this test's device; remove its containers after."""
    proc = AgentProcess(device_id, tmp_path / "agent")
    try:
        yield await proc.start()
    finally:
        await proc.stop()
        proc.cleanup()
        await docker_env.cleanup_device(docker, device_id)


@pytest.mark.docker
async def test_compose_release_runs_on_agent_and_services_reach_each_other(
    agent: AgentProcess, images: TestImages
) -> None:
    """An imported two-service release runs; the client gets web's page by service name."""
    result = load("e2e-pair.yml", env={"GOOD_IMAGE": images.ref("good")}, name="pair")
    code, body = await agent.call("POST", "/v1/apply", result.release)
    assert code == 202, body
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(60):
            while True:
                last = await agent.status()
                svcs = {s["name"]: s for s in last["services"]}
                if svcs.get("client", {}).get("health") == "healthy" and (
                    svcs.get("web", {}).get("state") == "running"
                ):
                    break
                await asyncio.sleep(0.25)
    except TimeoutError:
        pytest.fail(f"client never healthy: {json.dumps(last, indent=1)}\n{agent.log()}")
    assert last["release"] == "pair@1"


_KEYS = sorted(
    {"image", "command", "environment", "ports", "volumes", "healthcheck", "depends_on",
     "labels", "networks", "deploy", "logging", "devices", "tmpfs", "sysctls", "extra_hosts",
     "restart", "env_file", "expose", "user", "cpus", "mem_limit", "stop_grace_period",
     "container_name", "network_mode", "read_only", "build", "x-note"}
)  # fmt: skip
_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
    st.sampled_from(["80:80", "./x:/y", "/a:/b:ro", "1m", "db", "CMD", "${X:-1}", "$$", "10s"]),
)  # fmt: skip
_VALUE = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from([*_KEYS, "target", "source", "test", "a"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    services=st.dictionaries(
        st.sampled_from(["web", "db", "Bad"]),
        st.one_of(_LEAF, st.dictionaries(st.sampled_from(_KEYS), _VALUE, max_size=6)),
        max_size=3,
    ),
    volumes=_VALUE,
    networks=_VALUE,
)
def test_any_document_imports_or_is_refused(services: Any, volumes: Any, networks: Any) -> None:
    """Whatever the shape, the import returns a valid release or raises ComposeError."""
    src = json.dumps({"services": services, "volumes": volumes, "networks": networks})
    try:
        result = text(src)
    except ComposeError as exc:
        assert exc.fields and all(f["field"] and f["message"] for f in exc.fields)
    else:
        Release.model_validate(result.release)
