"""Run a real hub process for tests and benchmarks, and act as operator or device against it.

    hub = start_hub(tmp_path / "hub")               # python -m hub.cli serve, 127.0.0.1:<free>
    token = await hub.create_token(uses=3, tags={"site": "lab"})
    device = await hub.enroll(token, tmp_path / "dev1")  # key + CSR made here, cert saved
    ssl_ctx = device.ssl_context()                   # mTLS client context, CA pinned
    await hub.set_target(device.device_id, release_doc)
    hub.kill()                                       # SIGKILL; start_hub(same dir, port=hub.port)
    hub.stop()                                       # SIGTERM, wait for a clean exit

Test-only code: it lives in the package so agent-side tests can import it too.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent


def make_key_and_csr(common_name: str = "edge-device") -> tuple[bytes, str]:
    """Return a new P-256 private key (PEM) and a CSR (PEM) signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def client_ssl_context(
    ca_path: Path, cert_path: Path | None = None, key_path: Path | None = None
) -> ssl.SSLContext:
    """Return a client TLS context trusting only ``ca_path``, with a client cert if given."""
    ctx = ssl.create_default_context(cafile=str(ca_path))
    if cert_path is not None:
        ctx.load_cert_chain(str(cert_path), str(key_path) if key_path else None)
    return ctx


@dataclass
class DeviceIdentity:
    """What enrollment gave a device, saved as files in ``directory``."""

    device_id: str
    directory: Path
    signing_public_key_pem: str
    tags: dict[str, str]

    @property
    def key_path(self) -> Path:
        """Return the device's private key file."""
        return self.directory / "device.key"

    @property
    def cert_path(self) -> Path:
        """Return the device's client certificate file."""
        return self.directory / "device.pem"

    @property
    def ca_path(self) -> Path:
        """Return the pinned hub CA file."""
        return self.directory / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """Return the mTLS client context of this device."""
        return client_ssl_context(self.ca_path, self.cert_path, self.key_path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    """Write a hub TOML config file from ``{section: {key: value}}``."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))


@dataclass
class RunningHub:
    """A hub process started by ``start_hub``."""

    process: subprocess.Popen[bytes]
    work_dir: Path
    host: str
    port: int
    admin_token: str
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Return the base URL."""
        return f"https://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Return the hub's data directory."""
        return self.work_dir / "data"

    @property
    def store_url(self) -> str | None:
        """Return the hub's PostgreSQL URL (None: it stores in ``data_dir``/hub.db)."""
        url = self.sections.get("store", {}).get("url")
        return str(url) if url else None

    @property
    def ca_path(self) -> Path:
        """Return the hub CA certificate file."""
        return self.data_dir / "ca.pem"

    @property
    def log_path(self) -> Path:
        """Return the hub's stderr log."""
        return self.work_dir / "hub.log"

    @property
    def pid(self) -> int:
        """Return the hub's process id."""
        return self.process.pid

    def log(self) -> str:
        """Return the hub's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ssl_context(self) -> ssl.SSLContext:
        """Return a client context trusting the hub CA, without a client certificate."""
        return client_ssl_context(self.ca_path)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
    ) -> tuple[int, Any]:
        """Send one request; return ``(status, decoded JSON or text or None)``."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        connector = aiohttp.TCPConnector(ssl=ssl_context or self.ssl_context())
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as session,
            session.request(
                method, self.url + path, json=json_body, data=data, headers=hdrs
            ) as resp,
        ):
            raw = await resp.read()
            if not raw:
                return resp.status, None
            if resp.content_type == "application/json":
                return resp.status, json.loads(raw)
            return resp.status, raw.decode(errors="replace")

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the operator API as admin."""
        return await self.request(method, path, json_body=body, token=self.admin_token)

    async def create_token(
        self, uses: int = 1, expires_in_s: int = 3600, tags: dict[str, str] | None = None
    ) -> str:
        """Create an enrollment token and return its secret."""
        body = {"uses": uses, "expires_in_s": expires_in_s, "tags": tags or {}}
        status, resp = await self.api("POST", "/api/v1/enrollment-tokens", body)
        if status != 201:
            raise RuntimeError(f"token create failed: {status} {resp}")
        return str(resp["token"])

    async def enroll(
        self, token: str, directory: Path, hostname: str = "test-device"
    ) -> DeviceIdentity:
        """Enroll a device (key and CSR made here); save key, cert and CA in ``directory``."""
        key_pem, csr_pem = make_key_and_csr()
        body = {"token": token, "csr_pem": csr_pem, "hostname": hostname, "agent_version": "test"}
        status, resp = await self.request("POST", "/v1/enroll", json_body=body)
        if status != 201:
            raise RuntimeError(f"enroll failed: {status} {resp}")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "device.key").write_bytes(key_pem)
        os.chmod(directory / "device.key", 0o600)
        (directory / "device.pem").write_text(resp["certificate_pem"])
        (directory / "ca.pem").write_text(resp["ca_pem"])
        return DeviceIdentity(
            resp["device_id"], directory, resp["signing_public_key_pem"], resp["tags"]
        )

    async def set_target(self, device_id: str, release: dict[str, Any], **extra: Any) -> int:
        """Set a device's target to ``release``; return the new revision."""
        body = {"release": release, **extra}
        status, resp = await self.api("POST", f"/api/v1/devices/{device_id}/target", body)
        if status != 201:
            raise RuntimeError(f"set target failed: {status} {resp}")
        return int(resp["revision"])

    async def long_polls(self) -> int:
        """Return how many long-polls the hub holds now (its ``/healthz`` says)."""
        status, body = await self.request("GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"healthz answered {status}: {body!r}")
        return int(body["long_polls"])

    async def wait_long_polls(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until the hub holds at least ``count`` long-polls."""
        deadline = time.monotonic() + timeout_s
        while (held := await self.long_polls()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub holds {held} long-polls, wanted {count}")
            await asyncio.sleep(0.02)

    def edgectl_sync(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``edgectl ARGS`` against this hub as admin (a real process); return it done."""
        env = {
            **os.environ,
            "EDGECTL_HUB": self.url,
            "EDGECTL_CA": str(self.ca_path),
            "EDGECTL_TOKEN_FILE": str(self.data_dir / "admin.token"),
            "PYTHONPATH": str(REPO_ROOT),
        }
        return subprocess.run(
            [sys.executable, "-m", "hub.edgectl", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    async def edgectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``edgectl ARGS`` in a thread (the event loop keeps serving)."""
        return await asyncio.to_thread(self.edgectl_sync, *args)

    def stop(self, timeout: float = 15.0) -> int:
        """Send SIGTERM and wait for the process to exit; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the hub (no shutdown at all) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


TEST_STORE_ENV = "EDGEFLEET_TEST_STORE"  # "sqlite" (default) or "postgres"
PG_ADMIN_ENV = "EDGEFLEET_PG_ADMIN_URL"  # the test server's maintenance database (tests/pgkit)
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:55432/edgefleet_test"
# Databases this process made for test hubs (name -> URL), so a test's are dropped after it.
TEST_DATABASES: dict[str, str] = {}


def hub_store_backend() -> str:
    """Return the backend test hubs run on: ``EDGEFLEET_TEST_STORE`` (sqlite or postgres)."""
    backend = os.environ.get(TEST_STORE_ENV, "sqlite") or "sqlite"
    if backend not in ("sqlite", "postgres"):
        raise ValueError(f"{TEST_STORE_ENV}={backend!r}: expected 'sqlite' or 'postgres'")
    return backend


def _pg_admin(*statements: str) -> None:
    """Run statements on the PostgreSQL test server's maintenance database (from any thread,
    in or outside an event loop)."""
    import concurrent.futures

    import asyncpg

    admin_url = os.environ.get(PG_ADMIN_ENV, DEFAULT_PG_ADMIN_URL)

    async def run() -> None:
        try:
            conn = await asyncpg.connect(admin_url, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise RuntimeError(
                f"the PostgreSQL test server at {admin_url} does not answer ({exc}); start "
                "it with `bash scripts/testenv-postgres.sh` (part of scripts/testenv.sh)"
            ) from exc
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def hub_database_url(work_dir: Path) -> str:
    """Return the PostgreSQL database of the test hub in ``work_dir`` (made empty the first
    time this process asks; a restart of the same hub gets the same database)."""
    import hashlib

    name = "edgefleet_h_" + hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:20]
    if name not in TEST_DATABASES:
        # A leftover of an earlier run in a reused temp path is dropped, never reused.
        _pg_admin(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE template0',
        )
        base, _, _ = os.environ.get(PG_ADMIN_ENV, DEFAULT_PG_ADMIN_URL).rpartition("/")
        TEST_DATABASES[name] = f"{base}/{name}"
    return TEST_DATABASES[name]


def clone_test_database(url: str, work_dir: Path) -> str:
    """Return a new test database for ``work_dir`` holding a copy of the one at ``url`` (no
    hub may be connected to that one: CREATE DATABASE ... TEMPLATE)."""
    import hashlib

    source = url.rpartition("/")[2]
    name = "edgefleet_h_" + hashlib.sha256(str(work_dir.resolve()).encode()).hexdigest()[:20]
    _pg_admin(
        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        f'CREATE DATABASE "{name}" TEMPLATE "{source}"',
    )
    TEST_DATABASES[name] = f"{url.rpartition('/')[0]}/{name}"
    return TEST_DATABASES[name]


def drop_test_databases(names: list[str] | None = None) -> None:
    """Drop the named test hub databases (default: every one this process made)."""
    for name in list(TEST_DATABASES) if names is None else names:
        if TEST_DATABASES.pop(name, None) is not None:
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_hub(
    work_dir: Path,
    *,
    port: int = 0,
    sections: dict[str, dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    serve_args: tuple[str, ...] = (),  # more ``serve`` options, e.g. ("--workers", "2")
) -> RunningHub:
    """Start ``python -m hub.cli serve`` on 127.0.0.1 and return once it accepts connections.

    ``work_dir`` gets ``data/`` (the hub's data dir), ``hub.toml``, ``hub.log`` (stderr)
    and ``hub.out`` (stdout). Reuse ``work_dir`` (and ``port``) to restart the same hub.
    ``sections`` adds config, e.g. ``{"limits": {"max_body_bytes": 65536}}``.
    With ``EDGEFLEET_TEST_STORE=postgres`` (and no ``store.url`` in ``sections``) the hub
    stores on a PostgreSQL database of its own (``hub_database_url``).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port, "data_dir": str(work_dir / "data")},
        # a test hub rarely gets a large sync body: no worker processes spawned per start
        "limits": {"prestart_parse_workers": False},
    }
    for section, values in (sections or {}).items():
        config.setdefault(section, {}).update(values)
    if hub_store_backend() == "postgres" and not config.get("store", {}).get("url"):
        config.setdefault("store", {})["url"] = hub_database_url(work_dir)
    write_config(work_dir / "hub.toml", config)
    out_path = work_dir / "hub.out"
    out_path.write_bytes(b"")
    proc_env = {**os.environ, **(env or {})}
    proc_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), proc_env.get("PYTHONPATH", "")) if p
    )
    with open(out_path, "ab") as out, open(work_dir / "hub.log", "ab") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "hub.cli", "serve", "--config", str(work_dir / "hub.toml")),
                *serve_args,
            ],
            stdout=out,
            stderr=err,
            env=proc_env,
            cwd=str(REPO_ROOT),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out_path.read_text().splitlines():
            if line.startswith("listening on https://"):
                host, _, bound = line.removeprefix("listening on https://").rpartition(":")
                token = (work_dir / "data" / "admin.token").read_text().strip()
                return RunningHub(process, work_dir, host, int(bound), token, config)
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait(5)
    log = (work_dir / "hub.log").read_text(errors="replace")
    raise RuntimeError(f"hub did not start (exit {process.returncode}):\n{log[-4000:]}")
