"""Steering (failover.selector, failover.balance, through failover.engine): gradual failback
(`failback.ramp`) and balancing within a tier (`balance: least-latency | least-request`).

Time is a FakeClock that the tests advance by hand and randomness a seeded random.Random:
nothing sleeps, nothing touches the network. Ramp shares are chosen as exact binary fractions
(0.25, 0.625) so that the counts are exact.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from failover.admin import engine_status
from failover.config import ConfigError
from failover.engine import Engine
from failover.events import EventLog
from failover.faulty import FaultyOrigin
from failover.origins import build_origins
from failover.selector import Selector
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import FakeClock, make_settings, origin_dict
from tests.test_engine import FAIL_REASON, Rig

RAMP = {"hold_down": 10, "ramp": 60, "ramp_start": "25%", "flap_window": 5}


def shares(rig: Rig, count: int) -> Counter[str | None]:
    return Counter(rig.picked() for _ in range(count))


def fail_and_recover(rig: Rig, name: str = "a") -> None:
    rig.probe(name, False)
    rig.probe(name, False)
    rig.probe(name, True)
    rig.probe(name, True)


def ramp_of(rig: Rig) -> dict[str, Any] | None:
    ramp: dict[str, Any] | None = engine_status(rig.engine)["ramp"]
    return ramp


# -- gradual failback -----------------------------------------------------------------------


def test_without_a_ramp_traffic_returns_all_at_once() -> None:
    rig = Rig.build(failback={"hold_down": 10})
    fail_and_recover(rig)
    rig.clock.advance(10)
    assert shares(rig, 40) == {"a": 40}
    assert not [e for e in rig.take() if e[0].startswith("ramp")]
    assert ramp_of(rig) is None


def test_the_recovered_primary_takes_a_linearly_growing_share_over_the_ramp() -> None:
    rig = Rig.build(failback=RAMP)
    fail_and_recover(rig)
    rig.take()
    rig.clock.advance(9.5)
    assert shares(rig, 80) == {"b": 80}  # still holding down
    rig.clock.advance(0.5)
    assert shares(rig, 80) == {"a": 20, "b": 60}  # 25% at the start
    assert rig.take() == [
        (
            "traffic-moved",
            "a",
            "b",
            "a",
            "a stayed usable for the 10 s hold-down",
        ),
        (
            "ramp-start",
            "a",
            "b",
            "a",
            "a stayed usable for the 10 s hold-down; a takes 25% of the traffic, rising to "
            "all of it over 60 s",
        ),
    ]
    assert ramp_of(rig) == {
        "to": ["a"],
        "from": ["b"],
        "share": 0.25,
        "elapsed": 0.0,
        "duration": 60.0,
        "remaining": 60.0,
    }
    rig.clock.advance(30)
    assert shares(rig, 80) == {"a": 50, "b": 30}  # 62.5% half way
    ramp = ramp_of(rig)
    assert ramp is not None and (ramp["share"], ramp["remaining"]) == (0.625, 30.0)
    rig.clock.advance(30)
    assert shares(rig, 80) == {"a": 80}
    assert rig.take() == [("ramp-end", "a", "b", "a", "done: all traffic goes to a")]
    assert ramp_of(rig) is None


def test_a_failure_during_the_ramp_returns_all_traffic_at_once_and_counts_as_a_flap() -> None:
    rig = Rig.build(failback={**RAMP, "max_hold_down": 100})
    fail_and_recover(rig)
    rig.clock.advance(10 + 20)  # well past the 5 s flap window
    assert set(shares(rig, 8)) == {"a", "b"}
    rig.take()
    rig.probe("a", False)
    rig.probe("a", False)
    assert shares(rig, 40) == {"b": 40}
    assert rig.take() == [
        ("origin-down", "a", "healthy", "failed-check", FAIL_REASON),
        (
            "ramp-end",
            "a",
            "b",
            "a",
            f"stopped: a is failed-check: {FAIL_REASON}; all traffic goes to b",
        ),
        ("traffic-moved", "b", "a", "b", f"a is failed-check: {FAIL_REASON}"),
    ]
    failback = rig.status_of("a")["failback"]
    assert (failback["flaps"], failback["hold_down"]) == (1, 20)
    # Back again: the doubled hold-down, then a new ramp from its start.
    rig.probe("a", True)
    rig.probe("a", True)
    rig.clock.advance(19.5)
    assert shares(rig, 8) == {"b": 8}
    rig.clock.advance(0.5)
    assert shares(rig, 80) == {"a": 20, "b": 60}


def test_a_failure_of_the_recovering_tier_sends_its_other_origins_back_to_their_hold_down() -> None:
    rig = Rig.build(origin_dict("a1", 0), origin_dict("a2", 0), origin_dict("b", 1), failback=RAMP)
    for name in ("a1", "a2"):
        rig.probe(name, False)
        rig.probe(name, False)
    for name in ("a1", "a2"):
        rig.probe(name, True)
        rig.probe(name, True)
    rig.clock.advance(10)
    assert shares(rig, 80) == {"a1": 10, "a2": 10, "b": 60}
    rig.probe("a1", False)
    rig.probe("a1", False)
    assert shares(rig, 40) == {"b": 40}
    assert rig.status_of("a2")["failback"]["eligible_in"] == 10
    rig.clock.advance(10)
    assert shares(rig, 80) == {"a2": 20, "b": 60}  # a ramp of its own


def test_the_carrying_tier_failing_during_the_ramp_ends_it() -> None:
    rig = Rig.build(failback=RAMP)
    fail_and_recover(rig)
    rig.clock.advance(10)
    assert set(shares(rig, 4)) == {"a", "b"}
    rig.take()
    rig.probe("b", False)
    rig.probe("b", False)
    assert shares(rig, 20) == {"a": 20}
    assert (
        "ramp-end",
        "a",
        "b",
        "a",
        "stopped: no origin of b is usable; all traffic goes to a",
    ) in (rig.take())
    assert ramp_of(rig) is None


def test_a_config_reload_keeps_a_ramp_under_way() -> None:
    rig = Rig.build(failback=RAMP)
    fail_and_recover(rig)
    rig.clock.advance(40)
    settings = make_settings(origin_dict("a", 0), origin_dict("b", 1), failback=RAMP)
    built = build_origins(settings.pools["default"])
    engine = Engine(settings.pools["default"], built, rig.events, rig.clock, rig.engine)
    rig.engine = engine
    rig.by_name = {origin.name: origin for origin in built}
    assert shares(rig, 80) == {"a": 50, "b": 30}
    assert not [e for e in rig.take() if e[0] == "traffic-moved" and e[4] == "config reload"]


# -- balancing within a tier ----------------------------------------------------------------


def balanced_rig(balance: str, *origins: dict[str, Any], **blocks: Any) -> Rig:
    settings = make_settings(*origins, balance=balance, **blocks)
    clock = FakeClock()
    events = EventLog(clock)
    built = build_origins(settings.pools["default"])
    engine = Engine(settings.pools["default"], built, events, clock, rng=random.Random(15))
    return Rig(engine, events, clock, {origin.name: origin for origin in built})


def serve(rig: Rig, count: int, ttfb: dict[str, float], step: float = 0.005) -> Counter[str]:
    """`count` sequential requests, each answered after its origin's time to first byte."""
    served: Counter[str] = Counter()
    for _ in range(count):
        origin = rig.engine.pick()
        assert origin is not None
        served[origin.name] += 1
        rig.clock.advance(step)
        rig.engine.on_attempt(origin, 200, ttfb[origin.name])
    return served


def test_least_latency_leaves_a_slower_origin_a_trickle_and_gives_it_back_its_share() -> None:
    rig = balanced_rig(
        "least-latency",
        origin_dict("fast", 0),
        origin_dict("slow", 0),
        least_latency={"decay": 1, "min_share": 0.05},
    )
    serve(rig, 200, {"fast": 0.010, "slow": 0.060})  # both measured
    served = serve(rig, 2000, {"fast": 0.010, "slow": 0.060})
    assert 0.03 < served["slow"] / 2000 < 0.08  # its minimum share: never starved
    assert rig.status_of("slow")["latency_ewma_ms"] == pytest.approx(60, abs=0.5)
    # It speeds up past the other: within a few seconds it takes the traffic (each request of
    # its trickle moves its figure a tenth of the way: some 35 of them, 3.5 s here), and the
    # other keeps its minimum.
    serve(rig, 1000, {"fast": 0.010, "slow": 0.008})
    served = serve(rig, 2000, {"fast": 0.010, "slow": 0.008})
    assert 0.03 < served["fast"] / 2000 < 0.08


def test_least_latency_shares_by_weight_between_equally_fast_origins() -> None:
    rig = balanced_rig(
        "least-latency", origin_dict("a", 0, weight=3), origin_dict("b", 0, weight=1)
    )
    served = serve(rig, 4000, {"a": 0.02, "b": 0.02})
    assert 0.70 < served["a"] / 4000 < 0.80


def test_a_config_reload_keeps_the_latency_figures_of_unchanged_origins() -> None:
    blocks: dict[str, Any] = {"balance": "least-latency"}
    rig = balanced_rig("least-latency", origin_dict("a", 0), origin_dict("b", 0))
    serve(rig, 50, {"a": 0.010, "b": 0.030})
    moved = origin_dict("b", 0, url="http://b2.example")
    settings = make_settings(origin_dict("a", 0), moved, **blocks)
    built = build_origins(settings.pools["default"])
    rig.engine = Engine(settings.pools["default"], built, rig.events, rig.clock, rig.engine)
    assert rig.status_of("a")["latency_ewma_ms"] == pytest.approx(10)
    assert rig.status_of("b")["latency_ewma_ms"] is None  # another origin now


def test_weighted_balancing_is_not_fed_latencies() -> None:
    rig = balanced_rig("weighted", origin_dict("a", 0), origin_dict("b", 0))
    assert serve(rig, 4, {"a": 0.01, "b": 0.5}) == {"a": 2, "b": 2}
    assert rig.engine.selector.balancer is None
    assert rig.status_of("a")["latency_ewma_ms"] is None


def least_request_selector(in_flight: dict[str, int], **weights: int) -> Selector:
    settings = make_settings(
        *(origin_dict(name, 0, weight=w) for name, w in weights.items()), balance="least-request"
    )
    return Selector(
        build_origins(settings.pools["default"]),
        settings.failback,
        balance="least-request",
        rng=random.Random(3),
        in_flight=lambda origin: in_flight[origin.name],
    )


def test_least_request_sends_to_the_origin_with_fewer_requests_in_flight() -> None:
    in_flight = {"a": 4, "b": 0, "c": 1}
    selector = least_request_selector(in_flight, a=1, b=1, c=1)
    picked = Counter(getattr(selector.pick(0.0), "name", None) for _ in range(3000))
    # The power of two choices: the busiest origin is never picked, the idlest whenever
    # drawn (two pairs of three), the middle one when drawn with the busiest.
    assert picked["a"] == 0
    assert 0.60 < picked["b"] / 3000 < 0.73
    in_flight.update(a=0, b=0, c=0)
    picked = Counter(getattr(selector.pick(0.0), "name", None) for _ in range(3000))
    assert all(0.28 < picked[name] / 3000 < 0.39 for name in "abc")


def test_least_request_shares_idle_origins_by_weight() -> None:
    selector = least_request_selector({"a": 0, "b": 0}, a=4, b=1)
    picked = Counter(getattr(selector.pick(0.0), "name", None) for _ in range(4000))
    assert 0.75 < picked["a"] / 4000 < 0.85


def test_a_ramp_balances_within_each_tier() -> None:
    rig = balanced_rig(
        "least-request",
        origin_dict("a1", 0),
        origin_dict("a2", 0),
        origin_dict("b", 1),
        failback=RAMP,
    )
    for name in ("a1", "a2"):
        rig.probe(name, False)
        rig.probe(name, False)
        rig.probe(name, True)
        rig.probe(name, True)
    rig.clock.advance(10)
    served = shares(rig, 800)
    assert served["b"] == 600
    assert 60 < served["a1"] < 140


# -- end to end --------------------------------------------------------------------------------

SLOWER = 0.05  # seconds the slow origin adds to each answer
WORKERS = 8  # concurrent client loops


async def served_by(proxy: RunningProxy, count: int) -> list[str]:
    """Send `count` GET requests, WORKERS at a time; the origin of each answer."""
    origins: list[str] = []

    async def worker() -> None:
        while len(origins) < count:
            response = await proxy.client.get("/steer")
            assert response.status_code == 200, response.text
            origins.append(response.headers["x-failover-origin"])

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return origins


async def test_an_origin_50ms_slower_gets_under_a_fifth_of_the_traffic_until_it_speeds_up(
    make_origin: Callable[..., Awaitable[FaultyOrigin]],
    make_proxy: Callable[..., Awaitable[RunningProxy]],
) -> None:
    fast = await make_origin("fast")
    slow = await make_origin("slow", mode="slow", slow_delay=SLOWER)
    config = proxy_config(
        origin_config("fast", fast, 0),
        origin_config("slow", slow, 0),
        balance="least-latency",
        least_latency={"decay": 0.2, "min_share": 0.05},
    )
    proxy = await make_proxy(config)
    await served_by(proxy, 40)  # both measured
    seen = await served_by(proxy, 400)
    assert 0 < seen.count("slow") < 0.2 * len(seen)
    status = (await proxy.client.get("/_failover/status")).json()
    assert status["pools"][0]["balance"] == "least-latency"
    figures = {o["name"]: o["latency_ewma_ms"] for o in status["origins"]}
    assert figures["slow"] > figures["fast"] + 30, figures
    # As fast as the other again: within seconds it carries its part once more.
    await slow.set_mode("ok")
    shares: list[float] = []

    async def recovered() -> bool:
        batch = await served_by(proxy, 200)
        shares.append(batch.count("slow") / len(batch))
        return shares[-1] >= 0.3

    await wait_for(recovered, timeout=8)


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "problem"),
    [
        (
            {"failback": {"ramp_start": 1.5}},
            "failback.ramp_start: 1.5 is not a share from 0 to 1 (e.g. 0.1 or '10%')",
        ),
        (
            {"failback": {"ramp_start": "-5%"}},
            "failback.ramp_start: '-5%' is not a share from 0 to 1 (e.g. 0.1 or '10%')",
        ),
        (
            {"failback": {"ramp": "soon"}},
            "failback.ramp: 'soon' is not a duration (seconds, or e.g. '500ms', '2s', '1m')",
        ),
        (
            {"balance": "fastest"},
            "balance: Input should be 'weighted', 'least-latency' or 'least-request', "
            "got 'fastest'",
        ),
        (
            {"least_latency": {"min_share": 0.7}},
            "least_latency.min_share: Input should be less than or equal to 0.5, got 0.7",
        ),
    ],
)
def test_bad_steering_settings_are_one_clear_line(blocks: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(origin_dict("a"), **blocks)
    assert caught.value.problems == [problem]


def test_pools_inherit_balance_and_may_set_their_own() -> None:
    from failover.config import build_settings

    origin = {"name": "a", "url": "http://a.example"}
    settings = build_settings(
        {
            "balance": "least-latency",
            "failback": {"ramp": "1m"},
            "pools": {
                "one": {"origins": [origin]},
                "two": {"origins": [{**origin, "name": "b"}], "balance": "least-request"},
            },
        }
    )
    assert settings.pools["one"].balance == "least-latency"
    assert settings.pools["two"].balance == "least-request"
    assert settings.pools["two"].failback.ramp == 60
    assert settings.pools["one"].failback.ramp_start == 0.1
