"""Which origin serves the next attempt (failover.selector): priority tiers, smooth weighted
round robin within a tier, and the failback hold-down.

Time is a FakeClock that the tests advance by hand: nothing sleeps, nothing touches the network.
Clock steps are multiples of 0.5 s so that float arithmetic lands exactly on the boundaries.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from failover.origins import Flag, Origin, build_origins
from failover.selector import Selector
from tests.helpers import FakeClock, make_settings, origin_dict


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
