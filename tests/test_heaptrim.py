"""heaptrim: freed C-heap pages go back to the system (glibc)."""

from __future__ import annotations

from pathlib import Path

from edge_agent.heaptrim import trim_heap


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_trim_returns_freed_heap_pages() -> None:
    # 40 MB in 8 KB pieces: below glibc's mmap threshold, so they live in the heap and
    # stay resident after they are freed, until the heap is trimmed.
    chunks = [bytearray(8192) for _ in range(5000)]
    for c in chunks:
        c[::4096] = b"x" * len(c[::4096])  # touch every page
    keep = bytearray(8192)  # allocated last: the freed pages are not at the heap's top
    del chunks
    before = _rss_kb()
    assert trim_heap() is True
    after = _rss_kb()
    assert before - after > 20_000, (before, after)
    del keep
