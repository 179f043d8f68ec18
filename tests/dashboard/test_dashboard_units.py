"""The dashboard's pure parts, without I/O: health, counts, filtering and paging, session
expiry, safe redirects after sign-in, and the SVG plots (escaped, scaled)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hub.config import DashboardConfig
from hub.dashboard.auth_pages import safe_next
from hub.dashboard.device_pages import metrics_plots
from hub.dashboard.fleet_view import DeviceFilter, counts, health, select
from hub.dashboard.plots import Series, bar_chart, line_chart
from hub.dashboard.session import expiry_reason
from hub.selector import parse
from hub.store import MetricsSample
from hub.store.records import SessionRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _view(i: int, **kw: Any) -> dict[str, Any]:
    base = {
        "id": f"dev-{i:04d}",
        "hostname": f"host-{i:04d}",
        "tags": {"site": "berlin" if i % 2 else "paris"},
        "connectivity": "online",
        "drift": "in_sync",
        "release": "app@1",
        "services": [{"name": "web", "state": "running", "health": "none"}],
        "last_error": None,
        "last_contact": None,
    }
    return base | kw


@pytest.mark.parametrize(
    ("services", "last_error", "expected"),
    [
        (None, None, "unknown"),
        ([], None, "healthy"),
        ([{"state": "running", "health": "healthy"}], None, "healthy"),
        ([{"state": "exited", "health": "none"}], None, "unhealthy"),
        ([{"state": "running", "health": "unhealthy"}], None, "unhealthy"),
        ([{"state": "running", "health": "none", "crash_loop": True}], None, "unhealthy"),
        ([{"state": "running", "health": "none"}], "pull failed", "unhealthy"),
    ],
)
def test_health_of_a_device(services: Any, last_error: Any, expected: str) -> None:
    assert health(_view(1, services=services, last_error=last_error)) == expected


def test_counts_list_every_state_and_add_up() -> None:
    views = [_view(1), _view(2, connectivity="stale", drift="drifted", services=None)]
    c = counts(views)
    assert c.total == 2
    assert c.connectivity == {"online": 1, "offline": 0, "stale": 1}
    assert c.drift == {"no_target": 0, "in_sync": 1, "updating": 0, "drifted": 1}
    assert c.health == {"healthy": 1, "unhealthy": 0, "unknown": 1}


def test_select_filters_sorts_and_pages_at_fleet_size() -> None:
    views = [_view(i) for i in range(5000)]
    f = DeviceFilter(selectors=(parse("site=berlin"),), sort="hostname", order="desc")
    page = select(views, f, 2, 50)
    assert (page.matched, page.pages, page.page, len(page.rows)) == (2500, 50, 2, 50)
    assert page.rows[0]["id"] == "dev-4899"  # 4999, 4997, ... 50 per page: 2nd page
    last = select(views, f, 10_000, 50)  # past the end: the last page
    assert last.page == 50 and last.rows[-1]["id"] == "dev-0001"
    found = select(views, DeviceFilter(text="HOST-0042"), 1, 50)
    assert [v["id"] for v in found.rows] == ["dev-0042"]
    empty = select(views, DeviceFilter(drift="drifted"), 1, 50)
    assert (empty.matched, empty.pages, empty.rows) == (0, 1, [])


@pytest.mark.parametrize(
    ("created_s", "seen_s", "reason"),
    [
        (0, 0, None),
        (100, 5, None),
        (100, 10, "unused for over 10 s"),  # idle 10 s
        (1000, 1, "signed in over 1000 s ago"),  # absolute 1000 s, recently used
    ],
)
def test_session_expiry(created_s: float, seen_s: float, reason: str | None) -> None:
    cfg = DashboardConfig(idle_timeout_s=10, absolute_timeout_s=1000)
    now = T0 + timedelta(seconds=2000)
    record = SessionRecord(
        "h",
        "admin",
        "admin",
        "c",
        now - timedelta(seconds=created_s),
        now - timedelta(seconds=seen_s),
    )
    found = expiry_reason(record, now, cfg)
    assert (found is None) if reason is None else (found is not None and reason in found)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/devices?q=x", "/ui/devices?q=x"),
        ("https://evil.example/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/api/v1/devices", "/ui/"),
    ],
)
def test_sign_in_only_returns_to_a_dashboard_page(target: str, expected: str) -> None:
    assert safe_next(target) == expected


def test_plots_escape_their_text_and_scale_to_a_round_top() -> None:
    markup = line_chart("<script>", ["a", "<b>"], [Series("x&y", [3.0, None])])
    assert "<script>" not in markup and "&lt;script&gt;" in markup and "x&amp;y" in markup
    assert "<circle" in markup  # a lone point where its neighbour has no value
    bars = bar_chart("t", ["h1", "h2"], [Series("events", [0.0, 7.0])])
    assert bars.count("<rect") == 1 and ">10<" in bars  # the axis tops at 10


def test_metrics_plots_read_the_agents_sample_shape() -> None:
    samples = [
        MetricsSample(i, T0 + timedelta(minutes=i), T0, {"cpu_percent": 10.0 * i, "memory": m})
        for i, m in enumerate(
            [{"total_bytes": 1000, "used_bytes": 250}, {}, {"total_bytes": 0, "used_bytes": 1}]
        )
    ]
    plots = metrics_plots(samples)
    assert "CPU use" in plots["cpu"] and "<polyline" in plots["cpu"]
    assert "<circle" in plots["memory"]  # one sample with both numbers: 25 %
