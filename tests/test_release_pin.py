"""The device's release pin (edge_agent/release_pin.py) on a real anchor.json in tmp_path."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from test_release_trust import NOW, ROOT1, A, B, make_manifest, release

from edge_agent import release_trust as rt
from edge_agent.anchor import RevisionAnchor
from edge_agent.errors import ConfigError, ReleaseUntrusted
from edge_agent.models import Target
from edge_agent.release_pin import ReleasePin


def target(rel_version: str, manifest: rt.SignedManifest | None, roots: bool = True) -> Target:
    trust = rt.ReleaseTrust(roots=[ROOT1] if roots else [], manifest=manifest)
    return Target(device_id="d", revision=1, release=release(rel_version), release_trust=trust)


def pin_at(tmp_path: Path, configured: Path | None = None) -> ReleasePin:
    return ReleasePin(RevisionAnchor(tmp_path, "d").load(), configured).load()


async def test_a_withdrawing_manifest_raises_the_floor_even_when_it_refuses_its_release(
    tmp_path: Path,
) -> None:
    pin = pin_at(tmp_path)
    await pin.admit(target("1", make_manifest(2, [release("1")], [A, B])), NOW)
    with pytest.raises(ReleaseUntrusted, match="not vouched"):
        await pin.admit(target("1", make_manifest(3, [release("2")], [A, B])), NOW)
    with pytest.raises(ReleaseUntrusted, match="rollback"):
        await pin.admit(target("1", make_manifest(2, [release("1")], [A, B])), NOW)


async def test_the_pin_survives_a_store_wipe_in_anchor_json(tmp_path: Path) -> None:
    pin = pin_at(tmp_path)
    await pin.admit(target("1", make_manifest(4, [release("1")], [A, B])), NOW)
    (tmp_path / "agent.db").write_bytes(b"")  # the store is not where the pin lives
    again = pin_at(tmp_path)
    assert again.pinned is not None and again.pinned.manifest_version == 4
    assert json.loads((tmp_path / "anchor.json").read_text())["release_trust"]["root"] == (
        ROOT1.model_dump(mode="json")
    )
    with pytest.raises(ReleaseUntrusted, match="carries no operator signatures"):
        await again.admit(Target(device_id="d", revision=2, release=release("1")), NOW)


async def test_an_install_time_root_is_enforced_from_the_first_target(tmp_path: Path) -> None:
    root_file = tmp_path / "root.json"
    root_file.write_text(ROOT1.model_dump_json())
    pin = pin_at(tmp_path, root_file)
    with pytest.raises(ReleaseUntrusted, match="carries no operator signatures"):
        await pin.admit(Target(device_id="d", revision=1, release=release("1")), NOW)
    # a root the hub sends does not replace the configured one (v1 is pinned already)
    other = rt.generate_key()
    doc = rt.RootDoc(
        version=1, threshold=1, keys=[rt.public_b64(other)], expires=ROOT1.root.expires
    )
    fake = rt.SignedRoot(root=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, [other]))
    forged = rt.ReleaseTrust(roots=[fake], manifest=make_manifest(1, [release("1")], [other]))
    t = Target(device_id="d", revision=1, release=release("1"), release_trust=forged)
    with pytest.raises(ReleaseUntrusted, match="0 valid signature"):
        await pin.admit(t, NOW)


def test_an_unsigned_install_time_root_is_a_config_error(tmp_path: Path) -> None:
    root_file = tmp_path / "root.json"
    root_file.write_text(ROOT1.model_copy(update={"signatures": []}).model_dump_json())
    with pytest.raises(ConfigError, match=r"trust\.release_root"):
        pin_at(tmp_path, root_file)


async def test_without_a_pin_or_a_root_nothing_is_checked(tmp_path: Path) -> None:
    pin = pin_at(tmp_path)
    await pin.admit(Target(device_id="d", revision=1, release=release("1")), NOW)
    assert pin.pinned is None and not (tmp_path / "anchor.json").exists()


async def test_a_running_release_whose_manifest_expired_is_flagged_stale(tmp_path: Path) -> None:
    pin = pin_at(tmp_path)
    assert pin.report(NOW) is None
    expires = NOW + timedelta(hours=1)
    await pin.admit(target("1", make_manifest(2, [release("1")], [A, B], expires)), NOW)
    assert pin.report(NOW) == {
        "root_version": 1,
        "manifest_version": 2,
        "manifest_expires": expires.isoformat(),
        "stale": False,
    }
    later = pin_at(tmp_path).report(expires)  # from anchor.json, after a restart
    assert later is not None and later["stale"] is True
