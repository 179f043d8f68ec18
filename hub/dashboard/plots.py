"""Plots drawn on the server as SVG: readable without JavaScript and in screenshots. Pure.

``line_chart`` and ``bar_chart`` take labelled series over the same x labels and return
markup for a template; ``contact_strip`` draws when a device was heard from over a time
window. Every text in them is escaped; every number is computed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 200
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 14, 28
COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


@dataclass(frozen=True)
class Series:
    """One named line or bar set; None where there is no value."""

    name: str
    values: Sequence[float | None]


def _top(series: Sequence[Series]) -> float:
    """Return the axis top: the smallest 1, 2 or 5 times a power of ten >= the peak."""
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    if peak <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(peak))
    return next(step * scale for step in (1, 2, 5, 10) if step * scale >= peak)


def _frame(title: str, labels: Sequence[str], top: float, unit: str) -> list[str]:
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    out = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'class="plot" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = PAD_T + inner_h * (1 - frac)
        out.append(
            f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{WIDTH - PAD_R}" y2="{y:.1f}" class="grid"/>'
        )
        out.append(
            f'<text x="{PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_num(top * frac))}{escape(unit)}</text>"
        )
    step = max(1, len(labels) // 6)
    for i in range(0, len(labels), step):
        x = _x(i, len(labels), inner_w)
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(labels[i])}</text>'
        )
    return out


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _x(i: int, n: int, inner_w: float) -> float:
    return PAD_L + (inner_w * (i + 0.5) / n if n else 0)


def _y(value: float, top: float) -> float:
    inner_h = HEIGHT - PAD_T - PAD_B
    return PAD_T + inner_h * (1 - min(value, top) / top)


def _legend(series: Sequence[Series]) -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{COLOURS[i % len(COLOURS)]}">'
        f"</span>{escape(s.name)}</span>"
        for i, s in enumerate(series)
    )
    return f'<p class="legend">{items}</p>'


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> Markup:
    """Return an SVG line chart of ``series`` over ``labels`` (gaps where None)."""
    top, inner_w = _top(series), WIDTH - PAD_L - PAD_R
    out = _frame(title, labels, top, unit)
    for i, s in enumerate(series):
        colour, runs, run = COLOURS[i % len(COLOURS)], [], []
        for j, v in enumerate(s.values):
            if v is None:
                runs.append(run)
                run = []
            else:
                run.append(f"{_x(j, len(labels), inner_w):.1f},{_y(v, top):.1f}")
        runs.append(run)
        for points in (r for r in runs if r):
            if len(points) == 1:
                x, y = points[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>')
            else:
                out.append(
                    f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                    'stroke-width="2"/>'
                )
    out.append("</svg>")
    return Markup("".join(out) + _legend(series))


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series]) -> Markup:
    """Return an SVG chart of grouped bars: per label one bar of each series."""
    top, inner_w = _top(series), WIDTH - PAD_L - PAD_R
    out = _frame(title, labels, top, "")
    slot = inner_w / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        for j, v in enumerate(s.values):
            if not v:
                continue
            x = PAD_L + slot * j + slot * 0.1 + bar * i
            y = _y(v, top)
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{HEIGHT - PAD_B - y:.1f}" fill="{colour}">'
                f"<title>{escape(labels[j])}: {escape(_num(v))} {escape(s.name)}</title></rect>"
            )
    out.append("</svg>")
    return Markup("".join(out) + _legend(series))


STRIP_H = 44
HEARD, SILENT = "#1a7f37", "#d0d7de"


def contact_strip(
    title: str,
    heard: Sequence[tuple[datetime, datetime]],
    since: datetime,
    until: datetime,
    tick: str = "%H:%M",
) -> Markup:
    """Return an SVG strip of ``since``..``until``: green where the device was heard from
    (each of ``heard`` a start and end time), grey where it was silent."""
    inner_w, span_s = WIDTH - PAD_L - PAD_R, max((until - since).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return PAD_L + inner_w * min(max((at - since).total_seconds() / span_s, 0.0), 1.0)

    out = [
        f'<svg viewBox="0 0 {WIDTH} {STRIP_H}" role="img" aria-label="{escape(title)}" '
        'class="plot strip" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{PAD_L}" y="4" width="{inner_w}" height="18" fill="{SILENT}">'
        "<title>silent</title></rect>",
    ]
    for start, end in heard:
        if end < since or start > until:
            continue
        left, right = x(start), x(end)
        label = f"heard from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
        out.append(
            f'<rect x="{left:.1f}" y="4" width="{max(right - left, 1.0):.1f}" height="18" '
            f'fill="{HEARD}" class="heard"><title>{escape(label)}</title></rect>'
        )
    for i in range(7):
        at = since + (until - since) * (i / 6)
        anchor = "start" if i == 0 else "end" if i == 6 else "middle"
        out.append(
            f'<text x="{x(at):.1f}" y="{STRIP_H - 6}" text-anchor="{anchor}">'
            f"{escape(at.strftime(tick))}</text>"
        )
    out.append("</svg>")
    legend = [Series("heard from", []), Series("silent", [])]
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>'
        f"{escape(s.name)}</span>"
        for s, colour in zip(legend, (HEARD, SILENT), strict=True)
    )
    return Markup("".join(out) + f'<p class="legend">{items}</p>')
