"""The device's pinned release root: where it comes from, and the check every hub target passes.

A device pins a release root in one of two ways:

- at install time, from agent config ``[trust] release_root = <file>`` (a signed root
  JSON document, k of its own keys): from its very first target the device refuses
  releases the operators did not sign — a hub that is already compromised cannot
  switch the check off;
- on first use: the first target that carries a root (feature ``release_trust``)
  pins it. Until then the device accepts unsigned releases, so a hub compromised
  *before* that moment could pin a root of its own making. Install-time pinning is the
  sound choice; first use is the convenient one for an existing fleet.

Once pinned (in anchor.json beside the identity, so a store wipe keeps it), every hub
target must carry k valid operator signatures for its release under the pinned root,
whatever the hub sends — a hub that drops the requirement or the signatures gets its
targets refused. The root moves only by a rotation signed by the old and the new keys.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.anchor import RevisionAnchor
from edge_agent.errors import ConfigError, ReleaseUntrusted
from edge_agent.models import Release, Target
from edge_agent.release_trust import (
    PinnedTrust,
    ReleaseTrust,
    SignedRoot,
    check_listed,
    verify_first_root,
    verify_trust,
)

log = logging.getLogger(__name__)


class ReleasePin:
    """The pinned release root and manifest version of one device, and the check."""

    def __init__(self, anchor: RevisionAnchor, configured: Path | None = None) -> None:
        self.anchor = anchor
        self.configured = configured
        self.pinned: PinnedTrust | None = None

    def load(self) -> ReleasePin:
        """Read the pin from the anchor, else from the configured root file; ConfigError."""
        if self.anchor.release_trust is not None:
            try:
                self.pinned = PinnedTrust.model_validate(self.anchor.release_trust)
            except ValidationError as exc:
                raise ConfigError(f"{self.anchor.path}: unreadable release_trust: {exc}") from exc
        elif self.configured is not None:
            self.pinned = PinnedTrust(root=_read_root(self.configured))
        return self

    async def admit(self, target: Target, now: datetime) -> None:
        """Raise ReleaseUntrusted unless the target's release is vouched for; raise the pin."""
        trust = target.release_trust
        new = verify_trust(trust, self.pinned, target.release, now)
        if new is None:
            return  # no root pinned and none sent: this device does not check
        if new != self.pinned:
            # Raised before the release is looked up: a genuine newer manifest withdraws
            # what it leaves out, even when it arrives with a release it does not list.
            if self.pinned is None or new.root != self.pinned.root:
                log.warning("release root pinned at v%d", new.root.root.version)
            await self.anchor.pin_release_trust(new.model_dump(mode="json"))
            self.pinned = new
        if trust is None or trust.manifest is None:  # verify_trust refuses this already
            raise ReleaseUntrusted(f"release {target.release.ref} carries no signatures")
        check_listed(trust.manifest.manifest, target.release)

    def admit_local(self, release: Release, trust: ReleaseTrust | None, now: datetime) -> None:
        """Raise ReleaseUntrusted unless a technician's release is vouched for.

        Checked against the manifest the device holds (``trust``: the newest hub
        target's, verified again under the pin: not expired, not older than the newest
        seen), with the digest computed here. Nothing to check without a pin; the pin
        never moves for a local apply.
        """
        if self.pinned is None:
            return
        if trust is None or trust.manifest is None:
            raise ReleaseUntrusted(
                f"release {release.ref}: this device requires releases signed under release"
                f" root v{self.pinned.root.root.version} and holds no manifest to check it"
            )
        verify_trust(trust, self.pinned, release, now)
        check_listed(trust.manifest.manifest, release)

    def report(self, now: datetime) -> dict[str, Any] | None:
        """Return the pin for the status; ``stale``: the newest manifest seen has expired.

        A device left on a release whose manifest has expired (the hub sends nothing
        newer: an indefinite freeze, or operators who stopped re-signing) is flagged.
        """
        if self.pinned is None:
            return None
        expires = self.pinned.manifest_expires
        return {
            "root_version": self.pinned.root.root.version,
            "manifest_version": self.pinned.manifest_version,
            "manifest_expires": expires.isoformat() if expires else None,
            "stale": expires is not None and now >= expires,
        }


def _read_root(path: Path) -> SignedRoot:
    try:
        root = SignedRoot.model_validate_json(path.read_bytes())
        verify_first_root(root)
    except (OSError, ValidationError, ReleaseUntrusted) as exc:
        raise ConfigError(f"trust.release_root {path}: {exc}") from exc
    return root
