"""Passive detection: attempt results in, ejections out. Pure: the caller passes `now`.

An origin is ejected after `consecutive_failures` failures in a row, or when over the sliding
`window` its failure rate (or, with `latency_threshold`, its share of slow answers) reaches
`error_rate` with at least `min_requests` requests. Ejection lasts `ejection_time` times the
number of ejections in a row, capped at `max_ejection_time`.
"""

from __future__ import annotations

from .config import PassiveConfig

__all__ = ["BUCKETS", "Outlier", "describe_result"]

BUCKETS = 10

Result = str | int  # "connect-failure", "reset", "timeout", or the HTTP status


def describe_result(result: Result) -> str:
    return f"status {result}" if isinstance(result, int) else result


class Outlier:
    """One origin's passive evidence. `record` is on the hot path: keep it cheap."""

    def __init__(self, config: PassiveConfig) -> None:
        self.config = config
        self._width = config.window / BUCKETS
        self._ids = [-1] * BUCKETS
        self._totals = [0] * BUCKETS
        self._failures = [0] * BUCKETS
        self._slow = [0] * BUCKETS
        self._latency = [0.0] * BUCKETS
        self.consecutive = 0
        self.last_failure: Result | None = None
        self.ejections = 0  # ejections in a row; decays after a quiet max_ejection_time
        self.ejected_until: float | None = None
        self.restored_at: float | None = None
        self._local = [0, 0, 0]  # this process' own (requests, failures, slow) not yet shared

    def record(self, result: Result, ttfb: float, now: float) -> str | None:
        """Count one attempt; return the reason if this origin must now be ejected."""
        failed = isinstance(result, str) or result in self.config.failure_statuses
        threshold = self.config.latency_threshold
        slow = threshold is not None and ttfb > threshold
        i = self._bucket(now)
        self._totals[i] += 1
        self._latency[i] += ttfb
        local = self._local
        local[0] += 1
        if failed:
            self._failures[i] += 1
            local[1] += 1
            self.consecutive += 1
            self.last_failure = result
        else:
            self.consecutive = 0
        if slow:
            self._slow[i] += 1
            local[2] += 1
        if not self.config.enabled or self.ejected_until is not None or not (failed or slow):
            return None
        return self._verdict(now)

    def _bucket(self, now: float) -> int:
        """The index of the bucket for `now`, emptied first if it held an older period."""
        bucket = int(now / self._width)
        i = bucket % BUCKETS
        if self._ids[i] != bucket:
            self._ids[i] = bucket
            self._totals[i] = self._failures[i] = self._slow[i] = 0
            self._latency[i] = 0.0
        return i

    def take_local(self) -> tuple[int, int, int]:
        """This process' (requests, failures, slow) since the last call, for the fleet."""
        total, failures, slow = self._local
        self._local = [0, 0, 0]
        return total, failures, slow

    def absorb(self, total: int, failures: int, slow: int, now: float) -> str | None:
        """Add other processes' counts to the window; return the reason if the combined
        evidence ejects this origin."""
        i = self._bucket(now)
        self._totals[i] += total
        self._failures[i] += failures
        self._slow[i] += slow
        if not self.config.enabled or self.ejected_until is not None or not (failures or slow):
            return None
        return self._verdict(now)

    def window(self, now: float) -> tuple[int, int, int]:
        """(requests, failures, slow) over the sliding window ending at `now`."""
        oldest = int(now / self._width) - BUCKETS + 1
        total = failures = slow = 0
        for i in range(BUCKETS):
            if self._ids[i] >= oldest:
                total += self._totals[i]
                failures += self._failures[i]
                slow += self._slow[i]
        return total, failures, slow

    def mean_latency(self, now: float) -> float | None:
        """Mean time to first byte over the window, None without requests."""
        oldest = int(now / self._width) - BUCKETS + 1
        total, latency = 0, 0.0
        for i in range(BUCKETS):
            if self._ids[i] >= oldest:
                total += self._totals[i]
                latency += self._latency[i]
        return latency / total if total else None

    def _verdict(self, now: float) -> str | None:
        config = self.config
        if self.consecutive >= config.consecutive_failures and self.last_failure is not None:
            return f"{self.consecutive} consecutive failures: {describe_result(self.last_failure)}"
        total, failures, slow = self.window(now)
        if total < config.min_requests:
            return None
        span = f"over {config.window:g} s, {total} requests"
        if failures / total >= config.error_rate:
            return f"error rate {failures / total:.0%} {span}"
        if config.latency_threshold is not None and slow / total >= config.error_rate:
            return f"{slow / total:.0%} slower than {config.latency_threshold:g} s {span}"
        return None

    def eject(self, now: float) -> float:
        """Start an ejection; return its length in seconds."""
        config = self.config
        if self.restored_at is not None and now - self.restored_at > config.max_ejection_time:
            self.ejections = 0
        self.ejections += 1
        duration = min(config.ejection_time * self.ejections, config.max_ejection_time)
        self.ejected_until = now + duration
        self._reset()
        return duration

    def may_restore(self, now: float) -> bool:
        return self.ejected_until is not None and now >= self.ejected_until

    def restore(self, now: float) -> None:
        self.ejected_until = None
        self.restored_at = now
        self._reset()

    def _reset(self) -> None:
        self.consecutive = 0
        self._ids = [-1] * BUCKETS
