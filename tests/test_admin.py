"""The admin endpoints under the reserved prefix (failover.admin), end to end on loopback:
healthz, readyz and status, paths under the prefix that are never proxied, and who may use
them (`admin.allow`, `admin.trust_forwarded`).
"""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningProxy, wait_for
from tests.helpers import (
    AUTH,
    PREFIX,
    TOKEN,
    MakeOrigin,
    MakeProxy,
    one_origin,
    origin_header,
    two_origins,
    two_origins_config,
)

# --- who may use the admin endpoints ---------------------------------------------------------


async def test_a_client_outside_admin_allow_gets_403(make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(
        two_origins_config(
            primary,
            secondary,
            admin={"allow": ["10.0.0.0/8"], "trust_forwarded": ["127.0.0.0/8"], "token": TOKEN},
        )
    )
    for endpoint in ("/", "/status", "/events", "/metrics"):
        response = await proxy.client.get(f"{PREFIX}{endpoint}")
        assert response.status_code == 403, endpoint
        assert "127.0.0.1 is not in admin.allow" in response.text
    drain = await proxy.client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
    assert drain.status_code == 403
    assert (await proxy.client.get(f"{PREFIX}/healthz")).status_code == 200

    async def ready() -> bool:
        return (await proxy.client.get(f"{PREFIX}/readyz")).status_code == 200

    await wait_for(ready, timeout=5)
    assert await origin_header(proxy) == "primary"  # the data path is not restricted

    # Behind a trusted proxy, the forwarded client address counts.
    inside = {"X-Forwarded-For": "10.1.2.3"}
    outside = {"X-Forwarded-For": "192.0.2.7"}
    for endpoint in ("/", "/status", "/events", "/metrics"):
        assert (await proxy.client.get(f"{PREFIX}{endpoint}", headers=inside)).status_code == 200
        refused = await proxy.client.get(f"{PREFIX}{endpoint}", headers=outside)
        assert refused.status_code == 403
        assert "192.0.2.7 is not in admin.allow" in refused.text


# -- admin endpoints ----------------------------------------------------------------------


async def test_healthz(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.get("/_failover/healthz")
    assert response.status_code == 200
    assert origin.stats.requests == 0


async def test_readyz_follows_the_origins(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy)

    async def readyz_is(status: int) -> bool:
        return (await proxy.client.get("/_failover/readyz")).status_code == status

    await wait_for(lambda: readyz_is(200), timeout=5)
    body = (await proxy.client.get("/_failover/readyz")).json()
    assert body == {"ready": True, "pools": {"default": True}, "origins": {"primary": "healthy"}}

    await origin.set_mode("refuse")
    await wait_for(lambda: readyz_is(503), timeout=5)
    body = (await proxy.client.get("/_failover/readyz")).json()
    assert body["ready"] is False
    assert body["origins"]["primary"] != "healthy"
    assert origin.stats.requests == 0


async def test_status_names_origins_and_active(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(make_origin, make_proxy)
    response = await proxy.client.get("/_failover/status")
    assert response.status_code == 200
    status = response.json()
    assert status["active"] == "primary"
    origins = {item["name"]: item for item in status["origins"]}
    assert origins["primary"]["url"] == primary.url
    assert origins["primary"]["priority"] == 0
    assert origins["secondary"]["url"] == secondary.url
    assert origins["secondary"]["priority"] == 1
    assert {item["state"] for item in status["origins"]} == {"healthy"}


async def test_admin_paths_are_never_proxied(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy)
    for path in ("/_failover/nope", "/_failover/healthz/deeper"):
        response = await proxy.client.get(path)
        assert response.status_code == 404, path
        assert "x-failover-origin" not in response.headers
    # The bare prefix leads to the dashboard.
    response = await proxy.client.get("/_failover")
    assert response.status_code == 307
    assert response.headers["location"].endswith("/_failover/")
    assert origin.stats.requests == 0
    # A path that merely starts with the prefix's letters is not under it.
    response = await proxy.client.get("/_failoverish")
    assert response.status_code == 200
    assert origin.stats.requests == 1


async def test_status_is_refused_outside_admin_allow(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, admin={"allow": ["10.0.0.0/8"]})
    response = await proxy.client.get("/_failover/status")
    assert response.status_code == 403
    assert "127.0.0.1" in response.text
    assert (await proxy.client.get("/_failover/healthz")).status_code == 200


async def test_admin_allow_ignores_forwarded_for(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, admin={"allow": ["10.0.0.0/8"]})
    response = await proxy.client.get("/_failover/status", headers={"X-Forwarded-For": "10.0.0.1"})
    assert response.status_code == 403
