"""What clients and broken origins cannot do to the proxy or to the origins' records.

End to end on loopback: the real proxy, FaultyOrigin or raw-socket origins that misbehave at
the byte level, and raw-socket clients where a library would hide the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from failover.admin import pool_status
from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.test_proxy import connect, read_response, request_head

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawOrigin"], Awaitable[None]]

NO_HEALTH = {"enabled": False}


@dataclass
class RawOrigin:
    """An origin that runs `script` on each connection: it decides every byte."""

    script: Script
    port: int = 0
    connections: int = 0
    open: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head (the body is read by the script if it wants it)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


@pytest.fixture
async def raw_origin() -> AsyncIterator[Callable[[Script], Awaitable[RawOrigin]]]:
    started: list[RawOrigin] = []

    async def make(script: Script) -> RawOrigin:
        origin = RawOrigin(script)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


def answer(status_line: bytes, headers: bytes = b"", body: bytes = b"") -> Script:
    """A script that answers every request on the connection with the same bytes."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        while True:
            await origin.read_request(reader)
            writer.write(status_line + b"\r\n" + headers + b"\r\n" + body)
            await writer.drain()

    return script


async def get(proxy: RunningProxy, target: str = "/", method: str = "GET") -> Any:
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head(method, target, [("Host", "site.example")]))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), 10)


def origin_record(proxy: RunningProxy, name: str) -> dict[str, Any]:
    status: dict[str, Any] = pool_status(proxy.app.runtime.pools["default"])
    for origin in status["origins"]:
        if origin["name"] == name:
            return origin
    raise AssertionError(f"no origin {name!r} in status")


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
            response = await asyncio.wait_for(read_response(reader), 5)
            assert response.status == 408
            assert b"limits.body_timeout" in response.body
            assert response.get("connection") == "close"
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


# -- an origin that stops reading an upload ----------------------------------------------------


async def test_an_origin_that_stops_reading_an_upload_times_out_on_send(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    async def never_reads(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        await origin.read_request(reader)
        await asyncio.sleep(30)  # reads nothing more: the socket buffers fill up

    origin = await raw_origin(never_reads)
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin.url, 0, health=NO_HEALTH),
            timeouts={"send": 0.5, "first_byte": 30},
            retry={"max_buffered_body": 1024},
        )
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await proxy.client.put("/upload", content=b"u" * (32 * 1024 * 1024))
    elapsed = loop.time() - started
    assert response.status_code == 504
    assert "took no request bytes for 0.5 s" in response.text
    assert response.headers["x-failover-attempts"] == "primary;timeout"
    assert elapsed < 10


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


# -- a pooled connection the origin closed while idle -----------------------------------------


async def test_a_request_with_a_body_is_resent_when_the_pooled_connection_was_closed(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]],
    make_origin: MakeOrigin,
    make_proxy: MakeProxy,
) -> None:
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        # Answers with keep-alive, then closes the idle connection after 0.1 s, as origins
        # with a short keep-alive timeout do.
        head = await origin.read_request(reader)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.1)

    primary = await raw_origin(one_per_connection)
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", primary.url, 0, health=NO_HEALTH),
            origin_config("secondary", secondary, 1, health=NO_HEALTH),
        )
    )
    for method in ("GET", "PUT", "POST"):
        response = await proxy.client.request(method, "/x", content=b"b" * 100)
        assert response.status_code == 200, method
        assert response.headers["x-failover-origin"] == "primary"
        await wait_for(lambda: primary.open == 0, timeout=2)  # the origin closed it
    assert primary.connections == 3
    assert secondary.stats.requests == 0
    record = origin_record(proxy, "primary")
    assert record["state"] == "healthy"
    metrics = (await proxy.client.get("/_failover/metrics")).text
    assert (
        'failover_upstream_attempts_total{origin="primary",pool="default",result="reset"}'
        not in metrics
    )


# -- responses that cannot hurt clients -----------------------------------------------------


@pytest.mark.parametrize("status", [b"999 Odd", b"600 Beyond", b"000 Zero", b"099 Low"])
async def test_a_status_outside_100_599_is_502_invalid_status_at_once(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy, status: bytes
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 " + status, b"Content-Length: 0\r\n"))
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin.url, 0, health=NO_HEALTH),
            timeouts={"first_byte": 5},
        )
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await get(proxy)
    assert response.status == 502
    assert f"invalid status {status[:3].decode()}".encode() in response.body
    assert loop.time() - started < 2  # not a wait for first_byte
    assert origin_record(proxy, "primary")["passive"]["consecutive_failures"] == 1


async def test_interim_responses_are_skipped_and_the_final_one_relayed(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
    origin = await raw_origin(
        answer(interim + b"HTTP/1.1 200 OK", b"Content-Length: 5\r\n", b"final")
    )
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0, health=NO_HEALTH))
    )
    response = await get(proxy)
    assert (response.status, response.body) == (200, b"final")
    assert response.get("link") is None


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


@pytest.mark.parametrize("size", [70 * 1024, 200 * 1024])
async def test_an_oversized_response_head_is_refused_however_it_arrives(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy, size: int
) -> None:
    big = b"X-Big: " + b"a" * size + b"\r\n"
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK", big + b"Content-Length: 2\r\n", b"ok"))
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0, health=NO_HEALTH))
    )
    response = await get(proxy)
    assert response.status == 502
    assert b"response headers longer than 65536 bytes" in response.body
