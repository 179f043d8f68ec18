"""The Prometheus text exposition format (0.0.4), written by hand: no client library on devices.

``Exposition`` collects families (gauge, counter, histogram) and renders them; label
values are escaped as the format says; a counter is named with ``_total`` (HELP, TYPE
and samples alike, as ``prometheus_client`` writes it); bucket bounds are written as
floats (``le="1.0"``), as there too. ``Histogram`` is a fixed-bucket recorder the agent
keeps in memory (converge durations). Tests read the output with ``prometheus_client``'s
parser (a test dependency only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = Mapping[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


@dataclass
class Histogram:
    """Counts of observations per upper bound (cumulative when rendered), their sum and count."""

    buckets: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        """Record one observation."""
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1


@dataclass
class Exposition:
    """Metric families, rendered in the order they were added."""

    prefix: str
    lines: list[str] = field(default_factory=list)

    def _head(self, name: str, kind: str, doc: str) -> str:
        full = f"{self.prefix}_{name}"
        self.lines += [f"# HELP {full} {_help(doc)}", f"# TYPE {full} {kind}"]
        return full

    def gauge(self, name: str, doc: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """Add a gauge family with one sample per (labels, value)."""
        full = self._head(name, "gauge", doc)
        self.lines += [f"{full}{_labels(lb)} {_number(v)}" for lb, v in samples]

    def counter(self, name: str, doc: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """Add a counter family (``name`` without ``_total``: the text format names it so)."""
        full = self._head(f"{name}_total", "counter", doc)
        self.lines += [f"{full}{_labels(lb)} {_number(v)}" for lb, v in samples]

    def histogram(self, name: str, doc: str, h: Histogram) -> None:
        """Add a histogram family from ``h``."""
        full = self._head(name, "histogram", doc)
        running = 0
        for bound, n in zip(h.buckets, h.counts, strict=True):
            running += n
            self.lines.append(f'{full}_bucket{{le="{float(bound)!r}"}} {running}')
        self.lines.append(f'{full}_bucket{{le="+Inf"}} {h.count}')
        self.lines += [f"{full}_sum {_number(h.total)}", f"{full}_count {h.count}"]

    def render(self) -> str:
        """Return the exposition text (ends with a newline)."""
        return "\n".join(self.lines) + "\n"
