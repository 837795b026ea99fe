"""The failover engine: applies probe results and attempt results to origin flags.

Every change of an origin's flags goes through `Engine.set_flag`, which logs an event with its
reason and tells the selector. Pure: the clock is injected, nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol

from .config import PoolConfig
from .events import EventLog
from .health import CheckState, HealthCheck, ProbeResult
from .origins import Flag, Origin
from .outlier import Outlier
from .selector import Ramp, Selector

__all__ = ["DrillObserver", "Engine"]


class DrillObserver(Protocol):
    """Watches a pool while a drill runs (failover.drills); set on the engine only then."""

    def attempt(self, origin: Origin, result: str | int, ttfb: float) -> None: ...

    def changed(self, origin: Origin) -> None: ...


class Engine:
    def __init__(
        self,
        settings: PoolConfig,
        origins: list[Origin],
        events: EventLog,
        clock: Callable[[], float],
        previous: Engine | None = None,
        pool: str = "default",
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.origins = origins
        self.by_name = {origin.name: origin for origin in origins}
        self.events = events
        self.clock = clock
        self.started_at = clock()
        self.checks = {
            o.name: HealthCheck(o.health.healthy_threshold, o.health.unhealthy_threshold)
            for o in origins
        }
        self.outliers = {o.name: Outlier(settings.passive) for o in origins}
        self.next_probe_at: dict[str, float] = {}
        self.selector = Selector(
            origins,
            settings.failback,
            self._switched,
            balance=settings.balance,
            least_latency=settings.least_latency,
            rng=rng,
            in_flight=_in_flight,
            on_ramp=self._ramped,
        )
        # Called once per attempt: with `least-latency` it also feeds the time to first byte
        # to the balancer; otherwise it costs nothing more than before.
        self.on_attempt: Callable[[Origin, str | int, float], None] = self._on_attempt
        if settings.balance == "least-latency":
            self.on_attempt = self._on_attempt_timed
        self.try_all = settings.all_down not in ("503", "page")
        self.on_eject: Callable[[Origin, str], None] | None = None  # fleet mode shares these
        self.observer: DrillObserver | None = None  # only while a drill runs
        self._troubled: set[str] = set()  # drilled origins that got another flag meanwhile
        self._drill_reason: str | None = None
        if previous is not None:
            self._inherit(previous)

    def _inherit(self, previous: Engine) -> None:
        """After a config reload: origins whose name and url are unchanged keep their flags,
        health state, passive counters and failback record."""
        self.started_at = previous.started_at
        previous.selector.active(self.clock())  # a hold-down that just ended moves traffic
        for origin in self.origins:
            old = previous.by_name.get(origin.name)
            if old is None or old.url != origin.url:
                continue
            origin.flags = old.flags - {Flag.DRILL}  # the drill ends with its pool
            origin.reason, origin.changed_at = old.reason, old.changed_at
            origin.parity = old.parity
            check = previous.checks[origin.name]
            check.healthy_threshold = origin.health.healthy_threshold
            check.unhealthy_threshold = origin.health.unhealthy_threshold
            self.checks[origin.name] = check
            outlier = previous.outliers[origin.name]
            if outlier.config.window == self.settings.passive.window:
                outlier.config = self.settings.passive
                self.outliers[origin.name] = outlier
            self.selector.failback[origin.name] = previous.selector.failback[origin.name]
        self.selector.inherit(previous.selector, self.clock())
        old_tier = [o.name for o in previous.selector.tier]
        new_tier = [o.name for o in self.selector.tier]
        if old_tier != new_tier:
            self.events.emit(
                "traffic-moved",
                ",".join(new_tier) or "-",
                ",".join(old_tier) or "none",
                ",".join(new_tier) or "none",
                "config reload",
                self.pool,
            )

    # -- transitions ------------------------------------------------------------------------

    def set_flag(self, origin: Origin, flag: Flag, on: bool, kind: str, reason: str) -> None:
        """The one place an origin's flags change."""
        if (flag in origin.flags) == on:
            return
        now = self.clock()
        was_usable, old_state = origin.usable, origin.state
        if on:
            origin.flags.add(flag)
        else:
            origin.flags.discard(flag)
        origin.reason = reason
        origin.changed_at = now
        self.events.emit(kind, origin.name, old_state, origin.state, reason, self.pool)
        # A drill takes out an origin that did not fail: no flap is counted, and no hold-down
        # applies when it comes back, unless another flag was set on it meanwhile.
        drill = flag is Flag.DRILL
        if not drill and on and Flag.DRILL in origin.flags:
            self._troubled.add(origin.name)
        if was_usable and not origin.usable and not drill:
            self.selector.origin_down(origin, now)
        elif origin.usable and not was_usable and (not drill or origin.name in self._troubled):
            self.selector.origin_up(origin, now)
        if drill:
            self._troubled.discard(origin.name)
            self._drill_reason = reason  # traffic moved because of the drill, said as such
        try:
            self.selector.refresh(now)
        finally:
            self._drill_reason = None
        if self.observer is not None:
            self.observer.changed(origin)

    def _switched(self, old: list[Origin], new: list[Origin], reason: str) -> None:
        reason = self._drill_reason or reason
        self.events.emit(
            "traffic-moved",
            ",".join(o.name for o in new) or "-",
            ",".join(o.name for o in old) or "none",
            ",".join(o.name for o in new) or "none",
            reason,
            self.pool,
        )

    def _ramped(self, kind: str, ramp: Ramp, reason: str) -> None:
        self.events.emit(
            kind,
            ",".join(o.name for o in ramp.to),
            ",".join(o.name for o in ramp.source) or "none",
            ",".join(o.name for o in ramp.to),
            reason,
            self.pool,
        )

    def override(self, origin: Origin, action: str, by: str) -> None:
        """An operator's drain, disable or enable (which clears both)."""
        if action == "enable":
            self.set_flag(origin, Flag.DRAINED, False, "override", f"enabled by {by}")
            self.set_flag(origin, Flag.DISABLED, False, "override", f"enabled by {by}")
            return
        flag, other = (
            (Flag.DRAINED, Flag.DISABLED) if action == "drain" else (Flag.DISABLED, Flag.DRAINED)
        )
        self.set_flag(origin, other, False, "override", f"{action} replaces {other.value}")
        self.set_flag(origin, flag, True, "override", f"{flag.value} by {by}")

    # -- inputs -----------------------------------------------------------------------------

    def on_probe(self, origin: Origin, result: ProbeResult) -> bool:
        """Apply one active probe result; return whether the origin passes its checks now."""
        check = self.checks[origin.name]
        transition = check.record(result)
        if transition is not None:
            failed = transition.new is CheckState.UNHEALTHY
            kind = "origin-down" if failed else "origin-up"
            self.set_flag(origin, Flag.FAILED_CHECK, failed, kind, transition.reason)
        outlier = self.outliers[origin.name]
        if result.ok and Flag.EJECTED in origin.flags and outlier.may_restore(self.clock()):
            self._restore(origin, "ejection time passed and an active probe passed")
        return check.state is not CheckState.UNHEALTHY

    def _on_attempt(self, origin: Origin, result: str | int, ttfb: float) -> None:
        """Count one proxied attempt: an HTTP status, or connect-failure, reset, timeout."""
        reason = self.outliers[origin.name].record(result, ttfb, self.clock())
        if self.observer is not None:
            self.observer.attempt(origin, result, ttfb)
        if reason is not None:
            self.eject(origin, reason)

    def _on_attempt_timed(self, origin: Origin, result: str | int, ttfb: float) -> None:
        """`_on_attempt`, and the time to first byte of an answer (or of a timeout) to the
        balancer; a refused or reset connection says nothing about speed."""
        now = self.clock()
        if type(result) is int or result == "timeout":
            self.selector.observe(origin, ttfb, now)
        reason = self.outliers[origin.name].record(result, ttfb, now)
        if self.observer is not None:
            self.observer.attempt(origin, result, ttfb)
        if reason is not None:
            self.eject(origin, reason)

    def absorb(self, origin: Origin, total: int, failures: int, slow: int) -> None:
        """Other processes' attempts at `origin` (fleet mode)."""
        reason = self.outliers[origin.name].absorb(total, failures, slow, self.clock())
        if reason is not None:
            self.eject(origin, f"{reason} across the fleet")

    def dns_missing(self, origin: Origin, reason: str) -> None:
        """The origin's host name does not exist (NXDOMAIN) or has no address: failed-check,
        with the reason. With active checks on, it comes back once its probes pass again
        (`healthy_threshold` in a row); without, once the name resolves (`dns_back`)."""
        if origin.health.enabled:
            check = self.checks[origin.name]
            check.state, check.passes = CheckState.UNHEALTHY, 0
        self.set_flag(origin, Flag.FAILED_CHECK, True, "origin-down", reason)

    def dns_back(self, origin: Origin, reason: str) -> None:
        """The origin's host name resolves again."""
        if not origin.health.enabled:
            self.set_flag(origin, Flag.FAILED_CHECK, False, "origin-up", reason)

    def eject(self, origin: Origin, reason: str, share: bool = True) -> None:
        outlier = self.outliers[origin.name]
        if outlier.ejected_until is not None:
            return
        duration = outlier.eject(self.clock())
        self.set_flag(origin, Flag.EJECTED, True, "ejected", f"{reason} (for {duration:g} s)")
        if share and self.on_eject is not None:
            self.on_eject(origin, reason)

    def tick(self) -> None:
        """Housekeeping, about once a second: restore ejections where no probe will, and let
        the selector notice passed hold-downs even when no request arrives."""
        now = self.clock()
        for origin in self.origins:
            outlier = self.outliers[origin.name]
            if (
                Flag.EJECTED in origin.flags
                and not origin.health.enabled
                and outlier.may_restore(now)
            ):
                self._restore(origin, "ejection time passed")
        self.selector.active(now)

    def _restore(self, origin: Origin, reason: str) -> None:
        self.outliers[origin.name].restore(self.clock())
        self.set_flag(origin, Flag.EJECTED, False, "restored", reason)

    # -- choosing ---------------------------------------------------------------------------

    def pick(self) -> Origin | None:
        return self.selector.pick(self.clock())

    def next_after(self, tried: list[Origin]) -> Origin | None:
        return self.selector.next_after(tried, self.clock(), self.try_all)

    # -- reporting --------------------------------------------------------------------------

    def ready(self) -> bool:
        """Ready when an origin is usable and the first probe round is done (or grace ran out)."""
        if not any(origin.usable for origin in self.origins):
            return False
        probed = all(self.checks[o.name].probes > 0 for o in self.origins if o.health.enabled)
        return probed or self.clock() - self.started_at >= self.settings.health.startup_grace


def _in_flight(origin: Origin) -> int:
    """Requests under way at `origin`: its upstream connections in use (one request each)."""
    pool = origin.pool
    return 0 if pool is None else int(pool.in_use)
