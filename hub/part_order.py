"""Which of an action's stored result parts a reader may take now, in order. Pure.

An agent has up to ``window`` sync requests on the wire at once, and the hub may store a
later batch before an earlier one: a ``logs`` action's parts 15-28 can be stored while
parts 1-14 are still on their way, and its final result before its last parts. A reader
that pages by part number (``GET /api/v1/actions/{id}/parts?after=N``, ``edgectl logs``)
would step past the late ones and never see their lines. So a page holds only the parts
that follow ``after`` without a gap; while a gap may still fill, the page says
``pending``. A gap older than the grace (``actions.parts_gap_grace_s``) is taken as
final: the device dropped that part (its outbox bound), and the parts after it are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from edge_agent.actiondoc import FINAL
from hub.store.records import ActionPart


def readable_parts(
    parts: Sequence[ActionPart],
    after: int,
    *,
    state: str,
    state_at: datetime | None,
    result: Any,
    now: datetime,
    grace_s: float,
    full_page: bool,
) -> tuple[list[ActionPart], bool]:
    """Return the parts of this page a reader takes now (numbered on from ``after``
    without a gap) and whether more parts are owed (``pending``: ask again).

    ``parts``: the stored parts numbered above ``after``, in order; ``full_page``: the
    store returned as many as asked (more may follow: not pending, the reader goes on).
    ``result``: the action's final result; a logs result names the parts the device sent.
    """
    grace = timedelta(seconds=grace_s)
    shown: list[ActionPart] = []
    expect = after + 1
    for part in parts:
        if part.part != expect and now - part.received_at < grace:
            return shown, True  # an earlier part may still be on the wire
        shown.append(part)
        expect = part.part + 1
    if full_page or state not in FINAL:
        return shown, False
    sent = result.get("parts") if isinstance(result, dict) else None
    if type(sent) is int and expect <= sent:
        # Final, but the device sent more parts than are stored: the last ones may be in
        # a batch the hub takes after the one carrying the result.
        return shown, state_at is None or now - state_at < grace
    return shown, False
