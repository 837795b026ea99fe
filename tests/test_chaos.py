"""Chaos: the real proxy in front of a failing primary and a healthy secondary, under load.

Each test starts two FaultyOrigin origins and the proxy, drives concurrent GET load through it,
switches the primary into a fault mode mid-run and later back to `ok`, and then checks what
clients saw: every response a 200, traffic on the secondary while the primary fails, back on
the primary only once the failback hold-down has passed, and no flapping in between.

Phases end on conditions with deadlines (`wait_for`), never on a guessed sleep; the load is
bounded in requests and in time. Timing targets (how fast failover is) live in the benchmark
tests/bench/chaos.py; here a bound is only asserted with a generous margin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from failover.faulty import FaultyOrigin, Mode
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for

pytestmark = pytest.mark.slow

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]

WORKERS = 8  # concurrent client loops
MAX_REQUESTS = 40_000  # per test, whatever the phases do
MAX_SECONDS = 25.0  # per test, whatever the phases do
HOLD_DOWN = 1.0  # failback.hold_down
FIRST_BYTE = 0.5  # timeouts.first_byte in the blackhole test
LATENCY_MARGIN = 0.75  # the secondary's latency plus scheduling noise on a busy 2-core box
SETTLE = 40  # responses that must follow a change before the phase ends
FLAP_PERIOD = 0.5
SLOW_DELAY = 0.6


@dataclass(frozen=True)
class Outcome:
    """One client request as the client saw it."""

    started: float
    ended: float
    status: int  # 0 when no response came (connection error, timeout, truncated body)
    origin: str  # X-Failover-Origin, "" when absent
    attempts: str  # X-Failover-Attempts, and X-Failover-Not-Retried if sent
    error: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started

    def __str__(self) -> str:
        detail = self.error or f"{self.status} from {self.origin or '?'} ({self.attempts})"
        return f"[{self.started:.3f}+{self.latency:.3f}s] {detail}"


@dataclass
class Load:
    """WORKERS client loops sending GET requests to the proxy until stopped or a bound is hit."""

    url: str
    outcomes: list[Outcome] = field(default_factory=list)
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=WORKERS)
        timeout = aiohttp.ClientTimeout(total=10)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        deadline = time.monotonic() + MAX_SECONDS
        self._tasks = [asyncio.create_task(self._worker(deadline)) for _ in range(WORKERS)]

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()

    @property
    def running(self) -> bool:
        return not all(task.done() for task in self._tasks)

    async def _worker(self, deadline: float) -> None:
        assert self._session is not None
        url = self.url + "/chaos"
        while (
            not self._stopping and len(self.outcomes) < MAX_REQUESTS and time.monotonic() < deadline
        ):
            started = time.monotonic()
            try:
                async with self._session.get(url) as response:
                    await response.read()
                outcome = Outcome(
                    started,
                    time.monotonic(),
                    response.status,
                    response.headers.get("x-failover-origin", ""),
                    _attempts(response.headers),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = Outcome(started, time.monotonic(), 0, "", "", repr(exc))
            self.outcomes.append(outcome)

    def started_after(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started > moment]

    def first(self, origin: str, after: float) -> Outcome | None:
        """The earliest-started request after `after` that `origin` served."""
        served = [o for o in self.started_after(after) if o.origin == origin]
        return min(served, key=lambda o: o.started, default=None)

    def wait_first(self, origin: str, after: float, timeout: float) -> Awaitable[None]:
        def found() -> bool:
            assert self.running, "the load ran out of requests or time"
            return self.first(origin, after) is not None

        return wait_for(found, timeout)

    def wait_settled(self, after: float, timeout: float = 10.0) -> Awaitable[None]:
        """Wait until SETTLE requests started after `after` have completed."""

        def settled() -> bool:
            assert self.running, "the load ran out of requests or time"
            return len(self.started_after(after)) >= SETTLE

        return wait_for(settled, timeout)


def _attempts(headers: Any) -> str:
    attempts: str = headers.get("x-failover-attempts", "")
    not_retried = headers.get("x-failover-not-retried")
    return f"{attempts}; not retried: {not_retried}" if not_retried else attempts


@dataclass
class Chaos:
    primary: FaultyOrigin
    secondary: FaultyOrigin
    proxy: RunningProxy
    load: Load

    async def warm_up(self) -> None:
        """Wait until the primary has served a steady stream of requests."""

        def warm() -> bool:
            return sum(o.origin == "primary" for o in self.load.outcomes) >= SETTLE

        await wait_for(warm, timeout=10)

    async def switch(self, mode: Mode) -> float:
        """Put the primary in `mode`; return when that happened."""
        await self.primary.set_mode(mode)
        return time.monotonic()

    async def has_flapped(self) -> bool:
        """Whether the proxy has seen the primary fail again soon after it recovered."""
        response = await self.proxy.client.get("/_failover/status")
        primary = next(o for o in response.json()["origins"] if o["name"] == "primary")
        return bool(primary["failback"]["flaps"] >= 1)


async def start_chaos(make_origin: MakeOrigin, make_proxy: MakeProxy, **overrides: Any) -> Chaos:
    """Start the origins, the proxy (test defaults, then `overrides` merged per block) and
    the load."""
    primary = await make_origin("primary", flap_period=FLAP_PERIOD, slow_delay=SLOW_DELAY)
    secondary = await make_origin("secondary")
    settings: dict[str, Any] = {
        # Probes ten times a second, so that a 0.5 s half-period of flapping is always seen.
        "health": {"interval": 0.1, "timeout": 0.5},
        "failback": {"hold_down": HOLD_DOWN, "max_hold_down": 2 * HOLD_DOWN},
        "passive": {"ejection_time": 0.5, "max_ejection_time": 2.0},
    }
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value}
    config = proxy_config(
        origin_config("primary", primary, 0), origin_config("secondary", secondary, 1), **settings
    )
    proxy = await make_proxy(config)
    load = Load(proxy.url)
    await load.start()
    return Chaos(primary, secondary, proxy, load)


def assert_no_failures(outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if o.status != 200]
    shown = "\n".join(str(o) for o in failed[:10])
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed:\n{shown}"


async def run_failover(
    make_origin: MakeOrigin, make_proxy: MakeProxy, mode: Mode, **overrides: Any
) -> tuple[list[Outcome], float, float]:
    """Warm up, fault the primary until traffic has moved (and, for flap, until the proxy has
    seen the primary come back and fail again), recover it, and run until traffic is back on
    the primary. Returns every outcome, the fault time and the recovery time."""
    chaos = await start_chaos(make_origin, make_proxy, **overrides)
    load = chaos.load
    try:
        await chaos.warm_up()
        fault_at = await chaos.switch(mode)
        await load.wait_first("secondary", fault_at, timeout=10)
        moved = load.first("secondary", fault_at)
        assert moved is not None
        await load.wait_settled(moved.ended)
        if mode == "flap":
            # The primary keeps coming back for half a period: recover only once it has
            # come back and failed again at least once, so that flap damping has had its say.
            await wait_for(chaos.has_flapped, timeout=10)
        recovered_at = await chaos.switch("ok")
        await load.wait_first("primary", recovered_at, timeout=10)
        back = load.first("primary", recovered_at)
        assert back is not None
        await load.wait_settled(back.ended)
    finally:
        await load.stop()
    return load.outcomes, fault_at, recovered_at


def assert_failover_and_failback(
    outcomes: list[Outcome], fault_at: float, recovered_at: float
) -> None:
    """Traffic left the primary, stayed away until the hold-down after recovery had passed,
    came back, and stayed back."""
    after_fault = [o for o in outcomes if o.started > fault_at]
    moved = min((o for o in after_fault if o.origin == "secondary"), key=lambda o: o.started)
    # Requests started after the first one the secondary served were routed once traffic had
    # moved: none may reach the primary before the hold-down after recovery has passed.
    away = [o for o in outcomes if moved.ended < o.started < recovered_at + HOLD_DOWN]
    early = [o for o in away if o.origin == "primary"]
    assert away, "no request ran while the primary was failing"
    assert not early, "the primary served during the fault or its hold-down:\n" + "\n".join(
        str(o) for o in early[:10]
    )
    back = min(
        (o for o in outcomes if o.started > recovered_at and o.origin == "primary"),
        key=lambda o: o.started,
    )
    assert back.started >= recovered_at + HOLD_DOWN
    # Once back, traffic stays on the primary: no flapping after failback either.
    later = [o for o in outcomes if o.started > back.ended]
    strays = [o for o in later if o.origin != "primary"]
    assert later
    assert not strays, "traffic left the primary again after failback:\n" + "\n".join(
        str(o) for o in strays[:10]
    )


@pytest.mark.parametrize("mode", ["refuse", "reset", "http5xx", "flap"])
async def test_failover_without_client_errors(
    make_origin: MakeOrigin, make_proxy: MakeProxy, mode: Mode
) -> None:
    outcomes, fault_at, recovered_at = await run_failover(make_origin, make_proxy, mode)
    assert_no_failures(outcomes)
    assert_failover_and_failback(outcomes, fault_at, recovered_at)


async def test_blackhole_costs_at_most_one_first_byte_timeout(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    outcomes, fault_at, recovered_at = await run_failover(
        make_origin, make_proxy, "blackhole", timeouts={"first_byte": FIRST_BYTE}
    )
    assert_no_failures(outcomes)
    assert_failover_and_failback(outcomes, fault_at, recovered_at)
    # Requests caught by the blackhole waited for the first-byte timeout, then were served
    # by the secondary at once: none waited twice.
    during = [o for o in outcomes if o.ended > fault_at and o.started < recovered_at]
    waited = [o for o in during if "primary;timeout" in o.attempts]
    assert waited, "no request ran into the blackhole"
    bound = FIRST_BYTE + LATENCY_MARGIN
    slow = [o for o in outcomes if o.latency > bound]
    assert not slow, f"requests took longer than {bound:g} s:\n" + "\n".join(
        str(o) for o in slow[:10]
    )


async def test_partial_errors_are_retried_on_the_secondary(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    # 500 is not retried by default (an application error may be the right answer); an
    # operator whose CDN answers 500 when it is unwell adds it to retry.on. The primary stays
    # usable between ejections while 30% of its answers fail, and the default retry budget
    # (20% of requests in flight) would by design leave some of those 500s unretried: the
    # operator who wants them all hidden lifts the budget as well.
    retry = {"on": ["connect-failure", "reset", "timeout", 500, 502, 503, 504], "budget": 1.0}
    chaos = await start_chaos(make_origin, make_proxy, retry=retry)
    load = chaos.load
    try:
        await chaos.warm_up()
        fault_at = await chaos.switch("partial")
        await wait_for(lambda: chaos.primary.stats.by_status[500] >= 20, timeout=10)
        recovered_at = await chaos.switch("ok")
        await load.wait_first("primary", recovered_at, timeout=10)
        back = load.first("primary", recovered_at)
        assert back is not None
        await load.wait_settled(back.ended)
    finally:
        await load.stop()
    assert_no_failures(load.outcomes)
    rescued = [o for o in load.started_after(fault_at) if o.attempts.startswith("primary;500")]
    assert rescued, "no request was answered 500 by the primary"
    assert all(o.origin == "secondary" for o in rescued)


async def test_traffic_leaves_a_slow_primary(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    # A short window lets the slow answers outweigh the fast ones from the warm-up quickly;
    # the ejection outlasts the test, so traffic must stay on the secondary.
    passive = {
        "latency_threshold": 0.2,
        "min_requests": 5,
        "window": 1.0,
        "ejection_time": 60,
        "max_ejection_time": 60,
    }
    chaos = await start_chaos(make_origin, make_proxy, passive=passive)
    load = chaos.load
    try:
        await chaos.warm_up()
        fault_at = await chaos.switch("slow")
        await load.wait_first("secondary", fault_at, timeout=10)
        moved = load.first("secondary", fault_at)
        assert moved is not None
        await load.wait_settled(moved.ended)
    finally:
        await load.stop()
    assert_no_failures(load.outcomes)
    slow = [o for o in load.started_after(fault_at) if o.origin == "primary"]
    assert slow and all(o.latency >= SLOW_DELAY for o in slow)
    later = load.started_after(moved.ended)
    assert len(later) >= SETTLE
    assert all(o.origin == "secondary" for o in later), "the slow primary still takes traffic"


RAMP = 2.0  # failback.ramp in the gradual failback test


async def test_gradual_failback_raises_the_primary_share_over_the_ramp(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    chaos = await start_chaos(make_origin, make_proxy, failback={"ramp": RAMP, "ramp_start": 0.1})
    load, client = chaos.load, chaos.proxy.client
    ramps: list[dict[str, Any]] = []

    async def ramp_ended() -> bool:
        ramp = (await client.get("/_failover/status")).json()["pools"][0]["ramp"]
        if ramp is not None:
            ramps.append(ramp)
        return bool(ramps) and ramp is None

    try:
        await chaos.warm_up()
        fault_at = await chaos.switch("refuse")
        await load.wait_first("secondary", fault_at, timeout=10)
        moved = load.first("secondary", fault_at)
        assert moved is not None
        await load.wait_settled(moved.ended)
        recovered_at = await chaos.switch("ok")
        await wait_for(ramp_ended, timeout=10, every=0.05)
        ended_at = time.monotonic()
        await load.wait_settled(ended_at)
    finally:
        await load.stop()
    outcomes = load.outcomes
    assert_no_failures(outcomes)
    # The status showed the ramp rising from its start towards all of the traffic.
    assert ramps[0]["to"] == ["primary"] and ramps[0]["from"] == ["secondary"]
    assert ramps[0]["duration"] == RAMP
    assert 0.1 <= ramps[0]["share"] < ramps[-1]["share"] <= 1.0
    # Nothing on the primary before its hold-down has passed; from then on, its share of
    # each third of the ramp rises; once the ramp is over, all traffic is back on it.
    back = min(
        (o for o in outcomes if o.started > recovered_at and o.origin == "primary"),
        key=lambda o: o.started,
    )
    assert back.started >= recovered_at + HOLD_DOWN
    thirds = [
        [
            o
            for o in outcomes
            if back.started + i * RAMP / 3 <= o.started < back.started + (i + 1) * RAMP / 3
        ]
        for i in range(3)
    ]
    share = [sum(o.origin == "primary" for o in part) / len(part) for part in thirds]
    assert 0.02 < share[0] < 0.5, share
    assert share[0] < share[1] < share[2], share
    assert share[2] > 0.6, share
    later = [o for o in outcomes if o.started > ended_at]  # the status said: ramp over
    assert later and all(o.origin == "primary" for o in later)
    events = (await client.get("/_failover/events")).json()["events"]
    kinds = [e["kind"] for e in events if e["kind"].startswith("ramp")]
    assert kinds == ["ramp-end", "ramp-start"], kinds  # newest first
    ended = next(e for e in events if e["kind"] == "ramp-end")
    assert ended["reason"] == "done: all traffic goes to primary"
