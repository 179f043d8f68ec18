"""Give the C heap's free pages back to the system after start-up and after busy spells
(glibc only).

Start-up builds pydantic validators, TLS contexts and the first documents: a few MB of
temporaries that are freed but stay in the process (glibc keeps freed memory in its
heap for reuse). ``malloc_trim(0)`` returns the free pages to the kernel; measured on an
idle agent it lowers RSS by about 1.2 MB (benchmarks/bench_agent_resources.py). Without
glibc (or ctypes) it does nothing.

A burst of work (100,000 engine events, a catch-up) leaves the heap at its high-water
mark the same way: +1.4 to 1.8 MB of RSS that a trim gave back. ``HeapTrimmer`` looks
every ``interval_s`` at the CPU the process spent and trims when a busy spell has ended:
at least ``busy_cpu_s`` since the last trim, and less than that in the last interval
(during the spell the freed memory is taken again at once; trimming then would only
cost). An idle agent (a few ms of CPU a minute) never trims. Its counts are in the
agent's status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("edge_agent")

TRIM_DELAY_S = 5.0  # after READY=1: the first sync and reconcile pass have run by then


def trim_heap() -> bool:
    """Return whether glibc released memory to the system (False without glibc)."""
    try:
        import ctypes  # only here: the agent needs ctypes for nothing else

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (ImportError, OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    released = bool(trim(0))
    log.debug("malloc_trim: %s", "memory released" if released else "nothing to release")
    return released


@dataclass
class HeapTrimmer:
    """Trims the heap each time a busy spell has ended (the module says when that is)."""

    interval_s: float = 5.0
    busy_cpu_s: float = 0.25
    beat: Callable[[], None] = lambda: None  # the task supervisor's heartbeat
    cpu: Callable[[], float] = time.process_time
    trim: Callable[[], bool] = trim_heap
    checks: int = 0
    trims: int = 0
    released: int = 0  # trims that gave memory back to the system
    _cpu_at_trim: float = 0.0
    _cpu_at_check: float = 0.0

    def check(self) -> bool:
        """Trim if a busy spell has ended (see the module); return whether it trimmed."""
        self.checks += 1
        used = self.cpu()
        last, self._cpu_at_check = used - self._cpu_at_check, used
        if used - self._cpu_at_trim < self.busy_cpu_s or last >= self.busy_cpu_s:
            return False
        self.trims += 1
        self.released += self.trim()
        self._cpu_at_trim = self._cpu_at_check = self.cpu()  # the trim's cost is no work
        return True

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled."""
        # Start-up is the start-up trim's (TRIM_DELAY_S).
        self._cpu_at_trim = self._cpu_at_check = self.cpu()
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()
            self.beat()

    def status(self) -> dict[str, int]:
        """Return the counts (for the agent's status)."""
        return {"checks": self.checks, "trims": self.trims, "released": self.released}
