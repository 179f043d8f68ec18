"""Device metrics parsers (edge_agent.metrics): tables of fixture text -> figures, no I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.metrics import (
    CpuTimes,
    MetricsSampler,
    container_cpu_percent,
    cpu_percent,
    parse_cgroup_cpu,
    parse_cgroup_memory,
    parse_meminfo,
    parse_proc_stat,
    parse_thermal,
    parse_uptime,
)

PROC_STAT = """cpu  100 5 50 800 40 3 2 0 7 0
cpu0 50 2 25 400 20 1 1 0 0 0
intr 12345
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PROC_STAT, CpuTimes(total=100 + 5 + 50 + 800 + 40 + 3 + 2 + 0, idle=840)),
        ("cpu  1 2 3 4\n", CpuTimes(10, 4)),  # old kernels: no iowait column
        ("cpu0 1 2 3 4\n", None),  # no aggregate line
        ("cpu  a b c d\n", None),
        ("cpu  1 2\n", None),
        ("", None),
    ],
)
def test_parse_proc_stat(text: str, expected: CpuTimes | None) -> None:
    assert parse_proc_stat(text) == expected


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        (CpuTimes(1000, 800), CpuTimes(1100, 850), 50.0),
        (CpuTimes(1000, 800), CpuTimes(1100, 900), 0.0),
        (CpuTimes(1000, 800), CpuTimes(1000, 800), None),  # no time passed
        (None, CpuTimes(1000, 800), None),  # the first reading
        (CpuTimes(1000, 800), None, None),
        (CpuTimes(1000, 800), CpuTimes(1004, 799), 100.0),  # idle went back (hotplug): capped
    ],
)
def test_cpu_percent(prev: CpuTimes | None, cur: CpuTimes | None, expected: float | None) -> None:
    assert cpu_percent(prev, cur) == expected


MEMINFO = """MemTotal:        2000000 kB
MemFree:          500000 kB
MemAvailable:    1500000 kB
Buffers:           10000 kB
Cached:           200000 kB
"""
MEMINFO_OLD = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MEMINFO,
            {
                "total_bytes": 2_000_000 * 1024,
                "available_bytes": 1_500_000 * 1024,
                "used_bytes": 500_000 * 1024,
            },
        ),
        (  # before MemAvailable (kernel < 3.14): free + buffers + cached
            MEMINFO_OLD,
            {"total_bytes": 1000 * 1024, "available_bytes": 400 * 1024, "used_bytes": 600 * 1024},
        ),
        ("MemFree: 100 kB\n", None),
        ("garbage", None),
    ],
)
def test_parse_meminfo(text: str, expected: dict[str, int] | None) -> None:
    assert parse_meminfo(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("12345.67 45678.90\n", 12345.7), ("", None), ("x y", None)]
)
def test_parse_uptime(text: str, expected: float | None) -> None:
    assert parse_uptime(text) == expected


@pytest.mark.parametrize(
    ("zones", "expected"),
    [
        (
            [("thermal_zone0", "x86_pkg_temp\n", "45000\n"), ("thermal_zone1", "acpitz", "27800")],
            [
                {"zone": "thermal_zone0", "type": "x86_pkg_temp", "celsius": 45.0},
                {"zone": "thermal_zone1", "type": "acpitz", "celsius": 27.8},
            ],
        ),
        ([("thermal_zone0", "cpu", "N/A")], []),  # unreadable: left out
        ([("thermal_zone0", "cpu", "-273000")], []),  # a sensor's error value
        ([("thermal_zone0", "cpu", "999000")], []),
        ([], []),
    ],
)
def test_parse_thermal(zones: list[tuple[str, str, str]], expected: list[dict[str, Any]]) -> None:
    assert parse_thermal(zones) == expected


@pytest.mark.parametrize(
    ("usage", "stat", "v2", "expected"),
    [
        ("1000000\n", "cache 5\ntotal_inactive_file 200000\n", False, 800000),
        ("1000000\n", "inactive_file 300000\n", True, 700000),
        ("1000000\n", "", False, 1000000),  # no stat: the usage as it is
        ("100\n", "total_inactive_file 200\n", False, 0),  # never negative
        ("max\n", "", True, None),
    ],
)
def test_parse_cgroup_memory(usage: str, stat: str, v2: bool, expected: int | None) -> None:
    assert parse_cgroup_memory(usage, stat, v2=v2) == expected


@pytest.mark.parametrize(
    ("text", "v2", "expected"),
    [
        ("41794482\n", False, 41794482),
        ("usage_usec 1500\nuser_usec 1000\n", True, 1_500_000),
        ("user_usec 1000\n", True, None),
        ("", False, None),
    ],
)
def test_parse_cgroup_cpu(text: str, v2: bool, expected: int | None) -> None:
    assert parse_cgroup_cpu(text, v2=v2) == expected


@pytest.mark.parametrize(
    ("prev", "now_s", "cpu_ns", "expected"),
    [
        ((10.0, 1_000_000_000), 12.0, 2_000_000_000, 50.0),  # 1 s of CPU in 2 s
        ((10.0, 0), 11.0, 2_000_000_000, 200.0),  # two cores busy
        (None, 12.0, 5, None),
        ((10.0, 100), 10.0, 200, None),  # no time passed
        ((10.0, 100), 11.0, 50, None),  # counter went back (a new container)
    ],
)
def test_container_cpu_percent(
    prev: tuple[float, int] | None, now_s: float, cpu_ns: int, expected: float | None
) -> None:
    assert container_cpu_percent(prev, now_s, cpu_ns) == expected


async def test_sampler_on_fixture_trees_leaves_out_what_the_host_does_not_expose(
    tmp_path: Path,
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0\n")
    (proc / "meminfo").write_text(MEMINFO)
    (proc / "uptime").write_text("60.5 100.0\n")
    sys = tmp_path / "sys"  # no class/thermal: no temperatures key at all
    sampler = MetricsSampler(
        data_dir=tmp_path,
        docker_root=str(tmp_path / "absent"),
        services=list,
        proc=str(proc),
        sys=str(sys),
        cgroup_root=str(tmp_path / "cgroup"),
    )
    await sampler.prime()
    (proc / "stat").write_text("cpu  150 0 150 900 0 0 0 0\n")
    sample = await sampler.sample()
    assert sample["cpu_percent"] == 50.0
    assert sample["memory"]["used_bytes"] == 500_000 * 1024
    assert sample["uptime_s"] == 60.5
    assert [d["name"] for d in sample["disks"]] == ["data"]  # docker root not visible
    assert sample["disks"][0]["total_bytes"] > 0
    assert "temperatures" not in sample
    assert (sample["containers"], sample["containers_total"]) == ([], 0)

    zone = sys / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("51500\n")
    (zone / "type").write_text("soc\n")
    sample = await sampler.sample()
    assert sample["temperatures"] == [{"zone": "thermal_zone0", "type": "soc", "celsius": 51.5}]
