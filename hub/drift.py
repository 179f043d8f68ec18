"""Drift and retired releases, computed from the devices' host reports. Pure; no I/O.

A device's managed containers are named ``ef-<device>-<service>`` by its agent; every
other container on its engine is unmanaged. Drift compares the managed ones with the
device's target; retired looks at every container, managed or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from edge_agent.protocol import HostContainerReport
from hub.store.records import HostReport

RELEASE_KEY = "release:"  # sighting key of "managed containers of release <ref>"
DIGEST_KEY = "digest:"  # sighting key of "a container whose image digest is <digest>"


class Difference(StrEnum):
    """How a device differs from its target."""

    MISSING = "missing"  # a target service has no managed container
    STOPPED = "stopped"  # its container exists but is not running
    OTHER_DIGEST = "other_digest"  # it runs another image digest than the target pins
    EXTRA = "extra"  # a managed container of no target service
    STALE = "stale"  # no contact for longer than the fleet's stale threshold
    TRUNCATED = "truncated"  # the report was cut at its bound: "missing" is not judged


@dataclass(frozen=True)
class DeviceFacts:
    """What drift needs to know of one device."""

    device_id: str
    last_contact: datetime | None
    target_images: dict[str, str] | None  # service -> image of its newest target; None: none
    release: str | None  # the release ref the device reports
    report: HostReport | None


@dataclass(frozen=True)
class RetiredRelease:
    """A retired release: its ref and the image digests it pinned."""

    ref: str
    digests: frozenset[str]


def pinned_digest(image: str) -> str | None:
    """Return the ``sha256:...`` an image reference pins, or None if it is not pinned."""
    _, at, digest = image.rpartition("@")
    return digest if at and digest.startswith("sha256:") else None


def container_name(device_id: str, service: str) -> str:
    """Return the engine name the agent gives a managed service's container."""
    return f"ef-{device_id}-{service}"


def is_stale(last_contact: datetime | None, now: datetime, stale_after_s: float) -> bool:
    """Return whether the device has not reported for longer than the stale threshold."""
    return last_contact is None or (now - last_contact).total_seconds() > stale_after_s


def differences(facts: DeviceFacts, now: datetime, stale_after_s: float) -> list[dict[str, Any]]:
    """Return what differs between the device's managed containers and its target."""
    out: list[dict[str, Any]] = []
    if is_stale(facts.last_contact, now, stale_after_s):
        last = facts.last_contact.isoformat() if facts.last_contact else None
        out.append({"kind": Difference.STALE.value, "last_contact": last})
    if facts.report is None:
        return out
    managed = {c.name: c for c in facts.report.containers if c.managed}
    targets = facts.target_images or {}
    complete = facts.report.total <= len(facts.report.containers)
    if not complete:
        out.append({"kind": Difference.TRUNCATED.value, "total": facts.report.total})
    for service, image in sorted(targets.items()):
        found = managed.pop(container_name(facts.device_id, service), None)
        out += _service_differences(service, image, found, complete)
    for name, extra in sorted(managed.items()):
        out.append(_row(Difference.EXTRA, None, name, actual=extra.state))
    return out


def _service_differences(
    service: str, image: str, found: HostContainerReport | None, complete: bool
) -> list[dict[str, Any]]:
    if found is None:
        return [_row(Difference.MISSING, service, None, expected=image)] if complete else []
    out = []
    if found.state != "running":
        out.append(_row(Difference.STOPPED, service, found.name, actual=found.state))
    want = pinned_digest(image)
    # An unknown digest ("": built locally, never pulled) cannot be compared.
    if want is not None and found.digest and found.digest != want:
        out.append(
            _row(Difference.OTHER_DIGEST, service, found.name, expected=want, actual=found.digest)
        )
    return out


def _row(
    kind: Difference,
    service: str | None,
    container: str | None,
    *,
    expected: str | None = None,
    actual: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind.value,
        "service": service,
        "container": container,
        "expected": expected,
        "actual": actual,
    }


def sighting_keys(containers: list[HostContainerReport], release: str | None) -> set[str]:
    """Return the keys a host report shows: each image digest, and the managed release."""
    keys = {DIGEST_KEY + c.digest for c in containers if c.digest}
    if release and any(c.managed for c in containers):
        keys.add(RELEASE_KEY + release)
    return keys


def retired_on(
    retired: RetiredRelease, facts: DeviceFacts
) -> tuple[datetime, list[HostContainerReport]] | None:
    """Return since when and in which containers the device still holds the release."""
    if facts.report is None:
        return None
    runs_release = facts.release == retired.ref
    found = [
        c
        for c in facts.report.containers
        if (c.managed and runs_release) or (c.digest and c.digest in retired.digests)
    ]
    if not found:
        return None
    keys = {DIGEST_KEY + c.digest for c in found if c.digest in retired.digests}
    if runs_release and any(c.managed for c in found):
        keys.add(RELEASE_KEY + retired.ref)
    seen = [facts.report.sightings[k] for k in keys if k in facts.report.sightings]
    return min(seen, default=facts.report.reported_at), found
