"""install.sh in a fresh Debian root (mmdebstrap, chroot, no systemd running).

The root is made once and cached under $EDGEFLEET_BUILD_CACHE (default
/var/cache/edgefleet-build); each test gets a copy-on-write overlay of it, so what one
install lays down never leaks into the next test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "packaging"))
import speclib  # noqa: E402

CACHE = Path(os.environ.get("EDGEFLEET_BUILD_CACHE", "/var/cache/edgefleet-build"))
BASE_ROOT = CACHE / "roots" / "bookworm-amd64-minbase"
HUB_URL = "https://127.0.0.1:8443"
TOKEN = "enroll-" + "x" * 24
CA_SHA256 = "ab" * 32

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mounts)"),
    pytest.mark.skipif(
        shutil.which("mmdebstrap") is None and os.environ.get("CI") != "true",
        reason="needs mmdebstrap (scripts/testenv.sh installs it; never skipped in CI)",
    ),
]


def _sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def base_root() -> Path:
    """Return a minbase Debian bookworm root (made once, then cached)."""
    if not (BASE_ROOT / ".ready").exists():
        tmp = BASE_ROOT.with_name(BASE_ROOT.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        _sh("mmdebstrap", "--quiet", "--mode=root", "--variant=minbase", "bookworm", str(tmp))
        tmp.rename(BASE_ROOT)
        (BASE_ROOT / ".ready").touch()
    return BASE_ROOT


@pytest.fixture(scope="session")
def agent_bin() -> Path:
    """Return the x86_64 onefile agent (EDGE_AGENT_BIN, or dist/, rebuilt if stale)."""
    if os.environ.get("EDGE_AGENT_BIN"):
        return Path(os.environ["EDGE_AGENT_BIN"])
    _sh(str(REPO / "packaging" / "build.sh"), "--program", "edge-agent", "--if-stale")
    return REPO / "dist" / speclib.artefact_name("edge-agent")


@pytest.fixture
def bundle(tmp_path: Path, agent_bin: Path) -> Path:
    """Return a release bundle: install.sh, binary, SHA256SUMS, unit, sysusers file."""
    b = tmp_path / "bundle"
    b.mkdir()
    name = f"edge-agent-{speclib.version()}-linux-x86_64"
    shutil.copy2(agent_bin, b / name)
    digest = hashlib.sha256((b / name).read_bytes()).hexdigest()
    (b / "SHA256SUMS").write_text(f"{digest}  {name}\n")
    shutil.copy2(REPO / "install.sh", b / "install.sh")
    for f in ("edge-agent.service", "edge-agent.sysusers.conf"):
        shutil.copy2(REPO / "systemd" / f, b / f)
    return b


@pytest.fixture
def root(base_root: Path, tmp_path: Path, bundle: Path) -> Iterator[Path]:
    """Return a throwaway copy-on-write root with the bundle at /opt/bundle and /proc."""
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={base_root},upperdir={upper},workdir={work}"
    _sh("mount", "-t", "overlay", "overlay", "-o", opts, str(merged))
    try:
        shutil.copytree(bundle, merged / "opt" / "bundle")
        _sh("mount", "-t", "proc", "proc", str(merged / "proc"))
        _sh("mount", "-t", "tmpfs", "tmpfs", str(merged / "tmp"))
        yield merged
    finally:
        for m in ("tmp", "proc", ""):
            subprocess.run(["umount", "-l", str(merged / m)], capture_output=True)


def _install(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    return _sh(
        "chroot", str(root), "/bin/bash", "/opt/bundle/install.sh", *args, check=check, env=env
    )


def _owner(root: Path, path: Path) -> tuple[str, str]:
    st = path.stat()
    users = {int(ln.split(":")[2]): ln.split(":")[0] for ln in (root / "etc/passwd").open()}
    groups = {int(ln.split(":")[2]): ln.split(":")[0] for ln in (root / "etc/group").open()}
    return users[st.st_uid], groups[st.st_gid]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


FULL_ARGS = (
    "--hub-url",
    HUB_URL,
    "--token",
    TOKEN,
    "--ca-sha256",
    CA_SHA256,
    "--device-id",
    "dev-install-1",
)


def test_install_lays_down_files(root: Path) -> None:
    proc = _install(root, *FULL_ARGS)
    assert "systemd is not running: skipped systemctl" in proc.stdout
    assert "checksum ok" in proc.stdout

    binary = root / "usr/local/bin/edge-agent"
    assert _mode(binary) == 0o755 and _owner(root, binary) == ("root", "root")

    conf_dir, conf = root / "etc/edge-agent", root / "etc/edge-agent/agent.toml"
    assert _mode(conf_dir) == 0o750 and _owner(root, conf_dir) == ("root", "edge-agent")
    assert _mode(conf) == 0o640 and _owner(root, conf) == ("root", "edge-agent")
    config = tomllib.loads(conf.read_text())
    assert config["device_id"] == "dev-install-1"
    assert config["data_dir"] == "/var/lib/edge-agent"
    assert config["hub"] == {"url": HUB_URL, "enrollment_token": TOKEN, "ca_sha256": CA_SHA256}

    state = root / "var/lib/edge-agent"
    assert _mode(state) == 0o700 and _owner(root, state) == ("edge-agent", "edge-agent")
    logs = root / "var/log/edge-agent"
    assert _mode(logs) == 0o750 and _owner(root, logs) == ("edge-agent", "edge-agent")

    unit = root / "etc/systemd/system/edge-agent.service"
    assert _mode(unit) == 0o644 and _owner(root, unit) == ("root", "root")
    assert unit.read_text() == (REPO / "systemd/edge-agent.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/edge-agent.service"
    sysusers = root / "usr/lib/sysusers.d/edge-agent.conf"
    assert sysusers.read_text() == (REPO / "systemd/edge-agent.sysusers.conf").read_text()

    passwd = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").open()}
    assert passwd["edge-agent"][6].strip() == "/usr/sbin/nologin"
    assert int(passwd["edge-agent"][2]) < 1000  # a system user
    docker = next(ln for ln in (root / "etc/group").open() if ln.startswith("docker:"))
    assert "edge-agent" in docker.strip().split(":")[3].split(",")

    # The installed binary runs on this (Python-less) system and reads the written config.
    assert not (root / "usr/bin/python3").exists()
    ver = _sh("chroot", str(root), "/usr/local/bin/edge-agent", "--version")
    assert ver.stdout.strip() == f"edge-agent {speclib.version()}"
    st = _sh(
        "chroot",
        str(root),
        "/usr/local/bin/edge-agent",
        "selftest",
        "--data-dir",
        "/var/lib/edge-agent",
    )
    assert st.stdout.splitlines()[-1] == "selftest passed"


def test_rerun_keeps_config_unless_forced(root: Path) -> None:
    _install(root, *FULL_ARGS)
    conf = root / "etc/edge-agent/agent.toml"
    conf.write_text(conf.read_text() + 'log_level = "DEBUG"\n')
    proc = _install(root, *FULL_ARGS)
    assert "kept existing" in proc.stdout and "DEBUG" in conf.read_text()
    _install(root, "--hub-url", "https://hub.invalid:9443", "--token", TOKEN, "--force-config")
    config = tomllib.loads(conf.read_text())
    assert config["hub"]["url"] == "https://hub.invalid:9443" and "log_level" not in config


def test_standalone_install_has_no_hub_section(root: Path) -> None:
    _install(root)
    assert "hub" not in tomllib.loads((root / "etc/edge-agent/agent.toml").read_text())


def test_bad_checksum_installs_nothing(root: Path) -> None:
    sums = root / "opt/bundle/SHA256SUMS"
    sums.write_text("0" * 64 + sums.read_text()[64:])
    proc = _install(root, *FULL_ARGS, check=False)
    assert proc.returncode == 1 and "does not match" in proc.stderr
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert not (root / "etc/edge-agent").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--hub-url", "http://hub:80", "--token", TOKEN), "https://"),
        (("--hub-url", HUB_URL), "--token"),
        (("--ca-sha256", "abc"), "64 hex"),
        (("--bogus",), "unknown argument"),
    ],
)
def test_bad_arguments_are_refused(root: Path, args: tuple[str, ...], message: str) -> None:
    proc = _install(root, *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (root / "usr/local/bin/edge-agent").exists()


def test_uninstall_keeps_config_and_data_then_purge_removes_all(root: Path) -> None:
    _install(root, *FULL_ARGS)
    (root / "var/lib/edge-agent/agent.db").write_bytes(b"state")
    proc = _install(root, "--uninstall")
    assert "left as they are" in proc.stdout
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").exists()
    assert (root / "etc/edge-agent/agent.toml").exists()
    assert (root / "var/lib/edge-agent/agent.db").read_bytes() == b"state"

    _install(root, "--uninstall", "--purge")
    for gone in ("etc/edge-agent", "var/lib/edge-agent", "var/log/edge-agent"):
        assert not (root / gone).exists(), gone
    assert "edge-agent:" not in (root / "etc/passwd").read_text()


@pytest.mark.docker
def test_purge_containers_touches_only_this_device(tmp_path: Path, images) -> None:
    """--purge-containers removes this device's labelled objects and nothing else."""
    mine, other = f"inst-{uuid.uuid4().hex[:8]}", f"inst-{uuid.uuid4().hex[:8]}"
    image = "edgefleet-test/good:1"
    for dev in (mine, other):
        _sh(
            "docker",
            "run",
            "-d",
            "--name",
            dev,
            "--label",
            f"io.edgefleet.device={dev}",
            "--label",
            "io.edgefleet.managed-by=edgefleet",
            image,
        )
        _sh("docker", "volume", "create", "--label", f"io.edgefleet.device={dev}", dev)
    try:
        proc = _sh(
            "bash",
            str(REPO / "install.sh"),
            "--root",
            str(tmp_path),
            "--uninstall",
            "--purge-containers",
            "--device-id",
            mine,
        )
        assert f"device {mine}" in proc.stdout
        names = _sh("docker", "ps", "-a", "--format", "{{.Names}}").stdout.split()
        volumes = _sh("docker", "volume", "ls", "-q").stdout.split()
        assert mine not in names and mine not in volumes
        assert other in names and other in volumes
    finally:
        for dev in (mine, other):
            subprocess.run(["docker", "rm", "-f", dev], capture_output=True)
            subprocess.run(["docker", "volume", "rm", dev], capture_output=True)
