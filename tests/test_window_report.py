"""The maintenance window's next opening as the agent reports it: UTC, across zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.models import MaintenanceWindow
from edge_agent.protocol import StatusSnapshot
from edge_agent.window import next_opening


def u(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (window start, end, zone, now in UTC) -> the opening the status reports (None: open now).
CASES = [
    ("01:00", "04:00", "Europe/Berlin", "2026-01-15 12:00", "2026-01-16T00:00:00Z"),  # CET
    ("01:00", "04:00", "Europe/Berlin", "2026-07-15 12:00", "2026-07-15T23:00:00Z"),  # CEST
    ("01:00", "04:00", "Europe/Berlin", "2026-01-15 01:00", None),  # 02:00 CET: open now
    # Clocks go forward (29 Mar 2026): 02:30 does not exist; it opens at 03:30 CEST.
    ("02:30", "04:00", "Europe/Berlin", "2026-03-28 12:00", "2026-03-29T01:30:00Z"),
    # The day after, 02:30 is CEST again: one hour earlier in UTC than the day before.
    ("02:30", "04:00", "Europe/Berlin", "2026-03-29 12:00", "2026-03-30T00:30:00Z"),
    # Clocks go back (25 Oct 2026): 02:30 happens twice; the first (CEST) counts.
    ("02:30", "04:00", "Europe/Berlin", "2026-10-24 12:00", "2026-10-25T00:30:00Z"),
    ("02:30", "05:00", "America/New_York", "2026-03-07 12:00", "2026-03-08T07:30:00Z"),
    # Clocks go back (1 Nov 2026) at 02:00 EDT: 02:30 that night is EST.
    ("02:30", "05:00", "America/New_York", "2026-11-01 03:00", "2026-11-01T07:30:00Z"),
    ("22:00", "02:00", "Asia/Kolkata", "2026-06-01 00:00", "2026-06-01T16:30:00Z"),  # wraps
    ("22:00", "02:00", "Asia/Kolkata", "2026-06-01 17:00", None),  # 22:30 IST: open
    ("00:00", "00:30", "UTC", "2026-12-31 23:59", "2027-01-01T00:00:00Z"),  # new year
    ("03:00", "04:00", "Australia/Sydney", "2026-04-03 10:00", "2026-04-03T16:00:00Z"),  # AEDT
    # Sydney leaves summer time at 03:00 AEDT on 5 Apr 2026: that 03:00 is AEST.
    ("03:00", "04:00", "Australia/Sydney", "2026-04-04 10:00", "2026-04-04T17:00:00Z"),
]


@pytest.mark.parametrize(("start", "end", "tz", "now", "reported"), CASES)
def test_window_opens_at_reported_in_utc_across_zones_and_dst(
    start: str, end: str, tz: str, now: str, reported: str | None
) -> None:
    window = MaintenanceWindow(start=start, end=end, tz=tz)
    snap = StatusSnapshot(
        rollout_state="waiting_window", window_opens_at=next_opening(window, u(now))
    )
    assert snap.model_dump(mode="json")["window_opens_at"] == reported


def test_window_opens_at_on_the_wire_names_the_field_when_bad() -> None:
    with pytest.raises(ValueError, match="window_opens_at"):
        StatusSnapshot.model_validate({"window_opens_at": "tomorrow"})


def test_window_opens_at_is_optional_for_older_agents() -> None:
    assert StatusSnapshot.model_validate({"state": "idle"}).window_opens_at is None
