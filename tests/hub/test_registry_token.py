"""Bearer-token auth against a REAL docker-registry configured with ``auth: token``.

The token server is ours (a small aiohttp app issuing ES256 JWTs with an ``x5c`` chain
the registry trusts through ``rootcertbundle``), as a real deployment's auth service
would; the registry, its challenge and its token checks are the real thing. The image
is copied blob by blob from the :5000 registry, so its digest must equal Docker's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from test_registry import CONFIG, GOOD, OPEN, docker_digest, resolve_one

from edge_agent.models import RegistryAuth
from hub.errors import ImageNotResolved

SERVICE = "edgefleet-token-test"
ISSUER = "edgefleet-test-issuer"
USER, PASSWORD = "tok-user", "tok-pass"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Sign registry tokens (ES256 JWT) with a self-signed certificate in the x5c header."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def token(self, access: list[dict]) -> str:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        r, s = decode_dss_signature(
            self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def token_registry(tmp_path: Path) -> AsyncIterator[dict]:
    issuer = TokenIssuer()
    seen: dict = {"queries": []}
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    async def token(request: web.Request) -> web.Response:
        seen["queries"].append(dict(request.query))
        if request.headers.get("Authorization") != expected:
            body = {"errors": [{"code": "DENIED", "message": "bad credentials"}]}
            return web.json_response(body, status=401)
        access = []
        for scope in request.query.getall("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        jwt = issuer.token(access)
        return web.json_response({"token": jwt, "access_token": jwt, "expires_in": 300})

    app = web.Application()
    app.router.add_get("/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    token_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    (tmp_path / "root.pem").write_bytes(issuer.pem())
    port = _free_port()
    (tmp_path / "config.yml").write_text(
        f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {tmp_path / "data"}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: http://127.0.0.1:{token_port}/token
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {tmp_path / "root.pem"}
"""
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(tmp_path / "config.yml")], stdout=log, stderr=log
    )
    host = f"127.0.0.1:{port}"
    try:
        await _wait_answering(host, proc, tmp_path)
        await _copy_good(host, issuer)
        yield {"host": host, "seen": seen}
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()


async def _wait_answering(host: str, proc: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            try:
                async with session.get(f"http://{host}/v2/") as resp:
                    if resp.status == 401:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "token registry did not answer"
            await asyncio.sleep(0.05)  # polling the condition above, with its deadline


async def _copy_good(host: str, issuer: TokenIssuer) -> None:
    """Copy edgefleet/good:1 from the open registry, blob by blob, with a push token."""
    access = [{"type": "repository", "name": GOOD, "actions": ["pull", "push"]}]
    auth = {"Authorization": f"Bearer {issuer.token(access)}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://{OPEN}/v2/{GOOD}/manifests/1", headers={"Accept": MANIFEST_V2}
        ) as resp:
            manifest = await resp.read()
        doc = json.loads(manifest)
        for blob in [doc["config"], *doc["layers"]]:
            async with session.get(f"http://{OPEN}/v2/{GOOD}/blobs/{blob['digest']}") as resp:
                data = await resp.read()
            start = f"http://{host}/v2/{GOOD}/blobs/uploads/"
            async with session.post(start, headers=auth) as resp:
                assert resp.status == 202, await resp.text()
                location = resp.headers["Location"]
            sep = "&" if "?" in location else "?"
            url = f"{location}{sep}digest={blob['digest']}"
            headers = {**auth, "Content-Type": "application/octet-stream"}
            async with session.put(url, data=data, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
        async with session.put(
            f"http://{host}/v2/{GOOD}/manifests/1",
            data=manifest,
            headers={**auth, "Content-Type": MANIFEST_V2},
        ) as resp:
            assert resp.status == 201, await resp.text()


async def test_real_token_registry_resolves_through_the_bearer_flow(token_registry):
    host = token_registry["host"]
    creds = RegistryAuth(server=host, username=USER, password=PASSWORD)
    resolved = await resolve_one(f"{host}/{GOOD}:1", creds)
    assert resolved.digest == docker_digest(f"{OPEN}/{GOOD}:1")
    assert token_registry["seen"]["queries"][-1] == {
        "service": SERVICE,
        "scope": f"repository:{GOOD}:pull",
    }


async def test_real_token_registry_refusals_are_named(token_registry):
    host = token_registry["host"]
    wrong = RegistryAuth(server=host, username=USER, password="wrong")
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{host}/{GOOD}:1", wrong)
    assert exc.value.fields[0]["registry_status"] == 401 and "DENIED" in exc.value.message
    right = RegistryAuth(server=host, username=USER, password=PASSWORD)
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{host}/{GOOD}:nope", right, config=CONFIG)
    assert exc.value.fields[0]["registry_errors"][0]["code"] == "MANIFEST_UNKNOWN"
