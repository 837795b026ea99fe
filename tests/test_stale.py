"""Stale-if-error (failover.stale).

Unit tests of StaleCache: no network, time is a number the tests pass in.

End to end: real FaultyOrigin origins behind the real proxy, on loopback, send the caching
headers (`/cache/...?cc=&cookie=&vary=`); then every origin fails, and what the proxy answers
shows what it kept. The copies are a shared cache (RFC 9111 section 3.5): a response meant
for one client is never served stale to another.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from failover.config import StaleConfig
from failover.faulty import FaultyOrigin
from failover.stale import Key, StaleCache
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import (
    NO_PASSIVE,
    FakeClock,
    KiB,
    MakeOrigin,
    MakeProxy,
    MiB,
    two_origins_without_checks,
)

Headers = list[tuple[bytes, bytes]]
T0 = 1000.0
KEY = StaleCache.key("http", "example.com", "/page")
AUTHORIZED: Headers = [(b"authorization", b"Bearer alice")]


# -- StaleCache ---------------------------------------------------------------------------


def cache(**config: Any) -> StaleCache:
    return StaleCache(StaleConfig(enabled=True, **config))


def response_headers(cache_control: str | None = None, *extra: tuple[bytes, bytes]) -> Headers:
    headers: Headers = [(b"content-type", b"text/plain")]
    if cache_control is not None:
        headers.append((b"cache-control", cache_control.encode()))
    headers.extend(extra)
    return headers


def store(
    stale: StaleCache,
    body: bytes,
    *,
    key: Key = KEY,
    headers: Headers | None = None,
    request: Headers | None = None,
    now: float = T0,
) -> bool:
    """Pass one response through the cache as the proxy does; say whether it was kept."""
    tee = stale.begin(key, request or [], headers or response_headers(), b"cdn-a")
    if tee is None:
        return False
    for start in range(0, len(body), 1000):
        if not tee.add(body[start : start + 1000]):
            return False
    stale.finish(tee, now)
    return True


def test_stored_copy_is_served_with_its_headers_and_body() -> None:
    stale = cache()
    headers = response_headers("max-age=60", (b"etag", b'"v1"'), (b"age", b"3"))
    assert store(stale, b"hello" * 1000, headers=headers)
    entry = stale.lookup(KEY, [], T0 + 5)
    assert entry is not None
    assert entry.body == b"hello" * 1000
    assert entry.stored_at == T0
    assert entry.origin == b"cdn-a"
    # The origin's Age is dropped: the proxy sends an Age of its own.
    assert entry.headers == response_headers("max-age=60", (b"etag", b'"v1"'))
    assert stale.lookup(StaleCache.key("http", "example.com", "/other"), [], T0 + 5) is None


def test_per_response_headers_are_not_stored() -> None:
    stale = cache()
    headers = response_headers(
        None, (b"x-failover-origin", b"cdn-a"), (b"x-failover-attempts", b"cdn-a;200")
    )
    assert store(stale, b"x", headers=headers)
    entry = stale.lookup(KEY, [], T0)
    assert entry is not None
    assert entry.headers == response_headers()


@pytest.mark.parametrize(
    "cache_control",
    [
        "no-store",
        "private",
        'private="set-cookie"',
        "max-age=60, No-Store",
        "no-cache",
        "public, max-age=60, no-cache",
    ],
)
def test_no_store_private_and_no_cache_are_never_stored(cache_control: str) -> None:
    stale = cache()
    assert not store(stale, b"secret", headers=response_headers(cache_control))
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0


@pytest.mark.parametrize("vary", [b"*", b"Accept-Language, *"])
def test_vary_star_is_never_stored(vary: bytes) -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers("public", (b"vary", vary)))
    assert stale.lookup(KEY, [], T0) is None


@pytest.mark.parametrize("cache_control", [None, "public, max-age=60"])
def test_a_response_that_sets_a_cookie_is_never_stored(cache_control: str | None) -> None:
    stale = cache()
    headers = response_headers(cache_control, (b"set-cookie", b"session=alice"))
    assert not store(stale, b"alice's page", headers=headers)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0


@pytest.mark.parametrize("cache_control", [None, "max-age=60", "max-age=60, stale-if-error=60"])
def test_a_response_to_a_request_with_authorization_is_not_stored(
    cache_control: str | None,
) -> None:
    stale = cache()
    headers = response_headers(cache_control)
    assert not store(stale, b"alice's page", headers=headers, request=AUTHORIZED)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.lookup(KEY, AUTHORIZED, T0) is None
    # The control: the same response to a request without Authorization is kept.
    assert store(stale, b"anyone's page", headers=headers)


@pytest.mark.parametrize(
    "cache_control", ["public", "Public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"]
)
def test_authorization_is_stored_when_the_response_says_it_is_shared(cache_control: str) -> None:
    stale = cache()
    headers = response_headers(cache_control)
    assert store(stale, b"shared", headers=headers, request=AUTHORIZED)
    entry = stale.lookup(KEY, [], T0 + 30)  # served to a client without Authorization too
    assert entry is not None
    assert entry.body == b"shared"


@pytest.mark.parametrize(
    "cache_control",
    ["max-age=60, must-revalidate", "max-age=60, proxy-revalidate", "max-age=5, s-maxage=60"],
)
def test_a_response_that_forbids_serving_it_stale_is_served_only_while_fresh(
    cache_control: str,
) -> None:
    stale = cache(max_age=3600)
    assert store(stale, b"x", headers=response_headers(cache_control))
    assert stale.lookup(KEY, [], T0 + 60) is not None
    assert stale.lookup(KEY, [], T0 + 60.5) is None


@pytest.mark.parametrize("cache_control", ["must-revalidate", "proxy-revalidate, max-age=0"])
def test_a_response_that_must_be_revalidated_at_once_is_not_stored(cache_control: str) -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers(cache_control))


def test_stale_if_error_overrides_must_revalidate() -> None:
    stale = cache(max_age=3600)
    headers = response_headers("max-age=60, must-revalidate, stale-if-error=30")
    assert store(stale, b"x", headers=headers)
    assert stale.lookup(KEY, [], T0 + 90) is not None
    assert stale.lookup(KEY, [], T0 + 90.5) is None


def test_the_key_compares_host_without_case_and_keeps_its_parts_apart() -> None:
    key = StaleCache.key
    assert key("http", "Example.COM", "/x") == key("http", "example.com", "/x")
    assert key("http", None, "/x") == key("http", "", "/x")
    stale = cache()
    assert store(stale, b"example.com/x/y", key=key("http", "example.com", "/x/y"))
    assert stale.lookup(key("http", "EXAMPLE.com", "/x/y"), [], T0) is not None
    # Host "example.com/x" with target "/y" is another resource, as is another scheme.
    assert stale.lookup(key("http", "example.com/x", "/y"), [], T0) is None
    assert stale.lookup(key("https", "example.com", "/x/y"), [], T0) is None
    assert stale.lookup(key("http", "example.com:80", "/x/y"), [], T0) is None


def test_without_stale_if_error_a_copy_lasts_max_age() -> None:
    stale = cache(max_age=10)
    assert store(stale, b"x", headers=response_headers("max-age=60"))
    assert stale.lookup(KEY, [], T0 + 10) is not None
    assert stale.lookup(KEY, [], T0 + 10.5) is None


def test_stale_if_error_window_follows_freshness() -> None:
    stale = cache(max_age=3600)
    assert store(stale, b"x", headers=response_headers("max-age=60, stale-if-error=30"))
    assert stale.lookup(KEY, [], T0 + 90) is not None
    assert stale.lookup(KEY, [], T0 + 90.5) is None


def test_s_maxage_wins_over_max_age() -> None:
    stale = cache(max_age=3600)
    headers = response_headers("max-age=10, s-maxage=100, stale-if-error=20")
    assert store(stale, b"x", headers=headers)
    assert stale.lookup(KEY, [], T0 + 120) is not None
    assert stale.lookup(KEY, [], T0 + 120.5) is None


def test_max_age_caps_the_stale_if_error_window() -> None:
    stale = cache(max_age=50)
    assert store(stale, b"x", headers=response_headers("max-age=60, stale-if-error=600"))
    assert stale.lookup(KEY, [], T0 + 50) is not None
    assert stale.lookup(KEY, [], T0 + 50.5) is None


def test_a_zero_window_is_not_stored() -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers("max-age=0, stale-if-error=0"))


def test_vary_selects_the_variant() -> None:
    stale = cache()
    headers = response_headers("max-age=60", (b"vary", b"Accept-Language"))
    assert store(stale, b"hello", headers=headers, request=[(b"accept-language", b"en")])
    english = stale.lookup(KEY, [(b"accept-language", b"en")], T0)
    assert english is not None
    assert english.body == b"hello"
    assert stale.lookup(KEY, [(b"accept-language", b"fr")], T0) is None
    assert stale.lookup(KEY, [], T0) is None

    assert store(stale, b"bonjour", headers=headers, request=[(b"accept-language", b"fr")])
    french = stale.lookup(KEY, [(b"accept-language", b"fr")], T0)
    assert french is not None
    assert french.body == b"bonjour"
    english = stale.lookup(KEY, [(b"accept-language", b"en")], T0)
    assert english is not None
    assert english.body == b"hello"
    assert stale.size == len(b"hello") + len(b"bonjour")


def test_vary_on_an_absent_request_header_matches_only_its_absence() -> None:
    stale = cache()
    headers = response_headers(None, (b"vary", b"accept-encoding, Accept-Language"))
    assert store(stale, b"plain", headers=headers)
    assert stale.lookup(KEY, [(b"user-agent", b"x")], T0) is not None
    assert stale.lookup(KEY, [(b"accept-encoding", b"gzip")], T0) is None


def test_vary_compares_repeated_request_fields_as_one_list() -> None:
    stale = cache()
    headers = response_headers(None, (b"vary", b"Accept-Language"))
    sent = [(b"accept-language", b"fr"), (b"accept-language", b"en")]
    assert store(stale, b"x", headers=headers, request=sent)
    assert stale.lookup(KEY, sent, T0) is not None
    assert stale.lookup(KEY, [(b"accept-language", b"fr, en")], T0) is not None
    assert stale.lookup(KEY, [(b"accept-language", b"en")], T0) is None
    assert stale.lookup(KEY, [(b"accept-language", b"fr")], T0) is None


def test_a_new_copy_replaces_the_old_one() -> None:
    stale = cache()
    assert store(stale, b"old" * 10)
    assert store(stale, b"new", now=T0 + 1)
    entry = stale.lookup(KEY, [], T0 + 1)
    assert entry is not None
    assert entry.body == b"new"
    assert entry.stored_at == T0 + 1
    assert stale.size == 3


def test_response_over_max_object_bytes_is_not_kept() -> None:
    stale = cache(max_object_bytes=4000)
    assert not store(stale, b"x" * 4001)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0
    assert store(stale, b"x" * 4000)
    assert stale.size == 4000


def test_least_recently_used_copies_are_evicted_past_max_bytes() -> None:
    stale = cache(max_bytes=3000, max_object_bytes=3000)
    a, b, c, d = (StaleCache.key("http", "example.com", f"/{name}") for name in "abcd")
    for key in (a, b, c):
        assert store(stale, b"x" * 1000, key=key)
    assert stale.lookup(a, [], T0) is not None  # "a" is now the most recently used
    assert store(stale, b"y" * 1000, key=d)
    assert stale.lookup(b, [], T0) is None
    assert [k for k in (a, c, d) if stale.lookup(k, [], T0) is not None] == [a, c, d]
    assert stale.size == 3000


# -- end to end: a shared cache never serves one client's response to another ------------


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


# -- end to end: when every origin fails, the copy is served ------------------------------


async def both_down(*origins: FaultyOrigin) -> None:
    for origin in origins:
        await origin.set_mode("refuse")


async def test_stale_copy_is_served_when_every_origin_fails(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, stale={"enabled": True}
    )
    fresh = await proxy.client.get("/cache/x?cc=max-age=60")
    assert fresh.status_code == 200
    assert fresh.text == "primary:/cache/x"
    assert "x-failover-stale" not in fresh.headers
    await both_down(primary, secondary)

    response = await proxy.client.get("/cache/x?cc=max-age=60")
    assert response.status_code == 200
    assert response.content == fresh.content
    assert response.headers["x-failover-stale"] == "1"
    assert int(response.headers["age"]) >= 0
    assert response.headers["cache-control"] == "max-age=60"
    assert response.headers["x-failover-origin"] == "primary"
    assert (
        response.headers["x-failover-attempts"]
        == "primary;connect-failure, secondary;connect-failure"
    )
    # Another URL was never stored: the failure shows.
    missing = await proxy.client.get("/cache/other?cc=max-age=60")
    assert missing.status_code == 502
    assert "x-failover-stale" not in missing.headers


async def test_no_store_and_private_are_never_served_stale(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, stale={"enabled": True}
    )
    targets = ["/cache/y?cc=no-store", "/cache/z?cc=private", "/cache/w?cc=max-age=60"]
    for target in targets:
        assert (await proxy.client.get(target)).status_code == 200
    await both_down(primary, secondary)
    for target in targets[:2]:
        response = await proxy.client.get(target)
        assert response.status_code == 502, target
        assert "x-failover-stale" not in response.headers
    # The control: a cacheable response of the same kind is served stale.
    assert (await proxy.client.get(targets[2])).headers["x-failover-stale"] == "1"


async def test_stale_copy_expires_after_max_age(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    clock = FakeClock()
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin,
        make_proxy,
        stale={"enabled": True, "max_age": 10},
        proxy_kw={"clock": clock},
    )
    assert (await proxy.client.get("/cache/x?cc=max-age=60")).status_code == 200
    await both_down(primary, secondary)
    clock.advance(5)
    response = await proxy.client.get("/cache/x?cc=max-age=60")
    assert response.status_code == 200
    assert response.headers["x-failover-stale"] == "1"
    assert response.headers["age"] == "5"
    clock.advance(6)
    response = await proxy.client.get("/cache/x?cc=max-age=60")
    assert response.status_code == 502
    assert "x-failover-stale" not in response.headers


async def test_all_down_stale_answers_from_the_cache_without_an_attempt(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        passive=NO_PASSIVE,
        stale={"enabled": True},
        all_down="stale",
    )
    proxy = await make_proxy(config)
    fresh = await proxy.client.get("/cache/x?cc=max-age=60")
    assert fresh.status_code == 200
    await both_down(primary, secondary)

    async def unready() -> bool:
        return (await proxy.client.get("/_failover/readyz")).status_code == 503

    await wait_for(unready, timeout=5)
    response = await proxy.client.get("/cache/x?cc=max-age=60")
    assert response.status_code == 200
    assert response.content == fresh.content
    assert response.headers["x-failover-stale"] == "1"
    assert response.headers.get("x-failover-attempts", "") == ""
    # Nothing stored: with every origin down the proxy still tries them all.
    missing = await proxy.client.get("/cache/other")
    assert missing.status_code == 502
    assert (
        missing.headers["x-failover-attempts"]
        == "primary;connect-failure, secondary;connect-failure"
    )


async def test_response_over_max_object_bytes_is_not_stored(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, stale={"enabled": True, "max_object_bytes": 64 * KiB}
    )
    large = await proxy.client.get("/bytes/1048576")
    assert large.status_code == 200
    assert len(large.content) == MiB
    assert large.content == bytes(i % 251 for i in range(MiB))
    small = await proxy.client.get("/bytes/1000")
    assert small.status_code == 200
    await both_down(primary, secondary)
    assert (await proxy.client.get("/bytes/1048576")).status_code == 502
    stale = await proxy.client.get("/bytes/1000")
    assert stale.status_code == 200
    assert stale.headers["x-failover-stale"] == "1"
    assert stale.content == small.content
