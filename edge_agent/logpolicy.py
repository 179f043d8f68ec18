"""Which container log lines the agent ships to the hub unasked: a pure decision.

The hub sends a ``protocol.LogPolicy`` (resolved from the device's groups) in its sync
answer to agents that list the ``log_policy`` feature; the store keeps it (``meta``) so it
holds offline and across restarts. Until a hub sends one, every line is shipped (what
agents did before, and what an older hub expects). Every line is kept locally in any case
(``logstore.py``), within its quotas; the policy only decides what goes into the outbox.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from edge_agent.protocol import DEFAULT_LOG_PATTERN, LOG_POLICY_MODES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShipPolicy:
    """The policy as the agent applies it: a mode and compiled patterns."""

    mode: str = "all"
    patterns: tuple[str, ...] = ()
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, mode: str, patterns: list[str] | tuple[str, ...] = ()) -> ShipPolicy:
        """Return the policy; an unknown mode ships everything, a bad pattern falls back to
        the default (the hub validates both: this guards a store written by another version)."""
        if mode not in LOG_POLICY_MODES:
            log.warning("unknown log policy mode %r: shipping every line", mode)
            return cls("all")
        compiled = []
        for p in patterns or (DEFAULT_LOG_PATTERN,):
            try:
                compiled.append(re.compile(p))
            except re.error as exc:
                log.warning("log policy pattern %r unusable (%s): using the default", p, exc)
                compiled.append(re.compile(DEFAULT_LOG_PATTERN))
        return cls(mode, tuple(patterns), tuple(compiled))

    def ships(self, row: dict[str, Any]) -> bool:
        """Return whether a log row goes to the hub under this policy."""
        if self.mode == "all":
            return True
        if self.mode == "none":
            return False
        if row.get("stream") == "agent":
            return True  # the agent's own notices (gap, suppressed lines) are warnings
        line = row.get("line", "")
        return any(p.search(line) for p in self._compiled)

    def to_json(self) -> str:
        """Return the stored form."""
        return json.dumps({"mode": self.mode, "patterns": list(self.patterns)})

    @classmethod
    def from_json(cls, text: str | None) -> ShipPolicy:
        """Return the policy stored as ``to_json`` (ship everything when none is stored)."""
        if not text:
            return cls("all")
        doc = json.loads(text)
        return cls.of(str(doc.get("mode", "all")), tuple(doc.get("patterns") or ()))
