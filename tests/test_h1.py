"""The native upstream client (failover.h1) against real origins on loopback: when a connection
is reused and when it must not be, framing both ways, the pool's limit and idle expiry, and how
failures surface (and map to the proxy's error kinds).

Behind the real proxy too, raw-socket origins that misbehave at the byte level: an upload
nobody reads, a keep-alive connection closed while idle, statuses outside 100-599, interim
responses and oversized response heads.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from failover import h1
from failover.faulty import FaultyOrigin
from failover.upstream import map_error
from tests.conftest import (
    RawOrigin,
    RunningProxy,
    Script,
    free_port,
    origin_config,
    proxy_config,
    wait_for,
)
from tests.helpers import (
    NO_HEALTH,
    MakeOrigin,
    MakeProxy,
    answer,
    connect,
    expected_bytes,
    origin_record,
    read_response,
    request_head,
)

MakePool = Callable[..., h1.Pool]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[h1.Pool] = []

    def make(url: str, **options: Any) -> h1.Pool:
        options.setdefault("read_timeout", 5.0)
        pool = h1.Pool(url, **options)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def fetch(
    pool: h1.Pool,
    target: str,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: AsyncIterator[bytes] | None = None,
) -> tuple[h1.Response, bytes]:
    """One request read to its end and released (within 10 s: a stuck exchange fails)."""
    async with asyncio.timeout(10):
        all_headers = [("Host", pool.name), *(headers or [])]
        response = await pool.request(method, target, all_headers, body)
        try:
            return response, await response.content.read()
        finally:
            response.release()


def header(response: h1.Response, name: bytes) -> bytes | None:
    for key, value in response.raw_headers:
        if key.lower() == name:
            return value
    return None


class ScriptedOrigin:
    """A raw TCP origin that answers byte for byte: on each connection, the i-th request gets
    `answers[i]`, or the connection closed without an answer where that is None. Past the
    script it closes the connection, or with `hold` keeps it open until the client closes."""

    def __init__(
        self, answers: list[bytes | None], hold: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answers = answers
        self.hold = hold
        self.tls = tls
        self.connections = 0
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            for answer in self.answers:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests += 1
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
            if self.hold:
                await reader.read()
        finally:
            writer.transport.abort()
            self._handlers.discard(task)


@pytest.fixture
async def make_scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedOrigin]]]:
    started: list[ScriptedOrigin] = []

    async def make(
        answers: list[bytes | None], hold: bool = False, tls: ssl.SSLContext | None = None
    ) -> ScriptedOrigin:
        origin = ScriptedOrigin(answers, hold, tls)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


# -- connection reuse -----------------------------------------------------------------------


async def test_a_keep_alive_connection_serves_request_after_request(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    for size in (1000, 70_000, 10):
        response, body = await fetch(pool, f"/bytes/{size}")
        assert response.status == 200
        assert body == expected_bytes(0, size)
    assert pool.connections_made == 1
    assert origin.stats.open_connections == 1
    assert (pool.idle, pool.in_use) == (1, 0)


async def test_a_partly_read_response_closes_its_connection(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    response = await pool.request("GET", "/bytes/4000000", [("Host", pool.name)])
    assert await response.content.readany()
    response.release()  # not at its end: the connection cannot carry another request
    assert (pool.idle, pool.in_use) == (0, 0)
    await wait_for(lambda: origin.stats.open_connections == 0)
    assert (pool.idle, pool.in_use) == (0, 0)
    _, body = await fetch(pool, "/bytes/10")
    assert body == expected_bytes(0, 10)
    assert pool.connections_made == 2


async def test_a_connection_close_response_is_not_reused(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    response, body = await fetch(pool, "/headers")  # answers with Connection: close
    assert body == b"primary"
    assert header(response, b"connection") == b"close, X-Hop"
    await wait_for(lambda: origin.stats.open_connections == 0)
    assert pool.idle == 0
    await fetch(pool, "/bytes/1")
    assert pool.connections_made == 2


async def test_a_stale_connection_is_retried_once_on_a_new_one(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    # Each connection answers its first request and closes on the second without a byte:
    # what a keep-alive connection looks like that the origin closed as it was reused.
    origin = await make_scripted([OK, None])
    pool = make_pool(origin.url)
    for _ in range(2):
        response, body = await fetch(pool, "/")
        assert (response.status, body) == (200, b"ok")
    assert (origin.connections, origin.requests) == (2, 3)
    assert pool.connections_made == 2


@pytest.mark.parametrize("method", ["POST", "PUT with a body"])
async def test_a_stale_connection_is_not_retried_for_a_post_or_a_body(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool, method: str
) -> None:
    origin = await make_scripted([OK, None])
    pool = make_pool(origin.url)
    await fetch(pool, "/")

    async def body() -> AsyncIterator[bytes]:
        yield b"data"

    with pytest.raises(h1.ServerDisconnected) as caught:
        if method == "POST":
            await fetch(pool, "/", "POST", [("Content-Length", "0")])
        else:
            await fetch(pool, "/", "PUT", [("Content-Length", "4")], body())
    assert (origin.connections, origin.requests) == (1, 2)
    error = map_error(caught.value, 1.0)
    assert (error.kind, error.detail) == ("reset", "server closed the connection")
    assert (pool.idle, pool.in_use) == (0, 0)


# -- framing --------------------------------------------------------------------------------


async def test_the_request_goes_out_exactly_as_given(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    headers = [("X-Second", "b"), ("x-first", "a"), ("X-Second", "c")]
    response, body = await fetch(pool, "/echo?path=%2Fa%20b&x=1", headers=headers)
    echo = json.loads(body)
    assert echo["path"] == "/echo?path=%2Fa%20b&x=1"
    assert echo["headers"] == [["Host", pool.name], *(list(pair) for pair in headers)]
    assert (b"X-Origin", b"primary") in response.raw_headers  # as received, case kept


async def test_a_body_without_length_goes_chunked_and_one_with_length_as_is(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    parts = [b"a" * 1000, b"", b"b" * 200_000, b"c"]
    whole = b"".join(parts)

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    _, chunked = await fetch(pool, "/upload", "POST", body=body())
    length = [("Content-Length", str(len(whole)))]
    _, sized = await fetch(pool, "/upload", "POST", headers=length, body=body())
    for echoed, framing in ((chunked, ["Transfer-Encoding", "chunked"]), (sized, length[0])):
        echo = json.loads(echoed)
        assert echo["body_length"] == len(whole)
        assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()
        assert list(framing) in echo["headers"]
        assert len(echo["headers"]) == 2  # Host and the framing header, nothing else
    assert pool.connections_made == 1


async def test_a_chunked_response_is_decoded(make_origin: MakeOrigin, make_pool: MakePool) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    response, body = await fetch(pool, "/chunked/300000")
    assert header(response, b"transfer-encoding") == b"chunked"
    assert body == expected_bytes(0, 300_000)
    await fetch(pool, "/bytes/1")
    assert pool.connections_made == 1


async def test_a_head_response_has_no_body_and_keeps_its_connection(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    response, body = await fetch(pool, "/bytes/5000", "HEAD")
    assert (response.status, body) == (200, b"")
    assert header(response, b"content-length") == b"5000"
    assert response.content.is_eof()
    # Had the parser waited for 5000 body bytes, the next answer would be taken for them.
    _, body = await fetch(pool, "/bytes/10")
    assert body == expected_bytes(0, 10)
    assert pool.connections_made == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses_keep_their_connection(
    make_origin: MakeOrigin, make_pool: MakePool, status: int
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    response, body = await fetch(pool, f"/status/{status}")
    assert (response.status, body) == (status, b"")
    _, body = await fetch(pool, "/bytes/3")
    assert body == expected_bytes(0, 3)
    assert pool.connections_made == 1


async def test_interim_responses_are_skipped(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    origin = await make_scripted([interim + OK, OK], hold=True)
    pool = make_pool(origin.url)
    response, body = await fetch(pool, "/")
    assert (response.status, response.raw_headers, body) == (
        200,
        ((b"Content-Length", b"2"),),
        b"ok",
    )
    _, body = await fetch(pool, "/")
    assert body == b"ok"
    assert origin.connections == 1


async def test_trailers_do_not_leak_into_the_next_response(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1234\r\n\r\n"
    )
    origin = await make_scripted([chunked, OK], hold=True)
    pool = make_pool(origin.url)
    _, body = await fetch(pool, "/")
    assert body == b"hello world"
    response, body = await fetch(pool, "/")
    assert (response.raw_headers, body) == (((b"Content-Length", b"2"),), b"ok")
    assert origin.connections == 1


async def test_a_body_ended_by_the_connection_is_read_to_that_end(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    origin = await make_scripted([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello world"])
    pool = make_pool(origin.url)
    response, body = await fetch(pool, "/")
    assert (response.status, body) == (200, b"hello world")
    assert response.content.is_eof()
    assert (pool.idle, pool.in_use) == (0, 0)


# -- backpressure and timeouts --------------------------------------------------------------


async def test_reading_pauses_while_the_consumer_is_behind(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    size = 8_000_000
    response = await pool.request("GET", f"/bytes/{size}", [("Host", pool.name)])
    try:
        conn: Any = response.content._conn  # the connection's buffer is what must stay bounded
        await wait_for(lambda: conn.reading_paused)
        assert conn.buffered <= h1.HIGH_WATER + 256 * 1024  # one socket read past the mark
        body = await response.content.read()
    finally:
        response.release()
    assert body == expected_bytes(0, size)
    assert pool.idle == 1


async def test_a_stalled_body_times_out(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    origin = await make_scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"], hold=True)
    pool = make_pool(origin.url, read_timeout=0.2)
    response = await pool.request("GET", "/", [("Host", pool.name)])
    try:
        assert await response.content.readany() == b"hello"
        with pytest.raises(TimeoutError):
            await response.content.readany()
    finally:
        response.close()
    assert pool.in_use == 0


async def test_a_request_given_up_before_its_answer_closes_the_connection(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary", mode="blackhole")
    pool = make_pool(origin.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await pool.request("GET", "/", [("Host", pool.name)])
    assert (pool.idle, pool.in_use) == (0, 0)
    await wait_for(lambda: origin.stats.open_connections == 0)


# -- the pool -------------------------------------------------------------------------------


async def test_requests_wait_for_a_connection_at_the_limit(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url, limit=1)
    first = await pool.request("GET", "/bytes/100", [("Host", pool.name)])
    second = asyncio.create_task(fetch(pool, "/bytes/200"))
    await wait_for(lambda: pool.waiting == 1)
    assert origin.stats.requests == 1
    assert await first.content.read() == expected_bytes(0, 100)
    first.release()
    response, body = await asyncio.wait_for(second, 5)
    assert (response.status, body) == (200, expected_bytes(0, 200))
    assert pool.connections_made == 1


async def test_a_waiter_that_gives_up_leaves_the_pool_usable(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url, limit=1)
    first = await pool.request("GET", "/bytes/100", [("Host", pool.name)])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await fetch(pool, "/bytes/1")
    assert pool.waiting == 0
    first.close()  # frees the slot: the next request opens a new connection
    _, body = await fetch(pool, "/bytes/5")
    assert body == expected_bytes(0, 5)
    assert pool.connections_made == 2
    assert origin.stats.requests == 2


async def test_idle_connections_expire(make_origin: MakeOrigin, make_pool: MakePool) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url, keepalive=0.2)
    await asyncio.gather(*(fetch(pool, "/bytes/10") for _ in range(3)))
    assert pool.idle == 3
    await wait_for(lambda: pool.idle == 0 and origin.stats.open_connections == 0, timeout=5)
    await fetch(pool, "/bytes/10")
    assert pool.connections_made == 4


async def test_closing_the_pool_closes_every_connection(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    await fetch(pool, "/bytes/1")  # one idle
    busy = await pool.request("GET", "/bytes/4000000", [("Host", pool.name)])
    await pool.close()
    with pytest.raises(OSError):
        await busy.content.read()
    busy.close()
    await wait_for(lambda: origin.stats.open_connections == 0)
    with pytest.raises(h1.ConnectError):
        await pool.request("GET", "/", [("Host", pool.name)])


# -- failures -------------------------------------------------------------------------------


async def test_a_refused_connection_is_a_connect_failure(make_pool: MakePool) -> None:
    pool = make_pool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(h1.ConnectError) as caught:
        await pool.request("GET", "/", [("Host", pool.name)])
    error = map_error(caught.value, 1.0)
    assert (error.kind, error.detail) == ("connect-failure", "connection refused")
    assert (pool.idle, pool.in_use) == (0, 0)


async def test_a_reset_before_the_answer_is_a_reset(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary", mode="reset")
    pool = make_pool(origin.url)
    with pytest.raises(OSError) as caught:
        await pool.request("GET", "/", [("Host", pool.name)])
    assert not isinstance(caught.value, h1.ConnectError)
    assert map_error(caught.value, 1.0).kind == "reset"


async def test_a_body_cut_short_raises(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    origin = await make_scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10])
    pool = make_pool(origin.url)
    response = await pool.request("GET", "/", [("Host", pool.name)])
    try:
        assert await response.content.readany() == b"x" * 10
        with pytest.raises(h1.ServerDisconnected):
            await response.content.readany()
        assert not response.content.is_eof()
    finally:
        response.release()
    assert (pool.idle, pool.in_use) == (0, 0)


async def test_garbage_is_an_invalid_response(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    origin = await make_scripted([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], hold=True)
    pool = make_pool(origin.url)
    with pytest.raises(h1.InvalidResponse) as caught:
        await pool.request("GET", "/", [("Host", pool.name)])
    error = map_error(caught.value, 1.0)
    assert error.kind == "reset"
    assert error.detail.startswith("invalid response: ")


async def test_endless_response_headers_are_refused(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]], make_pool: MakePool
) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * (h1.MAX_HEAD + 1)
    origin = await make_scripted([head], hold=True)
    pool = make_pool(origin.url)
    with pytest.raises(h1.InvalidResponse, match="longer than"):
        await pool.request("GET", "/", [("Host", pool.name)])
    assert (pool.idle, pool.in_use) == (0, 0)


async def test_cr_or_lf_in_a_header_is_refused_before_sending(
    make_origin: MakeOrigin, make_pool: MakePool
) -> None:
    origin = await make_origin("primary")
    pool = make_pool(origin.url)
    with pytest.raises(ValueError, match="CR or LF"):
        await pool.request("GET", "/", [("Host", pool.name), ("X-A", "1\r\nX-Injected: 1")])
    assert origin.stats.requests == 0


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def localhost_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name localhost, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


async def test_https_origins_get_tls_with_sni_and_a_verified_certificate(
    make_scripted: Callable[..., Awaitable[ScriptedOrigin]],
    make_pool: MakePool,
    localhost_cert: tuple[Path, Path],
) -> None:
    cert, key = localhost_cert
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    names: list[str | None] = []
    server.sni_callback = lambda _socket, name, _context: names.append(name)
    origin = await make_scripted([OK, OK], hold=True, tls=server)
    url = f"https://localhost:{origin.port}"
    trusting = make_pool(url, ssl_context=ssl.create_default_context(cafile=cert))
    for _ in range(2):
        response, body = await fetch(trusting, "/")
        assert (response.status, body) == (200, b"ok")
    assert names == ["localhost"]
    assert origin.connections == 1
    # The default context does not trust a self-signed certificate: nothing is sent.
    with pytest.raises(h1.ConnectError) as caught:
        await fetch(make_pool(url), "/")
    assert map_error(caught.value, 1.0).kind == "connect-failure"
    assert origin.requests == 2


# -- uvloop, as `failover run` uses it ------------------------------------------------------


def test_the_pool_works_on_uvloop() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        origin = FaultyOrigin("primary")
        await origin.start()
        pool = h1.Pool(origin.url)
        try:
            bodies = [(await fetch(pool, f"/chunked/{n}"))[1] for n in (10, 100_000, 5)]
            return bodies, pool.connections_made
        finally:
            await pool.close()
            await origin.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        bodies, connections = runner.run(scenario())
    assert bodies == [expected_bytes(0, n) for n in (10, 100_000, 5)]
    assert connections == 1


# -- behind the proxy: origins that misbehave at the byte level ----------------------------


async def get(proxy: RunningProxy, target: str = "/", method: str = "GET") -> Any:
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head(method, target, [("Host", "site.example")]))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, method), 10)


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
