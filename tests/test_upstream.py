"""Upstream (failover.upstream), the only module that speaks HTTP to origins: the native
client it gives each origin, its probes and error kinds, and a full connection pool, which is
503 pool-full for the client and not the origin's failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from failover import h1
from failover.config import ConfigError, build_settings
from failover.origins import Origin, build_origins
from failover.upstream import Upstream, UpstreamError
from tests.conftest import free_port, origin_config, proxy_config, wait_for
from tests.helpers import NO_HEALTH, MakeOrigin, MakeProxy, expected_bytes, origin_record

# -- a busy pool is not the origin's failure -------------------------------------------------


async def test_a_full_pool_is_503_pool_full_and_not_counted_against_the_origin(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin = await make_origin("primary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin, 0, health=NO_HEALTH),
            proxy={"max_connections_per_origin": 1},
            timeouts={"connect": 0.3, "first_byte": 5},
            passive={"consecutive_failures": 1},
        )
    )
    slow = asyncio.ensure_future(proxy.client.get("/delay/1.5"))
    await wait_for(lambda: origin.stats.requests == 1, timeout=2)
    busy = await proxy.client.get("/bytes/1")
    assert busy.status_code == 503
    assert "stayed busy" in busy.text
    assert busy.headers["x-failover-attempts"] == "primary;pool-full"
    assert (await slow).status_code == 200
    assert origin_record(proxy, "primary")["state"] == "healthy"
    assert (await proxy.client.get("/bytes/1")).status_code == 200
    metrics = (await proxy.client.get("/_failover/metrics")).text
    assert 'failover_upstream_pool_full_total{origin="primary",pool="default"} 1.0' in metrics


# -- the switch in Upstream -----------------------------------------------------------------


async def test_upstream_uses_the_native_client_when_configured(
    make_origin: MakeOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAILOVER_PROXY__CLIENT", raising=False)
    origin = await make_origin("primary")
    refusing = f"http://127.0.0.1:{free_port()}"
    settings = build_settings(
        proxy_config(
            origin_config("primary", origin, 0),
            origin_config("gone", refusing, 1),
            proxy={"client": "native"},
        )
    )
    upstream = Upstream(settings.proxy.max_connections_per_origin)
    primary, gone = build_origins(settings.pools["default"])
    try:
        for each in (primary, gone):
            upstream.add(each)
            assert isinstance(each.pool, h1.Pool)
        assert (await upstream.probe(primary)).ok
        assert (await upstream.probe(gone)).detail == "connection refused"
        response = await open_get(upstream, primary, "/bytes/7")
        try:
            assert response.status == 200
            assert await response.content.readany() == expected_bytes(0, 7)
            assert response.content.is_eof()
        finally:
            response.release()
        with pytest.raises(UpstreamError) as caught:
            await open_get(upstream, gone, "/")
        assert (caught.value.kind, caught.value.detail) == ("connect-failure", "connection refused")
    finally:
        await upstream.close()


def test_only_the_native_client_is_accepted() -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(
            proxy_config(
                origin_config("primary", "http://127.0.0.1:1", 0), proxy={"client": "aiohttp"}
            )
        )
    assert caught.value.problems == ["proxy.client: Input should be 'native', got 'aiohttp'"]


async def open_get(upstream: Upstream, origin: Origin, target: str) -> Any:
    return await upstream.open(origin, "GET", target, [("Host", origin.host_header)], None, 2.0)
