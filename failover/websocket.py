"""WebSocket pass-through: after the origin's 101, a byte-level tunnel between the client's
connection and the origin's.

The handshake is an ordinary request to the route's pool (failover.proxy: failover applies
until an origin answers 101). Once it has, the listener hands over the client's transport
(`failover.upgrade` extension), `Response.detach` the origin's, and a `Tunnel` joins them:
every byte read on one side is written to the other as it came, so subprotocols,
permessage-deflate, fragmentation, ping/pong and close codes pass end to end untouched.

Each direction has a `FrameTracker` that follows frame boundaries from the frame headers
alone (payloads are never copied or parsed). It lets the tunnel

- refuse a message larger than `websocket.max_message_bytes` (close 1009 both ways, the
  offending frame never forwarded);
- inject a close frame at a frame boundary towards each side: 1012 when the origin is
  drained (`websocket.drain_timeout` after the drain) or disabled (at once), 1001 on shutdown
  and after `websocket.idle_timeout` without a byte either way. Towards the client a server's frame
  (unmasked), towards the origin a client's frame (masked); after it, what that side still
  sends is read and dropped until its own close frame, and the connection closes.

Backpressure: when one side's write buffer is over its high-water mark, the other side is not
read (transports' pause_reading/resume_reading), so a tunnel holds at most one write buffer
and one read per direction whatever the peers do.

`WebSockets` is the app's registry of open tunnels (one per process, kept across config
reloads): the open gauge per origin, the drain timers, the close on shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .attempts import Attempts, Exchange
from .config import RetryConfig
from .metrics import Metrics
from .origins import Origin
from .retry import RetryPolicy
from .upstream import Upstream

__all__ = [
    "CLOSE_TIMEOUT",
    "FrameTracker",
    "Tunnel",
    "UpgradeAttempts",
    "WebSockets",
    "close_frame",
    "handshake_policy",
]

logger = logging.getLogger("failover.websocket")
_access = logging.getLogger("failover.access")

# After the proxy sent its close frame: how long each side has to answer with its own before
# its connection is closed anyway.
CLOSE_TIMEOUT = 2.0
GOING_AWAY = 1001
TOO_BIG = 1009
SERVICE_RESTART = 1012
_NO_LIMIT = sys.maxsize


def close_frame(code: int, reason: str, masked: bool) -> bytes:
    """A close frame: a server's (unmasked) or a client's (masked with a random key)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:123]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + key + body


class FrameTracker:
    """Follows the frames of one direction from their headers; `feed` returns the bytes that
    may pass (a prefix of what it was given, held-back header bytes put in front).

    A frame header split between two reads is held back until it is complete, so that the
    tracker can always stop at a frame boundary: past `max_message` payload bytes in one data
    message (`too_big`), or once `stop()` was called. From then on nothing passes, but frames
    are still followed so that the peer's close frame is seen (`close_seen`)."""

    __slots__ = (
        "close_code",
        "close_seen",
        "dropping",
        "head",
        "left",
        "limit",
        "message",
        "stopping",
        "too_big",
    )

    def __init__(self, max_message: int | None = None) -> None:
        self.limit = _NO_LIMIT if max_message is None else max_message
        self.head = b""  # the start of a frame header, held back
        self.left = 0  # payload bytes of the current frame still to come
        self.message = 0  # payload bytes of the data message in progress
        self.stopping = False  # stop at the next frame boundary
        self.dropping = False  # stopped: nothing passes any more
        self.too_big = False
        self.close_seen = False
        self.close_code: int | None = None  # of the first close frame (1005: it gave none)

    def stop(self) -> bool:
        """Stop passing bytes at the next frame boundary; True if this is one already."""
        self.stopping = True
        if self.left == 0:
            self.dropping = True
        return self.dropping

    def feed(self, data: bytes) -> bytes:
        left = self.left
        if left >= len(data) and not self.dropping:  # inside a payload: all of it passes
            self.left = left - len(data)
            return data
        return self._frames(data)

    def _frames(self, data: bytes) -> bytes:
        if self.head:
            data = self.head + data
            self.head = b""
        n = len(data)
        cut = 0 if self.dropping else n  # bytes that pass
        pos = 0
        left = self.left
        while True:
            if left:
                if left >= n - pos:
                    self.left = left - (n - pos)
                    return data[:cut] if cut < n else data
                pos += left
                left = 0
            self.left = 0
            if self.stopping and not self.dropping:
                self.dropping = True
                cut = pos
            if pos == n:
                return data[:cut] if cut < n else data
            if n - pos < 2:
                self.head = data[pos:]
                return data[: min(cut, pos)]
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (second >> 7) * 4
            if n - pos < size:
                self.head = data[pos:]
                return data[: min(cut, pos)]
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = first & 0x0F
            if opcode == 8 and not self.close_seen and length >= 2:
                # A close frame's code, its first two payload bytes, is read where it stands:
                # held back with the header until they are here (a close frame is small).
                if n - pos < size + 2:
                    self.head = data[pos:]
                    return data[: min(cut, pos)]
                code = data[pos + size : pos + size + 2]
                if second >> 7:  # masked (client to server)
                    key = data[pos + size - 4 : pos + size - 2]
                    code = bytes((code[0] ^ key[0], code[1] ^ key[1]))
                self.close_code = int.from_bytes(code, "big")
            if opcode < 8:  # continuation, text, binary: one message until FIN
                self.message = self.message + length if opcode == 0 else length
                if self.message > self.limit and not self.dropping:
                    self.too_big = self.dropping = True
                    cut = pos
            elif opcode == 8:
                if not self.close_seen and length < 2:
                    self.close_code = 1005  # RFC 6455 section 7.1.5: no status code present
                self.close_seen = True
            pos += size
            left = length


class _Side(asyncio.Protocol):
    """One of the tunnel's two connections: what it reads goes to the other one."""

    __slots__ = (
        "bytes",
        "close_sent",
        "frames",
        "lost",
        "other",
        "pending_close",
        "transport",
        "tunnel",
    )

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, max_message: int | None):
        self.tunnel = tunnel
        self.transport = transport
        self.frames = FrameTracker(max_message)
        self.other: _Side = self  # set by the tunnel
        self.bytes = 0
        self.pending_close = b""  # a close frame for the other side, at our next boundary
        self.close_sent = False  # the proxy's close frame was written to this side
        self.lost = False

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        tunnel.last = tunnel.loop.time()
        self.bytes += len(data)
        frames = self.frames
        out = frames.feed(data)
        if out and not self.other.lost:
            self.other.transport.write(out)
        if frames.close_seen and not tunnel.closed_by:
            tunnel.closed_by = "client" if self is tunnel.client_side else "origin"
        if frames.dropping:
            self._stopped()

    def _stopped(self) -> None:
        frames = self.frames
        if self.pending_close:
            self.other.send_close(self.pending_close)
            self.pending_close = b""
        if frames.too_big and not self.tunnel.closing:
            frames.too_big = False
            self.tunnel.close(TOO_BIG, "message too big", "too-big")
        self._answered()

    def send_close(self, frame: bytes) -> None:
        """Write the proxy's close frame to this side."""
        if not self.lost:
            self.transport.write(frame)
            self.close_sent = True
            self._answered()

    def _answered(self) -> None:
        if self.close_sent and self.frames.close_seen and not self.lost:
            # The closing handshake with this side is complete: its connection is done.
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # a half-close ends the tunnel like a close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.side_lost(self)

    def pause_writing(self) -> None:
        if not self.other.lost:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.other.lost:
            self.other.transport.resume_reading()


class Tunnel:
    """One WebSocket connection joined to its origin's. Ends when both connections have."""

    def __init__(
        self,
        registry: WebSockets,
        upstream: asyncio.Transport,
        origin: Origin,
        idle_timeout: float,
        max_message: int | None,
        log: dict[str, Any] | None,
    ) -> None:
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.origin = origin
        self.idle_timeout = idle_timeout
        self.max_message = max_message
        self.log = log  # the access log line's fields, None without an access log
        # Only what clients send is held to max_message_bytes.
        self.origin_side = _Side(self, upstream, None)  # reads the origin
        self.client_side: _Side | None = None  # reads the client
        self.closing = False
        self.closed_by = ""
        self.started = self.last = self.loop.time()
        self.connections: set[Any] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.done = False

    def start(
        self,
        client: asyncio.Transport,
        client_early: bytes,
        origin_early: bytes,
        connections: set[Any],
    ) -> None:
        """Join `client` (from the listener) to the origin's connection and start reading."""
        self.connections = connections
        client_side = self.client_side = _Side(self, client, self.max_message)
        origin_side = self.origin_side
        client_side.other, origin_side.other = origin_side, client_side
        client.set_protocol(client_side)
        origin_side.transport.set_protocol(origin_side)
        self.registry.add(self)
        self._idle = self.loop.call_later(self.idle_timeout, self._check_idle)
        if origin_early and not origin_side.lost:
            origin_side.data_received(origin_early)
        if client_early and not client_side.lost:
            client_side.data_received(client_early)
        for side in (client_side, origin_side):
            if not side.lost:
                side.transport.resume_reading()

    # -- closing -----------------------------------------------------------------------------

    def close(self, code: int, reason: str, why: str) -> None:
        """Send a close frame (`code`, `reason`) to both sides at their next frame boundary;
        each connection closes once its side answers, or after CLOSE_TIMEOUT."""
        if self.closing or self.done:
            return
        self.closing = True
        self.closed_by = why
        client_side, origin_side = self.client_side, self.origin_side
        assert client_side is not None
        # Towards the client: after the frame the origin is sending, a server's frame.
        self._inject(origin_side, close_frame(code, reason, masked=False))
        # Towards the origin: after the frame the client is sending, a client's frame.
        self._inject(client_side, close_frame(code, reason, masked=True))
        self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def _inject(self, reader: _Side, frame: bytes) -> None:
        """Write `frame` to the side `reader` forwards to, at `reader`'s next frame boundary."""
        if reader.other.lost:
            return
        if reader.frames.stop():
            reader.other.send_close(frame)
        else:
            reader.pending_close = frame

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown (the tunnel is in its set of connections)."""
        self.close(GOING_AWAY, "server shutting down", "shutdown")

    def abort(self) -> None:
        for side in (self.client_side, self.origin_side):
            if side is not None and not side.lost:
                side.transport.abort()

    def _check_idle(self) -> None:
        self._idle = None
        if self.done or self.closing:
            return
        quiet = self.loop.time() - self.last
        if quiet >= self.idle_timeout:
            self.close(GOING_AWAY, "idle timeout", "idle")
        else:
            self._idle = self.loop.call_later(self.idle_timeout - quiet, self._check_idle)

    def side_lost(self, side: _Side) -> None:
        other = side.other
        if not self.closed_by:
            self.closed_by = "client" if side is self.client_side else "origin"
        if not other.lost:
            other.transport.close()  # what is buffered for it goes out first
            if self._close_timer is None:
                self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.abort)
            return
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        for timer in (self._idle, self._close_timer):
            if timer is not None:
                timer.cancel()
        if self.connections is not None:
            self.connections.discard(self)
        self.registry.remove(self)
        if self.log is not None:
            client_side = self.client_side
            self.log["duration_ms"] = round((self.loop.time() - self.started) * 1000, 3)
            self.log["bytes_in"] = 0 if client_side is None else client_side.bytes
            self.log["bytes_out"] = self.origin_side.bytes
            self.log["closed_by"] = self.closed_by
            # The code of the close frame each side sent (null: it sent none).
            client_code = None if client_side is None else client_side.frames.close_code
            self.log["client_close_code"] = client_code
            self.log["origin_close_code"] = self.origin_side.frames.close_code
            _access.info(json.dumps(self.log, separators=(",", ":")))


class WebSockets:
    """The open tunnels of this process, kept across config reloads."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.by_origin: dict[str, set[Tunnel]] = {}
        self._drains: dict[str, asyncio.TimerHandle] = {}
        self._emptied: asyncio.Event | None = None

    def __len__(self) -> int:
        return sum(len(tunnels) for tunnels in self.by_origin.values())

    def open_to(self, origin: str) -> int:
        return len(self.by_origin.get(origin, ()))

    def add(self, tunnel: Tunnel) -> None:
        self.by_origin.setdefault(tunnel.origin.name, set()).add(tunnel)
        if self.metrics is not None:
            origin = tunnel.origin
            self.metrics.websockets_open.labels(origin.pool_name, origin.name).inc()

    def remove(self, tunnel: Tunnel) -> None:
        tunnels = self.by_origin.get(tunnel.origin.name)
        if tunnels is None or tunnel not in tunnels:
            return
        tunnels.discard(tunnel)
        if not tunnels:
            del self.by_origin[tunnel.origin.name]
            if not self.by_origin and self._emptied is not None:
                self._emptied.set()
        if self.metrics is not None:
            origin = tunnel.origin
            self.metrics.websockets_open.labels(origin.pool_name, origin.name).dec()

    def drained(self, origin: str, timeout: float) -> None:
        """`origin` was drained: its WebSockets close with 1012 after `timeout` seconds
        (unless it is enabled again first)."""
        if origin in self._drains:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the app is being built: no WebSocket is open yet
        self._drains[origin] = loop.call_later(timeout, self._close_drained, origin)

    def undrained(self, origin: str) -> None:
        timer = self._drains.pop(origin, None)
        if timer is not None:
            timer.cancel()

    def disabled(self, origin: str) -> None:
        """`origin` was disabled (forced down): its WebSockets close with 1012 at once."""
        self.undrained(origin)
        self._close_all(origin, "disabled", "disable")

    def _close_drained(self, origin: str) -> None:
        self._drains.pop(origin, None)
        self._close_all(origin, "drained", "drain")

    def _close_all(self, origin: str, state: str, why: str) -> None:
        # A tunnel already closing is left to finish (Tunnel.close does nothing twice).
        tunnels = [t for t in self.by_origin.get(origin, ()) if not t.closing]
        if tunnels:
            logger.info(
                "Closing %d WebSocket%s to the %s origin %s (1012).",
                len(tunnels),
                "" if len(tunnels) == 1 else "s",
                state,
                origin,
            )
        for tunnel in tunnels:
            tunnel.close(SERVICE_RESTART, f"origin {state}", why)

    async def close(self, wait: float = CLOSE_TIMEOUT) -> None:
        """On shutdown: close every tunnel with 1001, wait for them up to `wait` seconds,
        abort what is left."""
        for timer in self._drains.values():
            timer.cancel()
        self._drains.clear()
        if not self.by_origin:
            return
        self._emptied = asyncio.Event()
        for tunnel in [t for tunnels in self.by_origin.values() for t in tunnels]:
            tunnel.shutdown()
        try:
            async with asyncio.timeout(wait):
                await self._emptied.wait()
        except TimeoutError:
            for tunnel in [t for tunnels in self.by_origin.values() for t in tunnels]:
                tunnel.abort()


def handshake_policy(config: RetryConfig) -> RetryPolicy:
    """A pool's retry policy for WebSocket handshakes: until an origin has answered 101
    nothing has happened there, so a connect failure, a reset, a timeout and every 5xx move
    the handshake to the next origin, within `retry.attempts`."""
    policy = RetryPolicy(config)
    policy.conditions = frozenset({"connect-failure", "reset", "timeout"})
    policy.statuses = policy.statuses | frozenset(range(500, 600))
    policy.methods = policy.methods | {"GET"}
    return policy


class UpgradeAttempts(Attempts):
    """The attempts of a WebSocket handshake: as a request's, except that the connection
    may switch protocols (a 101 is the final answer) and nothing is hedged."""

    hedges = False

    def __init__(
        self,
        upstream: Upstream,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(upstream, clock, metrics)
        self.open = functools.partial(upstream.open, upgrade=True)


def access_fields(
    client: Any, exchange: Exchange, wall_clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """The access log line of a WebSocket, completed when it closes."""
    return {
        "time": round(wall_clock(), 3),
        "client": client[0] if client else None,
        "pool": exchange.pool.name,
        "method": exchange.method,
        "path": exchange.target,
        "status": 101,
        "origin": exchange.origin,
        "attempts": exchange.attempts,
        "websocket": True,
    }
