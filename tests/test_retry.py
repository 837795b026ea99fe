"""End-to-end tests of retries, the retry budget, the request deadline, hedging and
stale-if-error: real FaultyOrigin origins behind the real proxy, on loopback.

Unless a test is about active checks or passive detection, both are off, so that every
request meets the origin in the mode the test set (a failing primary stays the one picked).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]

KiB = 1024
MiB = 1024 * KiB
NO_HEALTH = {"enabled": False}
NO_PASSIVE = {"enabled": False}


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def body_of(size: int, seed: int = 7) -> bytes:
    """Bytes that differ from the origins' own pattern, so a mix-up cannot go unnoticed."""
    block = hashlib.sha256(str(seed).encode()).digest() * 64  # 2 KiB
    return (block * (size // len(block) + 1))[:size]


async def stream(data: bytes, chunk: int = 256 * KiB) -> AsyncIterator[bytes]:
    """The body as an async generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def two_origins(
    make_origin: MakeOrigin,
    make_proxy: MakeProxy,
    primary_mode: str = "ok",
    secondary_mode: str = "ok",
    secondary_kw: dict[str, Any] | None = None,
    proxy_kw: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[FaultyOrigin, FaultyOrigin, RunningProxy]:
    primary = await make_origin("primary", mode=primary_mode)
    secondary = await make_origin("secondary", mode=secondary_mode, **(secondary_kw or {}))
    overrides.setdefault("health", NO_HEALTH)
    overrides.setdefault("passive", NO_PASSIVE)
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )
    return primary, secondary, await make_proxy(config, **(proxy_kw or {}))


def last_body(origin: FaultyOrigin) -> tuple[int, str]:
    last = origin.stats.last_request
    assert last is not None
    return last.body_length, last.body_sha256


# -- replaying request bodies -------------------------------------------------------------


async def test_put_body_is_replayed_byte_identical_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(make_origin, make_proxy, "http5xx")
    body = body_of(100 * KiB)
    response = await proxy.client.put("/upload", content=body)
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;503, secondary;200"
    assert "x-failover-not-retried" not in response.headers
    sent = (len(body), hashlib.sha256(body).hexdigest())
    assert last_body(primary) == sent  # the primary read it all before answering 503
    assert last_body(secondary) == sent
    assert response.json()["body_sha256"] == sent[1]


async def test_large_upload_is_not_retried_once_streamed_upstream(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(
        make_origin, make_proxy, "http5xx", retry={"max_buffered_body": MiB}
    )
    body = body_of(10 * MiB)
    response = await proxy.client.put("/upload", content=stream(body))
    assert response.status_code == 503
    assert response.text == "primary: 503 (http5xx mode)"
    assert response.headers["x-failover-not-retried"] == "body-too-large"
    assert response.headers["x-failover-attempts"] == "primary;503"
    assert last_body(primary) == (len(body), hashlib.sha256(body).hexdigest())
    assert secondary.stats.requests == 0


async def test_large_upload_is_retried_when_nothing_was_sent(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(
        make_origin, make_proxy, "refuse", retry={"max_buffered_body": MiB}
    )
    body = body_of(10 * MiB)
    response = await proxy.client.put("/upload", content=stream(body))
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
    assert "x-failover-not-retried" not in response.headers
    assert last_body(secondary) == (len(body), hashlib.sha256(body).hexdigest())


# -- which methods are retried ------------------------------------------------------------


async def test_post_is_retried_after_refusal_but_not_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(make_origin, make_proxy, "refuse")
    response = await proxy.client.post("/upload", content=b"order #1")
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
    assert last_body(secondary) == (8, hashlib.sha256(b"order #1").hexdigest())

    await primary.set_mode("http5xx")
    secondary.reset_stats()
    response = await proxy.client.post("/upload", content=b"order #2")
    assert response.status_code == 503
    assert response.headers["x-failover-attempts"] == "primary;503"
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0

    # An Idempotency-Key alone does not make a POST retryable: the config must say so.
    response = await proxy.client.post(
        "/upload", content=b"order #3", headers={"Idempotency-Key": "k3"}
    )
    assert response.status_code == 503
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0


async def test_post_with_idempotency_key_is_retried_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(
        make_origin, make_proxy, "http5xx", retry={"idempotency_key": True}
    )
    response = await proxy.client.post(
        "/upload", content=b"order #4", headers={"Idempotency-Key": "k4"}
    )
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;503, secondary;200"
    assert last_body(secondary) == (8, hashlib.sha256(b"order #4").hexdigest())
    assert secondary.stats.last_request is not None
    assert ("idempotency-key", "k4") in secondary.stats.last_request.headers

    # Without the key the same POST is still not retried.
    secondary.reset_stats()
    response = await proxy.client.post("/upload", content=b"order #5")
    assert response.status_code == 503
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0


# -- the retry budget ---------------------------------------------------------------------


async def drive(
    client: httpx.AsyncClient, workers: int = 40, seconds: float = 0.8, per_worker: int = 150
) -> list[httpx.Response]:
    """`workers` clients sending GETs back to back for `seconds` (at most `per_worker` each)."""
    responses: list[httpx.Response] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        for _ in range(per_worker):
            if time.monotonic() >= stop_at:
                return
            responses.append(await client.get("/echo"))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 20)
    return responses


async def test_retry_budget_caps_retries_under_load(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(
        make_origin,
        make_proxy,
        "http5xx",
        "slow",
        secondary_kw={"slow_delay": 0.2},
        retry={"budget": 0.2, "min_retries_in_flight": 1},
    )
    responses = await drive(proxy.client)
    total = len(responses)
    outcomes = Counter((r.status_code, r.headers.get("x-failover-not-retried")) for r in responses)
    assert set(outcomes) <= {(200, None), (503, "budget")}, outcomes
    assert outcomes[(503, "budget")] > 0
    # At most 20% of 40 requests in flight retry at once, each for 0.2 s at the secondary.
    assert secondary.stats.requests == outcomes[(200, None)]
    assert 0 < secondary.stats.requests < total / 3, (secondary.stats.requests, total)
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["x-failover-attempts"] == "primary;503"


async def test_generous_retry_budget_retries_every_request(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(
        make_origin,
        make_proxy,
        "http5xx",
        "slow",
        secondary_kw={"slow_delay": 0.2},
        retry={"budget": 1.0, "min_retries_in_flight": 1000},
    )
    responses = await drive(proxy.client)
    assert responses
    assert all(r.status_code == 200 for r in responses)
    assert all(r.headers["x-failover-attempts"] == "primary;503, secondary;200" for r in responses)
    assert secondary.stats.requests == len(responses)


# -- the request deadline -----------------------------------------------------------------


async def test_request_deadline_ends_attempts(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(
        make_origin, make_proxy, "blackhole", timeouts={"first_byte": 2.0, "request": 0.5}
    )
    started = time.monotonic()
    response = await proxy.client.get("/echo")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.45 <= elapsed < 1.5, elapsed  # the deadline, not first_byte
    assert response.headers["x-failover-attempts"] == "primary;timeout"
    assert response.headers["x-failover-not-retried"] == "deadline"
    assert "primary: no response within" in response.text
    assert secondary.stats.requests == 0


# -- hedging ------------------------------------------------------------------------------


async def test_hedged_get_is_answered_by_the_secondary(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(
        make_origin,
        make_proxy,
        "blackhole",
        retry={"hedge_after": 0.2},
        timeouts={"first_byte": 2.0},
    )
    assert primary.stats.open_connections == 0
    started = time.monotonic()
    response = await proxy.client.get("/echo")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["origin"] == "secondary"
    assert 0.2 <= elapsed < 1.0, elapsed  # hedge_after, well under first_byte
    attempts = response.headers["x-failover-attempts"].split(", ")
    assert sorted(attempts) == ["primary;cancelled", "secondary;200"]
    assert primary.stats.requests == 1
    assert secondary.stats.requests == 1
    # The hung attempt was cancelled and its connection closed, long before first_byte.
    await wait_for(lambda: primary.stats.open_connections == 0, timeout=1.0)


async def test_post_is_never_hedged(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    primary, secondary, proxy = await two_origins(
        make_origin,
        make_proxy,
        "blackhole",
        retry={"hedge_after": 0.1},
        timeouts={"first_byte": 0.4},
    )
    response = await proxy.client.post("/echo")
    assert response.status_code == 504
    assert response.headers["x-failover-attempts"] == "primary;timeout"
    assert response.headers["x-failover-not-retried"] == "method"
    assert primary.stats.requests == 1
    assert secondary.stats.requests == 0


# -- stale-if-error -----------------------------------------------------------------------


async def both_down(*origins: FaultyOrigin) -> None:
    for origin in origins:
        await origin.set_mode("refuse")


async def test_stale_copy_is_served_when_every_origin_fails(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins(make_origin, make_proxy, stale={"enabled": True})
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
    primary, secondary, proxy = await two_origins(make_origin, make_proxy, stale={"enabled": True})
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
    primary, secondary, proxy = await two_origins(
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
    primary, secondary, proxy = await two_origins(
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
