"""Drift and retired releases, as tables: what a device's host report shows against its target."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent.protocol import HostContainerReport
from hub.drift import (
    DeviceFacts,
    RetiredRelease,
    differences,
    pinned_digest,
    retired_on,
    sighting_keys,
)
from hub.store.records import HostReport

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STALE_S = 3600.0
A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
IMG_A = f"127.0.0.1:5000/web@{A}"


def box(
    name: str, digest: str = A, state: str = "running", managed: bool = True
) -> HostContainerReport:
    return HostContainerReport(name=name, image="x", digest=digest, state=state, managed=managed)


def facts(
    containers: list[HostContainerReport] | None,
    targets: dict[str, str] | None = None,
    *,
    total: int | None = None,
    last_contact: datetime | None = NOW,
    release: str | None = "app@1",
    sightings: dict[str, datetime] | None = None,
) -> DeviceFacts:
    report = None
    if containers is not None:
        count = len(containers) if total is None else total
        report = HostReport(containers, count, NOW, sightings or {})
    return DeviceFacts("d1", last_contact, targets, release, report)


def kinds(found: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(d["kind"], d.get("service") or d.get("container")) for d in found]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (facts([box("ef-d1-web")], {"web": IMG_A}), []),
        (facts([], {"web": IMG_A}), [("missing", "web")]),
        (facts([box("ef-d1-web", state="exited")], {"web": IMG_A}), [("stopped", "web")]),
        (facts([box("ef-d1-web", digest=B)], {"web": IMG_A}), [("other_digest", "web")]),
        # an unknown digest (locally built image) or an unpinned target is not compared
        (facts([box("ef-d1-web", digest="")], {"web": IMG_A}), []),
        (facts([box("ef-d1-web", digest=B)], {"web": "busybox:1"}), []),
        (facts([box("ef-d1-web"), box("ef-d1-old")], {"web": IMG_A}), [("extra", "ef-d1-old")]),
        # unmanaged containers are never drift (retired looks at them)
        (facts([box("ef-d1-web"), box("mine", digest=B, managed=False)], {"web": IMG_A}), []),
        # no target: every managed container is extra
        (facts([box("ef-d1-web")], None), [("extra", "ef-d1-web")]),
        (
            facts([box("ef-d1-web")], {"web": IMG_A}, last_contact=NOW - timedelta(hours=2)),
            [("stale", None)],
        ),
        (facts(None, {"web": IMG_A}, last_contact=None), [("stale", None)]),
        # never reported its host: nothing to compare (the API lists it as not_reported)
        (facts(None, {"web": IMG_A}), []),
        # a report cut at its bound: "missing" is not judged, the cut is said
        (facts([box("zz", managed=False)], {"web": IMG_A}, total=300), [("truncated", None)]),
    ],
)
def test_differences_against_the_target(case: DeviceFacts, expected: list[Any]) -> None:
    assert kinds(differences(case, NOW, STALE_S)) == expected


def test_other_digest_says_expected_and_actual() -> None:
    (row,) = differences(facts([box("ef-d1-web", digest=B)], {"web": IMG_A}), NOW, STALE_S)
    assert (row["expected"], row["actual"], row["container"]) == (A, B, "ef-d1-web")


@pytest.mark.parametrize(
    ("image", "expected"),
    [(IMG_A, A), ("busybox:1", None), ("h:5000/x:1", None), (f"x:1@{B}", B)],
)
def test_pinned_digest(image: str, expected: str | None) -> None:
    assert pinned_digest(image) == expected


def test_sighting_keys_are_digests_and_the_managed_release() -> None:
    keys = sighting_keys([box("ef-d1-web"), box("u", digest="", managed=False)], "app@1")
    assert keys == {"digest:" + A, "release:app@1"}
    assert sighting_keys([box("u", managed=False)], "app@1") == {"digest:" + A}


EARLY = NOW - timedelta(days=3)
RETIRED = RetiredRelease("app@1", frozenset({A}))


@pytest.mark.parametrize(
    ("case", "since", "names"),
    [
        # managed containers of the retired release, since the first sighting
        (
            facts([box("ef-d1-web", digest="")], sightings={"release:app@1": EARLY}),
            EARLY,
            ["ef-d1-web"],
        ),
        # another release on the device, but an unmanaged container with a retired digest
        (
            facts(
                [box("ef-d1-web", digest=B), box("old", managed=False)],
                release="app@2",
                sightings={"digest:" + A: EARLY},
            ),
            EARLY,
            ["old"],
        ),
        # no sighting recorded: since the report itself
        (facts([box("old", managed=False)], release=None), NOW, ["old"]),
        (facts([box("ef-d1-web", digest=B)], release="app@2"), None, []),
        (facts(None), None, []),
    ],
)
def test_retired_release_found_by_release_or_digest(
    case: DeviceFacts, since: datetime | None, names: list[str]
) -> None:
    found = retired_on(RETIRED, case)
    if since is None:
        assert found is None
        return
    assert found is not None
    assert found[0] == since
    assert [c.name for c in found[1]] == names
