"""Per-source token buckets for unauthenticated failures: pure, clock passed in.

A source (the peer address) spends one token per refused credential (an unknown
operator token, a refused enrollment). While its bucket is empty every guarded request
from it is answered 429 with ``Retry-After`` before any work or durable write. Buckets
refill at ``per_s`` up to ``burst``; at most ``max_sources`` are remembered (least
recently used forgotten first — a forgotten source starts again with a full bucket).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class SourceLimiter:
    """Token buckets keyed by source; ``retry_after`` asks, ``charge`` spends."""

    def __init__(self, burst: int, per_s: float, max_sources: int) -> None:
        self.burst, self.per_s, self.max_sources = burst, per_s, max_sources
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.limited = 0  # requests answered 429
        self.charged = 0  # failures counted against a source
        self.forgotten = 0  # sources evicted to stay within max_sources

    def _refill(self, source: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(source)
        if bucket is None:
            return None
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_s)
        bucket.updated = now
        self._buckets.move_to_end(source)
        return bucket

    def retry_after(self, source: str, now: float) -> int | None:
        """Return whole seconds until ``source`` may try again, or None if it may now."""
        bucket = self._refill(source, now)
        if bucket is None or bucket.tokens >= 1:
            return None
        self.limited += 1
        return max(1, math.ceil((1 - bucket.tokens) / self.per_s))

    def charge(self, source: str, now: float) -> None:
        """Spend one token of ``source`` for a failure (never below zero)."""
        self.charged += 1
        bucket = self._refill(source, now)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
                self.forgotten += 1
        bucket.tokens = max(0.0, bucket.tokens - 1)

    def stats(self) -> dict[str, int]:
        """Return the counters and how many sources are tracked."""
        return {
            "limited": self.limited,
            "charged": self.charged,
            "tracked_sources": len(self._buckets),
            "forgotten_sources": self.forgotten,
        }
