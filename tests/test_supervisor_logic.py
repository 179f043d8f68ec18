"""Supervisor decisions: restart backoff, crash loops, unhealthy marking, rollback verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_agent.errors import ConfigError
from edge_agent.models import (
    ContainerStatus,
    CurrentService,
    Health,
    HealthCheck,
    Release,
    Service,
    Target,
)
from edge_agent.supervisor import BackoffPolicy, RolloutWatch, ServiceState, Supervisor

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = BackoffPolicy(
    base_s=1, cap_s=30, stable_after_s=60, crash_loop_exits=4, crash_loop_window_s=20
)


def at(seconds: float) -> datetime:
    """Return T0 plus seconds."""
    return T0 + timedelta(seconds=seconds)


def container(name: str = "web", **kw: Any) -> CurrentService:
    """Return a current container with defaults."""
    kw.setdefault("container_id", f"c-{name}")
    kw.setdefault("config_hash", "h")
    kw.setdefault("status", ContainerStatus.RUNNING)
    return CurrentService(name=name, **kw)


# -- backoff ----------------------------------------------------------------------------


def test_delay_grows_exponentially_to_the_cap() -> None:
    p = BackoffPolicy(base_s=1, cap_s=300)
    assert [p.delay_s(n) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert p.delay_s(10_000) == 300


@pytest.mark.parametrize(
    "kw",
    [
        {"base_s": 0},
        {"base_s": 10, "cap_s": 5},
        {"factor": 0.5},
        {"stable_after_s": 0},
        {"crash_loop_exits": 1},
        {"max_tracked": 0},
    ],
)
def test_policy_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BackoffPolicy(**kw)


def test_record_exit_returns_the_next_allowed_restart() -> None:
    sup = Supervisor(BackoffPolicy(base_s=1, cap_s=8, crash_loop_exits=100))
    times = [sup.record_exit("web", at(t), exit_code=1) for t in (0, 1, 3, 7, 15, 23)]
    assert times == [at(1), at(3), at(7), at(15), at(23), at(31)]
    state = sup.state("web")
    assert state.restarts == 6
    assert state.last_exit_code == 1
    assert state.next_restart_at == at(31)
    assert sup.restart_not_before() == {"web": at(31)}


def test_backoff_resets_after_staying_up() -> None:
    sup = Supervisor(POLICY)
    for t in (0, 1, 3):
        sup.record_exit("web", at(t), exit_code=1)
    assert sup.state("web").restarts == 3
    sup.record_start("web", at(7))
    assert sup.record_exit("web", at(7 + 60), exit_code=1) == at(68)
    assert sup.state("web").restarts == 1


def test_restart_totals_keep_counting_when_the_backoff_resets() -> None:
    """The Prometheus restarts counter never goes back (``restarts`` is the backoff's)."""
    sup = Supervisor(POLICY)
    for t in (0, 1, 3):
        sup.record_exit("web", at(t), exit_code=1)
    sup.record_start("web", at(7))
    sup.record_exit("web", at(7 + 60), exit_code=1)
    assert sup.state("web").restarts == 1
    assert sup.restart_totals() == {"web": 4}


def test_started_at_of_the_exit_counts_for_stability() -> None:
    sup = Supervisor(POLICY)
    sup.record_exit("web", at(0))
    sup.record_exit("web", at(1))
    assert sup.record_exit("web", at(100), started_at=at(30)) == at(101)


def test_crash_loop_after_n_exits_in_window_then_restarts_at_the_cap() -> None:
    seen: list[ServiceState] = []
    sup = Supervisor(POLICY, on_crash_loop=seen.append)
    for t in (0, 1, 3):
        sup.record_exit("web", at(t), exit_code=2)
    assert not sup.state("web").crash_loop
    assert sup.record_exit("web", at(7), exit_code=2) == at(7 + 30)
    state = sup.state("web")
    assert state.crash_loop and state.restarts == 4 and state.last_exit_code == 2
    assert sup.crash_looping() == {"web"}
    sup.record_exit("web", at(40), exit_code=2)
    assert len(seen) == 1 and seen[0].crash_loop and seen[0].service == "web"


def test_exits_spread_wider_than_the_window_are_no_crash_loop() -> None:
    sup = Supervisor(BackoffPolicy(base_s=1, cap_s=5, crash_loop_exits=3, crash_loop_window_s=10))
    for t in (0, 11, 22, 33):
        sup.record_exit("web", at(t))
    assert not sup.state("web").crash_loop


def test_crash_loop_ends_when_the_container_stays_up() -> None:
    sup = Supervisor(POLICY)
    for t in (0, 1, 2, 3):
        sup.record_exit("web", at(t), exit_code=1)
    assert sup.state("web").crash_loop
    sup.observe([container(started_at=at(40))], at(40 + 60))
    assert sup.state("web") == ServiceState(service="web", last_exit_code=1)


def test_unknown_service_has_empty_state() -> None:
    assert Supervisor().state("nope") == ServiceState(service="nope")


# -- observe ----------------------------------------------------------------------------


def exited(code: int, started: float, finished: float, **kw: Any) -> CurrentService:
    """Return an exited container."""
    return container(
        status=ContainerStatus.EXITED,
        exit_code=code,
        started_at=at(started),
        finished_at=at(finished),
        **kw,
    )


def test_observe_counts_each_exit_once() -> None:
    sup = Supervisor(POLICY)
    sup.observe([exited(1, 0, 2)], at(2.5))
    sup.observe([exited(1, 0, 2)], at(5))
    assert sup.state("web").restarts == 1
    assert sup.restart_not_before() == {"web": at(3)}
    sup.observe([container(started_at=at(3))], at(3.5))
    sup.observe([exited(1, 3, 4)], at(4.5))
    assert sup.state("web").restarts == 2
    assert sup.restart_not_before() == {"web": at(6)}


def test_observe_starts_fresh_for_a_new_service_definition() -> None:
    sup = Supervisor(POLICY)
    sup.observe([exited(1, 0, 1)], at(1))
    sup.observe([exited(1, 0, 1, container_id="c-new", config_hash="h2")], at(1))
    assert sup.state("web").restarts == 1
    assert sup.state("web").next_restart_at == at(2)


def test_crash_loop_history_survives_a_replaced_container() -> None:
    """Issue 7 item 11: a new container id reset the history, so a loop went unseen."""
    seen: list[ServiceState] = []
    sup = Supervisor(POLICY, on_crash_loop=seen.append)
    for n in range(POLICY.crash_loop_exits):
        # Each crash ends with the container replaced (same definition, new id).
        sup.observe([exited(1, 2 * n, 2 * n + 1, container_id=f"c-{n}")], at(2 * n + 1))
    assert sup.state("web").crash_loop and sup.state("web").restarts == POLICY.crash_loop_exits
    assert [s.service for s in seen] == ["web"]


def test_history_of_a_service_briefly_gone_is_kept_then_forgotten() -> None:
    sup = Supervisor(POLICY)
    sup.observe([exited(1, 0, 1), exited(1, 0, 1, name="db", container_id="c-db")], at(1))
    sup.observe([exited(1, 0, 1)], at(2))  # db removed, about to be recreated
    assert sup.state("db").restarts == 1
    sup.observe([exited(1, 0, 1)], at(1 + POLICY.crash_loop_window_s + 1))
    assert "db" not in sup.states()


def test_histories_of_gone_services_are_bounded() -> None:
    sup = Supervisor(BackoffPolicy(max_tracked=2, crash_loop_window_s=10**6))
    for n in range(5):
        sup.observe([exited(1, 0, 1, name=f"s{n}", container_id=f"c{n}")], at(n))
    assert sorted(sup.states()) == ["s3", "s4"]  # the longest-gone went first
    assert sup.forgotten_over_bound == 3


def test_exit_history_is_bounded() -> None:
    sup = Supervisor(BackoffPolicy(crash_loop_exits=3, crash_loop_window_s=10**6))
    for n in range(1000):
        sup.record_exit("web", at(n))
    assert len(sup._tracks["web"].exits) == 3


def test_observe_adopts_history_recorded_before_the_container_was_seen() -> None:
    sup = Supervisor(POLICY)
    sup.record_exit("web", at(0))
    sup.observe([container(started_at=at(1))], at(2))
    assert sup.state("web").restarts == 1


# -- unhealthy --------------------------------------------------------------------------


def test_unhealthy_is_marked_for_restart_with_backoff_once_per_spell() -> None:
    sup = Supervisor(POLICY)
    sick = container(health=Health.UNHEALTHY, started_at=at(0))
    sup.observe([sick], at(10))
    sup.observe([sick], at(10.5))
    assert sup.restart_unhealthy() == {"web"}
    assert sup.state("web").unhealthy and sup.state("web").restarts == 1
    assert sup.restart_not_before() == {"web": at(11)}

    sup.observe([container(health=Health.STARTING, started_at=at(11))], at(11))
    assert sup.restart_unhealthy() == frozenset()

    sup.observe([container(health=Health.UNHEALTHY, started_at=at(11))], at(20))
    assert sup.restart_unhealthy() == {"web"}
    assert sup.state("web").restarts == 2
    assert sup.restart_not_before() == {"web": at(22)}


def test_unhealthy_that_recovers_by_itself_is_not_restarted() -> None:
    sup = Supervisor(POLICY)
    sup.observe([container(health=Health.UNHEALTHY, started_at=at(0))], at(5))
    sup.observe([container(health=Health.HEALTHY, started_at=at(0))], at(6))
    assert sup.restart_unhealthy() == frozenset()


def test_unhealthy_for_long_is_not_reset_as_stable() -> None:
    sup = Supervisor(POLICY)
    for t in (100, 101, 103, 107):
        sick = container(health=Health.UNHEALTHY, started_at=at(0), container_id="c-web")
        sup.observe([sick.model_copy(update={"started_at": at(t - 100)})], at(t))
    assert sup.state("web").crash_loop
    assert sup.restart_unhealthy() == {"web"}


# -- rollout watch ----------------------------------------------------------------------


class Clock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


HC = HealthCheck(test=["CMD", "true"])
WEB = Service(name="web", image="app:1")
DB = Service(name="db", image="db:1", healthcheck=HC)
JOB = Service(name="job", image="job:1", restart="no")
TARGET = Target(
    device_id="dev",
    revision=2,
    release=Release(name="rel", version="2", services=[WEB, DB, JOB]),
    apply_deadline_s=60,
)


def up(s: Service, **kw: Any) -> CurrentService:
    """Return the container of a target service as the target wants it."""
    kw.setdefault("status", ContainerStatus.RUNNING)
    kw.setdefault("release", "rel")
    kw.setdefault("started_at", T0 - timedelta(hours=1))
    return container(s.name, config_hash=s.config_hash(), **kw)


ALL_GOOD = [
    up(WEB),
    up(DB, health=Health.HEALTHY),
    up(JOB, status=ContainerStatus.EXITED, exit_code=0),
]


def watch(clock: Clock) -> RolloutWatch:
    """Return a watch for TARGET started at T0."""
    return RolloutWatch(TARGET, T0, images_ready_at=T0, clock=clock)


def test_rollout_is_good_when_every_service_runs_and_is_healthy() -> None:
    w = watch(Clock(at(5)))
    assert w.deadline == at(60)
    assert w.evaluate(ALL_GOOD).status == "good"


@pytest.mark.parametrize(
    ("current", "why"),
    [
        ([up(WEB), up(DB, health=Health.STARTING), ALL_GOOD[2]], "db: health starting"),
        ([up(WEB), ALL_GOOD[2]], "db: no container"),
        ([container("web", release="rel"), *ALL_GOOD[1:]], "web: old container"),
        ([up(WEB, release="old"), *ALL_GOOD[1:]], "web: old container"),
        ([up(WEB, status=ContainerStatus.EXITED, exit_code=1), *ALL_GOOD[1:]], "web: exited"),
    ],
)
def test_rollout_pending_before_the_deadline_then_failed(
    current: list[CurrentService], why: str
) -> None:
    clock = Clock(at(59))
    w = watch(clock)
    verdict = w.evaluate(current)
    assert verdict.status == "pending" and why in verdict.reason
    clock.now = at(60)
    verdict = w.evaluate(current)
    assert verdict.status == "failed"
    assert "not ready within 60s" in verdict.reason and why in verdict.reason


def test_rollout_fails_at_once_on_crash_loop() -> None:
    w = watch(Clock(at(1)))
    verdict = w.evaluate(ALL_GOOD, crash_looping={"web", "unrelated"})
    assert verdict.status == "failed" and verdict.reason == "crash loop: web"


def test_rollout_fails_at_once_when_a_no_restart_service_failed() -> None:
    current = [*ALL_GOOD[:2], up(JOB, status=ContainerStatus.EXITED, exit_code=3)]
    verdict = watch(Clock(at(1))).evaluate(current)
    assert verdict.status == "failed" and "job: exited for good (code 3" in verdict.reason


def test_rollout_verdict_is_final_once_made() -> None:
    clock = Clock(at(1))
    w = watch(clock)
    assert w.evaluate(ALL_GOOD).status == "good"
    clock.now = at(500)
    assert w.evaluate([], crash_looping={"web"}).status == "good"


def test_rollout_treats_healthcheck_none_as_no_healthcheck() -> None:
    svc = Service(name="db", image="db:1", healthcheck=HealthCheck(test=["NONE"]))
    target = Target(
        device_id="dev", revision=1, release=Release(name="rel", version="1", services=[svc])
    )
    w = RolloutWatch(target, T0, images_ready_at=T0, clock=Clock(at(1)))
    assert w.evaluate([up(svc)]).status == "good"


def test_rollout_waits_until_services_stayed_up_min_ready_s() -> None:
    svc = Service(name="web", image="web:1")
    target = Target(
        device_id="dev",
        revision=1,
        release=Release(name="rel", version="1", services=[svc]),
        min_ready_s=10,
    )
    clock = Clock(at(5))
    w = RolloutWatch(target, T0, images_ready_at=T0, clock=clock)
    just_started = up(svc, started_at=at(4))
    verdict = w.evaluate([just_started])
    assert verdict.status == "pending" and "must stay up" in verdict.reason
    clock.now = at(14)
    assert w.evaluate([just_started]).status == "good"
