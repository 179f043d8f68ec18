"""The hub's decode of one full agent catch-up batch, against the JSON parse of the same body.

    python benchmarks/bench_hub_decode.py [--runs 5] [--rounds 10] [--json-out PATH]

Two ratios, each against a baseline timed in the same run (best of ``--rounds`` per run,
median over ``--runs``):

- decode / parse: ``hub.sync_decode.decode_sync_body`` of a 5,000-line batch as the agent
  sends it, against ``pydantic_core.from_json`` of the same bytes (goal ≤ 8: the
  non-finite-number check once scanned every byte with a regex, 13x the parse);
- shipped rows / their text: a decode worker's answer (``decode_sync_job``) pickled to the
  event loop and unpacked (``job_result``), against pickling only the payload texts
  (goal ≤ 4: 5,000 row tuples once cost 5-6x their text).

These were timed assertions in tests/hub/test_catchup_costs.py; timings belong here.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests" / "hub"))
import figures  # noqa: E402
import pydantic_core  # noqa: E402
from test_catchup_costs import _agent_batch  # noqa: E402

from hub.sync_decode import SyncBounds, decode_sync_body, decode_sync_job, job_result  # noqa: E402

BOUNDS = SyncBounds(2**24, 5000, 1000)


def best_of(fn: Callable[[], Any], rounds: int) -> float:
    """Return the shortest of ``rounds`` timings of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    figures.add_json_out(parser)
    args = parser.parse_args()
    body = _agent_batch()
    job = decode_sync_job(gzip.compress(body), "gzip", BOUNDS)
    _, rows = job_result(pickle.loads(pickle.dumps(job)))
    texts = [row[3] for row in rows]
    parse, decode, ship, text = [], [], [], []
    for _ in range(args.runs):
        parse.append(best_of(lambda: pydantic_core.from_json(body), args.rounds))
        decode.append(best_of(lambda: decode_sync_body(body, BOUNDS), args.rounds))
        ship.append(best_of(lambda: job_result(pickle.loads(pickle.dumps(job))), args.rounds))
        text.append(best_of(lambda: pickle.loads(pickle.dumps(texts)), args.rounds))
    found = [
        figures.ratio_figure(
            f"hub decode of a {len(rows):,}-line batch / its JSON parse",
            "s",
            decode,
            "pydantic_core.from_json of the same body",
            parse,
            goal_max=8.0,
        ),
        figures.ratio_figure(
            "decode worker's rows shipped to the loop / their text pickled",
            "s",
            ship,
            "the payload texts alone pickled and unpickled",
            text,
            goal_max=4.0,
        ),
    ]
    for f in found:
        print(
            f"{f.name}: {statistics.median(f.values) * 1e3:.2f} ms vs "
            f"{statistics.median(f.baseline) * 1e3:.2f} ms = {f.ratio:.2f} ({f.goal}): "
            f"{'ok' if f.ok else 'MISSED'}"
        )
    figures.write(args.json_out, found)


if __name__ == "__main__":
    main()
