"""Which origin serves the next attempt. Pure: the caller passes `now`.

Traffic goes to the lowest priority number that has a usable origin whose failback hold-down
has passed; within that tier, smooth weighted round robin (nginx's). An origin that becomes
usable again waits out its hold-down before it takes traffic back; each time it fails again
within `flap_window` of recovering its hold-down doubles, up to `max_hold_down`, and a quiet
flap window resets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import FailbackConfig
from .origins import OPERATOR_FLAGS, Origin

__all__ = ["Failback", "Selector"]


@dataclass
class Failback:
    """One origin's failback record."""

    eligible_at: float = -math.inf  # may take traffic from then on (if usable)
    recovered_at: float | None = None
    flaps: int = 0
    hold_down: float = 0.0  # the hold-down of the current (or last) recovery


class Selector:
    def __init__(
        self,
        origins: Iterable[Origin],
        failback: FailbackConfig,
        on_switch: Callable[[list[Origin], list[Origin], str], None] | None = None,
    ) -> None:
        self.origins = sorted(origins, key=lambda origin: origin.priority)
        self.config = failback
        self.failback = {origin.name: Failback() for origin in self.origins}
        self.tier: list[Origin] = []
        self._current: dict[str, int] = {}
        self._refresh_at = -math.inf
        self._on_switch = on_switch
        self.reset(-math.inf)  # the first choice is not a move: no event

    # -- state changes ----------------------------------------------------------------------

    def origin_down(self, origin: Origin, now: float) -> None:
        record = self.failback[origin.name]
        if record.recovered_at is not None and now - record.recovered_at < self.config.flap_window:
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
        on_switch, self._on_switch = self._on_switch, None
        try:
            self.refresh(now)
        finally:
            self._on_switch = on_switch

    # -- choosing ---------------------------------------------------------------------------

    def pick(self, now: float) -> Origin | None:
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
        if [o.name for o in tier] != [o.name for o in self.tier]:
            old = self.tier
            self.tier = tier
            self._current = {origin.name: 0 for origin in tier}
            if self._on_switch is not None:
                self._on_switch(old, tier, self._explain(old, tier, now))

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
