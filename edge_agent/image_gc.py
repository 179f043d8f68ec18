"""Image garbage collection: remove images this device's old targets used, keep rollback's.

The decision ``images_to_remove`` is pure; ``ImageCollector`` gathers the facts (target
history from the store, image ids and every container's image from the engine), removes
what the decision names, counts and records it as an event.

What may go: an image referenced by one of this device's stored targets that is not
kept, present on the engine, used by no container at all (any device's, or none's), and
unused for at least ``min_unused_s``. What is kept: every image of a pending or applying
target, of the newest target, and of the ``keep_good`` newest good targets (the current
release and the previous one, for rollback). Images the device could not pull again (no
registry host in the reference) are never removed, nor is anything no target names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.errors import AgentError, ImageInUse
from edge_agent.models import Target, parse_document

log = logging.getLogger(__name__)

ACTIVE_STATES = frozenset({"pending", "applying"})


@dataclass(frozen=True)
class GcPolicy:
    """Bounds of image garbage collection."""

    keep_good: int = 2
    min_unused_s: float = 3600.0
    max_removals_per_run: int = 20


@dataclass(frozen=True)
class TargetImages:
    """A stored target's revision, state and the image references of its services."""

    revision: int
    state: str
    images: frozenset[str]


@dataclass
class GcPlan:
    """What one run decided: references to remove, and why others stay."""

    remove: list[str] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)
    in_use: list[str] = field(default_factory=list)
    too_recent: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # over max_removals_per_run


def is_pullable(ref: str) -> bool:
    """Return whether ``ref`` names a registry host, so the device can pull it again."""
    first, sep, _ = ref.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def kept_refs(history: Sequence[TargetImages], keep_good: int) -> set[str]:
    """Return the references every run keeps: active, newest and newest good targets."""
    keep: set[str] = set()
    newest = max(history, key=lambda t: t.revision, default=None)
    good = sorted((t for t in history if t.state == "good"), key=lambda t: -t.revision)
    for t in history:
        if t.state in ACTIVE_STATES or t is newest or t in good[:keep_good]:
            keep |= t.images
    return keep


def images_to_remove(
    history: Sequence[TargetImages],
    present: Mapping[str, str],
    in_use_ids: set[str],
    unused_since: Mapping[str, float],
    now: float,
    policy: GcPolicy,
) -> GcPlan:
    """Decide which references to remove. ``present``: ref -> image id of those present."""
    plan = GcPlan(kept=kept_refs(history, policy.keep_good))
    kept_ids = {present[r] for r in plan.kept if r in present}
    candidates = sorted({r for t in history for r in t.images} - plan.kept)
    for ref in candidates:
        image_id = present.get(ref)
        if image_id is None or not is_pullable(ref) or image_id in kept_ids:
            continue
        if image_id in in_use_ids:
            plan.in_use.append(ref)
        elif now - unused_since.get(ref, now) < policy.min_unused_s:
            plan.too_recent.append(ref)
        elif len(plan.remove) < policy.max_removals_per_run:
            plan.remove.append(ref)
        else:
            plan.deferred.append(ref)
    return plan


class ImageRuntime(Protocol):
    """The runtime calls image GC needs."""

    async def image_id(self, ref: str) -> str | None: ...
    async def container_image_ids(self) -> set[str]: ...
    async def remove_image(self, ref: str) -> None: ...


class GcStore(Protocol):
    """The store calls image GC needs."""

    async def target_history(self, limit: int = 50) -> list[Any]: ...
    async def bump(self, name: str, by: int = 1) -> None: ...
    async def append(self, kind: str, payload: dict[str, Any]) -> Any: ...


def _images_of(stored: Any) -> TargetImages:
    target = parse_document(Target, stored.document)
    refs = frozenset(s.image for s in target.services())
    return TargetImages(stored.revision, stored.state, refs)


class ImageCollector:
    """Run image GC after a target turns good and every ``interval_s``."""

    def __init__(
        self,
        runtime: ImageRuntime,
        store: GcStore,
        policy: GcPolicy,
        *,
        interval_s: float = 6 * 3600.0,
        check_interval_s: float = 60.0,
        history_limit: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.policy = policy
        self.interval_s = interval_s
        self.check_interval_s = check_interval_s
        self.history_limit = history_limit
        self.clock = clock
        self.beat = beat
        self._unused_since: dict[str, float] = {}

    async def collect_once(self) -> GcPlan:
        """Gather the facts, decide, remove; count and record what was removed."""
        history = [_images_of(t) for t in await self.store.target_history(self.history_limit)]
        refs = sorted({r for t in history for r in t.images})
        ids = await asyncio.gather(*(self.runtime.image_id(r) for r in refs))
        present = {r: i for r, i in zip(refs, ids, strict=True) if i is not None}
        in_use = await self.runtime.container_image_ids()
        now = self.clock()
        self._note_unused(present, in_use, now)
        plan = images_to_remove(history, present, in_use, self._unused_since, now, self.policy)
        removed = await self._remove(plan)
        await self._record(plan, removed)
        return plan

    def _note_unused(self, present: Mapping[str, str], in_use: set[str], now: float) -> None:
        """Remember since when each present reference has been unused (bounded by history)."""
        unused = {r for r, i in present.items() if i not in in_use}
        self._unused_since = {r: self._unused_since.get(r, now) for r in unused}

    async def _remove(self, plan: GcPlan) -> list[str]:
        removed = []
        for ref in plan.remove:
            try:
                await self.runtime.remove_image(ref)
            except ImageInUse:
                plan.in_use.append(ref)  # a container started meanwhile
                continue
            removed.append(ref)
            self._unused_since.pop(ref, None)
        return removed

    async def _record(self, plan: GcPlan, removed: Iterable[str]) -> None:
        removed = list(removed)
        if removed:
            log.info("image gc removed %d image(s): %s", len(removed), ", ".join(removed))
            await self.store.bump("images_removed", len(removed))
        if plan.deferred:
            await self.store.bump("image_gc_deferred", len(plan.deferred))
        if removed or plan.deferred:
            await self.store.append(
                "event",
                {
                    "type": "image_gc",
                    "removed": removed,
                    "deferred": len(plan.deferred),
                    "in_use": len(plan.in_use),
                },
            )

    async def run(self, good_revision: Callable[[], Awaitable[int | None]]) -> None:
        """Collect when the good revision changes, and every ``interval_s``, until cancelled."""
        last_good: int | None = None
        last_run = float("-inf")
        failing = 0
        while True:
            self.beat()
            good = await good_revision()
            if good != last_good or self.clock() - last_run >= self.interval_s:
                try:
                    await self.collect_once()
                    last_good, last_run, failing = good, self.clock(), 0
                except AgentError as exc:  # engine away: try at the next check
                    if not failing:
                        log.warning("image gc failing: %s", exc.message)
                    failing += 1
            await asyncio.sleep(self.check_interval_s)
