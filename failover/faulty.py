"""A fault-injecting HTTP origin server for the demo and for end-to-end and chaos tests.

A FaultyOrigin listens on loopback and answers like a small, predictable web server until it is
told to misbehave. The mode can be switched from Python with set_mode() or over HTTP with
`POST /_origin/mode/{mode}`, which keeps working in every mode that still has a listener.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, Literal, NoReturn, cast, get_args

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

Mode = Literal["ok", "refuse", "reset", "blackhole", "http5xx", "slow", "partial", "flap"]
MODES: tuple[str, ...] = get_args(Mode)

CHUNK_SIZE = 64 * 1024
PATTERN_PERIOD = 251
_PATTERN = bytes(i % PATTERN_PERIOD for i in range(CHUNK_SIZE + PATTERN_PERIOD))
_GZIP_BODY = gzip.compress(b"hello " * 100, mtime=0)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_CONTROL_PREFIX = "/_origin/"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordedRequest:
    """What the origin saw of one request: its line, its raw headers in order and its body."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body_length: int
    body_sha256: str

    def to_json(self) -> dict[str, Any]:
        """Return the request as a JSON-ready dictionary."""
        return {
            "method": self.method,
            "path": self.path,
            "headers": [[name, value] for name, value in self.headers],
            "body_length": self.body_length,
            "body_sha256": self.body_sha256,
        }


@dataclass
class OriginStats:
    """Counters kept by the origin; control requests are never counted."""

    requests: int = 0
    health_requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    open_connections: int = 0
    last_request: RecordedRequest | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dictionary."""
        last = self.last_request
        return {
            "requests": self.requests,
            "health_requests": self.health_requests,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "open_connections": self.open_connections,
            "last_request": None if last is None else last.to_json(),
        }


class _TrackingServer(web.Server):
    """An aiohttp low-level server that knows every open TCP connection."""

    def __init__(self, handler: Handler, on_count: Callable[[int], None]) -> None:
        # Cancelling the handler when the client goes away ends blackholed and slow requests.
        super().__init__(handler, handler_cancellation=True, access_log=None)
        self.transports: dict[web.RequestHandler, asyncio.Transport] = {}
        self._on_count = on_count

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        """Remember the new connection."""
        super().connection_made(handler, transport)
        self.transports[handler] = transport
        self._on_count(len(self.transports))

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        """Forget the closed connection."""
        super().connection_lost(handler, exc)
        self.transports.pop(handler, None)
        self._on_count(len(self.transports))

    def abort_all(self, spare: asyncio.Transport | None = None) -> None:
        """Drop every open connection at once, except the spared one."""
        for transport in list(self.transports.values()):
            if transport is not spare:
                transport.abort()


class FaultyOrigin:
    """An HTTP origin on loopback whose failure mode can be switched at run time."""

    def __init__(
        self,
        name: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Mode = "ok",
        slow_delay: float = 3.0,
        partial_rate: float = 0.3,
        flap_period: float = 1.5,
        health_path: str = "/health",
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        ssl: SSLContext | None = None,
    ) -> None:
        _check_mode(mode)
        self.ssl = ssl  # serve HTTPS with this context
        self.name = name
        self.host = host
        self.port = port
        self.mode: Mode = mode
        self.slow_delay = slow_delay
        self.partial_rate = partial_rate
        self.flap_period = flap_period
        self.health_path = health_path
        self.stats = OriginStats()
        self._clock = clock
        self._mode_since = clock()
        self._rng = random.Random(seed)
        self._server: _TrackingServer | None = None
        self._listener: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """Return the base URL of the origin, such as http://127.0.0.1:8081."""
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind the port and start answering; a port of 0 picks a free one."""
        if self._server is not None:
            return
        self._server = _TrackingServer(self._handle, self._count_connections)
        await self._listen()
        if self.mode == "refuse":
            self._close_listener()

    async def stop(self) -> None:
        """Close the listener and every open connection, hung ones included."""
        server = self._server
        if server is None:
            return
        self._close_listener()
        server.abort_all()
        await server.shutdown(timeout=1.0)
        self._server = None

    async def set_mode(self, mode: Mode) -> None:
        """Switch the failure mode; refuse closes the port and leaving refuse reopens it."""
        await self._switch(mode)

    def reset_stats(self) -> None:
        """Zero the counters and forget the last request."""
        self.stats.requests = 0
        self.stats.health_requests = 0
        self.stats.by_status.clear()
        self.stats.last_request = None

    async def _switch(self, mode: Mode, spare: asyncio.Transport | None = None) -> None:
        """Switch the mode, sparing one connection when refuse closes the others."""
        _check_mode(mode)
        self.mode = mode
        self._mode_since = self._clock()
        if self._server is None:
            return
        if mode == "refuse":
            # A refusing origin is a dead one: pooled connections to it must fail too.
            self._close_listener()
            self._server.abort_all(spare)
        elif self._listener is None:
            await self._listen()

    async def _listen(self) -> None:
        """Open the listening socket on the configured or previously chosen port."""
        assert self._server is not None
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, self.host, self.port, reuse_address=True, ssl=self.ssl
        )
        self.port = self._listener.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        """Close the listening socket so that new connections are refused."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _count_connections(self, count: int) -> None:
        """Record how many TCP connections are open."""
        self.stats.open_connections = count

    def _headers(self) -> CIMultiDict[str]:
        """Return fresh response headers that name this origin."""
        return CIMultiDict({"X-Origin": self.name})

    def _text(self, text: str, status: int = 200) -> web.Response:
        """Return a plain-text response."""
        return web.Response(text=text, status=status, headers=self._headers())

    def _json(self, data: dict[str, Any], status: int = 200) -> web.Response:
        """Return a JSON response."""
        return web.Response(
            text=json.dumps(data),
            status=status,
            content_type="application/json",
            headers=self._headers(),
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request according to the current mode."""
        if request.path.startswith(_CONTROL_PREFIX):
            return await self._control(request)
        health = request.path == self.health_path
        if health:
            self.stats.health_requests += 1
        else:
            self.stats.requests += 1
        response = await self._faulted(request, health)
        if not health:
            self.stats.by_status[response.status] += 1
        return response

    async def _faulted(self, request: web.BaseRequest, health: bool) -> web.StreamResponse:
        """Apply the mode's fault, or hand the request on to the normal answers."""
        mode = self.mode
        if mode in ("reset", "refuse"):
            self._record(request, health, 0, hashlib.sha256().hexdigest())
            _reset_connection(request)
            await _hang()
        length, digest = await _read_body(request)
        recorded = self._record(request, health, length, digest)
        if mode == "blackhole":
            await _hang()
        if mode == "http5xx" or (mode == "flap" and self._flap_is_down()):
            return self._text(f"{self.name}: 503 ({mode} mode)", status=503)
        if health:
            return self._text("ok")
        if mode == "slow":
            await asyncio.sleep(self.slow_delay)
        if mode == "partial" and self._rng.random() < self.partial_rate:
            return self._text(f"{self.name}: 500 (partial mode)", status=500)
        return await self._answer(request, recorded)

    def _record(
        self, request: web.BaseRequest, health: bool, length: int, digest: str
    ) -> RecordedRequest:
        """Build the record of a request and keep it unless it is a health check."""
        recorded = RecordedRequest(
            method=request.method,
            path=request.raw_path,
            headers=[(_decode(name), _decode(value)) for name, value in request.raw_headers],
            body_length=length,
            body_sha256=digest,
        )
        if not health:
            self.stats.last_request = recorded
        return recorded

    def _flap_is_down(self) -> bool:
        """Tell whether a flapping origin is in the failing half of its cycle."""
        elapsed = self._clock() - self._mode_since
        return int(elapsed // self.flap_period) % 2 == 1

    async def _answer(
        self, request: web.BaseRequest, recorded: RecordedRequest
    ) -> web.StreamResponse:
        """Give the normal answer for a path."""
        path = request.path
        if path in ("/echo", "/upload"):
            return self._json({"origin": self.name, **recorded.to_json()})
        if path.startswith("/bytes/"):
            return await self._bytes(request, path.removeprefix("/bytes/"))
        if path.startswith("/chunked/"):
            return await self._chunked(request, path.removeprefix("/chunked/"))
        if path.startswith("/status/"):
            return self._status(path.removeprefix("/status/"))
        if path == "/headers":
            return self._repeated_headers()
        if path == "/gzip":
            headers = self._headers()
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=_GZIP_BODY, content_type="text/plain", headers=headers)
        if path.startswith("/delay/"):
            return await self._delay(path.removeprefix("/delay/"))
        if path.startswith("/cache/"):
            return self._cacheable(request)
        return self._text(self.name)

    def _cacheable(self, request: web.BaseRequest) -> web.Response:
        """Answer `/cache/...` with the caching headers its query asks for: `cc` becomes
        Cache-Control, `cookie` Set-Cookie and `vary` Vary; the body names the origin, the
        path and the value of each request header that `vary` names."""
        query = request.query
        text = f"{self.name}:{request.path}"
        headers = self._headers()
        vary = query.get("vary")
        if vary is not None:
            headers["Vary"] = vary
            for name in (n.strip() for n in vary.split(",")):
                if name and name != "*":
                    text += f" {name.lower()}={request.headers.get(name, '-')}"
        cache_control = query.get("cc")
        if cache_control is not None:
            headers["Cache-Control"] = cache_control
        cookie = query.get("cookie")
        if cookie is not None:
            headers["Set-Cookie"] = cookie
        return web.Response(text=text, headers=headers)

    async def _bytes(self, request: web.BaseRequest, size_text: str) -> web.StreamResponse:
        """Stream the byte pattern with a Content-Length, honouring a single Range."""
        if not size_text.isdigit():
            return self._text("byte count must be a whole number", status=400)
        size = int(size_text)
        headers = self._headers()
        headers["Accept-Ranges"] = "bytes"
        try:
            span = parse_range(request.headers.get("Range"), size)
        except ValueError:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        start, stop, status = 0, size, 200
        if span is not None:
            start, stop, status = span[0], span[1], 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = "application/octet-stream"
        response.content_length = stop - start
        return await self._send_pattern(request, response, start, stop)

    async def _chunked(self, request: web.BaseRequest, size_text: str) -> web.StreamResponse:
        """Stream the byte pattern with chunked transfer encoding (HTTP/1.0 gets a plain close)."""
        if not size_text.isdigit():
            return self._text("byte count must be a whole number", status=400)
        response = web.StreamResponse(headers=self._headers())
        response.content_type = "application/octet-stream"
        if request.version >= HttpVersion11:
            response.enable_chunked_encoding()
        return await self._send_pattern(request, response, 0, int(size_text))

    async def _send_pattern(
        self, request: web.BaseRequest, response: web.StreamResponse, start: int, stop: int
    ) -> web.StreamResponse:
        """Write the pattern bytes from start up to stop, one chunk at a time."""
        await response.prepare(request)
        if request.method != "HEAD":
            offset = start
            while offset < stop:
                count = min(CHUNK_SIZE, stop - offset)
                await response.write(pattern(offset, count))
                offset += count
                # write() only waits when the socket is backed up; let other tasks run too.
                await asyncio.sleep(0)
        await response.write_eof()
        return response

    def _status(self, code_text: str) -> web.Response:
        """Answer with the status code named in the path."""
        if not code_text.isdigit() or not 200 <= int(code_text) <= 599:
            return self._text("status must be between 200 and 599", status=400)
        code = int(code_text)
        if code in (204, 304):
            return web.Response(status=code, headers=self._headers())
        return self._text(f"{self.name}: {code}", status=code)

    def _repeated_headers(self) -> web.Response:
        """Answer with repeated and hop-by-hop headers for proxies to handle."""
        headers = self._headers()
        headers.add("Set-Cookie", "a=1")
        headers.add("Set-Cookie", "b=2")
        headers.add("Connection", "close, X-Hop")
        headers.add("X-Hop", "1")
        headers.add("Keep-Alive", "timeout=5")
        response = web.Response(text=self.name, headers=headers)
        response.force_close()
        return response

    async def _delay(self, seconds_text: str) -> web.Response:
        """Answer after the number of seconds named in the path."""
        try:
            seconds = float(seconds_text)
        except ValueError:
            seconds = -1.0
        if not math.isfinite(seconds) or seconds < 0:
            return self._text("delay must be a non-negative number of seconds", status=400)
        await asyncio.sleep(seconds)
        return self._text(self.name)

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer the /_origin/ endpoints, which work whatever the mode."""
        action = request.path.removeprefix(_CONTROL_PREFIX)
        if action == "stats":
            if request.method != "GET":
                return self._not_allowed("GET")
            return self._json(self.stats.to_json())
        if action == "reset-stats":
            if request.method != "POST":
                return self._not_allowed("POST")
            self.reset_stats()
            return self._json(self.stats.to_json())
        if action.startswith("mode/"):
            if request.method != "POST":
                return self._not_allowed("POST")
            return await self._control_mode(request, action.removeprefix("mode/"))
        return self._text(f"unknown control endpoint {request.path}", status=404)

    async def _control_mode(self, request: web.BaseRequest, mode: str) -> web.StreamResponse:
        """Switch the mode over HTTP; a switch to refuse answers before the port closes."""
        if mode not in MODES:
            return self._json({"error": f"unknown mode {mode!r}", "modes": list(MODES)}, 400)
        new_mode = cast(Mode, mode)
        response = self._json({"name": self.name, "mode": new_mode})
        if new_mode == "refuse":
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            await self._switch(new_mode, spare=request.transport)
        else:
            await self._switch(new_mode)
        return response

    def _not_allowed(self, method: str) -> web.Response:
        """Answer 405 for a control endpoint called with the wrong method."""
        response = self._text(f"use {method}", status=405)
        response.headers["Allow"] = method
        return response


def pattern(offset: int, count: int) -> memoryview:
    """Return count bytes of the pattern (byte i is i % 251) starting at offset; at most 64 KiB."""
    start = offset % PATTERN_PERIOD
    return memoryview(_PATTERN)[start : start + count]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the half-open byte span a single Range header asks for, or None to send it all.

    A missing, malformed or multi-part Range is ignored. A well-formed range that lies
    outside the body raises ValueError.
    """
    match = _RANGE.fullmatch(header.strip()) if header is not None else None
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError("unsatisfiable range")
        return max(0, size - suffix), size
    start = int(first)
    if start >= size:
        raise ValueError("unsatisfiable range")
    if last == "":
        return start, size
    if int(last) < start:
        return None
    return start, min(int(last) + 1, size)


def _check_mode(mode: str) -> None:
    """Raise ValueError for a name that is not a mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def _decode(raw: bytes) -> str:
    """Decode a raw header name or value the way aiohttp decodes its own headers."""
    return raw.decode("utf-8", "surrogateescape")


async def _read_body(request: web.BaseRequest) -> tuple[int, str]:
    """Read the request body as it streams in and return its length and sha256 hex."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


def _reset_connection(request: web.BaseRequest) -> None:
    """Abort the request's TCP connection with a RST instead of a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # A zero linger time makes close() discard the connection and send RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()


async def _hang() -> NoReturn:
    """Wait until the request is cancelled, which happens when its connection closes."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("a hung request only ever ends by cancellation")
