"""The agent's decision to drop log lines at a bound, in the audit chain, aggregated.

Dropping lines is counted per line (counters, markers); the audit chain gets one row per
bound and interval instead: the first drop at a bound is written at once, later ones are
added up and written with the next drop after ``interval_s`` (the counters and the
"N lines dropped" markers hold the rest meanwhile). Pure: the caller writes the row in
the transaction that drops the lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class DropAudit:
    """Per bound: drops not yet written, and when the last row was written."""

    def __init__(self, interval_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.pending: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def take(self, bound: str, lines: int) -> int | None:
        """Count ``lines`` dropped at ``bound``; return the count to audit now, or None."""
        self.pending[bound] = self.pending.get(bound, 0) + lines
        now = self.clock()
        if now - self.last.get(bound, float("-inf")) < self.interval_s:
            return None
        self.last[bound] = now
        return self.pending.pop(bound)
