"""End-to-end tests of the data path (failover.proxy): real FaultyOrigin origins behind the
real proxy.

Some tests talk to the proxy over a raw socket, so that no client library normalises the
request target, adds headers of its own or hides interim responses and compressed bodies.
Also what clients cannot do to the proxy or to the origins' records (a stalled or oversized
body, a client that leaves), and the access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from failover import h1
from tests.conftest import RawOrigin, RunningProxy, Script, origin_config, proxy_config, wait_for
from tests.helpers import (
    PREFIX,
    MakeOrigin,
    MakeProxy,
    RawResponse,
    answer,
    connect,
    one_origin,
    origin_header,
    origin_record,
    read_head,
    read_response,
    request_head,
    two_origins,
    two_origins_config,
)

MiB = 1024 * 1024
NO_HEALTH = {"enabled": False}

# -- helpers ------------------------------------------------------------------------------


def expected_bytes(start: int, stop: int) -> bytes:
    """The origin's byte pattern (byte i is i % 251) from start up to stop."""
    period = bytes(range(251))
    offset = start % 251
    return (period * ((stop - start) // 251 + 2))[offset : offset + stop - start]


async def raw_request(
    proxy: RunningProxy,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One request over a fresh connection, sent exactly as written (Host is the caller's
    choice: it defaults to the proxy's address)."""
    headers = list(headers or [])
    if not any(name.lower() == "host" for name, _ in headers):
        headers.insert(0, ("Host", f"127.0.0.1:{proxy.port}"))
    if body:
        headers.append(("Content-Length", str(len(body))))
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head(method, target, headers) + body)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), 10)


def seen_headers(echo: dict[str, Any], name: str) -> list[str]:
    """The values of one header as the origin received it, in order."""
    return [value for key, value in echo["headers"] if key.lower() == name.lower()]


def seen_names(echo: dict[str, Any]) -> set[str]:
    return {key.lower() for key, _ in echo["headers"]}


# -- bodies -------------------------------------------------------------------------------


async def test_large_download_arrives_intact(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    size = 4 * MiB + 123
    response = await proxy.client.get(f"/bytes/{size}")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert len(response.content) == size
    expected = hashlib.sha256(expected_bytes(0, size)).hexdigest()
    assert hashlib.sha256(response.content).hexdigest() == expected


async def test_chunked_download_arrives_intact(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    size = 3 * MiB + 7
    response = await proxy.client.get(f"/chunked/{size}")
    assert response.status_code == 200
    assert response.content == expected_bytes(0, size)


async def test_large_upload_arrives_intact(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    body = random.Random(1).randbytes(4 * MiB + 5)  # larger than the replay buffer
    response = await proxy.client.post("/upload", content=body)
    assert response.status_code == 200
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen_headers(echo, "content-length") == [str(len(body))]


async def test_chunked_upload_arrives_intact(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    rng = random.Random(2)
    chunks = [rng.randbytes(rng.randrange(1, 100_000)) for _ in range(40)]

    async def generate() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            await asyncio.sleep(0)

    response = await proxy.client.post("/upload", content=generate())
    assert response.status_code == 200
    echo = response.json()
    body = b"".join(chunks)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


# -- what is kept as sent ---------------------------------------------------------------


async def test_raw_target_is_not_reencoded(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy)
    target = "/echo/a%2Fb/%7Euser?q=a%20b&q=c&x=%ZZ"
    response = await raw_request(proxy, "GET", target, [("Connection", "close")])
    assert response.status == 200
    assert origin.stats.last_request is not None
    assert origin.stats.last_request.path == target


async def test_method_and_repeated_headers_are_kept(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.request(
        "PATCH",
        "/echo",
        headers=[("X-Multi", "first"), ("X-Other", "x"), ("X-Multi", "second")],
        content=b"patch",
    )
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == "PATCH"
    assert seen_headers(echo, "x-multi") == ["first", "second"]
    assert echo["body_length"] == 5


@pytest.mark.parametrize("status", [201, 418, 503])
async def test_status_is_kept(make_origin: MakeOrigin, make_proxy: MakeProxy, status: int) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, retry={"on": ["connect-failure"]})
    response = await proxy.client.get(f"/status/{status}")
    assert response.status_code == status
    assert response.text == f"primary: {status}"
    assert response.headers["x-failover-origin"] == "primary"


# -- hop-by-hop headers -----------------------------------------------------------------


async def test_request_hop_by_hop_headers_are_stripped(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await raw_request(
        proxy,
        "GET",
        "/echo",
        [
            ("Connection", "close, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "example/1"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("X-Secret", "1"),
            ("X-Kept", "yes"),
        ],
    )
    assert response.status == 200
    echo = response.json()
    names = seen_names(echo)
    for hop in ("keep-alive", "te", "upgrade", "proxy-authorization", "x-secret"):
        assert hop not in names
    assert all("x-secret" not in value.lower() for value in seen_headers(echo, "connection"))
    assert seen_headers(echo, "x-kept") == ["yes"]


async def test_response_hop_by_hop_headers_are_stripped(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.get("/headers")
    assert response.status_code == 200
    assert response.text == "primary"
    assert "x-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert "x-hop" not in response.headers.get("connection", "").lower()
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    # The origin closed its connection; the proxy's connection to the client stays usable.
    again = await proxy.client.get("/headers")
    assert again.headers.get_list("set-cookie") == ["a=1", "b=2"]


# -- forwarding headers and Host ----------------------------------------------------------


async def test_forwarding_headers_are_added(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.get(
        "/echo", headers={"X-Forwarded-For": "10.1.2.3", "Host": "www.example.org"}
    )
    echo = response.json()
    assert seen_headers(echo, "x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
    assert seen_headers(echo, "x-forwarded-proto") == ["http"]
    assert seen_headers(echo, "x-forwarded-host") == ["www.example.org"]
    assert seen_headers(echo, "via") == ["1.1 failover"]


async def test_forwarded_for_starts_with_the_client(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    echo = (await proxy.client.get("/echo")).json()
    assert seen_headers(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert seen_headers(echo, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "origin"),
        ({"host_header": "cdn.example.com"}, "cdn.example.com"),
        ({"preserve_host": True}, "www.example.org"),
    ],
    ids=["default", "host_header", "preserve_host"],
)
async def test_host_header_per_origin(
    make_origin: MakeOrigin, make_proxy: MakeProxy, extra: dict[str, Any], expected: str
) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy, origin=extra)
    echo = (await proxy.client.get("/echo", headers={"Host": "www.example.org"})).json()
    if expected == "origin":
        expected = f"127.0.0.1:{origin.port}"
    assert seen_headers(echo, "host") == [expected]


# -- special requests and responses -----------------------------------------------------


async def test_head_keeps_content_length_without_body(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    async with connect(proxy.port) as (reader, writer):
        host = ("Host", f"127.0.0.1:{proxy.port}")
        writer.write(request_head("HEAD", "/bytes/5000", [host]))
        writer.write(request_head("GET", "/bytes/10", [host, ("Connection", "close")]))
        head = await read_response(reader, "HEAD")
        # Had the proxy sent a body after the HEAD answer, this would not parse as a response.
        following = await read_response(reader)
    assert head.status == 200
    assert head.get("content-length") == "5000"
    assert head.get("x-failover-origin") == "primary"
    assert following.status == 200
    assert following.body == expected_bytes(0, 10)


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses(
    make_origin: MakeOrigin, make_proxy: MakeProxy, status: int
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.get(f"/status/{status}")
    assert response.status_code == status
    assert response.content == b""
    again = await proxy.client.get("/bytes/3")
    assert again.content == expected_bytes(0, 3)


async def test_range_request(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await proxy.client.get("/bytes/100000", headers={"Range": "bytes=1000-1999"})
    assert response.status_code == 206
    assert response.headers["content-range"] == "bytes 1000-1999/100000"
    assert response.content == expected_bytes(1000, 2000)


async def test_expect_100_continue(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    body = random.Random(3).randbytes(200_000)
    headers = [
        ("Host", f"127.0.0.1:{proxy.port}"),
        ("Content-Length", str(len(body))),
        ("Expect", "100-continue"),
        ("Connection", "close"),
    ]
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head("POST", "/upload", headers))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        writer.write(body)
        await writer.drain()
        response = await asyncio.wait_for(read_response(reader), 10)
    assert response.status == 200
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "expect" not in seen_names(echo)


async def test_gzip_body_is_forwarded_compressed(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await raw_request(
        proxy, "GET", "/gzip", [("Accept-Encoding", "gzip"), ("Connection", "close")]
    )
    assert response.status == 200
    assert response.get("content-encoding") == "gzip"
    assert response.body == gzip.compress(b"hello " * 100, mtime=0)
    assert response.get("content-length") == str(len(response.body))


async def test_no_headers_added_upstream(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy)
    response = await raw_request(proxy, "GET", "/echo", [("Connection", "close")])
    names = seen_names(response.json())
    for added in ("user-agent", "accept-encoding", "accept", "content-type"):
        assert added not in names


# -- X-Failover-Origin --------------------------------------------------------------------


async def test_origin_header_can_be_turned_off(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, proxy={"origin_header": False})
    response = await proxy.client.get("/echo")
    assert response.status_code == 200
    assert "x-failover-origin" not in response.headers


# -- errors -------------------------------------------------------------------------------


def assert_short_plain_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/plain")
    assert reason in response.text
    assert "Traceback" not in response.text
    assert len(response.content) < 500


async def test_502_when_origin_refuses(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, mode="refuse")
    response = await proxy.client.get("/echo")
    assert_short_plain_error(response, 502, "connection refused")
    assert response.headers["x-failover-attempts"] == "primary;connect-failure"


async def test_502_when_origin_resets(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(make_origin, make_proxy, mode="reset")
    response = await proxy.client.get("/echo")
    assert response.status_code == 502
    assert_short_plain_error(response, 502, "primary: ")
    assert any(word in response.text for word in ("reset", "closed the connection"))
    assert response.headers["x-failover-attempts"] == "primary;reset"


async def test_504_when_origin_hangs(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    _, proxy = await one_origin(
        make_origin, make_proxy, mode="blackhole", timeouts={"first_byte": 0.5}
    )
    response = await proxy.client.get("/echo")
    assert_short_plain_error(response, 504, "no response within 0.5 s")
    assert response.headers["x-failover-attempts"] == "primary;timeout"


# -- failover -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("refuse", "connect-failure"), ("reset", "reset"), ("blackhole", "timeout")],
)
async def test_get_fails_over_to_secondary(
    make_origin: MakeOrigin, make_proxy: MakeProxy, mode: str, kind: str
) -> None:
    # Active checks are off so that the request itself meets the failing primary.
    _, secondary, proxy = await two_origins(
        make_origin, make_proxy, mode, health=NO_HEALTH, timeouts={"first_byte": 0.5}
    )
    response = await proxy.client.get("/echo")
    assert response.status_code == 200
    assert response.json()["origin"] == "secondary"
    assert response.headers["x-failover-origin"] == "secondary"
    assert response.headers["x-failover-attempts"] == f"primary;{kind}, secondary;200"
    assert secondary.stats.requests == 1


async def test_post_is_not_retried_after_reset(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(make_origin, make_proxy, "reset", health=NO_HEALTH)
    response = await proxy.client.post("/upload", content=b"order #1")
    assert response.status_code == 502
    assert response.headers["x-failover-attempts"] == "primary;reset"
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0


async def test_post_is_retried_after_refusal(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins(make_origin, make_proxy, "refuse", health=NO_HEALTH)
    response = await proxy.client.post("/upload", content=b"order #1")
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
    echo = response.json()
    assert echo["origin"] == "secondary"
    assert echo["body_sha256"] == hashlib.sha256(b"order #1").hexdigest()
    assert secondary.stats.requests == 1


# -- abandoned downloads ------------------------------------------------------------------


async def test_abandoned_downloads_close_upstream_responses(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy, health=NO_HEALTH)
    head = request_head("GET", "/bytes/10485760", [("Host", f"127.0.0.1:{proxy.port}")])
    slots = asyncio.Semaphore(50)

    async def abandon() -> None:
        async with slots:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                writer.write(head)
                status, _ = await read_head(reader)
                assert status == 200
                await reader.readexactly(4096)
            finally:
                writer.transport.abort()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    await asyncio.wait_for(asyncio.gather(*(abandon() for _ in range(1000))), 20)
    pool: Any = proxy.app.engine.by_name["primary"].pool

    def settled() -> bool:
        if isinstance(pool, h1.Pool):
            return pool.in_use == 0 and origin.stats.open_connections <= pool.idle
        # aiohttp keeps no public count of the connections it has handed out; `_acquired` is
        # the set of connections in use and `_conns` the idle keep-alive pool.
        connector = pool.connector
        idle = sum(len(conns) for conns in connector._conns.values())
        return not connector._acquired and origin.stats.open_connections <= idle

    await wait_for(settled, timeout=10)
    assert origin.stats.requests == 1000


# -- the client never picks the upstream ------------------------------------------------


async def test_absolute_form_target_reaches_configured_origin(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin, proxy = await one_origin(make_origin, make_proxy)
    response = await raw_request(
        proxy,
        "GET",
        "http://evil.example/echo",
        [("Host", "evil.example"), ("Connection", "close")],
    )
    assert response.status == 200
    echo = response.json()
    assert echo["origin"] == "primary"
    assert echo["path"] == "/echo"
    assert seen_headers(echo, "host") == [f"127.0.0.1:{origin.port}"]


# -- the client's body is read before an origin is involved ---------------------------------


async def test_a_client_that_stalls_its_body_holds_no_upstream_connection(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin = await make_origin("primary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin, 0),
            proxy={"max_connections_per_origin": 2},
            limits={"body_timeout": 0.6},
            passive={"consecutive_failures": 1},
        )
    )
    stalled = []
    for _ in range(10):  # five times the pool's size
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        head = request_head("POST", "/echo", [("Host", "site.example"), ("Content-Length", "1000")])
        writer.write(head + b"x")
        stalled.append((reader, writer))
    try:
        for _ in range(5):  # meanwhile, a normal client is served at once
            response = await asyncio.wait_for(proxy.client.get("/bytes/10"), 1.0)
            assert response.status_code == 200
        assert origin.stats.requests == 5  # the stalled POSTs never reached the origin
        for reader, _ in stalled:
            refusal = await asyncio.wait_for(read_response(reader), 5)
            assert refusal.status == 408
            assert b"limits.body_timeout" in refusal.body
            assert refusal.get("connection") == "close"
    finally:
        for _, writer in stalled:
            writer.close()
    assert origin.stats.requests == 5
    assert origin_record(proxy, "primary")["state"] == "healthy"


async def test_a_body_larger_than_max_body_bytes_is_413_before_anything_goes_upstream(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    origin = await make_origin("primary")
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin, 0), limits={"max_body_bytes": 1000})
    )
    declared = await proxy.client.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413
    assert "1001 bytes is over 1000" in declared.text

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 600

    streamed = await proxy.client.post("/echo", content=chunked())
    assert streamed.status_code == 413
    assert "over 1000 bytes" in streamed.text
    assert origin.stats.requests == 0
    fits = await proxy.client.post("/echo", content=b"z" * 1000)
    assert fits.status_code == 200
    assert origin.stats.requests == 1


# -- a client that leaves -------------------------------------------------------------------


async def test_a_client_that_leaves_before_the_response_cancels_the_attempt(
    make_origin: MakeOrigin, make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    primary = await make_origin("primary", mode="blackhole")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", primary, 0, health=NO_HEALTH),
            origin_config("secondary", secondary, 1, health=NO_HEALTH),
            timeouts={"first_byte": 3.0},
            passive={"consecutive_failures": 1},
            log={"access": True},
        )
    )
    caplog.set_level(logging.INFO, logger="failover.access")
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request_head("GET", "/gone", [("Host", "site.example")]))
        await wait_for(lambda: primary.stats.open_connections > 0, timeout=2)
        writer.close()
        # The attempt is cancelled at once: the origin's connection closes long before
        # first_byte (3 s) would have ended it.
        await wait_for(lambda: primary.stats.open_connections == 0, timeout=1.5)
    assert secondary.stats.requests == 0  # nothing was retried elsewhere
    record = origin_record(proxy, "primary")
    assert record["state"] == "healthy"  # nothing was counted against the origin

    def statuses() -> list[int]:
        access = [r for r in caplog.records if r.name == "failover.access"]
        return [json.loads(r.getMessage())["status"] for r in access]

    await wait_for(lambda: len(statuses()) == 3, timeout=2)
    assert statuses() == [499, 499, 499]
    metrics = (await proxy.client.get("/_failover/metrics")).text
    assert 'failover_requests_total{code="499",origin="-",pool="default"} 3.0' in metrics


# -- responses that cannot hurt clients -----------------------------------------------------


async def test_204_with_content_length_reaches_the_client_without_it_and_the_connection_lives(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 204 No Content", b"Content-Length: 7\r\n"))
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0, health=NO_HEALTH))
    )
    async with connect(proxy.port) as (reader, writer):
        for _ in range(2):  # the same client connection serves both
            writer.write(request_head("GET", "/", [("Host", "site.example")]))
            await writer.drain()
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.status == 204
            assert response.get("content-length") is None


async def test_a_head_response_with_content_length_passes_it_on_without_a_body(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK", b"Content-Length: 1234\r\n"))
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0, health=NO_HEALTH))
    )
    async with connect(proxy.port) as (reader, writer):
        for _ in range(2):
            writer.write(request_head("HEAD", "/", [("Host", "site.example")]))
            await writer.drain()
            response = await asyncio.wait_for(read_response(reader, "HEAD"), 5)
            assert (response.status, response.get("content-length")) == (200, "1234")


# --- access log ------------------------------------------------------------------------------


ACCESS_FIELDS = {
    "time",
    "client",
    "pool",
    "method",
    "path",
    "status",
    "origin",
    "attempts",
    "duration_ms",
    "bytes_in",
    "bytes_out",
}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "failover.access"]


async def test_the_access_log_has_one_json_line_per_request(
    make_origin: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.access")
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins_config(primary, secondary, log={"access": True}))
    started = time.time()
    assert (await proxy.client.get("/bytes/1000?x=1")).status_code == 200
    upload = await proxy.client.post("/upload", content=b"a" * 300)
    assert upload.status_code == 200
    assert (await proxy.client.get(f"{PREFIX}/status")).status_code == 200

    await wait_for(lambda: len(access_lines(caplog)) >= 2, timeout=2)
    lines = access_lines(caplog)
    assert len(lines) == 2  # admin requests are not proxied and not logged here
    download, posted = lines
    for line in lines:
        assert set(line) == ACCESS_FIELDS
        assert line["client"] == "127.0.0.1"
        assert line["status"] == 200
        assert line["origin"] == "primary"
        assert started - 1 <= line["time"] <= time.time() + 1
        assert line["duration_ms"] >= 0
    assert (download["method"], download["path"]) == ("GET", "/bytes/1000?x=1")
    assert (download["bytes_in"], download["bytes_out"]) == (0, 1000)
    assert (posted["method"], posted["path"]) == ("POST", "/upload")
    assert posted["bytes_in"] == 300
    assert posted["bytes_out"] == len(upload.content)
    assert "primary" in str(download["attempts"])


async def test_no_access_log_unless_asked(
    make_origin: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.access")
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins_config(primary, secondary))
    for _ in range(3):
        assert await origin_header(proxy) == "primary"
    assert access_lines(caplog) == []
