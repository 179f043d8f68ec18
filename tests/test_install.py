"""install.sh in a fresh Debian root (mmdebstrap, chroot, no systemd running).

The root is made once and cached under $EDGEFLEET_BUILD_CACHE (default
/var/cache/edgefleet-build); each test gets a copy-on-write overlay of it, so what one
install lays down never leaks into the next test.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.enroll import ca_fingerprint
from hub.testing import RunningHub, start_hub

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "packaging"))
import speclib  # noqa: E402
from test_packaging import agent_binary  # noqa: E402  (one build per session, shared)

CACHE = Path(os.environ.get("EDGEFLEET_BUILD_CACHE", "/var/cache/edgefleet-build"))
BASE_ROOT = CACHE / "roots" / "bookworm-amd64-minbase"
HUB_URL = "https://127.0.0.1:8443"
TOKEN = "enroll-" + "x" * 24
CA_SHA256 = "ab" * 32

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 and os.environ.get("CI") != "true",
        reason="needs root (chroot, mounts); never skipped in CI",
    ),
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
    return agent_binary()


@functools.cache
def agent_onedir_tarball() -> Path:
    """Return dist/'s x86_64 onedir agent as its .tar.gz, built now if its inputs changed."""
    proc = _sh(str(REPO / "packaging" / "build.sh"), "--mode", "onedir", "--if-stale", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = REPO / "dist" / f"{speclib.artefact_name('edge-agent')}-onedir.tar.gz"
    assert path.is_file(), proc.stderr
    return path


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
    """Return a throwaway copy-on-write root: the bundle at /opt/bundle, /proc, tmpfs /tmp, /run."""
    upper, work, merged = (tmp_path / n for n in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={base_root},upperdir={upper},workdir={work}"
    _sh("mount", "-t", "overlay", "overlay", "-o", opts, str(merged))
    try:
        shutil.copytree(bundle, merged / "opt" / "bundle")
        _sh("mount", "-t", "proc", "proc", str(merged / "proc"))
        _sh("mount", "-t", "tmpfs", "tmpfs", str(merged / "tmp"))
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(merged / "run"))
        yield merged
    finally:
        for m in ("run", "tmp", "proc", ""):
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
    # Written in the form the hub prints and the agent records: sha256:<lowercase hex>.
    hub = {"url": HUB_URL, "enrollment_token": TOKEN, "ca_sha256": "sha256:" + CA_SHA256}
    assert config["hub"] == hub

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
    other = ("--hub-url", "https://hub.invalid:9443", "--token", TOKEN, "--ca-sha256", CA_SHA256)
    _install(root, *other, "--force-config")
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
        (("--hub-url", HUB_URL, "--token", TOKEN), "--ca-sha256"),
        (("--hub-url", HUB_URL, "--token", TOKEN, "--ca-sha256", "sha256:abc"), "64 hex"),
        (("--ca-sha256", "abc"), "64 hex"),
        (("--bogus",), "unknown argument"),
        (("--form", "zip"), "--form must be auto, onefile or onedir"),
        (("--min-tmp-mb", "lots"), "--min-tmp-mb must be a whole number"),
        (("--min-tmpfs-mb", "-1"), "--min-tmpfs-mb must be a whole number"),
        (("--form", "onedir"), "onedir.tar.gz next to install.sh"),  # not in this bundle
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


# ---- onefile or onedir --------------------------------------------------------------------


@pytest.fixture
def onedir_root(root: Path) -> Path:
    """Return the root with the onedir build in its bundle too (listed in SHA256SUMS)."""
    tarball = agent_onedir_tarball()
    shutil.copy2(tarball, root / "opt/bundle" / tarball.name)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with (root / "opt/bundle/SHA256SUMS").open("a") as sums:
        sums.write(f"{digest}  {tarball.name}\n")
    return root


def _size_tmp(root: Path, size: str) -> None:
    """Resize the root's /tmp tmpfs (what the installer measures; systemd's PrivateTmp too)."""
    _sh("mount", "-o", f"remount,size={size}", str(root / "tmp"))


def _assert_onedir_installed(root: Path) -> None:
    binary, lib = root / "usr/local/bin/edge-agent", root / "usr/local/lib/edge-agent"
    assert os.readlink(binary) == "/usr/local/lib/edge-agent/edge-agent"
    assert _mode(lib / "edge-agent") == 0o755 and _owner(root, lib) == ("root", "root")
    assert not any(_mode(p) & 0o022 for p in lib.rglob("*") if not p.is_symlink())
    ver = _sh("chroot", str(root), "/usr/local/bin/edge-agent", "--version", env=CHROOT_ENV)
    assert ver.stdout.strip() == f"edge-agent {speclib.version()}"
    st = _sh("chroot", str(root), "/usr/local/bin/edge-agent", "selftest", env=CHROOT_ENV)
    assert st.stdout.splitlines()[-1] == "selftest passed"
    assert not list((root / "tmp").glob("_MEI*"))  # nothing was unpacked


def test_small_tmpfs_gets_onedir_then_forced_onefile_replaces_it(onedir_root: Path) -> None:
    root = onedir_root
    _size_tmp(root, "512m")  # room enough (>= 256 MB free), but a small RAM-backed /tmp
    proc = _install(root, *FULL_ARGS)
    assert "form: onedir: /tmp is a 512 MB tmpfs (< --min-tmpfs-mb 2048)" in proc.stdout
    assert "checksum ok: " + f"{speclib.artefact_name('edge-agent')}-onedir.tar.gz" in proc.stdout
    _assert_onedir_installed(root)

    proc = _install(root, *FULL_ARGS, "--form", "onefile")
    assert "form: onefile (--form onefile)" in proc.stdout
    binary = root / "usr/local/bin/edge-agent"
    assert not binary.is_symlink() and _mode(binary) == 0o755
    assert not (root / "usr/local/lib/edge-agent").exists()

    _install(root, *FULL_ARGS, "--form", "onedir")  # and back; then uninstall removes both
    _assert_onedir_installed(root)
    _install(root, "--uninstall")
    assert not (root / "usr/local/bin/edge-agent").is_symlink()
    assert not (root / "usr/local/lib/edge-agent").exists()


def test_roomy_tmp_gets_onefile_unless_thresholds_say_otherwise(onedir_root: Path) -> None:
    root = onedir_root
    _size_tmp(root, "4g")
    proc = _install(root, *FULL_ARGS)
    assert "form: onefile (/tmp has room" in proc.stdout
    assert not (root / "usr/local/bin/edge-agent").is_symlink()
    # The same /tmp is small by a higher free-space bound, or a higher tmpfs bound.
    proc = _install(root, *FULL_ARGS, "--min-tmp-mb", "8192")
    assert "/tmp has 4096 MB free (< --min-tmp-mb 8192)" in proc.stdout
    _assert_onedir_installed(root)
    _install(root, *FULL_ARGS, "--form", "onefile")
    proc = _install(root, *FULL_ARGS, "--min-tmpfs-mb", "8192")
    assert "form: onedir: /tmp is a 4096 MB tmpfs (< --min-tmpfs-mb 8192)" in proc.stdout


def test_small_tmp_without_onedir_build_warns_and_installs_onefile(root: Path) -> None:
    _size_tmp(root, "64m")
    proc = _install(root, *FULL_ARGS)
    assert "but the bundle has no onedir build" in proc.stdout
    assert not (root / "usr/local/bin/edge-agent").is_symlink()


def test_onedir_with_bad_checksum_installs_nothing(onedir_root: Path) -> None:
    root = onedir_root
    sums = root / "opt/bundle/SHA256SUMS"
    lines = sums.read_text().splitlines()
    sums.write_text("\n".join([lines[0], "0" * 64 + lines[1][64:]]) + "\n")
    proc = _install(root, *FULL_ARGS, "--form", "onedir", check=False)
    assert proc.returncode == 1 and "does not match" in proc.stderr
    assert not (root / "usr/local/bin/edge-agent").exists()
    assert not (root / "usr/local/lib/edge-agent").exists()
    assert not (root / "etc/edge-agent").exists()


# ---- the installed agent enrolls with a real hub and runs ---------------------------------

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
AGENT = ("/usr/local/bin/edge-agent", "--config", "/etc/edge-agent/agent.toml")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    """Return a real hub process on 127.0.0.1 (the chroot shares this network namespace)."""
    running = start_hub(tmp_path / "hub")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()


def _devices(hub: RunningHub) -> list[dict]:
    status, body = asyncio.run(hub.api("GET", "/api/v1/devices"))
    assert status == 200, body
    return body["devices"]


def _stop_group(proc: subprocess.Popen) -> int:
    """SIGTERM the whole group (a onefile binary is a bootloader plus a child); SIGKILL late."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=30)
    except ProcessLookupError:
        return proc.wait()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -signal.SIGKILL


def test_installed_agent_enrolls_and_runs(root: Path, hub: RunningHub, tmp_path: Path) -> None:
    token = asyncio.run(hub.create_token(tags={"site": "chroot"}))
    fingerprint = ca_fingerprint(hub.ca_path.read_bytes())  # sha256:<hex>, as the hub prints it
    binary = f"/opt/bundle/edge-agent-{speclib.version()}-linux-x86_64"
    args = ("--hub-url", hub.url, "--token", token, "--ca-sha256", fingerprint, "--binary", binary)
    _install(root, *args)
    conf = tomllib.loads((root / "etc/edge-agent/agent.toml").read_text())
    assert conf["hub"]["ca_sha256"] == fingerprint

    # No systemd here (and so no User=): run the installed binary as the unit would, as root.
    # No Docker socket in the root either: the agent enrolls and syncs all the same.
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            ["chroot", str(root), *AGENT, "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=CHROOT_ENV,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        device = None
        while time.monotonic() < deadline and agent.poll() is None:
            devices = _devices(hub)
            # status_at: a status snapshot came over sync (enrollment alone sets last_contact).
            if devices and devices[0]["status_at"]:
                device = devices[0]
                break
            time.sleep(0.25)
        log_text = log_path.read_text(errors="replace")
        assert agent.poll() is None, f"agent exited {agent.returncode}:\n{log_text}"
        assert device is not None, f"no synced device on the hub after 30 s:\n{log_text}"
        assert device["last_contact"] and device["connectivity"] == "online", device
        assert device["agent_version"] == speclib.version()
        assert device["tags"] == {"site": "chroot"}

        state = root / "var/lib/edge-agent"
        identity = json.loads((state / "identity.json").read_text())
        assert identity["device_id"] == device["id"]
        assert identity["hub_url"] == hub.url and identity["ca_sha256"] == fingerprint
        for name in ("identity.json", "device.key", "device.crt", "hub-ca.pem", "hub-signing.pub"):
            assert _mode(state / name) == 0o600, name
        assert _mode(state) == 0o700

        status = _sh("chroot", str(root), *AGENT, "--json", "status", env=CHROOT_ENV)
        local = json.loads(status.stdout)
        assert local["device_id"] == device["id"]
        text = _sh("chroot", str(root), *AGENT, "status", env=CHROOT_ENV).stdout
        assert device["id"] in text.splitlines()[0]  # the human summary names the device
    finally:
        code = _stop_group(agent)
    assert code == 0, f"agent exit {code} after SIGTERM:\n{log_path.read_text(errors='replace')}"


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
