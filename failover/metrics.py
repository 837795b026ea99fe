"""Prometheus metrics, one registry per app, multiprocess-safe under `--workers`.

With several workers the command line sets PROMETHEUS_MULTIPROC_DIR before the workers start;
each worker then writes its values to files there and `/metrics` on any worker sums them up.
The hot path calls `request()` and `attempt()`, which reuse cached label children.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

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
            "Requests answered, by pool, origin and status.",
            ["pool", "origin", "code"],
            registry=r,
        )
        self.attempts = Counter(
            "failover_upstream_attempts",
            "Attempts sent to origins, by result.",
            ["pool", "origin", "result"],
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
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.active = Gauge(
            "failover_origin_active",
            "1 if the origin takes new traffic.",
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cert_expiry = Gauge(
            "failover_origin_cert_expiry_seconds",
            "Seconds until the certificate an https origin last presented expires (negative "
            "once expired); updated on each full handshake and once a minute.",
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.failovers = Counter(
            "failover_failovers",
            "Traffic moves between origins.",
            ["pool", "from_origin", "to_origin"],
            registry=r,
        )
        self.retries = Counter(
            "failover_retries",
            "Retries, by the failure that caused them.",
            ["pool", "reason"],
            registry=r,
        )
        self.retries_refused = Counter(
            "failover_retries_refused",
            "Failed requests not retried although another origin could take them, by why "
            "(budget: the retry budget was used up; deadline, attempts, method, ...).",
            ["pool", "reason"],
            registry=r,
        )
        self.ejections = Counter(
            "failover_ejections",
            "Origins ejected by passive detection.",
            ["pool", "origin"],
            registry=r,
        )
        self.tier = Gauge(
            "failover_pool_tier",
            "The tier taking the pool's new traffic: 0 for its preferred priority, 1 for the "
            "next, ...; -1 when no origin is usable.",
            ["pool"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.tiers = Gauge(
            "failover_pool_tiers",
            "How many tiers (distinct priorities) the pool has.",
            ["pool"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.resends = Counter(
            "failover_upstream_resends",
            "Requests sent again on a new connection because the pooled one was found closed "
            "by the origin before the request reached it.",
            ["pool", "origin"],
            registry=r,
        )
        self.pool_full = Counter(
            "failover_upstream_pool_full",
            "Attempts given up because every pooled connection to the origin stayed busy "
            "(answered 503; not counted against the origin).",
            ["pool", "origin"],
            registry=r,
        )
        self.reloads = Counter(
            "failover_config_reloads",
            "Config reloads, by result.",
            ["result"],
            registry=r,
        )
        self.dns_lookups = Counter(
            "failover_dns_lookups",
            "DNS lookups of origin host names (A and AAAA together count as one).",
            ["host"],
            registry=r,
        )
        self.dns_failures = Counter(
            "failover_dns_failures",
            "DNS lookups that gave no address, by reason (nxdomain, no-address, servfail, "
            "timeout, unreachable, error).",
            ["host", "reason"],
            registry=r,
        )
        self.dns_stale = Counter(
            "failover_dns_stale_answers",
            "New connections made to a host's last answer while its resolver failed (serve-stale).",
            ["host"],
            registry=r,
        )
        self.websockets_open = Gauge(
            "failover_websockets_open",
            "WebSocket connections open, by the origin they are joined to.",
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.websocket_handshakes = Counter(
            "failover_websocket_handshakes",
            "WebSocket handshakes, by result: 101, the status the client got otherwise, or "
            "499 when the client left first.",
            ["pool", "result"],
            registry=r,
        )
        self.webhook_drops = Counter(
            "failover_webhook_dropped",
            "Webhook notifications given up on.",
            registry=r,
        )
        self.drills = Counter(
            "failover_drill",
            "Failover drills, by pool and result (passed, aborted).",
            ["pool", "result"],
            registry=r,
        )
        self.drill_success = Gauge(
            "failover_drill_last_success_timestamp_seconds",
            "When the pool's last drill passed (seconds since the epoch; 0 if none passed "
            "since the process started).",
            ["pool"],
            registry=r,
            multiprocess_mode="max",
        )
        self.diverged = Gauge(
            "failover_origin_diverged",
            "1 if the origin's canary answers differ from the pool's parity reference.",
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.untested = Gauge(
            "failover_origin_untested",
            "1 if the origin neither served traffic nor passed a drill within drills.max_untested.",
            ["pool", "origin"],
            registry=r,
            multiprocess_mode="livemax",
        )
        # The hot path only adds to plain dicts and lists (no locks, no label look-ups);
        # `flush` hands the sums to prometheus_client on every scrape and, so that other
        # workers' files stay current, once a second from the app's housekeeping.
        self._requests: dict[tuple[str, str, int], int] = {}
        self._attempts: dict[tuple[str, str, str | int], int] = {}
        self._retries: dict[tuple[str, str | int], int] = {}
        self._refused: dict[tuple[str, str], int] = {}
        self._bounds = (*_BUCKETS, float("inf"))
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def request(self, pool: str, origin: str, code: int, seconds: float) -> None:
        key = (pool, origin, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def attempt(self, pool: str, origin: str, result: str | int) -> None:
        key = (pool, origin, result)
        self._attempts[key] = self._attempts.get(key, 0) + 1

    def resend(self, pool: str, origin: str) -> None:
        self.resends.labels(pool, origin).inc()

    def retry(self, pool: str, reason: str | int) -> None:
        key = (pool, reason)
        self._retries[key] = self._retries.get(key, 0) + 1

    def retry_refused(self, pool: str, reason: str) -> None:
        key = (pool, reason)
        self._refused[key] = self._refused.get(key, 0) + 1

    def dns(self, what: str, host: str, reason: str) -> None:
        """Count a DNS lookup, failure or stale answer (failover.resolver; not per request)."""
        if what == "lookup":
            self.dns_lookups.labels(host).inc()
        elif what == "failure":
            self.dns_failures.labels(host, reason).inc()
        else:
            self.dns_stale.labels(host).inc()

    def flush(self) -> None:
        """Move what the hot path counted into the Prometheus metrics."""
        requests, self._requests = self._requests, {}
        for (pool, origin, code), n in requests.items():
            self.requests.labels(pool, origin, str(code)).inc(n)
        attempts, self._attempts = self._attempts, {}
        for (pool, origin, result), n in attempts.items():
            self.attempts.labels(pool, origin, str(result)).inc(n)
        retries, self._retries = self._retries, {}
        for (pool, reason), n in retries.items():
            self.retries.labels(pool, str(reason)).inc(n)
        refused, self._refused = self._refused, {}
        for (pool, reason), n in refused.items():
            self.retries_refused.labels(pool, reason).inc(n)
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        if any(counts):
            # prometheus_client has no public way to add many observations at once; its
            # Histogram keeps one (non-cumulative) value per bucket and one for the sum.
            histogram: Any = self.duration
            for value, n in zip(histogram._buckets, counts, strict=True):
                if n:
                    value.inc(n)
            histogram._sum.inc(total)

    def origins(self, states: Iterable[tuple[str, str, bool, bool]]) -> None:
        """Set the per-origin gauges from (pool, name, usable, active)."""
        for pool, name, usable, active in states:
            self.up.labels(pool, name).set(1 if usable else 0)
            self.active.labels(pool, name).set(1 if active else 0)

    def parity(self, pool: str, origin: str, diverged: bool) -> None:
        """Set `failover_origin_diverged` (pools with parity checks only)."""
        self.diverged.labels(pool, origin).set(1 if diverged else 0)

    def pool(self, name: str, tier: int, tiers: int) -> None:
        """Set the pool gauges: the index of the tier taking traffic, and how many it has."""
        self.tier.labels(name).set(tier)
        self.tiers.labels(name).set(tiers)

    def exposition(self) -> bytes:
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
