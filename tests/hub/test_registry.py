"""Digest resolution against the real registries of the test environment (:5000 open,
:5001 Basic), an OCI index pushed through the registry API, and a loopback Bearer flow."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from edge_agent.models import RegistryAuth
from hub.config import RegistriesConfig
from hub.errors import ImageNotResolved, InvalidReference, RegistryUnavailable
from hub.registry import resolve_images

OPEN = "127.0.0.1:5000"
BASIC = "127.0.0.1:5001"
GOOD = "edgefleet/good"
CREDS = RegistryAuth(server=BASIC, username="edge", password="edgepass")  # scripts/testenv.sh
CONFIG = RegistriesConfig()


def docker_digest(image: str) -> str:
    """Return the repo digest the Docker engine recorded when the image was pushed."""
    out = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .RepoDigests}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    repo = image.rsplit(":", 1)[0]
    return next(d for d in json.loads(out) if d.startswith(repo + "@")).split("@", 1)[1]


async def resolve_one(image: str, *auths: RegistryAuth, config: RegistriesConfig = CONFIG):
    return (await resolve_images([image], config, auths))[image]


async def test_tag_on_open_registry_resolves_to_the_pushed_digest():
    resolved = await resolve_one(f"{OPEN}/{GOOD}:1")
    assert resolved.digest == docker_digest(f"{OPEN}/{GOOD}:1")
    assert resolved.pinned == f"{OPEN}/{GOOD}@{resolved.digest}"


async def test_pinned_digest_is_checked_to_exist():
    digest = docker_digest(f"{OPEN}/{GOOD}:1")
    assert (await resolve_one(f"{OPEN}/{GOOD}@{digest}")).digest == digest
    absent = "sha256:" + "0" * 64
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{OPEN}/{GOOD}@{absent}")
    assert exc.value.fields[0]["registry_status"] == 404


async def test_unknown_tag_fails_with_the_registrys_answer():
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{OPEN}/{GOOD}:no-such-tag")
    field = exc.value.fields[0]
    assert field["registry_status"] == 404
    assert field["registry_errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert f"{OPEN}/{GOOD}:no-such-tag" in exc.value.message and "404" in exc.value.message


async def test_basic_registry_resolves_with_the_release_credentials():
    resolved = await resolve_one(f"{BASIC}/{GOOD}:1", CREDS)
    assert resolved.digest == docker_digest(f"{BASIC}/{GOOD}:1")


@pytest.mark.parametrize(
    "auths",
    [(), (RegistryAuth(server=BASIC, username="edge", password="wrong"),)],
    ids=["no-credentials", "wrong-password"],
)
async def test_basic_registry_refusal_is_its_401_named(auths):
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{BASIC}/{GOOD}:1", *auths)
    field = exc.value.fields[0]
    assert field["registry_status"] == 401 and field["registry_errors"][0]["code"] == "UNAUTHORIZED"
    assert BASIC in exc.value.message


async def test_multi_arch_index_resolves_to_the_index_digest():
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"http://{OPEN}/v2/{GOOD}/manifests/1",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        ) as resp:
            manifest = await resp.read()
            media_type = resp.headers["Content-Type"]
        platform = {"architecture": "amd64", "os": "linux"}
        entry = {"mediaType": media_type, "size": len(manifest), "platform": platform}
        entry["digest"] = "sha256:" + hashlib.sha256(manifest).hexdigest()
        arm = {**entry, "platform": {"architecture": "arm64", "os": "linux"}}
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [entry, arm],
            }
        ).encode()
        async with session.put(
            f"http://{OPEN}/v2/{GOOD}/manifests/multi",
            data=index,
            headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            pushed = resp.headers["Docker-Content-Digest"]
    resolved = await resolve_one(f"{OPEN}/{GOOD}:multi")
    assert resolved.digest == pushed == "sha256:" + hashlib.sha256(index).hexdigest()
    assert resolved.media_type == "application/vnd.oci.image.index.v1+json"
    assert resolved.digest != entry["digest"]


# A loopback registry speaking the Bearer token protocol (no real token-auth registry in
# the test environment): 401 + challenge, token endpoint checking Basic credentials.
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'


@pytest.fixture
async def bearer_registry() -> AsyncIterator[dict]:
    seen: dict = {"token_queries": [], "token_auth": []}

    async def token(request: web.Request) -> web.Response:
        seen["token_queries"].append(dict(request.query))
        seen["token_auth"].append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"u:p").decode():
            return web.json_response(
                {"errors": [{"code": "DENIED", "message": "bad creds"}]}, status=401
            )
        return web.json_response({"token": "tok-123"})

    async def manifest(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok-123":
            challenge = (
                f'Bearer realm="http://{request.host}/token",service="fake",'
                f'scope="repository:{request.match_info["repo"]}:pull"'
            )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        if request.match_info["ref"] != "1":
            return web.json_response(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}, status=404
            )
        digest = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
        headers = {"Docker-Content-Digest": digest}
        ctype = "application/vnd.oci.image.manifest.v1+json"
        if request.method == "HEAD":
            return web.Response(headers=headers, content_type=ctype)
        return web.Response(body=MANIFEST, headers=headers, content_type=ctype)

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", manifest)
    runner, seen["host"] = await _serve(app)
    yield seen
    await runner.cleanup()


async def test_bearer_challenge_fetches_a_token_and_retries(bearer_registry):
    host = bearer_registry["host"]
    creds = RegistryAuth(server=host, username="u", password="p")
    resolved = await resolve_one(f"{host}/org/app:1", creds)
    assert resolved.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert bearer_registry["token_queries"][0] == {
        "service": "fake",
        "scope": "repository:org/app:pull",
    }


async def test_bearer_token_refusal_is_named(bearer_registry):
    host = bearer_registry["host"]
    creds = RegistryAuth(server=host, username="u", password="wrong")
    with pytest.raises(ImageNotResolved) as exc:
        await resolve_one(f"{host}/org/app:1", creds)
    assert "token endpoint" in exc.value.message and "DENIED" in exc.value.message
    assert exc.value.fields[0]["registry_status"] == 401


async def test_unreachable_registry_is_unavailable_and_names_the_image():
    config = RegistriesConfig(timeout_s=2)
    with pytest.raises(RegistryUnavailable) as exc:
        await resolve_one("127.0.0.1:1/app:1", config=config)
    assert exc.value.status == 502 and "127.0.0.1:1/app:1" in exc.value.message


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


async def test_manifest_over_the_size_bound_is_refused_naming_it():
    async def manifest(request: web.Request) -> web.Response:  # no digest header: GET
        body = b"{" + b" " * 5000 + b"}"
        return web.Response(body=body, content_type="application/vnd.oci.image.manifest.v1+json")

    app = web.Application()
    app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", manifest)
    runner, host = await _serve(app)
    try:
        with pytest.raises(RegistryUnavailable) as exc:
            await resolve_one(f"{host}/app:1", config=RegistriesConfig(max_manifest_bytes=1024))
        assert "more than 1024 bytes" in exc.value.message
        resolved = await resolve_one(f"{host}/app:1")  # within the default bound
        assert resolved.digest == "sha256:" + hashlib.sha256(b"{" + b" " * 5000 + b"}").hexdigest()
    finally:
        await runner.cleanup()


async def test_malformed_references_are_all_named_before_any_request():
    images = ["Bad Image!", f"{OPEN}/{GOOD}:1", "nginx:"]
    with pytest.raises(InvalidReference) as exc:
        await resolve_images(images, CONFIG)
    assert [f["image"] for f in exc.value.fields] == ["Bad Image!", "nginx:"]
    assert exc.value.status == 422
