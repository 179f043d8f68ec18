"""The checks both stores make inside their transactions, and the errors they raise.

Each backend reads what a check needs (a count, a row) with its own SQL and hands it
here, so a bound, a refusal and its message are written once and are the same on
SQLite and PostgreSQL (the handlers map the errors to HTTP, tests assert the texts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edge_agent.models import Release, secret_names
from edge_agent.protocol import INT64_MAX
from hub.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hub.store.records import ReleaseRecord

MAX_NAMED_RELEASES = 20  # a secret still in use: the releases named in the Conflict


def no_device(device_id: str) -> NotFound:
    """Return the error for a device the hub does not know."""
    return NotFound(f"no device {device_id!r}")


def no_group(name: str) -> NotFound:
    """Return the error for a group the hub does not hold."""
    return NotFound(f"no group {name!r}")


def renewal_refused(device_id: str) -> Forbidden:
    """Return the error for a certificate renewal whose device row did not match."""
    return Forbidden(f"device {device_id!r} is unknown, disabled, or renewed meanwhile")


def next_target_revision(device_id: str, disabled: Any, target_revision: int) -> int:
    """Return the revision a new target of the device gets (Conflict if it is disabled or
    its revisions are used up).

    The hub's own sequence alone: nothing a device reports (its applied revision, a
    technician's local apply) can make two targets share a number or overflow.
    """
    if disabled:
        raise Conflict(f"device {device_id!r} is disabled")
    if target_revision >= INT64_MAX:
        raise Conflict(f"device {device_id!r} has used up its target revisions")
    return target_revision + 1


def changed_tags(
    current: dict[str, str], set_tags: dict[str, str], remove: list[str], max_tags: int
) -> dict[str, str]:
    """Return the device's tags after the change (InvalidRequest over ``max_tags``)."""
    tags = {k: v for k, v in current.items() if k not in remove}
    tags.update(set_tags)
    if len(tags) > max_tags:
        raise InvalidRequest(
            f"set: the device would have {len(tags)} tags, over the bound of "
            f"{max_tags} (limits.max_device_tags)",
            fields=[{"field": "set", "message": f"at most {max_tags} tags"}],
        )
    return tags


def group_exists(name: str) -> Conflict:
    """Return the error for a group name that is taken."""
    return Conflict(f"group {name!r} exists", fields=[{"field": "name"}])


def check_groups(held: int, max_groups: int) -> None:
    """Conflict if the hub holds ``max_groups`` groups already."""
    if held >= max_groups:
        raise Conflict(f"the hub holds {held} groups, the bound (limits.max_groups)")


def check_queued_actions(device_id: str, held: int, max_queued: int) -> None:
    """Conflict if the device holds ``max_queued`` unfinished actions already."""
    if held >= max_queued:
        raise Conflict(
            f"device {device_id} holds {held} unfinished actions, the bound "
            "(actions.max_queued_per_device): wait for them or let them expire"
        )


def check_user_tokens(user: str, held: int, max_active: int) -> None:
    """Conflict if the user holds ``max_active`` active tokens already."""
    if held >= max_active:
        raise Conflict(
            f"user {user!r} holds {held} active tokens, the bound "
            "(access.max_tokens_per_user): revoke some"
        )


def check_technicians(held: int, max_active: int) -> None:
    """Conflict if the hub holds ``max_active`` unexpired technician tokens already."""
    if held >= max_active:
        raise Conflict(
            f"the hub holds {held} unexpired technician tokens, the bound "
            "(technicians.max_active): revoke or let some expire"
        )


def check_sessions(held: int, max_sessions: int) -> None:
    """Conflict if the hub holds ``max_sessions`` live dashboard sessions already."""
    if held >= max_sessions:
        raise Conflict(
            f"the hub holds {held} live dashboard sessions, the bound "
            "(dashboard.max_sessions): sign out elsewhere or wait for them to expire"
        )


def check_same_release(existing: ReleaseRecord, release: ReleaseRecord) -> None:
    """Conflict if a release of the same name and version has other content."""
    if existing.source != release.source:
        raise Conflict(
            f"release {release.ref} exists with different content; releases are "
            "immutable: create a new version",
            fields=[{"field": "release.version", "message": "already used"}],
        )


def check_not_retired(existing: ReleaseRecord) -> None:
    """Conflict if the release is retired already."""
    if existing.retired_at is not None:
        raise Conflict(
            f"release {existing.ref} was retired at {existing.retired_at.isoformat()} "
            f"by {existing.retired_by}"
        )


def rollout_exists(rollout_id: str) -> Conflict:
    """Return the error for a rollout id that is taken."""
    return Conflict(f"rollout {rollout_id!r} exists", fields=[{"field": "id"}])


def rollout_not_saved(rollout_id: str, exists: bool) -> NotFound | Conflict:
    """Return the error for a rollout save that changed no row."""
    if not exists:
        return NotFound(f"no rollout {rollout_id!r}")
    return Conflict(f"rollout {rollout_id} changed meanwhile; try again")


def check_next_root(version: int, top: int) -> None:
    """Conflict unless ``version`` follows the newest release root the hub holds."""
    if version != top + 1:
        raise Conflict(
            f"release root v{version} is not the next version (the hub holds v{top})",
            fields=[{"field": "root.version", "message": f"must be {top + 1}"}],
        )


def check_secret_unused(name: str, refs: Sequence[str]) -> None:
    """Conflict, naming (some of) them, if releases name the secret."""
    if refs:
        shown = ", ".join(refs[:MAX_NAMED_RELEASES])
        raise Conflict(
            f"secret {name!r} is named by {len(refs)} release(s): {shown}",
            fields=[{"field": "name", "message": "in use by releases"}],
        )


def refs_naming(name: str, documents: Sequence[str]) -> list[str]:
    """Return the refs of the releases (their stored documents) that name secret ``name``."""
    refs = []
    for document in documents:
        release = Release.model_validate(json.loads(document))
        if name in secret_names(release):
            refs.append(release.ref)
    return refs
