"""Release signing beyond the hub's targets: a technician's local apply is held to the
pinned manifest, and the stale-manifest flag is reported to the hub."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_lifecycle import Converger
from test_release_trust import A, B, C, release

from edge_agent import release_trust as rt
from edge_agent.anchor import RevisionAnchor
from edge_agent.errors import ReleaseUntrusted
from edge_agent.hub_link import release_trust_stale
from edge_agent.lifecycle import Lifecycle, local_target
from edge_agent.models import Target
from edge_agent.release_pin import ReleasePin
from edge_agent.store import Store

EXPIRES = datetime.now(UTC) + timedelta(days=365)


def _trust(releases: list[str]) -> rt.ReleaseTrust:
    root_doc = rt.RootDoc(
        version=1, threshold=2, keys=[rt.public_b64(x) for x in (A, B, C)], expires=EXPIRES
    )
    root = rt.SignedRoot(root=root_doc, signatures=rt.sign(rt.ROOT_TYPE, root_doc, [A, B]))
    listed = [release(v) for v in releases]
    doc = rt.ManifestDoc(
        version=2, expires=EXPIRES, releases={r.ref: rt.release_digest(r) for r in listed}
    )
    manifest = rt.SignedManifest(manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, [A, B]))
    return rt.ReleaseTrust(roots=[root], manifest=manifest)


async def _lifecycle(tmp_path: Path, store: Store) -> Lifecycle:
    pin = ReleasePin(RevisionAnchor(tmp_path, "d").load()).load()
    lc = Lifecycle(store, Converger(), device_id="d", release_pin=pin)
    hub = Target(device_id="d", revision=1, release=release("1"), release_trust=_trust(["1"]))
    await lc.accept(hub, source="hub", actor="hub")  # pins the root, manifest v2
    return lc


def _local(version: str) -> Target:
    return local_target({"release": release(version).model_dump(mode="json")}, "d")


async def test_a_technician_local_apply_is_checked_against_the_pinned_manifest(
    tmp_path: Path,
) -> None:
    store = await Store(tmp_path / "agent.db").open()
    try:
        lc = await _lifecycle(tmp_path, store)
        with pytest.raises(ReleaseUntrusted, match="not vouched"):
            await lc.accept(_local("2"), source="local", actor="tech")
        mixed = release("1", image="other@sha256:" + "b" * 64)  # same ref, other content
        body: dict[str, Any] = {"release": mixed.model_dump(mode="json")}
        with pytest.raises(ReleaseUntrusted):
            await lc.accept(local_target(body, "d"), source="local", actor="tech")
        ref = await lc.accept(_local("1"), source="local", actor="tech")  # listed: applied
        assert ref.stored.local_seq == 1
    finally:
        await store.close()


def test_the_stale_manifest_flag_is_what_the_hub_is_told() -> None:
    assert release_trust_stale({"release_trust": {"stale": True}}) is True
    assert release_trust_stale({"release_trust": {"stale": False}}) is False
    assert release_trust_stale({}) is None  # no pin: nothing to report
