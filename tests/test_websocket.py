"""WebSocket pass-through, end to end on loopback: a `websockets` echo origin, the real proxy,
a `websockets` client (failover.websocket, the upgrade branch of failover.proxy)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from failover.config import build_settings
from failover.websocket import FrameTracker, close_frame
from tests.conftest import RunningProxy, free_port, origin_config, proxy_config, wait_for
from tests.helpers import AUTH, PREFIX, TOKEN, get_metrics, metric, read_response, request_head
from tests.helpers import connect as connect_raw

MIB = 1024 * 1024
FLOOD = 100  # MiB the origin sends when asked to flood


@dataclass
class EchoOrigin:
    """A WebSocket echo origin on `websockets`: answers /health with 200, the handshake with
    `handshake_status` if set (503: a refused handshake), and records what it saw."""

    name: str
    subprotocols: list[str] | None = None
    handshake_status: int | None = None
    server: Server | None = None
    port: int = 0
    handshakes: int = 0
    requests: list[Request] = field(default_factory=list)
    closes: list[tuple[int | None, str | None]] = field(default_factory=list)
    open: set[ServerConnection] = field(default_factory=set)
    flooded: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _process(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        self.requests.append(request)
        if self.handshake_status is not None:
            return connection.respond(HTTPStatus(self.handshake_status), "not now\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        self.handshakes += 1
        self.open.add(ws)
        try:
            async for message in ws:
                if message == "whoami":
                    await ws.send(self.name)
                elif message == "close-me":
                    await ws.close(4002, "origin says bye")
                elif message == "flood":
                    chunk = b"f" * MIB
                    for _ in range(FLOOD):
                        await ws.send(chunk)  # waits while the proxy does not take more
                        self.flooded += 1
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.open.discard(ws)
            rcvd = ws.protocol.close_rcvd
            self.closes.append((rcvd.code, rcvd.reason) if rcvd else (None, None))

    async def start(self) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=self.subprotocols,  # type: ignore[arg-type]
            process_request=self._process,
            max_size=None,
            ping_interval=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


@pytest.fixture
async def echo() -> AsyncIterator[Any]:
    started: list[EchoOrigin] = []

    async def make(name: str, **kwargs: Any) -> EchoOrigin:
        origin = EchoOrigin(name, **kwargs)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


def ws_url(proxy: RunningProxy, path: str = "/chat") -> str:
    return f"ws://127.0.0.1:{proxy.port}{path}"


def client(proxy: RunningProxy, path: str = "/chat", **kwargs: Any) -> Any:
    options: dict[str, Any] = {"max_size": None, "ping_interval": None, "open_timeout": 5}
    options.update(kwargs)
    return connect(ws_url(proxy, path), **options)


async def ready(proxy: RunningProxy) -> None:
    async def is_ready() -> bool:
        return (await proxy.client.get(f"{PREFIX}/readyz")).status_code == 200

    await wait_for(is_ready, timeout=5)


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the proxy or origin closes; the close frame the client received."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    rcvd = ws.protocol.close_rcvd
    assert rcvd is not None, "the connection ended without a close frame"
    return rcvd.code, rcvd.reason


async def test_text_binary_and_a_fragmented_10_mib_message_echo(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary", subprotocols=["chat.v1"])
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    async with client(proxy, subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"  # negotiated with the origin, end to end
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ws.response.headers["X-Failover-Origin"] == "primary"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"
        big = os.urandom(10 * 1024 * 1024)
        await ws.send([big[i : i + 65536] for i in range(0, len(big), 65536)])  # fragmented
        assert await ws.recv() == big
        await ws.ping(b"are you there")  # the origin's pong passes back
    request = origin.requests[0]
    assert request.headers["Sec-WebSocket-Protocol"] == "chat.v2, chat.v1"
    assert request.headers["X-Forwarded-For"] == "127.0.0.1"


async def test_cookie_authorization_and_origin_reach_the_origin(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary", subprotocols=["chat.v1"])
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    sent = {"Cookie": "session=abc", "Authorization": "Bearer t0ken"}
    async with client(
        proxy, additional_headers=sent, origin="https://app.example", subprotocols=["chat.v1"]
    ):
        pass
    headers: Headers = origin.requests[0].headers
    assert headers["Cookie"] == "session=abc"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Origin"] == "https://app.example"


async def test_close_codes_and_reasons_pass_both_ways(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    async with client(proxy) as ws:
        await ws.close(4001, "client says bye")
    await wait_for(lambda: len(origin.closes) == 1, timeout=5)
    assert origin.closes[0] == (4001, "client says bye")

    async with client(proxy) as ws:
        await ws.send("close-me")
        assert await closed_with(ws) == (4002, "origin says bye")


async def test_a_refused_or_503_handshake_fails_over_to_the_secondary(
    echo: Any, make_proxy: Any
) -> None:
    secondary = await echo("secondary")
    refusing = f"http://127.0.0.1:{free_port()}"
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", refusing, 0),
            origin_config("secondary", secondary, 1),
            health={"enabled": False},
        )
    )
    async with client(proxy) as ws:
        assert ws.response.headers["X-Failover-Origin"] == "secondary"
        assert "primary;connect-failure" in ws.response.headers["X-Failover-Attempts"]
        await ws.send("whoami")
        assert await ws.recv() == "secondary"
    assert secondary.handshakes == 1

    busy = await echo("busy", handshake_status=503)
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", busy, 0),
            origin_config("secondary", secondary, 1),
            health={"enabled": False},
        )
    )
    async with client(proxy) as ws:
        assert ws.response.headers["X-Failover-Attempts"].startswith("primary;503")
        await ws.send("whoami")
        assert await ws.recv() == "secondary"
    assert len(busy.requests) == 1 and busy.handshakes == 0
    assert secondary.handshakes == 2

    # Any 5xx to a handshake moves it on (500 is not in the default retry.on).
    broken = await echo("broken", handshake_status=500)
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", broken, 0),
            origin_config("secondary", secondary, 1),
            health={"enabled": False},
        )
    )
    async with client(proxy) as ws:
        assert ws.response.headers["X-Failover-Attempts"].startswith("primary;500")
    assert secondary.handshakes == 3


async def test_a_slow_reader_slows_the_origin_down(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    async with client(proxy, max_queue=1, compression=None) as ws:
        await ws.send("flood")
        progress: list[int] = []

        def stalled() -> bool:
            progress.append(origin.flooded)
            return origin.flooded > 0 and progress[-5:] == [origin.flooded] * 5

        await wait_for(stalled, timeout=5, every=0.1)
        # What the kernel buffers hold, not the 100 MiB the origin wanted to send: the proxy
        # stopped reading the origin while the client was not reading.
        assert origin.flooded < FLOOD // 2
        for _ in range(FLOOD):
            assert len(await ws.recv()) == MIB
        assert origin.flooded == FLOOD


async def test_a_handshake_the_origin_refuses_is_relayed(echo: Any, make_proxy: Any) -> None:
    forbidding = await echo("primary", handshake_status=403)
    proxy = await make_proxy(
        proxy_config(origin_config("primary", forbidding, 0), health={"enabled": False})
    )
    with pytest.raises(InvalidStatus) as refused:
        async with client(proxy):
            pass
    assert refused.value.response.status_code == 403
    assert b"not now" in refused.value.response.body


async def test_no_misleading_websocket_log_line(
    echo: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    with caplog.at_level(logging.INFO):
        async with client(proxy) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    assert "WebSocket library" not in caplog.text
    assert "Unsupported upgrade" not in caplog.text


async def test_bytes_sent_with_the_handshake_or_the_101_are_not_lost(
    raw_origin: Any, make_proxy: Any
) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: Any
    ) -> None:
        await origin.read_request(reader)
        # The 101 and a first frame in one write; then echo the client's first frame.
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n" + frame(1, b"welcome")
        )
        first = await reader.readexactly(len(frame(1, b"early", mask=True)))
        writer.write(first)
        await writer.drain()
        await reader.read()

    origin = await raw_origin(script)
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0), health={"enabled": False})
    )
    handshake = request_head(
        "GET",
        "/chat",
        [
            ("Host", "site"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    early = frame(1, b"early", mask=True)
    async with connect_raw(proxy.port) as (reader, writer):
        writer.write(handshake + early)  # a frame before the 101: allowed to a client
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: websocket" in head.lower()
        assert await reader.readexactly(len(frame(1, b"welcome"))) == frame(1, b"welcome")
        assert await reader.readexactly(len(early)) == early  # the origin's echo, as it came
    assert b"upgrade: websocket" in origin.requests[0].lower()


async def test_another_upgrade_is_ignored_and_the_connection_goes_on(
    make_origin: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    origin = await make_origin("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    h2c = [("Host", "site"), ("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c")]
    with caplog.at_level(logging.INFO):
        async with connect_raw(proxy.port) as (reader, writer):
            # The second request arrives in the same read as the upgrade request.
            writer.write(request_head("GET", "/echo", h2c) + request_head("GET", "/echo", h2c[:1]))
            for _ in range(2):
                response = await read_response(reader)
                assert response.status == 200
                assert response.get("x-failover-origin") == "primary"
    assert "upgrade" not in caplog.text.lower()


async def primary_and_secondary(echo: Any, make_proxy: Any, drain_timeout: float) -> Any:
    """Two echo origins, `primary` preferred, behind a ready proxy; the origins and the proxy."""
    primary = await echo("primary")
    secondary = await echo("secondary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", primary, 0),
            origin_config("secondary", secondary, 1),
            admin={"token": TOKEN},
            websocket={"drain_timeout": drain_timeout},
        )
    )
    await ready(proxy)
    return primary, secondary, proxy


async def test_drain_closes_the_origins_websockets_with_1012(echo: Any, make_proxy: Any) -> None:
    primary, _, proxy = await primary_and_secondary(echo, make_proxy, drain_timeout=0.3)
    async with client(proxy) as on_primary:
        await on_primary.send("whoami")
        assert await on_primary.recv() == "primary"
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        drained = await proxy.client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
        assert drained.status_code == 200
        assert await closed_with(on_primary) == (1012, "origin drained")
        assert loop.time() - asked_at >= 0.29  # after websocket.drain_timeout, not before
    await wait_for(lambda: primary.closes == [(1012, "origin drained")], timeout=5)
    # The client reconnects, to the next origin.
    async with client(proxy) as again:
        await again.send("whoami")
        assert await again.recv() == "secondary"


async def test_disable_closes_the_origins_websockets_at_once(echo: Any, make_proxy: Any) -> None:
    # A drain would wait a minute before it closes them; a disable does not wait.
    primary, _, proxy = await primary_and_secondary(echo, make_proxy, drain_timeout=60)
    async with client(proxy) as on_primary, client(proxy) as also_on_primary:
        await on_primary.send("whoami")
        assert await on_primary.recv() == "primary"
        await also_on_primary.send("whoami")
        assert await also_on_primary.recv() == "primary"
        # A drain first (its timer must not matter), then the disable replaces it.
        drained = await proxy.client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
        assert drained.status_code == 200
        await on_primary.send("still open while drained")
        assert await on_primary.recv() == "still open while drained"
        disabled = await proxy.client.post(f"{PREFIX}/origins/primary/disable", headers=AUTH)
        assert disabled.status_code == 200
        assert await closed_with(on_primary) == (1012, "origin disabled")
        assert await closed_with(also_on_primary) == (1012, "origin disabled")
    await wait_for(lambda: primary.closes.count((1012, "origin disabled")) == 2, timeout=5)
    async with client(proxy) as again:
        await again.send("whoami")
        assert await again.recv() == "secondary"


async def test_a_config_reload_leaves_open_websockets_alone(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary")
    config = proxy_config(origin_config("primary", origin, 0))
    proxy = await make_proxy(config)
    await ready(proxy)
    async with client(proxy) as ws:
        old_pool = proxy.app.runtime.origins["primary"].pool
        # New timeouts: the origin gets a new connection pool, the old one is closed soon.
        proxy.app.apply(build_settings({**config, "timeouts": {"first_byte": 0.2, "idle": 0.2}}))
        await wait_for(lambda: old_pool.closed, timeout=5)
        await ws.send("still here")
        assert await ws.recv() == "still here"
        assert len(proxy.app.websockets) == 1


async def test_shutdown_closes_websockets_with_1001(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    await ready(proxy)
    async with client(proxy) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        proxy.server.should_exit = True
        assert await closed_with(ws) == (1001, "server shutting down")
    await asyncio.wait_for(proxy.task, 10)
    await wait_for(lambda: origin.closes == [(1001, "server shutting down")], timeout=5)


async def test_limits_close_idle_and_oversized_websockets(echo: Any, make_proxy: Any) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(
        proxy_config(
            origin_config("primary", origin, 0),
            websocket={"idle_timeout": 0.3, "max_message_bytes": 1000},
        )
    )
    await ready(proxy)
    async with client(proxy, compression=None) as ws:
        await ws.send("a" * 1000)
        assert await ws.recv() == "a" * 1000
        await ws.send("b" * 1001)
        assert await closed_with(ws) == (1009, "message too big")
    await wait_for(lambda: origin.closes[-1:] == [(1009, "message too big")], timeout=5)
    loop = asyncio.get_running_loop()
    opening = loop.time()
    async with client(proxy) as ws:
        assert await closed_with(ws) == (1001, "idle timeout")
        assert loop.time() - opening >= 0.29


async def test_metrics_and_access_log(
    echo: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    origin = await echo("primary")
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin, 0), log={"access": True})
    )
    await ready(proxy)
    with caplog.at_level(logging.INFO, logger="failover.access"):
        async with client(proxy) as ws:
            await ws.send("12345")
            assert await ws.recv() == "12345"
            text = await get_metrics(proxy.client)
            assert metric(text, "failover_websockets_open", pool="default", origin="primary") == 1
            assert (
                metric(text, "failover_websocket_handshakes_total", pool="default", result="101")
                == 1
            )
        await wait_for(lambda: len(proxy.app.websockets) == 0, timeout=5)
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_websockets_open", pool="default", origin="primary") == 0
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "failover.access"]
    line = next(entry for entry in lines if entry.get("websocket"))
    assert line["status"] == 101 and line["origin"] == "primary" and line["path"] == "/chat"
    assert line["bytes_in"] > 5 and line["bytes_out"] > 5 and line["duration_ms"] > 0
    assert line["closed_by"] == "client"
    # The client closed normally (1000) and the origin answered with the same code.
    assert line["client_close_code"] == 1000 and line["origin_close_code"] == 1000


# -- the frame tracker (pure) ---------------------------------------------------------------


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = False) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if mask else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + n.to_bytes(8, "big")
    if mask:
        key = b"\x01\x02\x03\x04"
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def test_the_tracker_passes_frames_split_anywhere() -> None:
    stream = frame(1, b"hi") + frame(2, b"x" * 300, mask=True) + frame(2, b"y" * 70000)
    for size in (1, 2, 3, 7, 100, len(stream)):
        tracker = FrameTracker(max_message=70000)
        out = b"".join(tracker.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        assert out == stream
        assert tracker.left == 0 and tracker.head == b""


def test_the_tracker_stops_before_a_message_over_the_limit() -> None:
    tracker = FrameTracker(max_message=10)
    first = frame(1, b"12345", fin=False)
    ping = frame(9, b"p")
    second = frame(0, b"123456")  # the message would reach 11 bytes
    assert tracker.feed(first + ping + second) == first + ping
    assert tracker.too_big and tracker.dropping
    assert tracker.feed(frame(1, b"more")) == b""


def test_the_tracker_stops_at_the_next_frame_boundary() -> None:
    tracker = FrameTracker()
    big = frame(2, b"z" * 1000)
    assert tracker.feed(big[:10]) == big[:10]
    assert not tracker.stop()  # inside a frame: it ends first
    assert tracker.feed(big[10:] + frame(1, b"after")) == big[10:]
    assert tracker.dropping and not tracker.close_seen
    tracker.feed(frame(8, b"\x03\xe8", mask=True))
    assert tracker.close_seen


def test_the_tracker_reads_the_close_code_wherever_the_frame_is_split() -> None:
    for mask in (False, True):
        stream = frame(1, b"bye") + frame(8, b"\x0f\xa1going", mask=mask) + frame(8, b"\x03\xe8")
        for size in range(1, len(stream) + 1):
            tracker = FrameTracker()
            out = b"".join(tracker.feed(stream[i : i + size]) for i in range(0, len(stream), size))
            assert out == stream  # every byte passes, in order
            assert tracker.close_code == 4001, (mask, size)  # the first close frame's code
    tracker = FrameTracker()
    tracker.feed(frame(8, b"", mask=True))
    assert tracker.close_seen and tracker.close_code == 1005  # a close frame with no code


def test_close_frames_as_a_server_and_as_a_client_send_them() -> None:
    assert close_frame(1012, "origin drained", masked=False) == b"\x88\x10\x03\xf4origin drained"
    masked = close_frame(1001, "bye", masked=True)
    assert masked[:2] == b"\x88\x85"
    key, body = masked[2:6], masked[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"\x03\xe9bye"
