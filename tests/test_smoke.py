from __future__ import annotations

from tests.conftest import origin_config, proxy_config
from tests.helpers import MakeOrigin, MakeProxy


async def test_traffic_moves_to_secondary_when_primary_fails(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        proxy_config(origin_config("primary", primary, 0), origin_config("secondary", secondary, 1))
    )
    response = await proxy.client.get("/hello")
    assert response.status_code == 200
    assert response.headers["x-failover-origin"] == "primary"
    await primary.set_mode("refuse")
    response = await proxy.client.get("/hello")
    assert response.status_code == 200
    assert response.headers["x-failover-origin"] == "secondary"
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
