"""Responses that stream without an end in sight: server-sent events and long polls pass each
chunk the moment it arrives, quiet streams live as long as `timeouts.idle` allows between
chunks, and an origin's trailers are dropped without harm (uvicorn cannot send them)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.conftest import RawOrigin, Script, origin_config, proxy_config
from tests.helpers import MakeProxy, connect, read_head, read_response, request_head

PAUSES = (0.0, 0.4, 0.05, 0.4)  # before each event; 0.4 s is past timeouts.first_byte


def events(pauses: tuple[float, ...], written: list[float]) -> Script:
    """An SSE origin: headers at once, then one event after each pause (the time each was
    written goes to `written`), then the end of the stream."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        await origin.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        for index, pause in enumerate(pauses):
            await asyncio.sleep(pause)  # the origin is quiet: what the test is about
            event = b"data: event %d\n\n" % index
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            written.append(loop.time())
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return script


async def read_event(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def test_each_event_reaches_the_client_within_50_ms_and_quiet_gaps_are_not_cut(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    written: list[float] = []
    origin = await raw_origin(events(PAUSES, written))
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin.url, 0),
            health={"enabled": False},
            timeouts={"first_byte": 0.3, "idle": 1.0},
        )
    )
    loop = asyncio.get_running_loop()
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head("GET", "/events", [("Host", "site")]))
        status, headers = await read_head(reader)
        assert status == 200
        assert ("content-type", "text/event-stream") in [(k.lower(), v) for k, v in headers]
        for index in range(len(PAUSES)):
            event = await read_event(reader)
            arrived = loop.time()
            assert event == b"data: event %d\n\n" % index
            assert arrived - written[index] < 0.05, f"event {index} took {arrived - written[index]}"
        assert await reader.readuntil(b"\r\n\r\n") == b"0\r\n\r\n"  # the stream ended cleanly


async def test_a_stream_quiet_for_longer_than_timeouts_idle_is_cut(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    written: list[float] = []
    origin = await raw_origin(events((0.0, 1.0), written))
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin.url, 0),
            health={"enabled": False},
            timeouts={"first_byte": 0.3, "idle": 0.3},
        )
    )
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head("GET", "/events", [("Host", "site")]))
        assert (await read_head(reader))[0] == 200
        assert await read_event(reader) == b"data: event 0\n\n"
        # No terminating chunk: the client sees a truncated transfer, never a complete one.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert len(written) == 1


async def test_an_origins_trailers_are_dropped_and_the_body_arrives_whole(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        while True:
            await origin.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Checksum\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\nChecksum: abc123\r\n\r\n"
            )
            await writer.drain()

    origin = await raw_origin(script)
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0), health={"enabled": False})
    )
    async with connect(proxy.port) as (reader, writer):
        for _ in range(2):  # and the connections on both sides stay usable
            writer.write(request_head("GET", "/t", [("Host", "site"), ("TE", "trailers")]))
            response = await read_response(reader)
            assert response.status == 200
            assert response.body == b"hello world"
            assert response.get("trailer") is None


async def test_the_head_of_a_response_whose_body_is_late_is_not_held_back(
    raw_origin: Callable[[Script], Awaitable[RawOrigin]], make_proxy: MakeProxy
) -> None:
    # The listener writes a small response's head and body in one send(), but only when the
    # body is at hand: a client of a quiet stream gets the head before the first event.
    written: list[float] = []
    origin = await raw_origin(events((1.0,), written))
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin.url, 0),
            health={"enabled": False},
            timeouts={"first_byte": 0.3, "idle": 2.0},
        )
    )
    async with connect(proxy.port) as (reader, writer):
        writer.write(request_head("GET", "/events", [("Host", "site")]))
        status, _ = await read_head(reader)
        assert status == 200
        assert written == [], "the head came only with the first event"
        assert await read_event(reader) == b"data: event 0\n\n"
        assert await reader.readuntil(b"\r\n\r\n") == b"0\r\n\r\n"
