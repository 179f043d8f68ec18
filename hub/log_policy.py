"""Which container log lines each device ships unasked: set per group, resolved per device.

A group may set a policy: ``none``, ``errors`` (lines matching a pattern; the default
pattern is ``log_policy.default_pattern``) or ``all``. A device no such group matches
gets ``log_policy.default_mode`` (``errors``: suits a metered link). When several groups
with a policy match a device, the **most permissive** mode wins (all > errors > none),
and under ``errors`` the device ships a line matching any of those groups' patterns: a
group that asked to see lines sees them; shipping more than another group needed costs
bytes, shipping less would lose what someone asked for. More distinct patterns than a
policy carries (``MAX_LOG_PATTERNS``) resolve to ``all``, for the same reason.

The resolved policy travels in the sync answer, only to agents that list the
``log_policy`` feature (an older agent keeps shipping everything). Group policies are
read from the store at most every ``CACHE_S`` seconds (every sync asks), and at once in
the process that changed one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from edge_agent.protocol import MAX_LOG_PATTERNS, LogPolicy
from hub.config import LogPolicyConfig
from hub.selector import Selector, matches, parse
from hub.store import DeviceRecord, HubStore

FEATURE = "log_policy"
RANK = {"none": 0, "errors": 1, "all": 2}
CACHE_S = 5.0


@dataclass(frozen=True)
class GroupPolicy:
    """One group's policy: its selector, mode and pattern (None: the default pattern)."""

    name: str
    selector: Selector
    mode: str
    pattern: str | None = None


def resolve(
    tags: dict[str, str], groups: list[GroupPolicy], default: LogPolicyConfig
) -> tuple[LogPolicy, list[str]]:
    """Return a device's policy and the groups it comes from (none: the hub's default)."""
    matching = [g for g in groups if matches(g.selector, tags)]
    if not matching:
        mode = default.default_mode
        patterns = [default.default_pattern] if mode == "errors" else []
        return LogPolicy(mode=mode, patterns=patterns), []
    mode = max((g.mode for g in matching), key=RANK.__getitem__)
    deciding = [g for g in matching if g.mode == mode]
    names = [g.name for g in deciding]
    if mode != "errors":
        return LogPolicy(mode=mode), names  # type: ignore[arg-type]
    patterns = list(dict.fromkeys(g.pattern or default.default_pattern for g in deciding))
    if len(patterns) > MAX_LOG_PATTERNS:
        return LogPolicy(mode="all"), names
    return LogPolicy(mode="errors", patterns=patterns), names


@dataclass
class PolicyCache:
    """The groups' policies, re-read from the store at most every ``ttl_s`` seconds."""

    ttl_s: float = CACHE_S
    _groups: list[GroupPolicy] = field(default_factory=list)
    _read_at: float = float("-inf")

    def invalidate(self) -> None:
        """Read the store at the next use (a policy changed)."""
        self._read_at = float("-inf")

    async def groups(self, store: HubStore) -> list[GroupPolicy]:
        """Return every group's policy, from the store when the cached copy is old."""
        now = time.monotonic()
        if now - self._read_at >= self.ttl_s:
            self._groups = [
                GroupPolicy(name, parse(selector), p["mode"], p.get("pattern"))
                for name, selector, p in await store.group_log_policies()
            ]
            self._read_at = now
        return self._groups


LOG_POLICIES = web.AppKey("log_policies", PolicyCache)


async def policy_for_sync(
    request: web.Request,
    store: HubStore,
    config: LogPolicyConfig,
    device: DeviceRecord,
    features: frozenset[str] | list[str] | None,
) -> LogPolicy | None:
    """Return the policy a sync answer carries; None for an agent that would not read it."""
    if features is None or FEATURE not in features:
        return None
    cache = request.app.get(LOG_POLICIES)
    if cache is None:
        return None
    policy, _ = resolve(dict(device.tags), await cache.groups(store), config)
    return policy
