"""``edge-agent selftest``: check that this binary and device can do the agent's work.

Each check prints one line (``ok``, ``FAIL`` or ``skip``) and the result is 0 only if
none failed. It is what the packaging smoke tests run on every frozen binary (under
qemu for ARM), so it touches each native piece a build can get wrong: SQLite, the
Ed25519 signature code, pydantic's compiled core, TLS, the event loop, and the Docker
socket when there is one. It never writes outside a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent import __version__

if TYPE_CHECKING:
    from edge_agent.models import Target


class Skip(Exception):
    """A check that does not apply here (e.g. no Docker socket); not a failure."""


async def _check_store(work: Path) -> str:
    from edge_agent.store import Store

    store = await Store(work / "selftest.db").open()
    try:
        await store.set_meta("selftest", "1")
        if await store.get_meta("selftest") != "1":
            raise AssertionError("meta value did not round-trip")
        (mode,) = await (await store.db.execute("PRAGMA journal_mode")).fetchone()
    finally:
        await store.close()
    import sqlite3

    return f"sqlite {sqlite3.sqlite_version}, journal_mode={mode}"


def _sample_target(device_id: str, revision: int = 1) -> Target:
    from edge_agent.models import Release, Service, Target

    now = datetime.now(UTC)
    release = Release(
        name="selftest",
        version="1",
        services=[Service(name="web", image="127.0.0.1:5000/edgefleet/good:1")],
    )
    return Target(
        device_id=device_id,
        revision=revision,
        release=release,
        issued_at=now,
        expires_at=now + timedelta(hours=1),
    )


def _check_signing() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent.errors import TargetRejected
    from edge_agent.signing import sign_target, verify_target

    key = Ed25519PrivateKey.generate()
    signed = sign_target(_sample_target("selftest-device"), key)
    now = datetime.now(UTC)
    target = verify_target(
        signed, key.public_key(), device_id="selftest-device", applied_revision=0, now=now
    )
    if target.revision != 1:
        raise AssertionError("verified target lost its revision")
    other = Ed25519PrivateKey.generate().public_key()
    try:
        verify_target(signed, other, device_id="selftest-device", applied_revision=0, now=now)
    except TargetRejected:
        pass
    else:
        raise AssertionError("a signature from another key was accepted")
    return "Ed25519 sign, verify, and reject a foreign key"


def _check_validation() -> str:
    from edge_agent.errors import InvalidDocument
    from edge_agent.models import Target, parse_document

    good = _sample_target("selftest-device").model_dump(mode="json")
    parse_document(Target, good)
    bad = {**good, "revision": -1}
    try:
        parse_document(Target, bad)
    except InvalidDocument as exc:
        if not any(f["field"] == "revision" for f in exc.errors):
            raise AssertionError(f"error does not name the field: {exc.message}") from None
    else:
        raise AssertionError("a target with revision -1 was accepted")
    import pydantic_core

    return f"pydantic-core {pydantic_core.__version__}: good accepted, bad field named"


def _check_tls() -> str:
    ctx = ssl.create_default_context()
    return f"{ssl.OPENSSL_VERSION}, {ctx.cert_store_stats().get('x509_ca', 0)} CA certs loaded"


async def _check_loop() -> str:
    async def tick() -> int:
        await asyncio.sleep(0)
        return 1

    # The agent runs on asyncio's standard loop (not uvloop: see docs/operations.md).
    # A second loop cannot run in this thread, so give it a thread of its own.
    if await asyncio.to_thread(lambda: asyncio.run(tick())) != 1:
        raise AssertionError("the event loop returned the wrong result")
    return f"asyncio {type(asyncio.get_running_loop()).__name__} runs a loop"


def _docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return Path(host[len("unix://") :])
    return Path("/var/run/docker.sock")


async def _check_docker() -> str:
    sock = _docker_socket()
    if not sock.exists():
        raise Skip(f"no Docker socket at {sock}")
    if not os.access(sock, os.R_OK | os.W_OK):
        raise PermissionError(f"{sock} exists but this user cannot use it")
    from edge_agent.runtime import DockerRuntime

    runtime = DockerRuntime("selftest", docker_url=f"unix://{sock}")
    try:
        version = await asyncio.wait_for(runtime.ping(), 10)
    finally:
        await runtime.close()
    return f"engine {version.get('Version')} (API {version.get('ApiVersion')}) at {sock}"


async def run_selftest(data_dir: Path | None = None) -> int:
    """Run every check, print one line each, and return 0 if none failed."""
    print(
        f"edge-agent {__version__} selftest: python {platform.python_version()}"
        f" on {platform.machine()}, {'frozen' if getattr(sys, 'frozen', False) else 'source'}"
    )
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edge-agent-selftest-", dir=data_dir))
    checks: list[tuple[str, Callable[[], Awaitable[str] | str]]] = [
        ("store", lambda: _check_store(work)),
        ("signing", _check_signing),
        ("validation", _check_validation),
        ("tls", _check_tls),
        ("event-loop", _check_loop),
        ("docker", _check_docker),
    ]
    failed = 0
    try:
        for name, check in checks:
            try:
                result = check()
                detail = await result if asyncio.iscoroutine(result) else result
            except Skip as exc:
                print(f"skip {name}: {exc}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # each check reports its own failure and the rest go on
                failed += 1
                print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            else:
                print(f"ok   {name}: {detail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("selftest " + ("passed" if not failed else f"FAILED ({failed} check(s))"))
    return 1 if failed else 0
