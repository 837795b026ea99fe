"""Passive detection (failover.outlier): attempt results in, ejections out.

Time is a FakeClock that the tests advance by hand: nothing sleeps, nothing touches the network.
Clock steps are multiples of 0.5 s so that float arithmetic lands exactly on the boundaries.
"""

from __future__ import annotations

from typing import Any

import pytest

from failover.config import PassiveConfig
from failover.outlier import Outlier
from tests.helpers import FakeClock, make_settings, origin_dict


def passive(**options: Any) -> PassiveConfig:
    return make_settings(origin_dict("a"), passive=options).passive


def feed(
    outlier: Outlier,
    clock: FakeClock,
    results: list[str | int],
    ttfb: float = 0.01,
    step: float = 0.0,
) -> list[str | None]:
    verdicts = []
    for result in results:
        verdicts.append(outlier.record(result, ttfb, clock()))
        clock.advance(step)
    return verdicts


@pytest.mark.parametrize(
    ("result", "described"),
    [
        ("connect-failure", "connect-failure"),
        ("reset", "reset"),
        ("timeout", "timeout"),
        (500, "status 500"),
        (503, "status 503"),
        (599, "status 599"),
    ],
)
def test_ejects_after_consecutive_failures(result: str | int, described: str) -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=3))
    assert feed(outlier, clock, [result, result]) == [None, None]
    assert outlier.record(result, 0.01, clock()) == f"3 consecutive failures: {described}"


def test_client_errors_are_not_failures_and_a_success_breaks_the_run() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=3))
    assert feed(outlier, clock, [404] * 20, step=0.5) == [None] * 20
    assert outlier.consecutive == 0
    requests, failures, _ = outlier.window(clock())
    assert failures == 0 and requests > 0
    assert feed(outlier, clock, [502, 502, 200, 502, 502, 404]) == [None] * 6
    assert outlier.consecutive == 0


def test_failure_statuses_are_configurable() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=2, failure_statuses="429,502-504"))
    assert feed(outlier, clock, [500, 500, 500]) == [None] * 3
    assert outlier.record(429, 0.01, clock()) is None
    assert outlier.record(503, 0.01, clock()) == "2 consecutive failures: status 503"


# Six failures in ten requests, never three in a row, the last one a failure.
INTERLEAVED: list[str | int] = [200, 503, 503, 200, 503, 503, 200, 200, 503, 503]


def test_error_rate_ejects_over_the_window() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=3, error_rate=0.5, window=10, min_requests=10))
    verdicts = feed(outlier, clock, INTERLEAVED, step=0.5)
    assert verdicts[:-1] == [None] * 9
    assert verdicts[-1] == "error rate 60% over 10 s, 10 requests"


def test_no_error_rate_ejection_below_min_requests() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=3, error_rate=0.5, window=10, min_requests=10))
    # Nine requests, six failures: two thirds fail but too few requests to judge.
    results: list[str | int] = [200, 503, 503, 200, 503, 503, 200, 503, 503]
    assert feed(outlier, clock, results, step=0.5) == [None] * 9


def test_old_requests_slide_out_of_the_window() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=3, error_rate=0.5, window=10, min_requests=10))
    feed(outlier, clock, [503, 503, 200, 503])  # at START
    clock.advance(5)
    feed(outlier, clock, [503, 200, 503, 503, 200])  # at START + 5
    clock.advance(4.5)  # START + 9.5: both batches inside the window
    assert outlier.window(clock()) == (9, 6, 0)
    clock.advance(1)  # START + 10.5: the first batch has slid out
    assert outlier.window(clock()) == (5, 3, 0)
    # With the first batch counted this would be 7 failures in 10 requests.
    assert outlier.record("reset", 0.01, clock()) is None
    assert outlier.window(clock()) == (6, 4, 0)
    clock.advance(10)
    assert outlier.window(clock()) == (0, 0, 0)


def test_latency_ejects_when_enough_answers_are_slow() -> None:
    clock = FakeClock()
    config = passive(error_rate=0.5, window=10, min_requests=10, latency_threshold=0.5)
    outlier = Outlier(config)
    verdicts = [outlier.record(200, 0.1 if i % 2 == 0 else 0.9, clock()) for i in range(10)]
    assert verdicts[:-1] == [None] * 9
    assert verdicts[-1] == "50% slower than 0.5 s over 10 s, 10 requests"

    without_threshold = Outlier(passive(error_rate=0.5, window=10, min_requests=10))
    assert [without_threshold.record(200, 0.9, clock()) for _ in range(20)] == [None] * 20


def test_ejection_time_grows_with_consecutive_ejections_up_to_the_cap() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(ejection_time=30, max_ejection_time=100))
    durations = []
    for _ in range(5):
        duration = outlier.eject(clock())
        durations.append(duration)
        clock.advance(duration - 0.5)
        assert not outlier.may_restore(clock())
        clock.advance(0.5)
        assert outlier.may_restore(clock())
        outlier.restore(clock())
        assert not outlier.may_restore(clock())
        clock.advance(1)
    assert durations == [30, 60, 90, 100, 100]


def test_ejection_multiplier_resets_after_a_quiet_max_ejection_time() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(ejection_time=30, max_ejection_time=100))
    assert outlier.eject(clock()) == 30
    clock.advance(30)
    outlier.restore(clock())
    clock.advance(99.5)  # not quiet for long enough
    assert outlier.eject(clock()) == 60
    clock.advance(60)
    outlier.restore(clock())
    clock.advance(100.5)
    assert outlier.eject(clock()) == 30


def test_an_ejected_origin_is_not_ejected_twice() -> None:
    clock = FakeClock()
    outlier = Outlier(passive(consecutive_failures=2))
    assert feed(outlier, clock, ["reset", "reset"])[-1] is not None
    outlier.eject(clock())
    assert feed(outlier, clock, ["reset"] * 5) == [None] * 5
