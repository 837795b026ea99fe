"""Failover drills: drain a pool's preferred origin under live traffic, watch what the other
origins serve, abort on their own, and always restore.

A drill sets the `drill` flag on the origin that takes the pool's traffic (its own flag, so an
operator's drain is never undone by a drill) and installs a `Watch` on the pool's engine, which
sees every attempt and every flag change of the pool only while the drill runs. Every
`EVALUATE` seconds the watch judges the other origins over the last `JUDGED` seconds: once
`min_requests` attempts were seen, an error rate above `max_error_rate` or a p95 time to first
byte above `max_p95` aborts the drill; another origin of the pool becoming unusable aborts it
at once. The flag is cleared in `finally`: when the drill passes or aborts, when the app shuts
down (the drill's task is one of the app's), and when a config reload rebuilds the pool (the
new pool does not inherit the flag; the old drill notices and ends).

The pure parts (`Watch`, `LatencyHistogram`, `Schedule`, `next_run`) take the time as an
argument; `Drills` is the async part the app owns.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import DrillsConfig, parse_duration, parse_rate, parse_window
from .events import EventLog
from .fleet import Fleet
from .metrics import Metrics
from .origins import Flag, Origin
from .pool import Pool
from .runtime import Runtime

__all__ = [
    "Drill",
    "DrillHost",
    "DrillRefused",
    "DrillRequest",
    "Drills",
    "LatencyHistogram",
    "Schedule",
    "Watch",
    "describe",
    "drill_body",
    "next_run",
    "parse_request",
]

logger = logging.getLogger("failover.drills")

EVALUATE = 0.1  # seconds between judgements while a drill runs
JUDGED = 5.0  # seconds of attempts the judgement looks at
MAX_REPORTS = 50  # drills kept in memory
MAX_TIMELINE = 1000  # entries in a drill's timeline
MAX_RECENT = 20_000  # attempts kept for the judgement (the oldest go first)
DAY = 86400.0
LOCK_MARGIN = 30.0  # seconds a fleet drill's lock and drain outlive its duration, at most


# -- the schedule (pure) --------------------------------------------------------------------


def next_run(after: float, window: tuple[int, int] | None) -> float:
    """The first instant at or after `after` (seconds since the epoch, UTC) that lies in the
    daily `window` of (start, end) minutes; `after` itself without a window."""
    if window is None:
        return after
    start, end = (minute * 60.0 for minute in window)
    day = math.floor(after / DAY) * DAY
    second = after - day
    if start < end:
        if start <= second < end:
            return after
        return day + start if second < start else day + DAY + start
    # The window crosses midnight: [start, 24:00) and [00:00, end).
    if second >= start or second < end:
        return after
    return day + start


class Schedule:
    """When a pool's next scheduled drill is due. Pure: the caller passes the wall time.

    The first drill after start-up is due in the next window (without a window: `every`
    after start-up); each one after that `every` after the previous one started, moved into
    the next window."""

    def __init__(self, config: DrillsConfig, now: float) -> None:
        assert config.every is not None
        self.config = config
        self.every = config.every
        self.window = parse_window(config.window) if config.window else None
        self.next_at = next_run(now if self.window else now + self.every, self.window)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def ran(self, started: float) -> None:
        self.next_at = next_run(started + self.every, self.window)


# -- what a drill sees (pure) ---------------------------------------------------------------


class LatencyHistogram:
    """Times to first byte in logarithmic buckets (10% apart): bounded memory, percentiles
    within 10%."""

    BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.1**i for i in range(150))  # 0.1 ms .. ~160 s

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.total = 0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.total += 1

    def percentile(self, q: float) -> float | None:
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return self.BOUNDS[min(i, len(self.BOUNDS) - 1)]
        return self.BOUNDS[-1]


@dataclass
class OriginTally:
    requests: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = self.latency.percentile(0.5), self.latency.percentile(0.95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
            "p50_ms": round(p50 * 1000, 3) if p50 is not None else None,
            "p95_ms": round(p95 * 1000, 3) if p95 is not None else None,
        }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Watch:
    """Counts a pool's attempts while a drill drains `drained`, and judges the others.

    The engine calls `attempt` and `changed` (see engine.DrillObserver). Pure: `clock` is
    injected; `wake` is called when the drill must end at once."""

    def __init__(
        self,
        pool: Pool,
        drained: Origin,
        max_error_rate: float,
        max_p95: float,
        min_requests: int,
        clock: Callable[[], float],
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self.drained = drained
        self.max_error_rate = max_error_rate
        self.max_p95 = max_p95
        self.min_requests = min_requests
        self.clock = clock
        self.wake = wake
        self.failure_statuses = pool.failure_statuses
        self.tallies: dict[str, OriginTally] = {o.name: OriginTally() for o in pool.origins}
        self.recent: deque[tuple[float, bool, float]] = deque(maxlen=MAX_RECENT)
        self.abort_reason: str | None = None

    def attempt(self, origin: Origin, result: str | int, ttfb: float) -> None:
        failed = isinstance(result, str) or result in self.failure_statuses
        tally = self.tallies.get(origin.name)
        if tally is None:
            return
        tally.requests += 1
        tally.errors += failed
        tally.latency.add(ttfb)
        if origin is not self.drained:
            self.recent.append((self.clock(), failed, ttfb))

    def changed(self, origin: Origin) -> None:
        if origin is self.drained or origin.usable or self.abort_reason is not None:
            return
        self.abort_reason = f"{origin.name} became unusable ({origin.state}: {origin.reason})"
        self.wake()

    def window(self, now: float) -> tuple[int, int, float | None]:
        """(attempts, errors, p95) at the other origins over the last `JUDGED` seconds."""
        recent = self.recent
        while recent and recent[0][0] < now - JUDGED:
            recent.popleft()
        errors = sum(1 for _, failed, _ in recent if failed)
        p95 = _percentile([ttfb for _, _, ttfb in recent], 0.95) if recent else None
        return len(recent), errors, p95

    def judge(self, now: float) -> str | None:
        """Why the drill must stop now, or None."""
        if self.abort_reason is not None:
            return self.abort_reason
        count, errors, p95 = self.window(now)
        if count < self.min_requests:
            return None
        rate = errors / count
        if rate > self.max_error_rate:
            self.abort_reason = (
                f"error rate {rate:.1%} over the last {count} attempts at the other origins "
                f"is above max_error_rate {self.max_error_rate:.1%}"
            )
        elif p95 is not None and p95 > self.max_p95:
            self.abort_reason = (
                f"p95 {p95 * 1000:.0f} ms over the last {count} attempts at the other origins "
                f"is above max_p95 {self.max_p95 * 1000:.0f} ms"
            )
        return self.abort_reason


# -- a drill --------------------------------------------------------------------------------


class DrillRefused(Exception):
    """A drill cannot start (the message says why, in one sentence)."""


@dataclass(frozen=True)
class DrillRequest:
    duration: float
    max_error_rate: float
    max_p95: float


def parse_request(body: Any, defaults: DrillsConfig) -> DrillRequest:
    """A drill's parameters from a JSON body (every key optional); ValueError names the
    first wrong one."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError(
            f'the body must be a JSON object such as {{"duration": "60s"}}, '
            f"got {type(body).__name__}"
        )
    unknown = sorted(set(body) - {"duration", "max_error_rate", "max_p95"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: duration, max_error_rate, max_p95)")

    def seconds(key: str, default: float, most: float) -> float:
        if key not in body:
            return default
        try:
            value = parse_duration(body[key])
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        if not isinstance(value, float) or not 0 < value <= most:
            raise ValueError(
                f"{key}: {body[key]!r} is not a duration above 0 and at most {most:g} s"
            )
        return value

    rate = defaults.max_error_rate
    if "max_error_rate" in body:
        try:
            value = parse_rate(body["max_error_rate"])
        except ValueError as exc:
            raise ValueError(f"max_error_rate: {exc}") from None
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(
                f"max_error_rate: {body['max_error_rate']!r} is not a rate "
                "(a share from 0 to 1, or a percentage such as '1%')"
            )
        rate = float(value)
    return DrillRequest(
        seconds("duration", defaults.duration, 3600.0),
        rate,
        seconds("max_p95", defaults.max_p95, 3600.0),
    )


def drill_body(
    duration: str | None = None, max_error_rate: str | None = None, max_p95: str | None = None
) -> dict[str, str]:
    """The JSON body of `POST {prefix}/pools/{pool}/drills` for the given options (what a
    command line passes on: `failover drill POOL --duration 60s ...`)."""
    options = {"duration": duration, "max_error_rate": max_error_rate, "max_p95": max_p95}
    return {key: value for key, value in options.items() if value is not None}


def describe(report: dict[str, Any]) -> str:
    """A drill report as a few lines of text, for a command line."""
    lines = [
        f"drill {report['id']} of pool {report['pool']}: {report['state']}"
        + (f" ({report['reason']})" if report.get("reason") else ""),
        f"drained {report['origin']} for {report['elapsed']:g} s of {report['duration']:g} s",
    ]
    for name, tally in report["origins"].items():
        p50, p95 = tally["p50_ms"], tally["p95_ms"]
        lines.append(
            f"  {name}: {tally['requests']} requests, {tally['errors']} errors"
            + (f", p50 {p50:g} ms, p95 {p95:g} ms" if p95 is not None else "")
        )
    return "\n".join(lines)


@dataclass
class Drill:
    id: str
    pool: str
    origin: str
    request: DrillRequest
    trigger: str
    started_at: float  # wall clock
    started: float  # monotonic clock
    state: str = "running"  # running, passed, aborted
    reason: str | None = None
    ended_at: float | None = None
    elapsed: float = 0.0
    watch: Watch | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def note(self, now: float, what: str, **extra: Any) -> None:
        if len(self.timeline) < MAX_TIMELINE:
            self.timeline.append({"at": round(now - self.started, 3), "event": what, **extra})

    def report(self) -> dict[str, Any]:
        tallies = self.watch.tallies if self.watch is not None else {}
        return {
            "id": self.id,
            "pool": self.pool,
            "origin": self.origin,
            "state": self.state,
            "reason": self.reason,
            "trigger": self.trigger,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": self.request.duration,
            "elapsed": round(self.elapsed, 3),
            "thresholds": {
                "max_error_rate": self.request.max_error_rate,
                "max_p95_ms": round(self.request.max_p95 * 1000, 3),
                "min_requests": self.watch.min_requests if self.watch is not None else None,
            },
            "origins": {name: tally.as_dict() for name, tally in tallies.items()},
            "timeline": list(self.timeline),
        }


# -- the async part -------------------------------------------------------------------------


class DrillHost(Protocol):
    """What drills need of the running proxy (the app provides it)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def fleet(self) -> Fleet | None: ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


class Drills:
    """Starts, watches and reports drills; keeps the schedule and when origins were last
    seen serving and passing a drill."""

    def __init__(
        self,
        host: DrillHost,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.clock = clock
        self.wall_clock = wall_clock
        self.started_at = wall_clock()
        self.reports: OrderedDict[str, Drill] = OrderedDict()
        self.running: dict[str, Drill] = {}  # by pool
        self.last_served: dict[tuple[str, str], float] = {}
        self.last_passed: dict[tuple[str, str], float] = {}
        self.schedules: dict[str, Schedule] = {}
        self.remote_until: dict[tuple[str, str], float] = {}  # other processes' drills

    # -- starting ---------------------------------------------------------------------------

    def check(self, pool_name: str) -> tuple[Pool, Origin]:
        """The pool and the origin a drill would drain; DrillRefused says why not."""
        pools = self.host.runtime.pools
        pool = pools.get(pool_name)
        if pool is None:
            raise LookupError(f"no pool named {pool_name!r} (known: {', '.join(pools)})")
        running = self.running.get(pool_name)
        if running is not None:
            raise DrillRefused(f"drill {running.id} is already running in pool {pool_name!r}")
        remote = [key for key in self.remote_until if key[0] == pool_name]
        if remote:
            raise DrillRefused(
                f"a drill of pool {pool_name!r} is already running in another process of the "
                f"fleet (it drains {remote[0][1]})"
            )
        usable = [o for o in pool.origins if o.usable]
        if len(usable) < 2:
            names = ", ".join(o.name for o in usable) or "none"
            raise DrillRefused(
                f"pool {pool_name!r} has {len(usable)} usable origin(s) ({names}); a drill "
                "needs at least two, or it would take the site down"
            )
        active = pool.engine.selector.active(self.clock())
        return pool, active[0] if active else usable[0]

    async def start(self, pool_name: str, request: DrillRequest, trigger: str) -> Drill:
        pool, origin = self.check(pool_name)
        fleet = self.host.fleet
        locked = False
        if fleet is not None:
            got = await fleet.lock_drill(pool_name, request.duration + LOCK_MARGIN)
            if got is False:
                raise DrillRefused(
                    f"a drill of pool {pool_name!r} is already running in another process "
                    "of the fleet"
                )
            locked = got is True
            try:
                pool, origin = self.check(pool_name)  # the world may have moved meanwhile
            except (DrillRefused, LookupError):
                if locked:
                    await fleet.unlock_drill(pool_name)
                raise
        now, wall = self.clock(), self.wall_clock()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
        drill = Drill(
            f"{stamp}-{secrets.token_hex(3)}", pool_name, origin.name, request, trigger, wall, now
        )
        wake = asyncio.Event()
        drill.watch = Watch(
            pool,
            origin,
            request.max_error_rate,
            request.max_p95,
            pool.config.drills.min_requests,
            self.clock,
            wake.set,
        )
        self.running[pool_name] = drill
        self.reports[drill.id] = drill
        while len(self.reports) > MAX_REPORTS:
            self.reports.popitem(last=False)
        drill.task = self.host.spawn(
            self._run(drill, pool, origin, locked, wake), f"drill {drill.id}"
        )
        return drill

    # -- running ----------------------------------------------------------------------------

    async def _run(
        self, drill: Drill, pool: Pool, origin: Origin, locked: bool, wake: asyncio.Event
    ) -> None:
        engine, events = pool.engine, self.host.events
        watch = drill.watch
        assert watch is not None
        request = drill.request
        summary = (
            f"drill {drill.id} ({drill.trigger}): {origin.name} drained for "
            f"{request.duration:g} s; abort above {request.max_error_rate:.1%} errors or p95 "
            f"{request.max_p95 * 1000:g} ms"
        )
        events.emit("drill-started", origin.name, "", "running", summary, pool.name)
        reason: str | None = "the drill was cancelled (shutdown)"
        try:
            engine.set_flag(origin, Flag.DRILL, True, "drill", f"drained by drill {drill.id}")
            engine.observer = watch
            drill.note(self.clock(), "drained", origin=origin.name)
            if locked and self.host.fleet is not None:
                until = drill.started_at + request.duration + LOCK_MARGIN
                await asyncio.wait_for(
                    self.host.fleet.drill(pool.name, origin.name, drill.id, True, until), 2.0
                )
            reason = await self._watch(drill, pool, watch, wake)
        except Exception as exc:
            reason = f"the drill failed: {type(exc).__name__}: {exc}"
            raise
        finally:
            if engine.observer is watch:
                engine.observer = None
            engine.set_flag(origin, Flag.DRILL, False, "drill", f"drill {drill.id} ended")
            now = self.clock()
            drill.elapsed = now - drill.started
            drill.ended_at = self.wall_clock()
            drill.state = "aborted" if reason is not None else "passed"
            drill.reason = reason
            drill.note(now, "restored", origin=origin.name, usable=origin.usable)
            self.running.pop(pool.name, None)
            self._finished(drill, pool, origin)
            if locked and self.host.fleet is not None:
                with contextlib.suppress(Exception):
                    fleet = self.host.fleet
                    await asyncio.wait_for(
                        fleet.drill(pool.name, origin.name, drill.id, False, 0.0), 2.0
                    )
                    await asyncio.wait_for(fleet.unlock_drill(pool.name), 2.0)

    async def _watch(
        self, drill: Drill, pool: Pool, watch: Watch, wake: asyncio.Event
    ) -> str | None:
        """Judge every EVALUATE seconds until the duration is over; the reason to abort, or
        None when the drill passed."""
        end = drill.started + drill.request.duration
        next_sample = drill.started + 1.0
        while True:
            now = self.clock()
            drill.elapsed = now - drill.started
            if self.host.runtime.pools.get(pool.name) is not pool:
                return "the config was reloaded (the pool was rebuilt)"
            reason = watch.judge(now)
            if reason is not None:
                drill.note(now, "aborted", reason=reason)
                return reason
            if now >= next_sample:
                count, errors, p95 = watch.window(now)
                drill.note(
                    now,
                    "sample",
                    requests=count,
                    errors=errors,
                    p95_ms=round(p95 * 1000, 3) if p95 is not None else None,
                )
                next_sample += 1.0
            if now >= end:
                count, errors, _ = watch.window(now)
                drill.note(now, "passed", requests=count, errors=errors)
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(EVALUATE, max(0.0, end - now)))

    def _finished(self, drill: Drill, pool: Pool, origin: Origin) -> None:
        passed = drill.state == "passed"
        kind = "drill-passed" if passed else "drill-aborted"
        tallies = drill.watch.tallies if drill.watch is not None else {}
        served = ", ".join(
            f"{name} {t.requests} requests, {t.errors} errors"
            for name, t in tallies.items()
            if name != origin.name
        )
        reason = f"drill {drill.id}: " + (
            f"passed after {drill.elapsed:.1f} s ({served})"
            if passed
            else f"aborted after {drill.elapsed:.1f} s: {drill.reason}"
        )
        self.host.events.emit(kind, origin.name, "running", drill.state, reason, pool.name)
        metrics = self.host.metrics
        if metrics is not None:
            metrics.drills.labels(pool.name, drill.state).inc()
        if passed:
            assert drill.ended_at is not None
            for o in pool.origins:
                if o is origin or (tallies.get(o.name) and tallies[o.name].requests):
                    self.last_passed[(pool.name, o.name)] = drill.ended_at
            if metrics is not None:
                metrics.drill_success.labels(pool.name).set(drill.ended_at)

    # -- background: served traffic, untested origins, the schedule -------------------------

    async def run(self) -> None:
        """About once a second: note which origins served traffic, flag untested ones in the
        metrics, and start scheduled drills."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.tick()
            except Exception:
                logger.exception("Drill housekeeping failed; trying again in 1 s.")

    async def tick(self) -> None:
        now, wall = self.clock(), self.wall_clock()
        metrics = self.host.metrics
        self._expire_remote(wall)
        for pool in self.host.runtime.pools.values():
            if metrics is not None and not any(key[0] == pool.name for key in self.last_passed):
                # 0 = no drill passed here (yet): alerts see the pool, not a missing series.
                metrics.drill_success.labels(pool.name).set(0)
            for origin in pool.origins:
                total, failures, _ = pool.engine.outliers[origin.name].window(now)
                if total > failures:
                    self.last_served[(pool.name, origin.name)] = wall
                if metrics is not None:
                    untested = self.untested(pool, origin, wall)
                    metrics.untested.labels(pool.name, origin.name).set(1 if untested else 0)
            await self._scheduled(pool, wall)

    async def _scheduled(self, pool: Pool, wall: float) -> None:
        config = pool.config.drills
        schedule = self.schedules.get(pool.name)
        if config.every is None:
            self.schedules.pop(pool.name, None)
            return
        if schedule is None or schedule.config != config:
            self.schedules[pool.name] = Schedule(config, wall)
            return
        if not schedule.due(wall):
            return
        schedule.ran(wall)
        request = DrillRequest(config.duration, config.max_error_rate, config.max_p95)
        try:
            await self.start(pool.name, request, "schedule")
        except (DrillRefused, LookupError) as exc:
            self.host.events.emit(
                "drill-skipped", "-", "", "", f"scheduled drill not started: {exc}", pool.name
            )

    def remote(self, message: dict[str, Any]) -> None:
        """Another process of the fleet started or ended a drill (see failover.fleet)."""
        pool = self.host.runtime.pools.get(str(message.get("pool")))
        origin = pool.engine.by_name.get(str(message.get("origin"))) if pool else None
        if pool is None or origin is None:
            return
        key, on = (pool.name, origin.name), bool(message.get("on"))
        if on:
            self.remote_until[key] = float(message["until"])
        else:
            self.remote_until.pop(key, None)
        reason = f"drill {message.get('id')} of {message.get('from')}"
        pool.engine.set_flag(
            origin, Flag.DRILL, on, "drill", f"drained by {reason}" if on else f"{reason} ended"
        )

    def _expire_remote(self, wall: float) -> None:
        """Clear the drains of fleet drills whose end was never heard (their process died)."""
        for key, until in list(self.remote_until.items()):
            if wall < until:
                continue
            del self.remote_until[key]
            pool = self.host.runtime.pools.get(key[0])
            origin = pool.engine.by_name.get(key[1]) if pool else None
            if pool is not None and origin is not None and key[0] not in self.running:
                pool.engine.set_flag(
                    origin, Flag.DRILL, False, "drill", "a fleet drill's expiry passed unheard"
                )

    def untested(self, pool: Pool, origin: Origin, wall: float) -> bool:
        key = (pool.name, origin.name)
        latest = max(
            self.last_served.get(key, -math.inf),
            self.last_passed.get(key, -math.inf),
            self.started_at,  # what happened before this process started is not known
        )
        return wall - latest > pool.config.drills.max_untested

    def status(self, pool: Pool, origin: Origin) -> dict[str, Any]:
        """What `status` shows of an origin's drills."""
        wall = self.wall_clock()
        key = (pool.name, origin.name)
        schedule = self.schedules.get(pool.name)
        return {
            "last_served_at": self.last_served.get(key),
            "last_drill_passed_at": self.last_passed.get(key),
            "untested": self.untested(pool, origin, wall),
            "next_drill_at": schedule.next_at if schedule is not None else None,
        }

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """Reports of the newest drills first, without their timelines."""
        drills = list(reversed(self.reports.values()))[: max(0, limit)]
        return [{k: v for k, v in d.report().items() if k != "timeline"} for d in drills]
