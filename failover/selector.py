"""Which origin serves the next attempt. Pure: the caller passes `now`.

Traffic goes to the lowest priority number that has a usable origin whose failback hold-down
has passed; within that tier, smooth weighted round robin (nginx's). An origin that becomes
usable again waits out its hold-down before it takes traffic back; each time it fails again
within `flap_window` of recovering its hold-down doubles, up to `max_hold_down`, and a quiet
flap window resets it.

Within a tier the choice is smooth weighted round robin (`balance: weighted`), or the power of
two choices by speed or load (failover.balance).

Gradual failback (`failback.ramp` > 0): when a better tier takes traffic back from the tier
that carried it, a `Ramp` splits the traffic between the two: the recovered tier gets
`ramp_start` of it at first, rising linearly to all of it over `ramp` seconds. A failure of a
recovering origin during the ramp returns all traffic to the other tier at once, counts as a
flap, and sends the rest of the recovering tier back into its hold-down.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .balance import Balancer
from .config import Balance, FailbackConfig, LeastLatencyConfig
from .origins import OPERATOR_FLAGS, Origin

__all__ = ["Failback", "Ramp", "Selector"]


@dataclass
class Failback:
    """One origin's failback record."""

    eligible_at: float = -math.inf  # may take traffic from then on (if usable)
    recovered_at: float | None = None
    flaps: int = 0
    hold_down: float = 0.0  # the hold-down of the current (or last) recovery


@dataclass
class Ramp:
    """Traffic moving back to a recovered better tier, a growing share at a time."""

    to: list[Origin]  # the recovered tier
    source: list[Origin]  # the tier that carried the traffic (its usable origins)
    started_at: float
    duration: float
    start_share: float
    credit: float = 0.0  # the recovered tier's next request is due when this reaches 1
    current: dict[str, int] = field(default_factory=dict)  # round robin within `source`

    @property
    def ends_at(self) -> float:
        return self.started_at + self.duration

    def share(self, now: float) -> float:
        """The recovered tier's share of the traffic at `now`."""
        progress = (now - self.started_at) / self.duration
        if progress >= 1.0:
            return 1.0
        return self.start_share + (1.0 - self.start_share) * max(0.0, progress)


def _names(origins: list[Origin]) -> str:
    return ",".join(o.name for o in origins) or "none"


class Selector:
    def __init__(
        self,
        origins: Iterable[Origin],
        failback: FailbackConfig,
        on_switch: Callable[[list[Origin], list[Origin], str], None] | None = None,
        *,
        balance: Balance = "weighted",
        least_latency: LeastLatencyConfig | None = None,
        rng: random.Random | None = None,
        in_flight: Callable[[Origin], int] | None = None,
        on_ramp: Callable[[str, Ramp, str], None] | None = None,
    ) -> None:
        self.origins = sorted(origins, key=lambda origin: origin.priority)
        self.config = failback
        self.failback = {origin.name: Failback() for origin in self.origins}
        self.tier: list[Origin] = []
        self.ramp: Ramp | None = None
        self.balance = balance
        self.balancer: Balancer | None = None
        if balance != "weighted":
            self.balancer = Balancer(
                balance,
                least_latency or LeastLatencyConfig(),
                rng or random.Random(),
                in_flight or _none_in_flight,
                self.origins,
            )
        # The hot path calls `pick`; it is bound to the variant that fits, so that the
        # default (weighted, no ramp under way) does no more than it must.
        self.pick: Callable[[float], Origin | None] = self._pick_weighted
        self._current: dict[str, int] = {}
        self._refresh_at = -math.inf
        self._on_switch = on_switch
        self._on_ramp = on_ramp
        self._rebind()
        self.reset(-math.inf)  # the first choice is not a move: no event

    # -- state changes ----------------------------------------------------------------------

    def origin_down(self, origin: Origin, now: float) -> None:
        record = self.failback[origin.name]
        ramp = self.ramp
        if ramp is not None and origin in ramp.to:
            record.flaps += 1  # failed while taking its traffic back: a flap, however late
            for other in ramp.to:  # the rest of its tier proves itself again
                if other is not origin and other.usable:
                    self.failback[other.name].eligible_at = now + self.hold_down_for(other)
        elif (
            record.recovered_at is not None and now - record.recovered_at < self.config.flap_window
        ):
            record.flaps += 1
        elif record.recovered_at is not None:
            record.flaps = 0  # a quiet flap window has passed: back to the base hold-down
        record.eligible_at = math.inf
        self.invalidate()

    def origin_up(self, origin: Origin, now: float) -> None:
        record = self.failback[origin.name]
        record.hold_down = self.hold_down_for(origin)
        record.recovered_at = now
        record.eligible_at = now + record.hold_down
        self.invalidate()

    def hold_down_for(self, origin: Origin) -> float:
        flaps = self.failback[origin.name].flaps
        return min(self.config.hold_down * float(2**flaps), self.config.max_hold_down)

    def invalidate(self) -> None:
        self._refresh_at = -math.inf

    def reset(self, now: float) -> None:
        """Choose the tier afresh without reporting it as a move (start-up, config reload)."""
        on_switch, on_ramp = self._on_switch, self._on_ramp
        self._on_switch = self._on_ramp = None
        try:
            self.refresh(now)
        finally:
            self._on_switch, self._on_ramp = on_switch, on_ramp

    def inherit(self, previous: Selector, now: float) -> None:
        """After a config reload: keep a ramp under way (if ramps are still on and its tiers
        are still there) and the latency figures of the origins that are."""
        ramp = previous.ramp
        by_name = {origin.name: origin for origin in self.origins}
        if ramp is not None and self.config.ramp > 0:
            to = [by_name[o.name] for o in ramp.to if o.name in by_name]
            source = [by_name[o.name] for o in ramp.source if o.name in by_name]
            if to and source and len(to) == len(ramp.to):
                self.ramp = Ramp(
                    to, source, ramp.started_at, self.config.ramp, self.config.ramp_start
                )
                self.ramp.credit = ramp.credit
                self.tier = to  # the tier the ramp moves to carries on: no move to report
                self._current = {origin.name: 0 for origin in to}
                self.ramp.current = {origin.name: 0 for origin in source}
        if self.balancer is not None and previous.balancer is not None:
            before = {origin.name: origin.url for origin in previous.origins}
            same = {o.name for o in self.origins if before.get(o.name) == o.url}
            self.balancer.inherit(previous.balancer, same)
        self._rebind()
        self.reset(now)

    # -- choosing ---------------------------------------------------------------------------

    def _pick_weighted(self, now: float) -> Origin | None:
        """The origin for a request's first attempt, or None when no origin is usable."""
        if now >= self._refresh_at:
            self.refresh(now)
        tier = self.tier
        if len(tier) == 1:
            return tier[0]
        if not tier:
            return None
        # Smooth weighted round robin.
        current = self._current
        total = 0
        best: Origin | None = None
        for origin in tier:
            weight = current[origin.name] + origin.weight
            current[origin.name] = weight
            total += origin.weight
            if best is None or weight > current[best.name]:
                best = origin
        assert best is not None
        current[best.name] -= total
        return best

    def _pick_balanced(self, now: float) -> Origin | None:
        if now >= self._refresh_at:
            self.refresh(now)
        tier = self.tier
        if len(tier) == 1:
            return tier[0]
        if not tier:
            return None
        assert self.balancer is not None
        return self.balancer.choose(tier)

    def _pick_ramp(self, now: float) -> Origin | None:
        if now >= self._refresh_at:
            self.refresh(now)
        ramp = self.ramp
        if ramp is None:  # it ended just now
            return self.pick(now)
        ramp.credit += ramp.share(now)
        if ramp.credit >= 1.0:
            ramp.credit -= 1.0
            return self._choose(ramp.to, self._current)
        return self._choose(ramp.source, ramp.current)

    def _choose(self, tier: list[Origin], current: dict[str, int]) -> Origin:
        if len(tier) == 1:
            return tier[0]
        if self.balancer is not None:
            return self.balancer.choose(tier)
        total = 0
        best = tier[0]
        for origin in tier:
            weight = current.get(origin.name, 0) + origin.weight
            current[origin.name] = weight
            total += origin.weight
            if weight > current[best.name]:
                best = origin
        current[best.name] -= total
        return best

    def _rebind(self) -> None:
        if self.ramp is not None:
            self.pick = self._pick_ramp
        elif self.balancer is not None:
            self.pick = self._pick_balanced
        else:
            self.pick = self._pick_weighted

    def observe(self, origin: Origin, seconds: float, now: float) -> None:
        """A time to first byte of `origin` (for `balance: least-latency`)."""
        if self.balancer is not None:
            self.balancer.observe(origin, seconds, now)

    def next_after(self, tried: Iterable[Origin], now: float, try_all: bool) -> Origin | None:
        """The origin for a retry: never one already tried. Usable ones past their hold-down
        first, then usable ones still holding down, then (with `try_all`) the rest."""
        done = set(id(origin) for origin in tried)
        ranks: list[tuple[int, int, Origin]] = []
        for origin in self.origins:
            if id(origin) in done:
                continue
            if origin.usable:
                rank = 0 if self.failback[origin.name].eligible_at <= now else 1
            elif try_all and not origin.flags & OPERATOR_FLAGS:
                rank = 2  # believed down, but may be back; never one an operator took out
            else:
                continue
            ranks.append((rank, origin.priority, origin))
        if not ranks:
            return None
        return min(ranks, key=lambda r: (r[0], r[1]))[2]

    def refresh(self, now: float) -> None:
        usable = [origin for origin in self.origins if origin.usable]
        ready = [o for o in usable if self.failback[o.name].eligible_at <= now]
        pool = ready or usable  # nothing past its hold-down: a recovering origin beats none
        tier: list[Origin] = []
        if pool:
            best = pool[0].priority
            tier = [origin for origin in pool if origin.priority == best]
        waiting = [
            self.failback[o.name].eligible_at
            for o in usable
            if self.failback[o.name].eligible_at > now
        ]
        self._refresh_at = min(waiting, default=math.inf)
        if self.ramp is not None:
            self._follow_ramp(self.ramp, tier, now)
        if [o.name for o in tier] != [o.name for o in self.tier]:
            old = self.tier
            self.tier = tier
            self._current = {origin.name: 0 for origin in tier}
            reason = self._explain(old, tier, now)
            if self._on_switch is not None:
                self._on_switch(old, tier, reason)
            if self._ramps(old, tier, now):
                source = [o for o in old if o.usable]
                # From when the hold-down ended, even if this is noticed a little later.
                began = max(self.failback[o.name].eligible_at for o in tier)
                began = began if math.isfinite(began) else now
                ramp = Ramp(tier, source, began, self.config.ramp, self.config.ramp_start)
                ramp.current = {origin.name: 0 for origin in source}
                self.ramp = ramp
                self._refresh_at = min(self._refresh_at, ramp.ends_at)
                self._rebind()
                if self._on_ramp is not None:
                    share = f"{ramp.start_share:.0%}"
                    self._on_ramp(
                        "ramp-start",
                        ramp,
                        f"{reason}; {_names(tier)} takes {share} of the traffic, rising to "
                        f"all of it over {ramp.duration:g} s",
                    )

    def _ramps(self, old: list[Origin], new: list[Origin], now: float) -> bool:
        """Whether traffic moving from `old` to `new` moves gradually: ramps are on, a better
        tier past its hold-down takes over, and the tier that carried the traffic still can."""
        return (
            self.config.ramp > 0
            and self._on_switch is not None  # not at start-up or on a reload
            and bool(old)
            and bool(new)
            and new[0].priority < old[0].priority
            and any(o.usable for o in old)
            and all(self.failback[o.name].eligible_at <= now for o in new)
        )

    def _follow_ramp(self, ramp: Ramp, tier: list[Origin], now: float) -> None:
        """End the ramp when it is done, or stop it when its tiers changed."""
        source = [o for o in ramp.source if o.usable]
        reason = None
        if [o.name for o in tier] != [o.name for o in ramp.to]:
            down = [o for o in ramp.to if not o.usable]
            cause = "; ".join(f"{o.name} is {o.state}: {o.reason}" for o in down)
            reason = f"stopped: {cause or _names(tier) + ' takes over'}"
            reason += f"; all traffic goes to {_names(tier)}"
        elif not source:
            reason = f"stopped: no origin of {_names(ramp.source)} is usable"
            reason += f"; all traffic goes to {_names(ramp.to)}"
        elif now >= ramp.ends_at:
            reason = f"done: all traffic goes to {_names(ramp.to)}"
        if reason is None:
            if len(source) != len(ramp.source):
                ramp.source = source
            self._refresh_at = min(self._refresh_at, ramp.ends_at)
            return
        self.ramp = None
        self._rebind()
        if self._on_ramp is not None:
            self._on_ramp("ramp-end", ramp, reason)

    def _explain(self, old: list[Origin], new: list[Origin], now: float) -> str:
        if not new:
            return "no origin is usable"
        down = [o for o in old if not o.usable]
        if down:  # the serving origins failed: that is the cause, whoever takes over
            return "; ".join(f"{o.name} is {o.state}: {o.reason}" for o in down)
        joined = [o for o in new if o not in old] or new
        names = ", ".join(o.name for o in joined)
        if old and all(self.failback[o.name].eligible_at <= now for o in joined):
            hold = max(self.failback[o.name].hold_down for o in joined)
            return f"{names} stayed usable for the {hold:g} s hold-down"
        return f"{names} became usable"

    def active(self, now: float) -> list[Origin]:
        if now >= self._refresh_at:
            self.refresh(now)
        return self.tier


def _none_in_flight(origin: Origin) -> int:
    return 0
