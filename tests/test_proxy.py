"""End-to-end tests of the data path: real FaultyOrigin origins behind the real proxy.

Some tests talk to the proxy over a raw socket, so that no client library normalises the
request target, adds headers of its own or hides interim responses and compressed bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from failover import h1
from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]

MiB = 1024 * 1024
NO_HEALTH = {"enabled": False}

# -- helpers ------------------------------------------------------------------------------


def expected_bytes(start: int, stop: int) -> bytes:
    """The origin's byte pattern (byte i is i % 251) from start up to stop."""
    period = bytes(range(251))
    offset = start % 251
    return (period * ((stop - start) // 251 + 2))[offset : offset + stop - start]


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get_list(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.get_list(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return int(status_line.split(" ")[1]), headers


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> RawResponse:
    status, headers = await read_head(reader)
    response = RawResponse(status, headers, b"")
    length = response.get("content-length")
    if method == "HEAD" or status in (204, 304):
        return response
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif (response.get("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers
        response.body = b"".join(parts)
    else:
        response.body = await reader.read()
    return response


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


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


async def one_origin(
    make_origin: MakeOrigin, make_proxy: MakeProxy, mode: str = "ok", **overrides: Any
) -> tuple[FaultyOrigin, RunningProxy]:
    origin = await make_origin("primary", mode=mode)
    extra = overrides.pop("origin", {})
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin, 0, **extra), **overrides)
    )
    return origin, proxy


async def two_origins(
    make_origin: MakeOrigin, make_proxy: MakeProxy, primary_mode: str = "ok", **overrides: Any
) -> tuple[FaultyOrigin, FaultyOrigin, RunningProxy]:
    primary = await make_origin("primary", mode=primary_mode)
    secondary = await make_origin("secondary")
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )
    return primary, secondary, await make_proxy(config)


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
