"""Maintenance windows: next_opening (wrap, DST), the model, and the pure lifecycle core."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.errors import InvalidDocument
from edge_agent.models import MaintenanceWindow, Target, parse_document
from edge_agent.protocol import AGENT_FEATURES, BASELINE_FEATURES, required_features
from edge_agent.rollout import (
    Accepted,
    Activate,
    AwaitWindow,
    LifeState,
    Phase,
    RetryDue,
    WindowOpened,
    decide,
)
from edge_agent.window import next_opening


def u(text: str) -> datetime:
    """Return the UTC instant ``YYYY-MM-DD HH:MM``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


W = MaintenanceWindow
BERLIN = "Europe/Berlin"

NEXT_OPENING = [
    # (window, now UTC, opens UTC or None = inside now)
    (W(start="01:00", end="04:00", tz="UTC"), u("2026-06-01 02:00"), None),
    (W(start="01:00", end="04:00", tz="UTC"), u("2026-06-01 00:59"), u("2026-06-01 01:00")),
    (W(start="01:00", end="04:00", tz="UTC"), u("2026-06-01 04:00"), u("2026-06-02 01:00")),
    (W(start="01:00", end="04:00", tz="UTC"), u("2026-06-01 01:00"), None),
    # wraps midnight: inside before and after midnight, closed in the afternoon
    (W(start="22:00", end="02:00", tz="UTC"), u("2026-06-01 23:30"), None),
    (W(start="22:00", end="02:00", tz="UTC"), u("2026-06-02 01:59"), None),
    (W(start="22:00", end="02:00", tz="UTC"), u("2026-06-02 02:00"), u("2026-06-02 22:00")),
    (W(start="22:00", end="02:00", tz="UTC"), u("2026-06-02 15:00"), u("2026-06-02 22:00")),
    # local time: Berlin summer (UTC+2) and winter (UTC+1)
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-06-01 12:00"), u("2026-06-01 23:00")),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-01-10 12:00"), u("2026-01-11 00:00")),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-06-01 00:30"), None),
    # DST forward (2026-03-29 02:00 CET -> 03:00 CEST): 01:00 is still CET, 04:00 is CEST
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-03-28 23:00"), u("2026-03-29 00:00")),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-03-29 01:59"), None),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-03-29 02:00"), u("2026-03-29 23:00")),
    # a start in the skipped hour: 02:30 "CET" is 01:30 UTC (03:30 CEST)
    (W(start="02:30", end="05:00", tz=BERLIN), u("2026-03-29 00:00"), u("2026-03-29 01:30")),
    # DST back (2026-10-25 03:00 CEST -> 02:00 CET): the window is an hour longer
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-10-24 23:00"), None),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-10-25 02:59"), None),
    (W(start="01:00", end="04:00", tz=BERLIN), u("2026-10-25 03:00"), u("2026-10-26 00:00")),
    # the ambiguous 02:30 opens at its first occurrence (CEST)
    (W(start="02:30", end="05:00", tz=BERLIN), u("2026-10-24 12:00"), u("2026-10-25 00:30")),
]


@pytest.mark.parametrize(("window", "now", "opens"), NEXT_OPENING)
def test_next_opening(window: MaintenanceWindow, now: datetime, opens: datetime | None) -> None:
    assert next_opening(window, now) == opens


def _target(**extra: object) -> dict[str, object]:
    release = {"name": "app", "version": "1", "services": [{"name": "web", "image": "x:1"}]}
    return {"device_id": "d1", "revision": 1, "release": release, **extra}


BAD_WINDOWS = [
    ({"start": "25:00", "end": "04:00", "tz": "UTC"}, "window.start"),
    ({"start": "01:00", "end": "4:00", "tz": "UTC"}, "window.end"),
    ({"start": "01:00", "end": "04:00", "tz": "Mars/Olympus"}, "window.tz"),
    ({"start": "01:00", "end": "01:00", "tz": "UTC"}, "window"),
    ({"start": "01:00", "end": "04:00"}, "window.tz"),
]


@pytest.mark.parametrize(("window", "field"), BAD_WINDOWS)
def test_window_bad_input_names_the_field(window: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidDocument) as err:
        parse_document(Target, _target(window=window))
    assert field in [f["field"] for f in err.value.errors]


def test_window_feature_required_and_known() -> None:
    plain = parse_document(Target, _target())
    windowed = parse_document(
        Target, _target(window={"start": "01:00", "end": "04:00", "tz": BERLIN})
    )
    immediate = parse_document(Target, _target(immediate=True))
    assert "window" not in required_features(plain)
    assert "window" in required_features(windowed)
    assert "window" in required_features(immediate)
    assert "window" in AGENT_FEATURES and "window" not in BASELINE_FEATURES


OPENS = u("2026-06-01 23:00")
WAITING = LifeState(2, Phase.WAITING_WINDOW)

DECIDE = [
    # (state, event, next state, actions)
    (LifeState(1, Phase.GOOD), Accepted(2), LifeState(2, Phase.APPLYING), [Activate(2)]),
    (
        LifeState(1, Phase.GOOD),
        Accepted(2, opens_at=OPENS),
        WAITING,
        [AwaitWindow(2, OPENS)],
    ),
    (WAITING, WindowOpened(2), LifeState(2, Phase.APPLYING), [Activate(2)]),
    (WAITING, WindowOpened(1), WAITING, []),  # stale: about another target
    (LifeState(2, Phase.GOOD), WindowOpened(2), LifeState(2, Phase.GOOD), []),
    # a newer target while waiting replaces the waiting one
    (WAITING, Accepted(3), LifeState(3, Phase.APPLYING), [Activate(3)]),
    # a retry after a pull failure waits for the window too
    (
        LifeState(2, Phase.ROLLED_BACK, pull_failed=True),
        RetryDue(2, opens_at=OPENS),
        WAITING,
        [AwaitWindow(2, OPENS)],
    ),
    (WAITING, RetryDue(2), WAITING, []),
]


@pytest.mark.parametrize(("state", "event", "expect_state", "expect_actions"), DECIDE)
def test_decide_window(
    state: LifeState, event: object, expect_state: LifeState, expect_actions: list[object]
) -> None:
    assert decide(state, event) == (expect_state, expect_actions)  # type: ignore[arg-type]


def test_window_seconds() -> None:
    w = W(start="10:00:05", end="10:00:10", tz="UTC")
    assert next_opening(w, u("2026-06-01 10:00")) == u("2026-06-01 10:00:05")
    assert next_opening(w, u("2026-06-01 10:00:07")) is None
