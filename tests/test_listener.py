"""The listener's limits as a client meets them: raw sockets against the real proxy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import re
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from uvicorn.server import ServerState

from failover.config import LimitsConfig
from failover.faulty import FaultyOrigin
from failover.listener import HttpProtocolFactory, connection_limit, prepare_open_files
from failover.origins import Flag
from tests.conftest import RunningProxy, free_port, origin_config, proxy_config, wait_for
from tests.helpers import connect, serving_config, started

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]


async def proxy_with(make_origin: MakeOrigin, make_proxy: MakeProxy, **limits: Any) -> RunningProxy:
    origin = await make_origin("primary")
    return await make_proxy(proxy_config(origin_config("primary", origin, 0), limits=limits))


def head(target: str = "/echo", *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length body: status, headers (lower-cased names), body."""
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split(" ")[1]), headers, body


async def read_to_end(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything until the proxy closes the connection (a reset counts as a close)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    return b"".join(chunks)


async def refused(port: int, request: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send `request` on a fresh connection; the response, and what came after it before
    the proxy closed the connection (nothing, if it closed)."""
    async with connect(port) as (reader, writer):
        writer.write(request)
        with contextlib.suppress(ConnectionResetError):
            await writer.drain()
        status, headers, body = await read_response(reader)
        rest = await read_to_end(reader)
        return status, headers, body, rest


# -- the head: size and count ---------------------------------------------------------------


async def test_a_head_larger_than_max_header_bytes_gets_431_and_a_close(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy)  # the default, 64 KiB
    big = head("/echo", "Host: a", "X-Big: " + "a" * 70 * 1024)
    status, headers, body, rest = await refused(proxy.port, big)
    assert status == 431
    assert headers["connection"] == "close"
    assert body == b"The request line and headers exceed 65536 bytes.\n"
    assert rest == b""
    assert (await proxy.client.get("/echo")).status_code == 200


async def test_a_client_still_sending_a_large_head_reads_the_431_not_a_reset(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    # The proxy refuses after 64 KiB while the client is still sending: it lingers (drops
    # what follows for a moment) so that the client reads the answer, as nginx does.
    proxy = await proxy_with(make_origin, make_proxy)
    for _ in range(5):
        big = head("/echo", "Host: a", "X-Big: " + "a" * 8 * 1024 * 1024)
        status, headers, _, rest = await refused(proxy.port, big)
        assert (status, headers["connection"], rest) == (431, "close", b"")


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.eof = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name)


class RecordingParser:
    """Stands in front of httptools' parser and counts what reaches it."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def test_a_32_mib_header_reaches_the_parser_only_up_to_the_budget() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the request must not reach the app")

    config = uvicorn.Config(app=app, lifespan="off", log_config=None)
    factory = HttpProtocolFactory(LimitsConfig())
    protocol = factory(config, ServerState(), {}, asyncio.get_running_loop())
    transport = RecordingTransport()
    protocol.connection_made(transport)
    parser = RecordingParser(protocol.parser)
    protocol.parser = parser  # type: ignore[assignment]
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    chunk = b"a" * 256 * 1024
    for _ in range(128):  # 32 MiB in 256 KiB reads, as the event loop hands them over
        if transport.closed:
            break
        protocol.data_received(chunk)
    assert transport.eof  # answered and half-closed; the rest was read and dropped
    assert parser.fed == 64 * 1024
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    protocol.connection_lost(None)


async def test_more_than_max_headers_gets_431_and_a_close(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy)  # the default, 100
    many = [f"X-H{i}: {i}" for i in range(100)]
    status, headers, body, rest = await refused(proxy.port, head("/echo", "Host: a", *many))
    assert (status, headers["connection"], rest) == (431, "close", b"")
    assert body == b"More than 100 header fields.\n"

    async with connect(proxy.port) as (reader, writer):  # 100 in all is fine
        writer.write(head("/echo", "Host: a", *many[:99]))
        status, _, body = await read_response(reader)
        assert status == 200
        assert len(json.loads(body)["headers"]) > 99


async def test_a_head_within_budget_with_its_body_in_the_same_read_is_served(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, max_header_bytes=4096)
    body = b"x" * 200_000
    request = head(
        "/upload", "Host: a", "X-Pad: " + "p" * 3000, f"Content-Length: {len(body)}", method="POST"
    )
    async with connect(proxy.port) as (reader, writer):
        writer.write(request + body + head("/echo", "Host: a"))  # and a pipelined request
        status, _, answer = await read_response(reader)
        assert status == 200
        assert json.loads(answer)["body_length"] == len(body)
        status, _, _ = await read_response(reader)
        assert status == 200


# -- time: a head that never ends, a connection that says nothing -----------------------------


async def test_a_trickled_head_gets_408_and_a_close_after_header_timeout(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, header_timeout=0.5)
    request = head("/echo", "Host: a", "X-Slow: " + "s" * 200)
    async with connect(proxy.port) as (reader, writer):

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in request:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        writing = asyncio.create_task(trickle())
        started = time.monotonic()
        try:
            status, headers, body = await asyncio.wait_for(read_response(reader), 5)
            rest = await read_to_end(reader)
        finally:
            writing.cancel()
        elapsed = time.monotonic() - started
    assert (status, headers["connection"], rest) == (408, "close", b"")
    assert body == b"The request head did not arrive within 0.5 s.\n"
    assert 0.45 <= elapsed < 3.0


async def test_a_connection_that_sends_nothing_is_closed_without_a_word(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, idle_timeout=0.3)
    async with connect(proxy.port) as (reader, _):
        started = time.monotonic()
        assert await read_to_end(reader) == b""
        assert 0.25 <= time.monotonic() - started < 3.0


async def test_a_kept_alive_connection_is_closed_after_idle_timeout(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, idle_timeout=0.3)
    async with connect(proxy.port) as (reader, writer):
        for _ in range(2):  # a request resets the idle clock
            writer.write(head("/echo", "Host: a"))
            status, headers, _ = await read_response(reader)
            assert status == 200
            assert "connection" not in headers
            await asyncio.sleep(0.15)
        started = time.monotonic()
        assert await read_to_end(reader) == b""
        assert time.monotonic() - started < 3.0


# -- Host (RFC 9112 section 3.2) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [((), "No Host header."), (("Host: a", "Host: b"), "More than one Host header.")],
    ids=["missing", "two"],
)
async def test_an_http11_request_needs_exactly_one_host(
    make_origin: MakeOrigin, make_proxy: MakeProxy, headers: tuple[str, ...], reason: str
) -> None:
    proxy = await proxy_with(make_origin, make_proxy)
    status, response_headers, body, rest = await refused(proxy.port, head("/echo", *headers))
    assert (status, response_headers["connection"], rest) == (400, "close", b"")
    assert body == reason.encode() + b"\n"


async def test_an_http10_request_without_host_is_served(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy)
    async with connect(proxy.port) as (reader, writer):
        writer.write(head("/echo", version="1.0"))
        status, _, body = await read_response(reader)
    assert status == 200
    assert json.loads(body)["origin"] == "primary"


# -- max_connections ----------------------------------------------------------------------


async def test_a_connection_past_max_connections_is_closed_at_once(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, max_connections=5)
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(connect(proxy.port)) for _ in range(5)]
        await wait_for(lambda: len(proxy.server.server_state.connections) == 5)

        async with connect(proxy.port) as (reader, _):
            started = time.monotonic()
            status, headers, body = await read_response(reader)
            assert await read_to_end(reader) == b""
            assert time.monotonic() - started < 2.0
        assert (status, headers["connection"]) == (503, "close")
        assert body == b"The proxy is at its limit of 5 client connections.\n"

        for reader, writer in held:
            writer.write(head("/echo", "Host: a"))
            status, _, _ = await read_response(reader)
            assert status == 200


# -- the log: one line a second, not one per connection ---------------------------------------


async def test_cut_connections_are_counted_in_one_log_line_a_second(
    make_origin: MakeOrigin, make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.listener")
    proxy = await proxy_with(make_origin, make_proxy, idle_timeout=0.3, max_headers=10)
    too_many = head("/echo", "Host: a", *(f"X-{i}: {i}" for i in range(10)))
    silent = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    try:
        status, _, _, _ = await refused(proxy.port, too_many)
        assert status == 431
        for reader, _ in silent:
            assert await read_to_end(reader) == b""

        def lines() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage().startswith("Closed ")]

        await wait_for(lambda: sum(_counts(r)["total"] for r in lines()) == 4, timeout=5)
    finally:
        for _, writer in silent:
            writer.close()
    records = lines()
    assert all(
        later.created - earlier.created >= 0.9 for earlier, later in itertools.pairwise(records)
    )
    totals: dict[str, int] = {}
    for record in records:
        for reason, count in _counts(record).items():
            totals[reason] = totals.get(reason, 0) + count
    assert totals == {"total": 4, "idle": 3, "too many headers": 1}
    assert any(r.levelno == logging.WARNING for r in records)
    if len(records) == 1:
        assert records[0].getMessage() in (
            "Closed 4 client connections in the last second: 3 idle, 1 too many headers.",
            "Closed 4 client connections in the last second: 1 too many headers, 3 idle.",
        )


def _counts(record: logging.LogRecord) -> dict[str, int]:
    match = re.fullmatch(
        r"Closed (\d+) client connections? in the last second: (.*)\.", record.getMessage()
    )
    assert match, record.getMessage()
    counts = {"total": int(match.group(1))}
    for part in match.group(2).split(", "):
        count, _, reason = part.partition(" ")
        counts[reason] = int(count)
    return counts


# -- a 304 that names the length of what it stands for --------------------------------------


async def test_a_304_with_content_length_reaches_the_client_without_a_body(
    make_proxy: MakeProxy,
) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b'HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: "x"\r\n\r\n'
                )
                await writer.drain()
        writer.close()

    origin = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{origin.sockets[0].getsockname()[1]}"
    try:
        proxy = await make_proxy(proxy_config(origin_config("primary", url, 0)))
        async with connect(proxy.port) as (reader, writer):
            for _ in range(2):  # the second answer starts right where the first ended
                writer.write(head("/page", "Host: a", 'If-None-Match: "x"'))
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                lines = raw.decode("latin-1").lower().split("\r\n")
                assert lines[0] == "http/1.1 304 not modified"
                assert "content-length: 1234" in lines
                assert 'etag: "x"' in lines
    finally:
        origin.close()
        await origin.wait_closed()


def _closed_or_complete(transport: RecordingTransport) -> bool:
    return transport.closed or transport.written.endswith(b"\r\n0\r\n\r\n")


async def test_a_header_with_a_cr_or_lf_inside_never_reaches_the_client() -> None:
    """The listener checks the whole response head once: a header whose value would split
    into two lines (or the response into two) is refused, and nothing is written."""
    values = iter([b"a\r\nx-injected: 1", b"a\nx-injected: 1", b"fine"])
    errors: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"x-a", next(values))]}
            )
        except RuntimeError as exc:
            errors.append(str(exc))
            raise
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    config = uvicorn.Config(app=app, lifespan="off", log_config=None)
    config.load()
    factory = HttpProtocolFactory(LimitsConfig())
    for _ in range(3):
        protocol = factory(config, ServerState(), {}, asyncio.get_running_loop())
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await wait_for(functools.partial(_closed_or_complete, transport))
        assert b"x-injected" not in transport.written
        protocol.connection_lost(None)
    assert errors == ["Invalid HTTP header: a CR or LF inside a name or value."] * 2
    assert b"x-a: fine\r\n" in transport.written


# -- slow clients at a bounded scale ----------------------------------------------------------


async def test_idle_and_trickling_clients_do_not_slow_a_normal_client(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    proxy = await proxy_with(make_origin, make_proxy, header_timeout=1.0, idle_timeout=30)
    stop = asyncio.Event()

    async def idle() -> None:
        async with connect(proxy.port):
            await stop.wait()

    async def trickle() -> None:
        while not stop.is_set():  # each head is cut by header_timeout; then another starts
            async with connect(proxy.port) as (reader, writer):
                closed = asyncio.create_task(read_to_end(reader, within=10))
                with contextlib.suppress(ConnectionError):
                    writer.write(b"GET /echo HTTP/1.1\r\nX-Slow: ")
                    while not closed.done() and not stop.is_set():
                        writer.write(b"s")
                        await writer.drain()
                        await asyncio.sleep(0.05)
                closed.cancel()

    slow = [asyncio.create_task(idle()) for _ in range(50)]
    slow += [asyncio.create_task(trickle()) for _ in range(20)]
    latencies = []
    try:
        await wait_for(lambda: len(proxy.server.server_state.connections) >= 70)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as client:
            until = time.monotonic() + 2.5  # past two rounds of header timeouts
            while time.monotonic() < until:
                started = time.monotonic()
                response = await client.get("/echo")
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
    finally:
        stop.set()
        await asyncio.gather(*slow, return_exceptions=True)
    assert len(latencies) > 20
    assert max(latencies) < 1.0
    origin = proxy.engine.by_name["primary"]
    assert Flag.EJECTED not in origin.flags
    assert not [e for e in proxy.engine.events.newest_first() if e.kind == "ejected"]


# -- start-up: the open file limit ----------------------------------------------------------


def test_max_connections_leaves_room_for_an_upstream_connection_each() -> None:
    assert connection_limit(10_000, 1_048_576) == 10_000
    assert connection_limit(10_000, 1024) == 480
    assert connection_limit(10_000, resource.RLIM_INFINITY) == 10_000
    assert connection_limit(5, 10) == 1


def test_start_up_raises_the_open_file_limit_and_says_what_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.INFO, logger="failover.listener")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1024), hard))
        effective = prepare_open_files(LimitsConfig(max_connections=1_000_000))
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert now == hard
    assert effective == connection_limit(1_000_000, hard) < 1_000_000
    messages = [r.getMessage() for r in caplog.records]
    assert f"Open file limit: {hard} (raised from {min(hard, 1024)})." in messages or (
        hard <= 1024 and f"Open file limit: {hard}." in messages
    )
    assert (
        f"limits.max_connections is 1000000, but the open file limit of {hard} holds only "
        f"{effective} client connections (each may need an upstream connection too): "
        f"accepting up to {effective}."
    ) in messages


# -- several workers: each gets the limits --------------------------------------------------


async def test_every_worker_applies_the_limits(tmp_path: Path, make_origin: MakeOrigin) -> None:
    origin = await make_origin("primary")
    port = free_port()
    config = serving_config(origin.url, limits={"max_headers": 5})
    path = tmp_path / "failover.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ("run", "--config", str(path), "--port", str(port), "--workers", "2")
    with started(*args, cwd=tmp_path) as process:
        await process.wait_until_serving(port, within=30)
        for _ in range(4):  # fresh connections: both workers answer
            status, _, body, _ = await refused(
                port, head("/echo", "Host: a", *(f"X-{i}: {i}" for i in range(5)))
            )
            assert (status, body) == (431, b"More than 5 header fields.\n")
        process.popen.send_signal(signal.SIGTERM)
        assert await process.wait_for_exit(15) == 0
    assert "Open file limit:" in process.stderr
    assert "Traceback" not in process.stderr
