"""End to end: the stale-if-error copies are a shared cache (RFC 9111 section 3.5). A response
meant for one client is never served stale to another. Real FaultyOrigin origins send the
caching headers (`/cache/...?cc=&cookie=&vary=`) to the real proxy, on loopback; then every
origin refuses, and what the proxy answers shows what it kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, origin_config, proxy_config

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]

ALICE = {"Authorization": "Bearer alice"}


async def stale_proxy(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> tuple[list[FaultyOrigin], RunningProxy]:
    """Two origins behind a proxy with stale-if-error on; no checks, so every request tries both."""
    origins = [await make_origin("primary"), await make_origin("secondary")]
    config = proxy_config(
        origin_config("primary", origins[0], 0),
        origin_config("secondary", origins[1], 1),
        health={"enabled": False},
        passive={"enabled": False},
        stale={"enabled": True},
    )
    return origins, await make_proxy(config)


async def all_refuse(origins: list[FaultyOrigin]) -> None:
    for origin in origins:
        await origin.set_mode("refuse")


def assert_not_served_stale(response: httpx.Response, what: str) -> None:
    assert response.status_code == 502, f"{what}: {response.status_code} {response.text!r}"
    assert "x-failover-stale" not in response.headers, what
    assert response.headers["x-failover-attempts"] == (
        "primary;connect-failure, secondary;connect-failure"
    )


def assert_served_stale(response: httpx.Response, fresh: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["x-failover-stale"] == "1"
    assert response.content == fresh.content


async def test_a_response_to_a_request_with_authorization_is_not_served_to_others(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    private = await proxy.client.get("/cache/account?cc=max-age=60", headers=ALICE)
    assert private.status_code == 200
    assert private.headers["cache-control"] == "max-age=60"
    assert origins[0].stats.last_request is not None
    assert ("authorization", "Bearer alice") in origins[0].stats.last_request.headers
    control = await proxy.client.get("/cache/home?cc=max-age=60")
    assert control.status_code == 200
    await all_refuse(origins)

    assert_not_served_stale(await proxy.client.get("/cache/account?cc=max-age=60"), "anonymous")
    assert_not_served_stale(
        await proxy.client.get("/cache/account?cc=max-age=60", headers=ALICE), "alice again"
    )
    # The same proxy does serve a copy it was allowed to keep.
    assert_served_stale(await proxy.client.get("/cache/home?cc=max-age=60"), control)


async def test_a_response_to_a_request_with_authorization_marked_public_is_served(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    fresh = await proxy.client.get("/cache/logo?cc=public", headers=ALICE)
    assert fresh.status_code == 200
    assert fresh.headers["cache-control"] == "public"
    await all_refuse(origins)

    response = await proxy.client.get("/cache/logo?cc=public")
    assert_served_stale(response, fresh)
    assert response.headers["cache-control"] == "public"


async def test_a_response_that_sets_a_cookie_is_not_served_stale(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    target = "/cache/login?cc=public,max-age=60&cookie=session%3Dalice"
    fresh = await proxy.client.get(target)
    assert fresh.status_code == 200
    assert fresh.headers["set-cookie"] == "session=alice"
    await all_refuse(origins)

    response = await proxy.client.get(target)
    assert_not_served_stale(response, "set-cookie")
    assert "set-cookie" not in response.headers


async def test_responses_a_shared_cache_may_not_keep_are_not_served_stale(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    never = [
        "/cache/a?cc=no-store",
        "/cache/b?cc=private,max-age=60",
        "/cache/c?cc=no-cache",
        "/cache/d?cc=max-age=60&vary=*",
        "/cache/e?cc=must-revalidate",
    ]
    for target in never:
        fresh = await proxy.client.get(target)
        assert fresh.status_code == 200, target
    assert (await proxy.client.get("/cache/d?cc=max-age=60&vary=*")).headers["vary"] == "*"
    control = await proxy.client.get("/cache/f?cc=max-age=60")
    await all_refuse(origins)

    for target in never:
        assert_not_served_stale(await proxy.client.get(target), target)
    assert_served_stale(await proxy.client.get("/cache/f?cc=max-age=60"), control)


async def test_a_copy_is_not_served_across_hosts_that_join_to_the_same_text(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    fresh = await proxy.client.get("/cache/x/y", headers={"Host": "example.com"})
    assert fresh.status_code == 200
    assert fresh.text == "primary:/cache/x/y"
    await all_refuse(origins)

    # Host "example.com/cache" + "/x/y" reads "example.com/cache/x/y" too: another resource.
    collision = await proxy.client.get("/x/y", headers={"Host": "example.com/cache"})
    assert_not_served_stale(collision, "host example.com/cache")
    other_host = await proxy.client.get("/cache/x/y", headers={"Host": "example.org"})
    assert_not_served_stale(other_host, "host example.org")
    # The Host is compared without regard to case.
    same = await proxy.client.get("/cache/x/y", headers={"Host": "EXAMPLE.com"})
    assert_served_stale(same, fresh)


async def test_a_vary_variant_is_served_only_to_its_own_language(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origins, proxy = await stale_proxy(make_origin, make_proxy)
    target = "/cache/greeting?cc=max-age=60&vary=Accept-Language"
    english = await proxy.client.get(target, headers={"Accept-Language": "en"})
    assert english.status_code == 200
    assert english.headers["vary"] == "Accept-Language"
    assert english.text == "primary:/cache/greeting accept-language=en"
    await all_refuse(origins)

    french = await proxy.client.get(target, headers={"Accept-Language": "fr"})
    assert_not_served_stale(french, "accept-language fr")
    assert_not_served_stale(await proxy.client.get(target), "no accept-language")
    again = await proxy.client.get(target, headers={"Accept-Language": "en"})
    assert_served_stale(again, english)
    assert again.headers["vary"] == "Accept-Language"
