"""Active health checks: a pure rise/fall state machine and the async probe loop.

The state machine never reads the clock or does I/O. The probe loop is handed a `probe`
coroutine (upstream.py speaks HTTP), a `clock` and a `random.Random` for jitter.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .config import HealthConfig

__all__ = ["CheckState", "HealthCheck", "ProbeResult", "probe_loop"]

logger = logging.getLogger("failover.health")


class CheckState(enum.Enum):
    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # "200", "connection refused", "status 503 not in 200-399", ...


@dataclass(frozen=True)
class Transition:
    old: CheckState
    new: CheckState
    reason: str


class HealthCheck:
    """Rise/fall: `healthy_threshold` passes in a row to rise, `unhealthy_threshold` to fall.

    The very first probe decides at once, so that a dead origin is known dead at start-up.
    """

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.state = CheckState.UNKNOWN
        self.passes = 0
        self.failures = 0
        self.probes = 0
        self.last_detail = ""

    def record(self, result: ProbeResult) -> Transition | None:
        self.probes += 1
        self.last_detail = result.detail
        old = self.state
        if result.ok:
            self.passes += 1
            self.failures = 0
            if old is not CheckState.HEALTHY and (
                old is CheckState.UNKNOWN or self.passes >= self.healthy_threshold
            ):
                self.state = CheckState.HEALTHY
                return Transition(old, self.state, _count(self.passes, "probe pass", "es"))
        else:
            self.failures += 1
            self.passes = 0
            if old is not CheckState.UNHEALTHY and (
                old is CheckState.UNKNOWN or self.failures >= self.unhealthy_threshold
            ):
                self.state = CheckState.UNHEALTHY
                reason = f"{_count(self.failures, 'probe failure', 's')}: {result.detail}"
                return Transition(old, self.state, reason)
        return None


def _count(n: int, noun: str, plural: str) -> str:
    return f"{n} consecutive {noun}{plural if n != 1 else ''}"


def next_delay(config: HealthConfig, healthy: bool, rng: random.Random) -> float:
    """The pause before the next probe, with +-10% jitter so that processes don't align."""
    base = (
        config.interval
        if healthy or config.unhealthy_interval is None
        else (config.unhealthy_interval)
    )
    return base * rng.uniform(0.9, 1.1)


async def probe_loop(
    config: HealthConfig,
    probe: Callable[[], Awaitable[ProbeResult | None]],
    on_result: Callable[[ProbeResult], bool],
    on_next: Callable[[float], None],
    rng: random.Random,
) -> None:
    """Probe at once, then forever at the configured pace.

    `probe` may return None: nothing probed this round (in fleet mode another process holds
    the origin's lease). `on_result` applies a result and says whether the origin is now
    healthy (it picks the pace); `on_next` is told the delay before the next probe.
    """
    healthy = True
    while True:
        try:
            result = await probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the probe must not silently stop probing
            logger.exception("The health probe crashed; counting it as a failure.")
            result = ProbeResult(False, f"probe error: {exc!r}")
        if result is not None:
            healthy = on_result(result)
        delay = next_delay(config, healthy, rng)
        on_next(delay)
        await asyncio.sleep(delay)
