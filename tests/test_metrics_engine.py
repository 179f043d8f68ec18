"""Per-container metrics where the cgroup files are not visible: the engine's stats."""

from __future__ import annotations

from pathlib import Path

from docker_env import TestImages, make_release, make_service

from edge_agent.metrics import MetricsSampler
from edge_agent.runtime import DockerRuntime


async def test_container_metrics_fall_back_to_engine_stats_without_cgroup_files(
    runtime: DockerRuntime, images: TestImages, tmp_path: Path
) -> None:
    service = make_service("web", images.ref("good"))
    cid = await runtime.create(service, release=make_release([service]), revision=1)
    await runtime.start(cid)
    current = [s for s in await runtime.list_services() if s.is_running]
    sampler = MetricsSampler(
        data_dir=tmp_path,
        docker_root=str(tmp_path),
        services=lambda: current,
        engine_stats=runtime.container_usage,
        cgroup_root=str(tmp_path / "no-cgroup"),  # as inside a container without them
    )
    await sampler.prime()
    sample = await sampler.sample()
    (c,) = sample["containers"]
    assert (c["service"], c["source"]) == ("web", "engine")
    assert c["mem_bytes"] > 0 and c["cpu_percent"] >= 0
    assert await runtime.container_usage("0" * 64) is None  # gone: left out, no error
