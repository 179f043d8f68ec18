"""The hub's release-signing routes (hub/trust_api.py) on a hub of their own (real process).

Uploads are verified before anything is stored (400 naming the field); signatures for
a manifest the hub holds are merged; targets carry the documents only to agents that
report the feature ``release_trust``.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from docker_env import TestImages

from edge_agent import release_trust as rt
from edge_agent.models import Release
from hub.testing import DeviceIdentity, RunningHub, start_hub

A, B, C = (rt.generate_key() for _ in range(3))
LATER = datetime.now(UTC) + timedelta(days=30)


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[RunningHub]:
    running = start_hub(tmp_path / "hub")
    yield running
    assert running.stop() == 0


def root(
    version: int, keys: list[Any], k: int, signers: list[Any], expires: datetime = LATER
) -> dict[str, Any]:
    doc = rt.RootDoc(
        version=version, threshold=k, keys=[rt.public_b64(x) for x in keys], expires=expires
    )
    return rt.SignedRoot(root=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, signers)).model_dump(
        mode="json"
    )


def manifest(
    version: int, releases: dict[str, str], signers: list[Any], expires: datetime = LATER
) -> dict[str, Any]:
    doc = rt.ManifestDoc(version=version, expires=expires, releases=releases)
    return rt.SignedManifest(
        manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, signers)
    ).model_dump(mode="json")


async def create_release(hub: RunningHub, images: TestImages, version: str) -> str:
    doc = {
        "name": "app",
        "version": version,
        "services": [{"name": "web", "image": images.digest_ref("good")}],
    }
    status, body = await hub.api("POST", "/api/v1/releases", {"release": doc})
    assert status == 201, body
    return rt.release_digest(Release.model_validate(body["release"]))


async def test_root_uploads_are_verified_before_they_are_stored(own_hub: RunningHub) -> None:
    cases = [
        (root(2, [A, B], 2, [A, B]), "root.version"),
        (root(1, [A, B], 2, [A]), "signatures"),
        (root(1, [A, B], 2, [A, B], datetime.now(UTC) - timedelta(seconds=1)), "root.expires"),
    ]
    for body, field in cases:
        status, answer = await own_hub.api("POST", "/api/v1/trust/roots", body)
        assert (status, answer["fields"][0]["field"]) == (400, field), answer
    assert await own_hub.api("GET", "/api/v1/trust/roots") == (200, {"roots": []})
    assert (await own_hub.api("POST", "/api/v1/trust/roots", root(1, [A, B, C], 2, [A, B])))[
        0
    ] == 201
    status, answer = await own_hub.api("POST", "/api/v1/trust/roots", root(1, [A], 1, [A]))
    assert status == 400 and "does not follow" in answer["message"], answer


async def test_manifest_uploads_are_verified_and_signatures_merge(
    own_hub: RunningHub, images: TestImages
) -> None:
    digest = await create_release(own_hub, images, "1")
    status, _ = await own_hub.api(
        "POST", "/api/v1/trust/manifest", manifest(1, {"app@1": digest}, [A])
    )
    assert status == 409  # no root yet
    assert (await own_hub.api("POST", "/api/v1/trust/roots", root(1, [A, B, C], 2, [A, B])))[
        0
    ] == 201
    refused = [
        (manifest(1, {"app@9": digest}, [A]), "manifest.releases.app@9"),
        (manifest(1, {"app@1": "sha256:" + "0" * 64}, [A]), "manifest.releases.app@1"),
        (
            manifest(1, {"app@1": digest}, [A], datetime.now(UTC) - timedelta(seconds=1)),
            "manifest.expires",
        ),
        (manifest(1, {"app@1": digest}, [rt.generate_key()]), "signatures.0.key_id"),
    ]
    for body, field in refused:
        status, answer = await own_hub.api("POST", "/api/v1/trust/manifest", body)
        assert (status, answer["fields"][0]["field"]) == (400, field), answer
    forged = manifest(1, {"app@1": digest}, [A])
    forged["signatures"][0]["sig"] = manifest(1, {}, [A])["signatures"][0]["sig"]
    status, answer = await own_hub.api("POST", "/api/v1/trust/manifest", forged)
    assert (status, answer["fields"][0]["field"]) == (400, "signatures.0.sig"), answer

    body = manifest(1, {"app@1": digest}, [A])
    status, first = await own_hub.api("POST", "/api/v1/trust/manifest", body)
    assert (status, first["signatures"], first["complete"]) == (201, 1, False)
    _, state = await own_hub.api("GET", "/api/v1/trust/manifest")
    assert state["current"] is None and state["pending"]["manifest"]["version"] == 1
    body["signatures"] = manifest(1, {"app@1": digest}, [B])["signatures"]
    status, second = await own_hub.api("POST", "/api/v1/trust/manifest", body)
    assert (status, second["signatures"], second["complete"]) == (201, 2, True)
    _, state = await own_hub.api("GET", "/api/v1/trust/manifest")
    assert state["pending"] is None and len(state["current"]["signatures"]) == 2
    # another document under a version that is already complete
    status, answer = await own_hub.api("POST", "/api/v1/trust/manifest", manifest(1, {}, [A, B]))
    assert status == 409 and answer["fields"][0]["field"] == "manifest.version", answer


async def sync_features(hub: RunningHub, device: DeviceIdentity, features: list[str]) -> None:
    body = {"protocol": 3, "epoch": "e1", "features": features, "entries": []}
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    status, _ = await hub.request(
        "POST",
        "/v1/sync",
        data=gzip.compress(json.dumps(body).encode()),
        headers=headers,
        ssl_context=device.ssl_context(),
    )
    assert status == 200


async def target_payload(hub: RunningHub, device_id: str) -> dict[str, Any]:
    status, body = await hub.api("GET", f"/api/v1/devices/{device_id}/target")
    assert status == 200, body
    return dict(json.loads(base64.b64decode(body["signed"]["payload"])))


async def test_targets_carry_release_trust_only_to_agents_that_read_it(
    own_hub: RunningHub, images: TestImages, tmp_path: Path
) -> None:
    digest = await create_release(own_hub, images, "1")
    assert (await own_hub.api("POST", "/api/v1/trust/roots", root(1, [A, B], 2, [A, B])))[0] == 201
    assert (
        await own_hub.api("POST", "/api/v1/trust/manifest", manifest(1, {"app@1": digest}, [A, B]))
    )[0] == 201
    _, shown = await own_hub.api("GET", "/api/v1/releases/app@1")
    old = await own_hub.enroll(await own_hub.create_token(), tmp_path / "old")
    new = await own_hub.enroll(await own_hub.create_token(), tmp_path / "new")
    await sync_features(own_hub, old, ["healthcheck"])
    await sync_features(own_hub, new, ["healthcheck", "release_trust"])
    for device in (old, new):
        await own_hub.set_target(device.device_id, shown["release"])
    assert "release_trust" not in await target_payload(own_hub, old.device_id)
    trust = rt.ReleaseTrust.model_validate(
        (await target_payload(own_hub, new.device_id))["release_trust"]
    )
    assert [r.root.version for r in trust.roots] == [1]
    assert trust.manifest is not None and trust.manifest.manifest.releases == {"app@1": digest}
