"""Prometheus metrics (failover.metrics), end to end on loopback: the counters follow the
traffic.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import wait_for
from tests.helpers import get_metrics, metric, origin_header, two_origins_config


async def test_metrics_follow_the_traffic(make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins_config(primary, secondary))
    for _ in range(3):
        assert await origin_header(proxy) == "primary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_requests_total", origin="primary", code="200") == 3.0
    assert metric(text, "failover_origin_up", origin="primary") == 1.0
    assert metric(text, "failover_origin_active", origin="primary") == 1.0
    assert metric(text, "failover_origin_active", origin="secondary") == 0.0
    assert not metric(text, "failover_failovers_total")

    await primary.set_mode("refuse")
    # The first request after the failure still tries the primary, then retries.
    assert await origin_header(proxy) == "secondary"

    async def traffic_moved() -> bool:
        text = await get_metrics(proxy.client)
        return metric(text, "failover_origin_up", origin="primary") == 0.0

    await wait_for(traffic_moved, timeout=5)
    assert await origin_header(proxy) == "secondary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_origin_active", origin="primary") == 0.0
    assert metric(text, "failover_origin_active", origin="secondary") == 1.0
    moves = metric(text, "failover_failovers_total", from_origin="primary", to_origin="secondary")
    assert moves is not None and moves >= 1
    failures = metric(
        text, "failover_upstream_attempts_total", origin="primary", result="connect-failure"
    )
    assert failures is not None and failures >= 1
    retries = metric(text, "failover_retries_total", reason="connect-failure")
    assert retries is not None and retries >= 1
    assert metric(text, "failover_requests_total", origin="secondary", code="200") == 2.0
    assert metric(text, "failover_requests_total", origin="primary", code="200") == 3.0
