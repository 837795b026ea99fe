"""Prometheus metrics, one registry per app, multiprocess-safe under `--workers`.

With several workers the command line sets PROMETHEUS_MULTIPROC_DIR before the workers start;
each worker then writes its values to files there and `/metrics` on any worker sums them up.
The hot path calls `request()` and `attempt()`, which reuse cached label children.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = self.registry
        self.requests = Counter(
            "failover_requests",
            "Requests answered, by origin and status.",
            ["origin", "code"],
            registry=r,
        )
        self.attempts = Counter(
            "failover_upstream_attempts",
            "Attempts sent to origins, by result.",
            ["origin", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "failover_request_duration_seconds",
            "Time to the response headers.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.up = Gauge(
            "failover_origin_up",
            "1 if the origin is usable.",
            ["origin"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.active = Gauge(
            "failover_origin_active",
            "1 if the origin takes new traffic.",
            ["origin"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.failovers = Counter(
            "failover_failovers",
            "Traffic moves between origins.",
            ["from_origin", "to_origin"],
            registry=r,
        )
        self.retries = Counter(
            "failover_retries",
            "Retries, by the failure that caused them.",
            ["reason"],
            registry=r,
        )
        self.reloads = Counter(
            "failover_config_reloads",
            "Config reloads, by result.",
            ["result"],
            registry=r,
        )
        self.webhook_drops = Counter(
            "failover_webhook_dropped",
            "Webhook notifications given up on.",
            registry=r,
        )
        self._requests: dict[tuple[str, int], Counter] = {}
        self._attempts: dict[tuple[str, str | int], Counter] = {}
        self._retries: dict[str | int, Counter] = {}
        self.observe = self.duration.observe

    def request(self, origin: str, code: int, seconds: float) -> None:
        child = self._requests.get((origin, code))
        if child is None:
            child = self._requests[(origin, code)] = self.requests.labels(origin, str(code))
        child.inc()
        self.observe(seconds)

    def attempt(self, origin: str, result: str | int) -> None:
        child = self._attempts.get((origin, result))
        if child is None:
            child = self._attempts[(origin, result)] = self.attempts.labels(origin, str(result))
        child.inc()

    def retry(self, reason: str | int) -> None:
        child = self._retries.get(reason)
        if child is None:
            child = self._retries[reason] = self.retries.labels(str(reason))
        child.inc()

    def origins(self, states: Iterable[tuple[str, bool, bool]]) -> None:
        """Set the per-origin gauges from (name, usable, active) triples."""
        for name, usable, active in states:
            self.up.labels(name).set(1 if usable else 0)
            self.active.labels(name).set(1 if active else 0)

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
