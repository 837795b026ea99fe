"""Active health checks (failover.health): the rise/fall state machine, fed probe results by
hand. Nothing sleeps, nothing touches the network.
"""

from __future__ import annotations

from failover.health import CheckState, HealthCheck, Transition
from tests.helpers import PASS, REFUSED


def state(check: HealthCheck) -> CheckState:
    return check.state


def run_probes(check: HealthCheck, outcomes: str) -> list[Transition | None]:
    """Feed probes written as a string: `+` a pass, `-` a failure (connection refused)."""
    return [check.record(PASS if outcome == "+" else REFUSED) for outcome in outcomes]


def test_first_probe_decides_at_once() -> None:
    rising = HealthCheck(healthy_threshold=3, unhealthy_threshold=3)
    assert state(rising) is CheckState.UNKNOWN
    assert rising.record(PASS) == Transition(
        CheckState.UNKNOWN, CheckState.HEALTHY, "1 consecutive probe pass"
    )
    assert state(rising) is CheckState.HEALTHY

    falling = HealthCheck(healthy_threshold=3, unhealthy_threshold=3)
    assert falling.record(REFUSED) == Transition(
        CheckState.UNKNOWN,
        CheckState.UNHEALTHY,
        "1 consecutive probe failure: connection refused",
    )
    assert state(falling) is CheckState.UNHEALTHY


def test_falls_after_unhealthy_threshold_failures_in_a_row() -> None:
    check = HealthCheck(healthy_threshold=2, unhealthy_threshold=3)
    run_probes(check, "+")
    assert run_probes(check, "--") == [None, None]
    assert state(check) is CheckState.HEALTHY
    assert check.record(REFUSED) == Transition(
        CheckState.HEALTHY,
        CheckState.UNHEALTHY,
        "3 consecutive probe failures: connection refused",
    )
    assert run_probes(check, "--") == [None, None]  # already down: no second transition
    assert state(check) is CheckState.UNHEALTHY


def test_rises_after_healthy_threshold_passes_in_a_row() -> None:
    check = HealthCheck(healthy_threshold=2, unhealthy_threshold=3)
    run_probes(check, "-")
    assert check.record(PASS) is None
    assert state(check) is CheckState.UNHEALTHY
    assert check.record(PASS) == Transition(
        CheckState.UNHEALTHY, CheckState.HEALTHY, "2 consecutive probe passes"
    )


def test_a_pass_resets_the_failure_count_and_a_failure_the_pass_count() -> None:
    check = HealthCheck(healthy_threshold=3, unhealthy_threshold=3)
    run_probes(check, "+")
    assert run_probes(check, "--+--+--") == [None] * 8
    assert state(check) is CheckState.HEALTHY
    assert (check.passes, check.failures) == (0, 2)

    run_probes(check, "-")
    assert state(check) is CheckState.UNHEALTHY
    assert run_probes(check, "++-++-++") == [None] * 8
    assert state(check) is CheckState.UNHEALTHY
    assert (check.passes, check.failures) == (2, 0)
    assert check.record(PASS) is not None
    assert state(check) is CheckState.HEALTHY
