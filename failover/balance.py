"""Balancing within a tier by speed or load (`balance: least-latency | least-request`). Pure:
the caller passes `now`, a `random.Random` is injected, and the in-flight count of an origin is
asked of a function.

Both policies pick by the power of two choices: two different origins of the tier are drawn,
each with a chance in proportion to its `weight`, and the one with the lower cost takes the
request (the first drawn on a tie, so that idle origins share by weight). The cost is

- least-request: requests in flight / weight;
- least-latency: the moving average of the time to first byte x (1 + requests in flight /
  weight), as Finagle's and Linkerd's "peak EWMA": an origin that is fast but busy waits its
  turn, and equally fast idle origins share by weight.

With least-latency, the pick is instead uniform over the tier with probability `min_share` x
the tier's size, so that every origin keeps at least `min_share` of the tier's traffic and its
figure stays fresh: a slower origin is never starved and is seen as soon as it speeds up.

The average decays in time, not by count: a measurement that comes `dt` seconds after the
previous one counts for 1 - exp(-dt / decay) of the new figure (at least `MIN_WEIGHT`), so an
origin that gets only a trickle of traffic tracks its speed as quickly as a busy one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from .config import Balance, LeastLatencyConfig
from .origins import Origin

__all__ = ["MIN_WEIGHT", "Balancer"]

MIN_WEIGHT = 0.05  # the least a new measurement counts for (many in the same instant)


class Balancer:
    """Chooses an origin of a tier for `least-latency` or `least-request`."""

    def __init__(
        self,
        policy: Balance,
        config: LeastLatencyConfig,
        rng: random.Random,
        in_flight: Callable[[Origin], int],
    ) -> None:
        self.policy = policy
        self.decay = config.decay
        self.min_share = config.min_share if policy == "least-latency" else 0.0
        self.rng = rng
        self.in_flight = in_flight
        self.latency: dict[str, float] = {}  # seconds to first byte, moving average
        self._measured_at: dict[str, float] = {}

    def observe(self, origin: Origin, seconds: float, now: float) -> None:
        """One time to first byte of `origin`."""
        name = origin.name
        last = self._measured_at.get(name)
        self._measured_at[name] = now
        if last is None:
            self.latency[name] = seconds
            return
        weight = 1.0 - math.exp((last - now) / self.decay)
        if weight < MIN_WEIGHT:
            weight = MIN_WEIGHT
        average = self.latency[name]
        self.latency[name] = average + (seconds - average) * weight

    def inherit(self, previous: Balancer, names: set[str]) -> None:
        """Keep the figures of the origins in `names` (unchanged across a config reload)."""
        for name in names:
            if name in previous.latency:
                self.latency[name] = previous.latency[name]
                self._measured_at[name] = previous._measured_at[name]

    def choose(self, tier: list[Origin]) -> Origin:
        """The origin of `tier` (two or more origins) for the next request."""
        rng = self.rng
        count = len(tier)
        if self.min_share and rng.random() < self.min_share * count:
            return tier[int(rng.random() * count) % count]
        total = 0
        for origin in tier:
            total += origin.weight
        first = _draw(tier, rng.random() * total, None)
        second = _draw(tier, rng.random() * (total - first.weight), first)
        if self._cost(second) < self._cost(first):
            return second
        return first

    def _cost(self, origin: Origin) -> float:
        load = self.in_flight(origin) / origin.weight
        if self.policy == "least-request":
            return load
        return self.latency.get(origin.name, 0.0) * (1.0 + load)


def _draw(tier: list[Origin], point: float, skip: Origin | None) -> Origin:
    """The origin at `point` on the line of the tier's weights (`skip` left out)."""
    chosen = tier[-1] if tier[-1] is not skip else tier[-2]
    for origin in tier:
        if origin is skip:
            continue
        point -= origin.weight
        if point < 0:
            return origin
    return chosen  # rounding at the far end of the line
