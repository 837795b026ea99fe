"""Unit tests of the decision modules: health checks, outlier detection, selection, the engine.

Time is a FakeClock that the tests advance by hand: nothing sleeps, nothing touches the network.
Clock steps are multiples of 0.5 s so that float arithmetic lands exactly on the boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from failover.admin import engine_status
from failover.config import PassiveConfig, Settings, build_settings
from failover.engine import Engine
from failover.events import Event, EventLog
from failover.health import CheckState, HealthCheck, ProbeResult, Transition
from failover.origins import Flag, Origin, build_origins
from failover.outlier import Outlier
from failover.selector import Selector

START = 1000.0
PASS = ProbeResult(True, "200")
REFUSED = ProbeResult(False, "connection refused")


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def origin_dict(name: str, priority: int = 0, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"http://{name}.example",
        "priority": priority,
        "weight": weight,
        **extra,
    }


def make_settings(*origins: dict[str, Any], **blocks: Any) -> Settings:
    return build_settings({"origins": list(origins), **blocks})


# -- HealthCheck ----------------------------------------------------------------------------


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


# -- Outlier --------------------------------------------------------------------------------


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


# -- Selector -------------------------------------------------------------------------------


def make_selector(*origins: dict[str, Any], **failback: Any) -> tuple[Selector, dict[str, Origin]]:
    settings = make_settings(*origins, failback=failback)
    built = build_origins(settings.pools["default"])
    return Selector(built, settings.failback), {origin.name: origin for origin in built}


def go_down(selector: Selector, origin: Origin, now: float) -> None:
    """What the engine does when an origin stops being usable."""
    origin.flags.add(Flag.FAILED_CHECK)
    origin.reason = "2 consecutive probe failures: connection refused"
    selector.origin_down(origin, now)


def come_up(selector: Selector, origin: Origin, now: float) -> None:
    origin.flags.discard(Flag.FAILED_CHECK)
    origin.reason = "2 consecutive probe passes"
    selector.origin_up(origin, now)


def picks(selector: Selector, clock: FakeClock, count: int) -> list[str | None]:
    return [getattr(selector.pick(clock()), "name", None) for _ in range(count)]


def test_traffic_goes_to_the_lowest_priority_tier_with_a_usable_origin() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("c", 2), origin_dict("a", 0), origin_dict("b", 1), hold_down=0
    )
    assert picks(selector, clock, 3) == ["a"] * 3
    go_down(selector, by_name["a"], clock())
    assert picks(selector, clock, 3) == ["b"] * 3
    go_down(selector, by_name["b"], clock())
    assert picks(selector, clock, 3) == ["c"] * 3
    go_down(selector, by_name["c"], clock())
    assert selector.pick(clock()) is None
    come_up(selector, by_name["b"], clock())
    assert picks(selector, clock, 3) == ["b"] * 3


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 3, "b": 1}, ["a", "a", "b", "a"] * 2),
        # The example from nginx's smooth weighted round robin change: weights 5, 1, 1.
        ({"a": 5, "b": 1, "c": 1}, ["a", "a", "b", "a", "c", "a", "a"] * 2),
    ],
)
def test_smooth_weighted_round_robin_within_a_tier(
    weights: dict[str, int], expected: list[str]
) -> None:
    clock = FakeClock()
    origins = [origin_dict(name, 0, weight) for name, weight in weights.items()]
    selector, _ = make_selector(*origins, origin_dict("backup", 1))
    chosen = picks(selector, clock, len(expected))
    assert chosen == expected
    for name, weight in weights.items():
        assert chosen.count(name) == weight * len(expected) // sum(weights.values())


def test_failback_waits_for_the_hold_down() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("a", 0), origin_dict("b", 1), hold_down=30, flap_window=0
    )
    go_down(selector, by_name["a"], clock())
    assert picks(selector, clock, 2) == ["b", "b"]
    clock.advance(5)
    come_up(selector, by_name["a"], clock())
    assert picks(selector, clock, 2) == ["b", "b"]
    clock.advance(29.5)
    assert picks(selector, clock, 2) == ["b", "b"]
    clock.advance(0.5)
    assert picks(selector, clock, 2) == ["a", "a"]


def test_a_failure_during_the_hold_down_restarts_it() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("a", 0), origin_dict("b", 1), hold_down=30, flap_window=0
    )
    a = by_name["a"]
    go_down(selector, a, clock())
    come_up(selector, a, clock())
    first_recovery = clock()
    clock.advance(20)
    go_down(selector, a, clock())
    clock.advance(1)
    come_up(selector, a, clock())
    clock.now = first_recovery + 30  # the first hold-down would have ended here
    assert picks(selector, clock, 1) == ["b"]
    clock.now = first_recovery + 21 + 29.5
    assert picks(selector, clock, 1) == ["b"]
    clock.advance(0.5)
    assert picks(selector, clock, 1) == ["a"]


def assert_hold_down(
    selector: Selector, clock: FakeClock, primary: Origin, hold_down: float
) -> None:
    """Recover `primary` now and check it takes traffic back after exactly `hold_down`."""
    recovered = clock()
    come_up(selector, primary, recovered)
    clock.now = recovered + hold_down - 0.5
    assert selector.pick(clock()) is not primary
    clock.now = recovered + hold_down
    assert selector.pick(clock()) is primary


def test_flapping_doubles_the_hold_down_up_to_the_cap_and_a_quiet_window_resets_it() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("a", 0),
        origin_dict("b", 1),
        hold_down=10,
        flap_window=60,
        max_hold_down=35,
    )
    a = by_name["a"]
    go_down(selector, a, clock())
    assert_hold_down(selector, clock, a, 10)
    for expected in (20, 35, 35):  # each failure soon after recovering doubles it, capped
        clock.advance(1)
        go_down(selector, a, clock())
        assert_hold_down(selector, clock, a, expected)
    clock.advance(60)  # a quiet flap window since the last recovery
    go_down(selector, a, clock())
    assert_hold_down(selector, clock, a, 10)


def test_a_recovering_origin_beats_no_origin() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(origin_dict("a", 0), origin_dict("b", 1), hold_down=30)
    go_down(selector, by_name["a"], clock())
    go_down(selector, by_name["b"], clock())
    assert selector.pick(clock()) is None
    clock.advance(1)
    come_up(selector, by_name["b"], clock())
    assert selector.pick(clock()) is by_name["b"]


def test_next_after_never_repeats_and_ranks_by_usability_then_priority() -> None:
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("a", 0),
        origin_dict("b", 1),
        origin_dict("c", 2),
        origin_dict("d", 3),
        origin_dict("e", 4),
        hold_down=30,
    )
    go_down(selector, by_name["a"], clock())
    go_down(selector, by_name["e"], clock())
    go_down(selector, by_name["b"], clock())
    come_up(selector, by_name["b"], clock())  # usable but holding down
    clock.advance(10)

    def sequence(try_all: bool) -> list[str]:
        tried: list[Origin] = []
        while (following := selector.next_after(tried, clock(), try_all)) is not None:
            assert following not in tried
            tried.append(following)
        return [origin.name for origin in tried]

    assert sequence(try_all=False) == ["c", "d", "b"]
    assert sequence(try_all=True) == ["c", "d", "b", "a", "e"]
    assert selector.next_after([by_name["d"]], clock(), try_all=False) is by_name["c"]
    clock.advance(20)  # b's hold-down is over: it ranks by priority again
    assert sequence(try_all=False) == ["b", "c", "d"]


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("toggle"), st.integers(0, 4)),
        st.tuples(st.just("advance"), st.integers(0, 120).map(lambda n: n / 2)),
    ),
    max_size=40,
)


@hypothesis_settings(max_examples=75, deadline=None, database=None)
@given(OPERATIONS)
def test_pick_respects_usability_and_priority_under_any_history(
    operations: list[tuple[str, float]],
) -> None:
    hold_down, max_hold_down = 10.0, 40.0
    clock = FakeClock()
    selector, by_name = make_selector(
        origin_dict("a1", 0, 2),
        origin_dict("a2", 0, 1),
        origin_dict("b", 1),
        origin_dict("c", 2),
        origin_dict("d", 2),
        hold_down=hold_down,
        flap_window=30,
        max_hold_down=max_hold_down,
    )
    origins = list(by_name.values())
    recovered_at: dict[str, float] = {}
    for operation, value in operations:
        if operation == "advance":
            clock.advance(value)
        else:
            origin = origins[int(value)]
            if origin.usable:
                go_down(selector, origin, clock())
            else:
                come_up(selector, origin, clock())
                recovered_at[origin.name] = clock()
        now = clock()
        chosen = selector.pick(now)
        usable = [o for o in origins if o.usable]
        if not usable:
            assert chosen is None
            continue
        assert chosen is not None and chosen.usable
        # Whatever the flap history, a hold-down lasts at least hold_down and at most the max.
        since = {o.name: now - recovered_at[o.name] for o in origins if o.name in recovered_at}
        past = {o.name for o in origins if since.get(o.name, max_hold_down) >= max_hold_down}
        settled = [
            o.priority
            for o in origins
            if all(p.usable and p.name in past for p in origins if p.priority == o.priority)
        ]
        if settled:
            assert chosen.priority <= min(settled)
        if any(o.name in past for o in usable):
            assert since.get(chosen.name, hold_down) >= hold_down


# -- Engine ---------------------------------------------------------------------------------


@dataclass
class Rig:
    engine: Engine
    events: EventLog
    clock: FakeClock
    by_name: dict[str, Origin]
    _seen: int = field(default=0)

    @classmethod
    def build(cls, *origins: dict[str, Any], **blocks: Any) -> Rig:
        if not origins:
            origins = (origin_dict("a", 0), origin_dict("b", 1))
        settings = make_settings(*origins, **blocks)
        clock = FakeClock()
        events = EventLog(clock)
        built = build_origins(settings.pools["default"])
        engine = Engine(settings.pools["default"], built, events, clock)
        return cls(engine, events, clock, {origin.name: origin for origin in built})

    def probe(self, name: str, ok: bool) -> bool:
        return self.engine.on_probe(self.by_name[name], PASS if ok else REFUSED)

    def attempt(self, name: str, result: str | int, ttfb: float = 0.01) -> None:
        self.engine.on_attempt(self.by_name[name], result, ttfb)

    def take(self) -> list[tuple[str, str, str, str, str]]:
        """The events since the last call, oldest first, as (kind, origin, old, new, reason)."""
        events: list[Event] = list(reversed(self.events.newest_first()))
        fresh = events[self._seen :]
        self._seen = len(events)
        return [(e.kind, e.origin, e.old, e.new, e.reason) for e in fresh]

    def picked(self) -> str | None:
        origin = self.engine.pick()
        return origin.name if origin is not None else None

    def status_of(self, name: str) -> dict[str, Any]:
        origins: list[dict[str, Any]] = engine_status(self.engine)["origins"]
        return next(o for o in origins if o["name"] == name)


FAIL_REASON = "2 consecutive probe failures: connection refused"


def test_no_event_at_start_up_and_passing_first_probes_change_nothing() -> None:
    rig = Rig.build()
    assert rig.take() == []
    assert rig.probe("a", True) is True
    assert rig.probe("b", True) is True
    assert rig.take() == []
    assert rig.picked() == "a"
    assert engine_status(rig.engine)["active"] == "a"


def test_failing_probes_take_an_origin_down_with_one_event_and_move_traffic() -> None:
    rig = Rig.build()
    rig.probe("a", True)
    rig.probe("b", True)
    assert rig.probe("a", False) is True  # one failure of two needed
    assert rig.take() == []
    assert rig.picked() == "a"
    assert rig.probe("a", False) is False
    assert rig.take() == [
        ("origin-down", "a", "healthy", "failed-check", FAIL_REASON),
        ("traffic-moved", "b", "a", "b", f"a is failed-check: {FAIL_REASON}"),
    ]
    assert rig.by_name["a"].flags == {Flag.FAILED_CHECK}
    rig.probe("a", False)
    assert rig.take() == []
    assert rig.picked() == "b"


def test_a_first_probe_failure_takes_the_origin_down_at_once() -> None:
    rig = Rig.build()
    assert rig.probe("a", False) is False
    reason = "1 consecutive probe failure: connection refused"
    assert rig.take() == [
        ("origin-down", "a", "healthy", "failed-check", reason),
        ("traffic-moved", "b", "a", "b", f"a is failed-check: {reason}"),
    ]


def test_failback_waits_for_the_hold_down_and_the_event_names_it() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", True)
    rig.probe("a", False)
    rig.probe("a", False)
    rig.take()
    rig.clock.advance(10)
    rig.probe("a", True)
    assert rig.take() == []
    rig.probe("a", True)
    assert rig.take() == [
        ("origin-up", "a", "failed-check", "healthy", "2 consecutive probe passes")
    ]
    assert rig.picked() == "b"
    rig.clock.advance(29.5)
    rig.engine.tick()
    assert rig.take() == []
    assert rig.picked() == "b"
    rig.clock.advance(0.5)
    rig.engine.tick()  # no request needed for the move to be noticed
    assert rig.take() == [
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 30 s hold-down")
    ]
    assert rig.picked() == "a"


def test_a_move_while_the_primary_holds_down_names_the_failure_not_the_hold_down() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", False)
    rig.probe("a", True)
    rig.probe("a", True)  # a is back but holding down; b serves
    rig.take()
    rig.clock.advance(5)
    rig.probe("b", False)  # b's first probe: down at once, a is the only usable origin
    reason = "1 consecutive probe failure: connection refused"
    assert rig.take() == [
        ("origin-down", "b", "healthy", "failed-check", reason),
        ("traffic-moved", "a", "b", "a", f"b is failed-check: {reason}"),
    ]


def test_all_origins_down_and_one_back() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", False)
    rig.probe("b", False)
    down = "1 consecutive probe failure: connection refused"
    assert rig.take()[2:] == [
        ("origin-down", "b", "healthy", "failed-check", down),
        ("traffic-moved", "-", "b", "none", "no origin is usable"),
    ]
    assert rig.picked() is None
    assert engine_status(rig.engine)["active"] is None
    rig.clock.advance(2)
    rig.probe("b", True)
    rig.probe("b", True)
    assert rig.take() == [
        ("origin-up", "b", "failed-check", "healthy", "2 consecutive probe passes"),
        ("traffic-moved", "b", "none", "b", "b became usable"),
    ]
    assert rig.picked() == "b"


def test_ejection_emits_one_event_and_moves_traffic() -> None:
    rig = Rig.build()
    rig.probe("a", True)
    rig.probe("b", True)
    rig.attempt("a", "connect-failure")
    rig.attempt("a", "connect-failure")
    assert rig.take() == []
    rig.attempt("a", "connect-failure")
    reason = "3 consecutive failures: connect-failure (for 30 s)"
    assert rig.take() == [
        ("ejected", "a", "healthy", "ejected", reason),
        ("traffic-moved", "b", "a", "b", f"a is ejected: {reason}"),
    ]
    assert rig.picked() == "b"


def test_an_ejected_origin_returns_only_after_its_ejection_time_and_a_passing_probe() -> None:
    rig = Rig.build(failback={"hold_down": 0})
    rig.probe("a", True)
    rig.probe("b", True)
    for _ in range(3):
        rig.attempt("a", 503)
    rig.take()
    rig.clock.advance(29.5)
    rig.probe("a", True)  # too early: the ejection stands
    rig.engine.tick()
    assert rig.take() == []
    assert Flag.EJECTED in rig.by_name["a"].flags
    rig.clock.advance(0.5)
    rig.engine.tick()  # time is up, but with active checks a probe must pass first
    rig.probe("a", False)
    assert rig.take() == []
    assert rig.picked() == "b"
    rig.probe("a", True)
    assert rig.take() == [
        (
            "restored",
            "a",
            "ejected",
            "healthy",
            "ejection time passed and an active probe passed",
        ),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]
    assert rig.picked() == "a"


def test_without_active_checks_the_ejection_ends_with_its_time() -> None:
    rig = Rig.build(health={"enabled": False}, failback={"hold_down": 0})
    for _ in range(3):
        rig.attempt("a", "timeout")
    rig.take()
    rig.clock.advance(29.5)
    rig.engine.tick()
    assert rig.take() == []
    rig.clock.advance(0.5)
    rig.engine.tick()
    assert rig.take() == [
        ("restored", "a", "ejected", "healthy", "ejection time passed"),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]


def test_flags_are_independent_and_each_change_is_one_event() -> None:
    rig = Rig.build(failback={"hold_down": 0})
    rig.probe("a", True)
    rig.probe("b", True)
    for _ in range(3):
        rig.attempt("a", 503)
    rig.take()
    rig.probe("a", False)
    rig.probe("a", False)
    assert rig.take() == [("origin-down", "a", "ejected", "ejected+failed-check", FAIL_REASON)]
    rig.clock.advance(30)
    rig.probe("a", True)  # ejection over and a probe passed; the check still fails
    assert rig.take() == [
        (
            "restored",
            "a",
            "ejected+failed-check",
            "failed-check",
            "ejection time passed and an active probe passed",
        )
    ]
    assert rig.picked() == "b"
    rig.probe("a", True)
    assert rig.take() == [
        ("origin-up", "a", "failed-check", "healthy", "2 consecutive probe passes"),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]


def test_ready_after_every_origin_is_probed() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    assert not rig.engine.ready()
    rig.probe("a", True)
    assert not rig.engine.ready()
    rig.probe("b", False)
    assert rig.engine.ready()


def test_ready_after_the_startup_grace_without_probes() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    rig.clock.advance(4.5)
    assert not rig.engine.ready()
    rig.clock.advance(0.5)
    assert rig.engine.ready()


def test_not_ready_when_no_origin_is_usable() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    rig.probe("a", False)
    rig.probe("b", False)
    rig.clock.advance(10)
    assert not rig.engine.ready()
    assert engine_status(rig.engine)["ready"] is False
    rig.probe("b", True)
    rig.probe("b", True)
    assert rig.engine.ready()


def test_status_shows_flags_reasons_counts_rates_and_next_probe() -> None:
    rig = Rig.build(
        origin_dict("a", 0),
        origin_dict("b", 1, 3),
        origin_dict("c", 1),
        passive={"consecutive_failures": 3, "min_requests": 10, "ejection_time": 30},
    )
    rig.probe("a", True)
    rig.probe("a", False)
    for result in (200, 500, 200, 503):
        rig.attempt("a", result)
    rig.engine.next_probe_at["a"] = rig.clock() + 2
    rig.clock.advance(0.5)

    status = engine_status(rig.engine)
    assert status["active"] == "a"
    assert status["ready"] is False  # b and c were never probed
    a = rig.status_of("a")
    assert a["state"] == "healthy" and a["usable"] is True and a["flags"] == []
    assert a["check"]["state"] == "healthy"
    assert a["check"]["consecutive_failures"] == 1
    assert a["check"]["consecutive_passes"] == 0
    assert a["check"]["last"] == "connection refused"
    assert a["check"]["next_probe_in"] == 1.5
    assert a["passive"]["consecutive_failures"] == 1
    assert a["passive"]["requests_in_window"] == 4
    assert a["passive"]["error_rate"] == 0.5
    assert rig.status_of("b")["check"]["next_probe_in"] is None

    for _ in range(2):
        rig.attempt("a", "reset")
    status = engine_status(rig.engine)
    assert status["active"] == ["b", "c"]
    a = rig.status_of("a")
    assert a["flags"] == ["ejected"]
    assert a["state"] == "ejected" and a["usable"] is False
    assert a["reason"] == "3 consecutive failures: reset (for 30 s)"
    assert a["passive"]["ejections"] == 1
    assert a["passive"]["ejected_for"] == 30
    rig.clock.advance(10)
    assert rig.status_of("a")["passive"]["ejected_for"] == 20
    assert rig.status_of("a")["since_seconds"] == 10
