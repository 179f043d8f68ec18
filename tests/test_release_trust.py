"""Release signing (edge_agent/release_trust.py): the TUF/Uptane attacks, as tables, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import release_trust as rt
from edge_agent.errors import ReleaseUntrusted, TargetRejected
from edge_agent.models import Release, Target
from edge_agent.signing import read_target, sign_target

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)


def release(version: str = "1", image: str = "app@sha256:" + "a" * 64, **extra: object) -> Release:
    doc = {"name": "app", "version": version, "services": [{"name": "web", "image": image}]}
    return Release.model_validate({**doc, **extra})


def make_root(
    version: int, keys: list[Ed25519PrivateKey], k: int, signers: list[Ed25519PrivateKey]
) -> rt.SignedRoot:
    doc = rt.RootDoc(
        version=version, threshold=k, keys=[rt.public_b64(x) for x in keys], expires=LATER
    )
    return rt.SignedRoot(root=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, signers))


def make_manifest(
    version: int,
    releases: list[Release],
    signers: list[Ed25519PrivateKey],
    expires: datetime = LATER,
) -> rt.SignedManifest:
    doc = rt.ManifestDoc(
        version=version, expires=expires, releases={r.ref: rt.release_digest(r) for r in releases}
    )
    return rt.SignedManifest(manifest=doc, signatures=rt.sign(rt.MANIFEST_TYPE, doc, signers))


KEYS = [rt.generate_key() for _ in range(5)]
A, B, C, D, E = KEYS
ROOT1 = make_root(1, [A, B, C], 2, [A, B])


def pin(manifest_version: int = 0, root: rt.SignedRoot = ROOT1) -> rt.PinnedTrust:
    return rt.PinnedTrust(root=root, manifest_version=manifest_version)


def check(trust: rt.ReleaseTrust | None, rel: Release, pinned: rt.PinnedTrust | None = None):
    return rt.check_release(trust, pinned if pinned is not None else pin(), rel, NOW)


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    assert len(rt.key_id(rt.public_b64(A))) == 64
    assert rt.key_id(rt.public_b64(A)) != rt.key_id(rt.public_b64(B))


def test_release_digest_covers_everything_that_runs_but_not_registry_credentials() -> None:
    base = release()
    creds = release(registry_auth=[{"server": "r", "username": "u", "password": "p"}])
    assert rt.release_digest(base) == rt.release_digest(creds)
    other_image = release(image="app@sha256:" + "b" * 64)
    privileged = Release.model_validate(
        {
            "name": "app",
            "version": "1",
            "services": [{"name": "web", "image": base.services[0].image, "privileged": True}],
        }
    )
    net = release(networks={"back": {}})
    digests = {rt.release_digest(r) for r in (base, other_image, privileged, net, release("2"))}
    assert len(digests) == 5


def test_vouched_release_is_accepted_and_raises_the_pinned_manifest_version() -> None:
    trust = rt.ReleaseTrust(roots=[ROOT1], manifest=make_manifest(3, [release()], [A, C]))
    new = check(trust, release())
    assert new is not None and new.manifest_version == 3 and new.root.root.version == 1


@pytest.mark.parametrize(
    ("name", "manifest", "rel", "reason"),
    [
        # arbitrary release: the hub deploys one no operator listed
        ("arbitrary", make_manifest(3, [release("1")], [A, B]), release("evil"), "not vouched"),
        # threshold k-1: one valid signature where two are needed
        ("threshold", make_manifest(3, [release()], [A]), release(), "1 valid signature"),
        # a key of the same signer twice counts once
        ("duplicate", make_manifest(3, [release()], [A, A]), release(), "1 valid signature"),
        # hub key alone: the hub signs the manifest with its own (or any non-root) key
        ("hub_key", make_manifest(3, [release()], [D, E]), release(), "0 valid signature"),
        # mix-and-match: the listed name@version with another release's services
        (
            "mix",
            make_manifest(3, [release()], [A, B]),
            release(image="app@sha256:" + "c" * 64),
            "content digest",
        ),
        # indefinite freeze: a manifest past its expiry is stale
        (
            "freeze",
            make_manifest(3, [release()], [A, B], NOW - timedelta(seconds=1)),
            release(),
            "stale",
        ),
        # rollback: a manifest older than one already seen (v5 pinned)
        ("rollback", make_manifest(4, [release()], [A, B]), release(), "rollback"),
    ],
)
def test_attack_is_refused(
    name: str, manifest: rt.SignedManifest, rel: Release, reason: str
) -> None:
    trust = rt.ReleaseTrust(roots=[ROOT1], manifest=manifest)
    with pytest.raises(ReleaseUntrusted, match=reason):
        check(trust, rel, pin(5 if name == "rollback" else 0))


def test_root_document_signatures_do_not_pass_as_a_manifest() -> None:
    doc = rt.ManifestDoc(
        version=3, expires=LATER, releases={release().ref: rt.release_digest(release())}
    )
    forged = rt.SignedManifest(manifest=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, [A, B]))
    with pytest.raises(ReleaseUntrusted, match="0 valid signature"):
        check(rt.ReleaseTrust(roots=[ROOT1], manifest=forged), release())


def test_rollback_to_a_withdrawn_release_is_refused_while_a_listed_one_is_kept() -> None:
    v1, v2, v3 = release("1"), release("2"), release("3")
    newest = make_manifest(7, [v2, v3], [A, B])  # v1 withdrawn, v2 (previous) still vouched
    trust = rt.ReleaseTrust(manifest=newest)
    with pytest.raises(ReleaseUntrusted, match="not vouched"):
        check(trust, v1, pin(6))
    assert check(trust, v2, pin(7)) is not None  # automatic rollback to the previous one
    old = rt.ReleaseTrust(manifest=make_manifest(6, [v1, v2], [A, B]))  # replayed older list
    with pytest.raises(ReleaseUntrusted, match="rollback"):
        check(old, v1, pin(7))


def test_a_pinned_device_refuses_a_release_without_signatures_even_when_the_hub_drops_them() -> (
    None
):
    with pytest.raises(ReleaseUntrusted, match="carries no operator signatures"):
        check(None, release())
    with pytest.raises(ReleaseUntrusted, match="carries no operator signatures"):
        check(rt.ReleaseTrust(roots=[ROOT1]), release())


def test_a_device_without_a_pin_and_without_roots_does_not_check() -> None:
    assert rt.check_release(None, None, release(), NOW) is None


def test_trust_on_first_use_pins_the_first_root_sent() -> None:
    trust = rt.ReleaseTrust(roots=[ROOT1], manifest=make_manifest(1, [release()], [B, C]))
    new = rt.check_release(trust, None, release(), NOW)
    assert new is not None and new.root == ROOT1


def test_first_root_below_its_own_threshold_is_refused() -> None:
    weak = make_root(1, [A, B, C], 2, [A])
    with pytest.raises(ReleaseUntrusted, match="root v1 has 1 valid"):
        rt.verify_first_root(weak)


@pytest.mark.parametrize(
    ("signers", "ok"),
    [
        ([A, B, D, E], True),  # k(1)=2 old keys and k(2)=2 new keys
        ([D, E], False),  # new keys only
        ([A, B], False),  # old keys only (the new root's own threshold unmet)
        ([A, D, E], False),  # old threshold - 1
    ],
)
def test_rotation_needs_the_old_keys_and_the_new_ones(
    signers: list[Ed25519PrivateKey], ok: bool
) -> None:
    root2 = make_root(2, [D, E], 2, signers)
    if ok:
        assert rt.update_root(ROOT1, [root2]) == root2
    else:
        with pytest.raises(ReleaseUntrusted, match="root v2 has"):
            rt.update_root(ROOT1, [root2])


def test_after_rotation_only_the_new_keys_vouch() -> None:
    root2 = make_root(2, [D, E], 2, [A, B, D, E])
    old_keys = rt.ReleaseTrust(roots=[ROOT1, root2], manifest=make_manifest(2, [release()], [A, B]))
    with pytest.raises(ReleaseUntrusted, match="root v2's keys"):
        check(old_keys, release())
    new_keys = rt.ReleaseTrust(roots=[ROOT1, root2], manifest=make_manifest(2, [release()], [D, E]))
    pinned = check(new_keys, release())
    assert pinned is not None and pinned.root == root2


def test_a_root_version_gap_is_refused() -> None:
    root3 = make_root(3, [D, E], 2, [A, B, D, E])
    with pytest.raises(ReleaseUntrusted, match="does not follow"):
        rt.update_root(ROOT1, [root3])


def test_an_expired_root_is_refused() -> None:
    doc = ROOT1.root.model_copy(update={"expires": NOW})
    stale = rt.SignedRoot(root=doc, signatures=rt.sign(rt.ROOT_TYPE, doc, [A, B]))
    trust = rt.ReleaseTrust(manifest=make_manifest(1, [release()], [A, B]))
    with pytest.raises(ReleaseUntrusted, match="root v1 expired"):
        rt.check_release(trust, pin(root=stale), release(), NOW)


@pytest.mark.parametrize(
    "doc",
    [
        {
            "version": 1,
            "threshold": 3,
            "keys": [rt.public_b64(A), rt.public_b64(B)],
            "expires": LATER,
        },
        {"version": 1, "threshold": 1, "keys": [rt.public_b64(A)] * 2, "expires": LATER},
        {"version": 1, "threshold": 1, "keys": ["x" * 44], "expires": LATER},
    ],
)
def test_unsound_root_documents_are_invalid(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rt.RootDoc.model_validate(doc)


def test_wrong_device_is_refused_even_with_valid_release_signatures() -> None:
    hub_key = Ed25519PrivateKey.generate()
    trust = rt.ReleaseTrust(roots=[ROOT1], manifest=make_manifest(1, [release()], [A, B]))
    signed = sign_target(
        Target(device_id="dev-b", revision=1, release=release(), release_trust=trust), hub_key
    )
    with pytest.raises(TargetRejected, match="addressed to 'dev-b'"):
        read_target(signed, hub_key.public_key(), device_id="dev-a", applied_revision=0, now=NOW)


def test_a_target_without_release_trust_does_not_carry_the_field() -> None:
    hub_key = Ed25519PrivateKey.generate()
    signed = sign_target(Target(device_id="d", revision=1, release=release()), hub_key)
    target, unknown = read_target(
        signed, hub_key.public_key(), device_id="d", applied_revision=0, now=NOW
    )
    assert target.release_trust is None and unknown == []
    import base64

    assert b"release_trust" not in base64.b64decode(signed.payload)
