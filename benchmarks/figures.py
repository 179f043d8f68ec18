"""Figures a benchmark hands to ``python -m benchmarks``: one JSON file per benchmark run.

Each benchmark script takes ``--json-out PATH`` and, when given, writes the figures it
printed as a list of records: the figure, its unit, the runs it was measured over, the
baseline measured in the same run (when the goal is a ratio), the ratio and the goal. The
runner (``benchmarks/__main__.py``) reads them and writes ``benchmarks/REPORT.md``.

Only the standard library: the benchmarks import this before anything heavy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Figure:
    """One measured figure: its repeated values, its same-run baseline and its goal."""

    name: str
    unit: str
    values: list[float]
    goal: str
    ok: bool | None = None
    baseline_name: str = ""
    baseline: list[float] = field(default_factory=list)
    ratio: float | None = None
    note: str = ""

    @property
    def median(self) -> float:
        """The median of the values."""
        return statistics.median(self.values)


def add_json_out(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json-out PATH`` option every benchmark takes."""
    parser.add_argument(
        "--json-out", type=Path, default=None, help="also write the figures as JSON here"
    )


def ratio_figure(
    name: str,
    unit: str,
    values: list[float],
    baseline_name: str,
    baseline: list[float],
    *,
    goal_max: float,
    note: str = "",
) -> Figure:
    """A figure whose goal is ``median(values) / median(baseline) <= goal_max``."""
    ratio = statistics.median(values) / statistics.median(baseline)
    return Figure(
        name=name,
        unit=unit,
        values=values,
        goal=f"ratio ≤ {goal_max:g}",
        ok=ratio <= goal_max,
        baseline_name=baseline_name,
        baseline=baseline,
        ratio=ratio,
        note=note,
    )


def write(path: Path | None, figures: list[Figure]) -> None:
    """Write ``figures`` to ``path`` as JSON (nothing when path is None)."""
    if path is None:
        return
    path.write_text(json.dumps([asdict(f) for f in figures], indent=2))


def read(path: Path) -> list[Figure]:
    """Read figures written by :func:`write`."""
    return [Figure(**raw) for raw in json.loads(path.read_text())]
