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
from collections.abc import Callable, Iterable

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
        origins: Iterable[Origin] = (),
    ) -> None:
        self.policy = policy
        self.decay = config.decay
        self.by_latency = policy == "least-latency"
        self.min_share = config.min_share if self.by_latency else 0.0
        self.rng = rng
        self.in_flight = in_flight
        # Per origin: [moving average in seconds, when last measured] (-inf: not yet; the
        # first measurement then counts in full).
        self._figures: dict[str, list[float]] = {o.name: [0.0, -math.inf] for o in origins}

    def latency(self, name: str) -> float | None:
        """The moving average of `name`'s time to first byte, None before its first."""
        figure = self._figures.get(name)
        return None if figure is None or figure[1] == -math.inf else figure[0]

    def observe(self, origin: Origin, seconds: float, now: float) -> None:
        """One time to first byte of `origin`."""
        figure = self._figures.get(origin.name)
        if figure is None:
            figure = self._figures[origin.name] = [seconds, now]
        weight = 1.0 - math.exp((figure[1] - now) / self.decay)
        if weight < MIN_WEIGHT:
            weight = MIN_WEIGHT
        figure[0] += (seconds - figure[0]) * weight
        figure[1] = now

    def inherit(self, previous: Balancer, names: set[str]) -> None:
        """Keep the figures of the origins in `names` (unchanged across a config reload)."""
        for name in names:
            if name in previous._figures:
                self._figures[name] = previous._figures[name]

    def choose(self, tier: list[Origin]) -> Origin:
        """The origin of `tier` (two or more origins) for the next request."""
        count = len(tier)
        draw = self.rng.random()
        explore = self.min_share * count
        if draw < explore:  # the minimum share: uniform over the tier
            return tier[int(draw / explore * count) % count]
        draw = (draw - explore) / (1.0 - explore)  # uniform again, in [0, 1)
        if count == 2:
            first, second = tier
            if draw * (first.weight + second.weight) >= first.weight:
                first, second = second, first
        else:
            total = 0
            for origin in tier:
                total += origin.weight
            first = _draw(tier, draw * total, None)
            second = _draw(tier, self.rng.random() * (total - first.weight), first)
        in_flight = self.in_flight
        first_cost = in_flight(first) / first.weight
        second_cost = in_flight(second) / second.weight
        if self.by_latency:
            figures = self._figures
            first_cost = figures[first.name][0] * (1.0 + first_cost)
            second_cost = figures[second.name][0] * (1.0 + second_cost)
        return second if second_cost < first_cost else first


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
