"""The soak's samples: one row every few seconds, slopes per hour, CSV and one PNG per series.

Growth is judged on the second half of the run (after warm-up) and *within* each agent
process lifetime: a kill -9 and restart resets RSS and open files, so a slope across
lifetimes would measure the restarts, not a leak. ``within_slope`` is the pooled
least-squares slope of the series after subtracting each lifetime's own mean (a
fixed-effects regression): every lifetime contributes its own trend, none its level.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

# The series a sample holds, with their unit and whether growth is judged per lifetime.
SERIES: dict[str, tuple[str, bool]] = {
    "rss_kib": ("KiB", True),
    "pss_kib": ("KiB", True),
    "cpu_pct": ("% of a core", True),
    "open_fds": ("descriptors", True),
    "store_bytes": ("bytes", False),
    "outbox_entries": ("entries", False),
    "outbox_bytes": ("bytes", False),
    "hub_events": ("events", False),
}


@dataclass
class Sample:
    """One reading of the agent and the hub; NaN where a reading was not possible."""

    t_s: float
    lifetime: int  # which agent process (1, 2, ...); 0 while none is up
    pid: int
    age_s: float = math.nan  # seconds since this agent process was started
    rss_kib: float = math.nan
    pss_kib: float = math.nan
    cpu_pct: float = math.nan
    open_fds: float = math.nan
    store_bytes: float = math.nan
    outbox_entries: float = math.nan
    outbox_bytes: float = math.nan
    hub_events: float = math.nan


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    """Return the least-squares slope of ys over ts (seconds), per hour; NaN if undefined."""
    pts = [(t, y) for t, y in zip(ts, ys, strict=True) if not math.isnan(y)]
    if len(pts) < 3:
        return math.nan
    mt = sum(t for t, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    if sxx == 0:
        return math.nan
    return sum((t - mt) * (y - my) for t, y in pts) / sxx * 3600


def within_slope(samples: list[Sample], name: str) -> float:
    """Return the slope per hour of ``name`` within lifetimes (each lifetime demeaned)."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for s in samples:
        y = getattr(s, name)
        if s.lifetime and not math.isnan(y):
            groups.setdefault(s.lifetime, []).append((s.t_s, y))
    sxx = sxy = 0.0
    for pts in groups.values():
        if len(pts) < 3:
            continue
        mt = sum(t for t, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx += sum((t - mt) ** 2 for t, _ in pts)
        sxy += sum((t - mt) * (y - my) for t, y in pts)
    return sxy / sxx * 3600 if sxx else math.nan


def second_half(samples: list[Sample]) -> list[Sample]:
    """Return the samples of the second half of the run (by time)."""
    if not samples:
        return []
    mid = (samples[0].t_s + samples[-1].t_s) / 2
    return [s for s in samples if s.t_s >= mid]


def max_per_lifetime(samples: list[Sample], name: str) -> dict[int, float]:
    """Return the highest reading of ``name`` in each lifetime."""
    out: dict[int, float] = {}
    for s in samples:
        y = getattr(s, name)
        if s.lifetime and not math.isnan(y):
            out[s.lifetime] = max(out.get(s.lifetime, y), y)
    return out


def slopes(samples: list[Sample], warmup_s: float) -> dict[str, float]:
    """Return the slope per hour of every series over the second half of the run.

    Per-lifetime series leave out each lifetime's first ``warmup_s`` (a restarted agent
    warms up again: imports, caches, connections)."""
    half = second_half(samples)
    warm = [s for s in half if s.lifetime and s.age_s >= warmup_s]
    out = {}
    for name, (_, per_lifetime) in SERIES.items():
        if per_lifetime:
            out[name] = within_slope(warm, name)
        else:
            out[name] = slope_per_hour([s.t_s for s in half], [getattr(s, name) for s in half])
    return out


def write_csv(path: Path, samples: list[Sample]) -> None:
    """Write the samples as CSV, one column per field."""
    names = [f.name for f in fields(Sample)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names)
        w.writeheader()
        for s in samples:
            w.writerow(
                {
                    k: ("" if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in asdict(s).items()
                }
            )


def plot_all(
    out_dir: Path, samples: list[Sample], restarts_s: list[float], faults: list[tuple[float, str]]
) -> list[Path]:
    """Write one PNG per series: the readings, agent restarts and faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"container_kill": "tab:orange", "hub_restart": "tab:purple", "net_cut": "tab:red"}
    written = []
    for name, (unit, _) in SERIES.items():
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ts = [s.t_s / 60 for s in samples]
        ax.plot(ts, [getattr(s, name) for s in samples], ".-", ms=3, lw=0.8, color="tab:blue")
        for t in restarts_s:
            ax.axvline(t / 60, color="black", lw=0.8, ls="--")
        for t, kind in faults:
            if kind in colours:
                ax.axvline(t / 60, color=colours[kind], lw=0.5, alpha=0.5)
        ax.set_xlabel("minutes (dashed: agent kill -9 + restart; thin: other faults)")
        ax.set_ylabel(f"{name} ({unit})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
