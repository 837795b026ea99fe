"""Failover drills (failover.drills): the pure schedule and judgement with injected clocks,
the engine's drill flag, and drills end to end against FaultyOrigins on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from failover.config import DrillsConfig, build_settings
from failover.drills import (
    Schedule,
    Watch,
    describe,
    drill_body,
    next_run,
    parse_request,
)
from failover.events import EventLog
from failover.origins import Flag
from failover.pool import Pool
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import AUTH, PREFIX, TOKEN, get_metrics, get_status, metric, origin_in

DAY = 86400.0
MONDAY = 1_795_478_400.0  # 2026-11-23 00:00 UTC


# -- the schedule (pure) --------------------------------------------------------------------


def test_next_run_moves_into_the_window_in_utc() -> None:
    window = (2 * 60, 4 * 60)  # 02:00-04:00
    assert next_run(MONDAY + 3 * 3600, window) == MONDAY + 3 * 3600  # inside: at once
    assert next_run(MONDAY + 3600, window) == MONDAY + 2 * 3600  # before: today's opening
    assert next_run(MONDAY + 5 * 3600, window) == MONDAY + DAY + 2 * 3600  # after: tomorrow's
    assert next_run(MONDAY + 4 * 3600, window) == MONDAY + DAY + 2 * 3600  # the end is open
    assert next_run(MONDAY + 5 * 3600, None) == MONDAY + 5 * 3600


def test_next_run_with_a_window_across_midnight() -> None:
    window = (23 * 60, 1 * 60)  # 23:00-01:00
    assert next_run(MONDAY + 30 * 60, window) == MONDAY + 30 * 60
    assert next_run(MONDAY + 23.5 * 3600, window) == MONDAY + 23.5 * 3600
    assert next_run(MONDAY + 12 * 3600, window) == MONDAY + 23 * 3600


def test_the_schedule_fires_every_period_in_its_window_under_a_fake_clock() -> None:
    config = DrillsConfig(every="7d", window="02:00-04:00", duration="60s")
    now = MONDAY + 10 * 3600  # started on Monday at 10:00
    schedule = Schedule(config, now)
    fired: list[float] = []
    while now < MONDAY + 20 * DAY:
        if schedule.due(now):
            fired.append(now)
            schedule.ran(now)
        now += 60.0  # one-minute ticks
    # The first drill in the next window (Tuesday 02:00), then a week after each.
    assert fired == [MONDAY + DAY + 2 * 3600 + k * 7 * DAY for k in range(3)]


def test_a_schedule_without_a_window_first_fires_one_period_after_start_up() -> None:
    schedule = Schedule(DrillsConfig(every="1h"), 1000.0)
    assert not schedule.due(1000.0 + 3599)
    assert schedule.due(1000.0 + 3600)
    schedule.ran(1000.0 + 3605)
    assert schedule.next_at == 1000.0 + 3605 + 3600


def test_drills_config_rejects_bad_windows_and_rates_by_name() -> None:
    base = {"origins": [{"name": "a", "url": "http://127.0.0.1:9"}]}
    with pytest.raises(Exception) as caught:
        build_settings({**base, "drills": {"window": "2am-4am", "max_error_rate": "lots"}})
    text = str(caught.value)
    assert "drills.window: '2am-4am' is not a time window (expected e.g. '02:00-04:00')" in text
    assert "drills.max_error_rate: 'lots' is not a rate" in text


def test_pools_inherit_the_drills_block_key_by_key() -> None:
    settings = build_settings(
        {
            "drills": {"every": "7d", "max_p95": "300ms"},
            "pools": {
                "www": {
                    "origins": [{"name": "a", "url": "http://127.0.0.1:9"}],
                    "drills": {"duration": "30s"},
                }
            },
        }
    )
    drills = settings.pools["www"].drills
    assert (drills.every, drills.max_p95, drills.duration) == (7 * DAY, 0.3, 30.0)


# -- the request body -----------------------------------------------------------------------


def test_a_drill_request_takes_defaults_and_percentages() -> None:
    defaults = DrillsConfig()
    request = parse_request({"duration": "2m", "max_error_rate": "5%"}, defaults)
    assert (request.duration, request.max_error_rate, request.max_p95) == (120.0, 0.05, 0.5)
    assert parse_request(None, defaults).duration == 60.0
    assert drill_body(duration="60s", max_p95="500ms") == {"duration": "60s", "max_p95": "500ms"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"duration": "soon"}, "duration: 'soon' is not a duration"),
        ({"duration": "2h"}, "duration: '2h' is not a duration above 0 and at most 3600 s"),
        ({"max_error_rate": "150%"}, "max_error_rate: '150%' is not a rate"),
        ({"max_p95": -1}, "max_p95: -1 is not a duration above 0"),
        ({"durration": "1s"}, "unknown key 'durration' (known: duration, max_error_rate"),
        ([1], "the body must be a JSON object"),
    ],
)
def test_a_bad_drill_request_is_named(body: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_request(body, DrillsConfig())
    assert message in str(caught.value)


# -- the judgement (pure) -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def two_origin_pool(clock: FakeClock, **drills: Any) -> Pool:
    settings = build_settings(
        {
            "origins": [
                {"name": "primary", "url": "http://127.0.0.1:9", "priority": 0},
                {"name": "secondary", "url": "http://127.0.0.1:10", "priority": 1},
            ],
            "drills": drills,
        }
    )
    return Pool("default", settings.pools["default"], EventLog(clock), clock)


def test_the_watch_judges_the_error_rate_only_after_min_requests() -> None:
    clock = FakeClock()
    pool = two_origin_pool(clock)
    primary, secondary = pool.origins
    watch = Watch(pool, primary, 0.01, 0.5, 20, clock)
    for _ in range(5):
        watch.attempt(secondary, 503, 0.01)
    assert watch.judge(clock.now) is None  # 5 attempts: too few to judge
    for _ in range(15):
        watch.attempt(secondary, 200, 0.01)
    reason = watch.judge(clock.now)
    assert reason is not None and "error rate 25.0%" in reason and "max_error_rate 1.0%" in reason


def test_the_watch_forgets_old_attempts_and_ignores_the_drained_origin() -> None:
    clock = FakeClock()
    pool = two_origin_pool(clock)
    primary, secondary = pool.origins
    watch = Watch(pool, primary, 0.01, 0.5, 20, clock)
    for _ in range(20):
        watch.attempt(secondary, "reset", 0.01)
    clock.now += 10.0  # the failures are older than the judged window
    for _ in range(30):
        watch.attempt(secondary, 200, 0.01)
        watch.attempt(primary, 503, 0.01)  # in flight when drained: not the others' errors
    assert watch.judge(clock.now) is None
    assert watch.tallies["secondary"].errors == 20  # the report counts the whole drill
    assert watch.tallies["primary"].requests == 30


def test_the_watch_judges_p95_and_aborts_at_once_on_an_unusable_origin() -> None:
    clock = FakeClock()
    pool = two_origin_pool(clock)
    primary, secondary = pool.origins
    woken: list[bool] = []
    watch = Watch(pool, primary, 0.5, 0.2, 20, clock, lambda: woken.append(True))
    for i in range(20):
        watch.attempt(secondary, 200, 0.3 if i < 1 else 0.05)
    assert watch.judge(clock.now) is None  # 1 of 20 slow: p95 is still fast
    for _ in range(2):
        watch.attempt(secondary, 200, 0.3)
    reason = watch.judge(clock.now)
    assert reason is not None and "p95 300 ms" in reason and "max_p95 200 ms" in reason
    watch = Watch(pool, primary, 0.5, 0.2, 20, clock, lambda: woken.append(True))
    pool.engine.set_flag(secondary, Flag.FAILED_CHECK, True, "origin-down", "status 503")
    watch.changed(secondary)
    assert woken == [True]
    assert watch.judge(clock.now) == "secondary became unusable (failed-check: status 503)"


def test_a_drilled_origin_comes_back_without_hold_down_and_an_operator_drain_stays() -> None:
    clock = FakeClock()
    pool = two_origin_pool(clock)
    pool.engine.settings = pool.config
    engine = pool.engine
    primary, secondary = pool.origins
    assert engine.pick() is primary
    engine.set_flag(primary, Flag.DRILL, True, "drill", "drained by drill x")
    assert engine.pick() is secondary
    engine.set_flag(primary, Flag.DRILL, False, "drill", "drill x ended")
    assert engine.pick() is primary  # the default 30 s hold-down does not apply
    moves = [e for e in engine.events.newest_first() if e.kind == "traffic-moved"]
    assert [(e.new, e.reason) for e in moves[:2]] == [
        ("primary", "drill x ended"),
        ("secondary", "drained by drill x"),
    ]
    assert engine.selector.failback["primary"].flaps == 0
    # An operator's drain during a drill outlives it.
    engine.set_flag(primary, Flag.DRILL, True, "drill", "drained by drill y")
    engine.override(primary, "drain", "ops")
    engine.set_flag(primary, Flag.DRILL, False, "drill", "drill y ended")
    assert primary.flags == {Flag.DRAINED}
    assert engine.pick() is secondary


def test_an_origin_that_failed_during_a_drill_waits_out_its_hold_down() -> None:
    clock = FakeClock()
    pool = two_origin_pool(clock)
    engine = pool.engine
    primary, secondary = pool.origins
    engine.set_flag(primary, Flag.DRILL, True, "drill", "drained by drill x")
    engine.set_flag(primary, Flag.FAILED_CHECK, True, "origin-down", "status 503")
    engine.set_flag(primary, Flag.FAILED_CHECK, False, "origin-up", "2 passes")
    engine.set_flag(primary, Flag.DRILL, False, "drill", "drill x ended")
    assert engine.pick() is secondary
    clock.now += 30.0
    assert engine.pick() is primary


# -- end to end -----------------------------------------------------------------------------


def drill_config(*origins: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("admin", {"token": TOKEN})
    return proxy_config(*origins, **overrides)


@contextlib.asynccontextmanager
async def traffic(proxy: RunningProxy) -> AsyncIterator[list[str]]:
    """Requests one after another through the proxy while the block runs; yields the
    X-Failover-Origin of each answer."""
    served: list[str] = []

    async def loop() -> None:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as client:
            while True:
                response = await client.get("/echo")
                served.append(response.headers.get("x-failover-origin", "-"))
                await asyncio.sleep(0.002)

    task = asyncio.create_task(loop())
    try:
        yield served
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def start_drill(proxy: RunningProxy, pool: str = "default", **body: Any) -> httpx.Response:
    return await proxy.client.post(f"{PREFIX}/pools/{pool}/drills", json=body, headers=AUTH)


async def drill_report(proxy: RunningProxy, drill_id: str) -> dict[str, Any]:
    response = await proxy.client.get(f"{PREFIX}/drills/{drill_id}")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


async def two_origin_proxy(make_origin: Any, make_proxy: Any, **overrides: Any) -> Any:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        drill_config(
            origin_config("primary", primary, 0),
            origin_config("secondary", secondary, 1),
            **overrides,
        )
    )
    await wait_for(lambda: proxy.engine.ready(), timeout=5)
    return primary, secondary, proxy


async def test_a_drill_passes_and_is_reported(make_origin: Any, make_proxy: Any) -> None:
    primary, secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    async with traffic(proxy) as served:
        await wait_for(lambda: len(served) >= 5, timeout=5)
        started = await start_drill(proxy, duration="1s", max_error_rate="1%", max_p95="500ms")
        assert started.status_code == 202, started.text
        drill_id = started.json()["id"]
        assert started.headers["location"] == f"{PREFIX}/drills/{drill_id}"
        assert set(started.json()["origins"]) == {"primary", "secondary"}
        await wait_for(lambda: "secondary" in served, timeout=2)
        during = await get_status(proxy)
        assert origin_in(during, "primary")["flags"] == ["drill"]  # type: ignore[index]

        async def finished() -> bool:
            return bool((await drill_report(proxy, drill_id))["state"] != "running")

        await wait_for(finished, timeout=5)
        report = await drill_report(proxy, drill_id)
        assert report["state"] == "passed", report
        assert report["origin"] == "primary"
        assert report["origins"]["secondary"]["requests"] >= 10
        assert report["origins"]["secondary"]["errors"] == 0
        assert report["origins"]["secondary"]["p95_ms"] is not None
        events = [entry["event"] for entry in report["timeline"]]
        assert events[0] == "drained" and events[-2:] == ["passed", "restored"]
        count = len(served)
        await wait_for(lambda: served[count:].count("primary") >= 3, timeout=2)
    assert primary.stats.requests > 0 and secondary.stats.requests > 0
    status = await get_status(proxy)
    for name in ("primary", "secondary"):
        record = origin_in(status, name)
        assert record is not None and record["usable"]
        assert record["drills"]["last_drill_passed_at"] is not None
        assert record["drills"]["untested"] is False
    listed = (await proxy.client.get(f"{PREFIX}/drills")).json()["drills"]
    assert [d["id"] for d in listed] == [drill_id] and "timeline" not in listed[0]
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_drill_total", pool="default", result="passed") == 1
    assert metric(text, "failover_drill_last_success_timestamp_seconds", pool="default")
    kinds = [e["kind"] for e in (await proxy.client.get(f"{PREFIX}/events")).json()["events"]]
    assert "drill-started" in kinds and "drill-passed" in kinds
    assert describe(report).startswith(f"drill {drill_id} of pool default: passed\n")


async def test_a_drill_aborts_within_a_second_when_the_secondary_fails(
    make_origin: Any, make_proxy: Any
) -> None:
    _primary, secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    async with traffic(proxy) as served:
        started = await start_drill(proxy, duration="30s")
        assert started.status_code == 202, started.text
        drill_id = started.json()["id"]
        await wait_for(lambda: served.count("secondary") >= 20, timeout=3)
        await secondary.set_mode("http5xx")
        drills = proxy.app.drills

        def aborted() -> bool:
            return bool(drills.reports[drill_id].state == "aborted")

        await wait_for(aborted, timeout=1.0)  # the deadline is the requirement
        origin = proxy.app.runtime.origins["primary"]
        assert Flag.DRILL not in origin.flags and origin.usable
        count = len(served)
        await wait_for(lambda: served[count:].count("primary") >= 3, timeout=1.0)
    report = await drill_report(proxy, drill_id)
    assert report["reason"] and report["elapsed"] < 30
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_drill_total", pool="default", result="aborted") == 1


async def test_the_error_rate_alone_aborts_a_drill(make_origin: Any, make_proxy: Any) -> None:
    # No active checks and no passive ejection: only the drill's own judgement can stop it.
    _primary, secondary, proxy = await two_origin_proxy(
        make_origin, make_proxy, health={"enabled": False}, passive={"enabled": False}
    )
    async with traffic(proxy) as served:
        drill_id = (await start_drill(proxy, duration="30s", max_error_rate="2%")).json()["id"]
        await wait_for(lambda: served.count("secondary") >= 20, timeout=3)
        await secondary.set_mode("partial")  # 30% of answers are 500s
        await wait_for(lambda: proxy.app.drills.reports[drill_id].state == "aborted", timeout=1.0)
    reason = proxy.app.drills.reports[drill_id].reason
    assert reason is not None and "above max_error_rate 2.0%" in reason
    assert proxy.app.runtime.origins["primary"].usable


async def test_a_drill_refuses_to_start_with_one_usable_origin(
    make_origin: Any, make_proxy: Any
) -> None:
    _primary, _secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    drained = await proxy.client.post(f"{PREFIX}/origins/secondary/drain", headers=AUTH)
    assert drained.status_code == 200
    refused = await start_drill(proxy)
    assert refused.status_code == 409
    assert refused.text == (
        "409 Conflict: pool 'default' has 1 usable origin(s) (primary); a drill needs at "
        "least two, or it would take the site down\n"
    )
    assert proxy.app.runtime.origins["primary"].usable
    assert (await proxy.client.get(f"{PREFIX}/drills")).json()["drills"] == []


async def test_drill_requests_are_checked(make_origin: Any, make_proxy: Any) -> None:
    _primary, _secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    url = f"{PREFIX}/pools/default/drills"
    assert (await proxy.client.post(url)).status_code == 401  # no token
    missing = await start_drill(proxy, pool="nope")
    assert missing.status_code == 404 and "no pool named 'nope' (known: default)" in missing.text
    bad = await start_drill(proxy, duration="soon")
    assert bad.status_code == 400 and "duration: 'soon' is not a duration" in bad.text
    first = await start_drill(proxy, duration="30s")
    assert first.status_code == 202
    second = await start_drill(proxy, duration="30s")
    assert second.status_code == 409
    assert f"drill {first.json()['id']} is already running in pool 'default'" in second.text
    unknown = await proxy.client.get(f"{PREFIX}/drills/none")
    assert unknown.status_code == 404 and "no drill 'none'" in unknown.text


async def test_shutdown_during_a_drill_restores_the_origin(
    make_origin: Any, make_proxy: Any
) -> None:
    _primary, _secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    drill_id = (await start_drill(proxy, duration="30s")).json()["id"]
    origin = proxy.app.runtime.origins["primary"]
    await wait_for(lambda: Flag.DRILL in origin.flags, timeout=2)
    await proxy.stop()
    assert origin.flags == set()
    drill = proxy.app.drills.reports[drill_id]
    assert drill.state == "aborted" and drill.reason == "the drill was cancelled (shutdown)"


async def test_a_reload_that_rebuilds_the_pool_ends_the_drill(
    make_origin: Any, make_proxy: Any
) -> None:
    _primary, _secondary, proxy = await two_origin_proxy(make_origin, make_proxy)
    drill_id = (await start_drill(proxy, duration="30s")).json()["id"]
    await wait_for(lambda: Flag.DRILL in proxy.app.runtime.origins["primary"].flags, timeout=2)
    proxy.app.apply(proxy.app.settings, "test")
    assert proxy.app.runtime.origins["primary"].usable  # the new pool does not inherit it
    await wait_for(lambda: proxy.app.drills.reports[drill_id].state == "aborted", timeout=1)
    assert proxy.app.drills.reports[drill_id].reason == (
        "the config was reloaded (the pool was rebuilt)"
    )


def test_untested_origins_are_flagged_after_max_untested() -> None:
    from failover.app import App

    wall = [MONDAY]
    settings = build_settings(
        drill_config(
            origin_config("primary", "http://127.0.0.1:9", 0),
            origin_config("secondary", "http://127.0.0.1:10", 1),
            drills={"max_untested": "1d"},
        )
    )
    app = App(settings, wall_clock=lambda: wall[0])
    pool = app.runtime.pools["default"]
    primary, secondary = pool.origins
    app.drills.last_served[("default", "primary")] = MONDAY + 3600
    wall[0] = MONDAY + DAY + 1800
    assert not app.drills.untested(pool, primary, wall[0])
    assert app.drills.untested(pool, secondary, wall[0])  # neither served nor drilled for a day
    assert app.drills.status(pool, secondary)["untested"] is True


def test_the_example_config_schedules_drills() -> None:
    from pathlib import Path

    from failover.config import load_config

    settings = load_config(Path(__file__).parent.parent / "config" / "failover.yaml")
    www, api = settings.pools["www"].drills, settings.pools["api"].drills
    assert (www.every, www.window, www.max_error_rate) == (7 * DAY, "02:00-04:00", 0.01)
    assert (api.every, api.window, api.max_p95) == (7 * DAY, "03:00-05:00", 0.3)


async def test_a_scheduled_drill_starts_when_the_injected_wall_clock_reaches_it(
    make_origin: Any, make_proxy: Any
) -> None:
    wall = [MONDAY]
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = drill_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        drills={"every": "1h", "duration": "0.3s"},
    )
    proxy = await make_proxy(config, wall_clock=lambda: wall[0])
    drills = proxy.app.drills
    await wait_for(lambda: "default" in drills.schedules, timeout=3)
    assert drills.schedules["default"].next_at == MONDAY + 3600
    assert not drills.reports
    wall[0] = MONDAY + 3600
    await wait_for(lambda: len(drills.reports) == 1, timeout=3)
    drill = next(iter(drills.reports.values()))
    assert drill.trigger == "schedule"
    await wait_for(lambda: drill.state != "running", timeout=3)
    assert drills.schedules["default"].next_at == MONDAY + 2 * 3600
