"""Tests for the fault-injecting origin used by the demo and by end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from multidict import CIMultiDict

from failover.faulty import MODES, FaultyOrigin, parse_range, pattern


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[FaultyOrigin]:
    """Run an origin named alpha for the duration of the block."""
    origin = FaultyOrigin("alpha", **options)
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


@pytest_asyncio.fixture
async def origin() -> AsyncIterator[FaultyOrigin]:
    async with running() as started:
        yield started


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No pooling, so that a connection closed by a mode switch is never reused by accident.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait until the origin has caught up with what the test did."""
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


@asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open a bare TCP connection to the origin and always close it afterwards."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def expected_bytes(start: int, stop: int) -> bytes:
    return bytes(i % 251 for i in range(start, stop))


# Normal answers


@pytest.mark.asyncio
async def test_default_path_names_the_origin(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    assert origin.url == f"http://127.0.0.1:{origin.port}"
    assert origin.port != 0
    async with session.get(origin.url + "/anything/else") as response:
        assert response.status == 200
        assert response.headers["X-Origin"] == "alpha"
        assert response.content_type == "text/plain"
        assert await response.text() == "alpha"


@pytest.mark.asyncio
async def test_health_answers_ok_for_get_and_head(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.get(origin.url + "/health") as response:
        assert (response.status, await response.text()) == (200, "ok")
    async with session.head(origin.url + "/health") as response:
        assert response.status == 200
    assert origin.stats.health_requests == 2
    assert origin.stats.requests == 0


@pytest.mark.asyncio
async def test_echo_keeps_repeated_headers_in_order(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    headers = CIMultiDict([("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two")])
    url = origin.url + "/echo?b=2&a=1&a=%20"
    async with session.post(url, data=b"hello", headers=headers) as response:
        body = await response.json()
    assert body["origin"] == "alpha"
    assert body["method"] == "POST"
    assert body["path"] == "/echo?b=2&a=1&a=%20"
    assert body["body_length"] == 5
    assert body["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    sent = [(name, value) for name, value in body["headers"] if name.startswith("X-")]
    assert sent == [("X-Dup", "one"), ("X-Other", "x"), ("X-Dup", "two")]
    recorded = origin.stats.last_request
    assert recorded is not None
    assert recorded.path == "/echo?b=2&a=1&a=%20"
    assert [pair for pair in recorded.headers if pair[0] == "X-Dup"] == [
        ("X-Dup", "one"),
        ("X-Dup", "two"),
    ]


@pytest.mark.asyncio
async def test_upload_hashes_a_streamed_body(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            digest.update(block)
            yield block

    async with session.put(origin.url + "/upload", data=body()) as response:
        result = await response.json()
    assert result["body_length"] == 8 * len(block)
    assert result["body_sha256"] == digest.hexdigest()


@pytest.mark.asyncio
async def test_bytes_streams_the_pattern_with_content_length(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    size = 200_000
    async with session.get(origin.url + f"/bytes/{size}") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        assert response.headers["Accept-Ranges"] == "bytes"
        assert await response.read() == expected_bytes(0, size)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("range_header", "content_range", "start", "stop"),
    [
        ("bytes=10-19", "bytes 10-19/1000", 10, 20),
        ("bytes=990-", "bytes 990-999/1000", 990, 1000),
        ("bytes=-5", "bytes 995-999/1000", 995, 1000),
        ("bytes=900-5000", "bytes 900-999/1000", 900, 1000),
    ],
)
async def test_bytes_serves_a_single_range(
    origin: FaultyOrigin,
    session: aiohttp.ClientSession,
    range_header: str,
    content_range: str,
    start: int,
    stop: int,
) -> None:
    headers = {"Range": range_header}
    async with session.get(origin.url + "/bytes/1000", headers=headers) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == content_range
        assert response.headers["Content-Length"] == str(stop - start)
        assert await response.read() == expected_bytes(start, stop)


@pytest.mark.asyncio
async def test_bytes_rejects_an_unsatisfiable_range(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    headers = {"Range": "bytes=1000-"}
    async with session.get(origin.url + "/bytes/1000", headers=headers) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == "bytes */1000"


@pytest.mark.asyncio
async def test_bytes_head_sends_headers_only(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.head(origin.url + "/bytes/5000") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "5000"
        assert await response.read() == b""
    async with session.head(origin.url + "/bytes/5000", headers={"Range": "bytes=-10"}) as ranged:
        assert ranged.status == 206
        assert ranged.headers["Content-Length"] == "10"


def test_parse_range_edge_cases() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None
    assert parse_range("bytes=5-2", 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=-50", 10) == (0, 10)
    for unsatisfiable in ("bytes=10-", "bytes=-0", "bytes=0-"):
        with pytest.raises(ValueError):
            parse_range(unsatisfiable, 0 if unsatisfiable == "bytes=0-" else 10)


def test_pattern_wraps_at_251() -> None:
    assert bytes(pattern(500, 10)) == expected_bytes(500, 510)
    assert len(pattern(0, 64 * 1024)) == 64 * 1024


@pytest.mark.asyncio
async def test_chunked_has_no_content_length(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.get(origin.url + "/chunked/100000") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        assert await response.read() == expected_bytes(0, 100_000)


@pytest.mark.asyncio
@pytest.mark.parametrize("code", [204, 304, 404, 503])
async def test_status_answers_the_asked_code(
    origin: FaultyOrigin, session: aiohttp.ClientSession, code: int
) -> None:
    async with session.get(origin.url + f"/status/{code}") as response:
        assert response.status == code
        body = await response.read()
    assert body == (b"" if code in (204, 304) else f"alpha: {code}".encode())
    assert origin.stats.by_status[code] == 1


@pytest.mark.asyncio
async def test_headers_endpoint_repeats_headers(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.get(origin.url + "/headers") as response:
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert response.headers["Connection"] == "close, X-Hop"
        assert response.headers["X-Hop"] == "1"
        assert response.headers["Keep-Alive"] == "timeout=5"
        raw_names = [name for name, _ in response.raw_headers]
        assert raw_names.count(b"Set-Cookie") == 2


@pytest.mark.asyncio
async def test_gzip_is_sent_compressed_as_is(origin: FaultyOrigin) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as raw_session:
        headers = {"Accept-Encoding": "identity"}
        async with raw_session.get(origin.url + "/gzip", headers=headers) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            body = await response.read()
    assert gzip.decompress(body) == b"hello " * 100


@pytest.mark.asyncio
async def test_plain_answers_are_never_compressed(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    headers = {"Accept-Encoding": "gzip, deflate, br"}
    async with session.get(origin.url + "/bytes/10000", headers=headers) as response:
        assert "Content-Encoding" not in response.headers


@pytest.mark.asyncio
async def test_cache_sets_cache_control_from_query(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.get(origin.url + "/cache/x?cc=max-age=60") as response:
        assert response.headers["Cache-Control"] == "max-age=60"
        assert await response.text() == "alpha:/cache/x"
    async with session.get(origin.url + "/cache/y") as response:
        assert "Cache-Control" not in response.headers


@pytest.mark.asyncio
async def test_delay_waits_before_answering(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with session.get(origin.url + "/delay/0.1") as response:
        assert response.status == 200
    assert time.monotonic() - started >= 0.1
    async with session.get(origin.url + "/delay/soon") as response:
        assert response.status == 400


# Modes


@pytest.mark.asyncio
async def test_refuse_closes_the_port_and_ok_reopens_the_same_one(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    port = origin.port
    await origin.set_mode("refuse")
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(origin.url + "/")
    await origin.set_mode("ok")
    assert origin.port == port
    async with session.get(origin.url + "/") as response:
        assert await response.text() == "alpha"


@pytest.mark.asyncio
async def test_refuse_over_http_answers_before_closing(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.post(origin.url + "/_origin/mode/refuse") as response:
        assert await response.json() == {"name": "alpha", "mode": "refuse"}
    assert origin.mode == "refuse"
    with pytest.raises(aiohttp.ClientConnectorError):
        await session.get(origin.url + "/health")
    await origin.set_mode("ok")
    async with session.get(origin.url + "/health") as response:
        assert response.status == 200


@pytest.mark.asyncio
async def test_refuse_drops_pooled_connections() -> None:
    async with running() as origin, aiohttp.ClientSession() as pooled:
        async with pooled.get(origin.url + "/") as response:
            await response.read()
        assert origin.stats.open_connections == 1
        await origin.set_mode("refuse")
        await eventually(lambda: origin.stats.open_connections == 0)


@pytest.mark.asyncio
async def test_starting_in_refuse_reserves_a_port(session: aiohttp.ClientSession) -> None:
    async with running(mode="refuse") as origin:
        assert origin.port != 0
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(origin.url + "/")
        await origin.set_mode("ok")
        async with session.get(origin.url + "/") as response:
            assert response.status == 200


@pytest.mark.asyncio
async def test_reset_sends_rst_without_a_response(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    await origin.set_mode("reset")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await session.get(origin.url + "/health")

    async with raw_connection(origin.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            # A FIN would read as b""; only a RST raises here.
            await asyncio.wait_for(reader.read(), timeout=2)
    assert origin.stats.requests == 1
    # aiohttp's client retries an idempotent request once after a disconnect.
    assert origin.stats.health_requests in (1, 2)
    assert sum(origin.stats.by_status.values()) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["reset", "blackhole", "http5xx", "flap"])
async def test_control_endpoint_works_in_every_listening_mode(
    origin: FaultyOrigin, session: aiohttp.ClientSession, mode: str
) -> None:
    async with session.post(origin.url + f"/_origin/mode/{mode}") as response:
        assert await response.json() == {"name": "alpha", "mode": mode}
    async with session.get(origin.url + "/_origin/stats") as response:
        assert response.status == 200
    async with session.post(origin.url + "/_origin/mode/ok") as response:
        assert response.status == 200
    assert origin.mode == "ok"
    async with session.get(origin.url + "/") as response:
        assert await response.text() == "alpha"


@pytest.mark.asyncio
async def test_blackhole_never_answers(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    await origin.set_mode("blackhole")
    short = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(origin.url + "/", timeout=short)
    with pytest.raises(asyncio.TimeoutError):
        await session.get(origin.url + "/health", timeout=short)
    # The client went away, so the hung connections close on the origin's side as well.
    await eventually(lambda: origin.stats.open_connections == 0)


@pytest.mark.asyncio
async def test_stop_closes_hung_connections() -> None:
    async with running(mode="blackhole") as origin:
        async with raw_connection(origin.port) as (reader, writer):
            writer.write(b"POST /x HTTP/1.1\r\nHost: origin\r\nContent-Length: 3\r\n\r\nabc")
            await eventually(lambda: origin.stats.requests == 1)
            assert origin.stats.open_connections == 1
            await asyncio.wait_for(origin.stop(), timeout=2)
            assert await asyncio.wait_for(reader.read(), timeout=2) == b""
        assert origin.stats.open_connections == 0
        recorded = origin.stats.last_request
        assert recorded is not None
        assert recorded.body_sha256 == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.asyncio
async def test_stop_closes_idle_keep_alive_connections() -> None:
    async with running() as origin, raw_connection(origin.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\nalpha")).startswith(b"HTTP/1.1 200")
        await origin.stop()
        assert await asyncio.wait_for(reader.read(), timeout=2) == b""


@pytest.mark.asyncio
async def test_http5xx_fails_every_request_including_health(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    await origin.set_mode("http5xx")
    for path in ("/", "/health", "/echo"):
        async with session.get(origin.url + path) as response:
            assert response.status == 503
            assert response.headers["X-Origin"] == "alpha"
            assert await response.text() == "alpha: 503 (http5xx mode)"
    assert origin.stats.by_status == {503: 2}
    assert origin.stats.health_requests == 1


@pytest.mark.asyncio
async def test_slow_delays_requests_but_not_health(session: aiohttp.ClientSession) -> None:
    async with running(mode="slow", slow_delay=0.2) as origin:
        started = time.monotonic()
        async with session.get(origin.url + "/health") as response:
            assert response.status == 200
        assert time.monotonic() - started < 0.15
        started = time.monotonic()
        async with session.get(origin.url + "/") as response:
            assert await response.text() == "alpha"
        assert time.monotonic() - started >= 0.2


@pytest.mark.asyncio
async def test_partial_fails_about_thirty_percent(session: aiohttp.ClientSession) -> None:
    async with running(mode="partial", seed=7) as origin:
        statuses = []
        for _ in range(200):
            async with session.get(origin.url + "/") as response:
                statuses.append(response.status)
        for _ in range(20):
            async with session.get(origin.url + "/health") as response:
                assert response.status == 200
    failures = statuses.count(500)
    assert 40 <= failures <= 80
    assert failures + statuses.count(200) == 200
    assert origin.stats.by_status == {200: 200 - failures, 500: failures}


@pytest.mark.asyncio
async def test_partial_is_deterministic_for_a_seed(session: aiohttp.ClientSession) -> None:
    runs = []
    for _ in range(2):
        async with running(mode="partial", seed=3) as origin:
            statuses = []
            for _ in range(30):
                async with session.get(origin.url + "/") as response:
                    statuses.append(response.status)
            runs.append(statuses)
    assert runs[0] == runs[1]


@pytest.mark.asyncio
async def test_flap_alternates_with_the_clock(session: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running(mode="flap", flap_period=1.5, clock=clock) as origin:

        async def statuses() -> tuple[int, int]:
            async with session.get(origin.url + "/") as page:
                await page.read()
            async with session.get(origin.url + "/health") as health:
                await health.read()
            return page.status, health.status

        assert await statuses() == (200, 200)
        clock.now += 1.4
        assert await statuses() == (200, 200)
        clock.now += 0.2
        assert await statuses() == (503, 503)
        clock.now += 1.5
        assert await statuses() == (200, 200)
        # Setting the mode again restarts the cycle from an up phase.
        clock.now += 1.5
        assert await statuses() == (503, 503)
        await origin.set_mode("flap")
        assert await statuses() == (200, 200)


# Control and statistics


@pytest.mark.asyncio
async def test_unknown_mode_is_rejected(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    async with session.post(origin.url + "/_origin/mode/broken") as response:
        assert response.status == 400
        body = await response.json()
    assert body["modes"] == list(MODES)
    assert origin.mode == "ok"
    with pytest.raises(ValueError):
        await origin.set_mode("broken")  # type: ignore[arg-type]
    async with session.get(origin.url + "/_origin/mode/ok") as response:
        assert response.status == 405


@pytest.mark.asyncio
async def test_stats_count_requests_but_not_control(
    origin: FaultyOrigin, session: aiohttp.ClientSession
) -> None:
    for path in ("/a", "/b", "/status/404", "/health"):
        async with session.get(origin.url + path) as response:
            await response.read()
    async with session.get(origin.url + "/_origin/stats") as response:
        stats = await response.json()
    assert stats["requests"] == 3
    assert stats["health_requests"] == 1
    assert stats["by_status"] == {"200": 2, "404": 1}
    assert stats["last_request"]["path"] == "/status/404"
    assert stats["open_connections"] >= 1

    async with session.post(origin.url + "/_origin/reset-stats") as response:
        assert response.status == 200
    assert origin.stats.requests == 0
    assert origin.stats.health_requests == 0
    assert not origin.stats.by_status
    assert origin.stats.last_request is None


@pytest.mark.asyncio
async def test_open_connections_follow_the_client() -> None:
    async with running() as origin:
        async with aiohttp.ClientSession() as pooled:
            async with pooled.get(origin.url + "/") as response:
                await response.read()
            assert origin.stats.open_connections == 1
        await eventually(lambda: origin.stats.open_connections == 0)
