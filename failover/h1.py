"""A minimal HTTP/1.1 client: one keep-alive connection pool per origin, on `asyncio.Protocol`
and httptools (the parser uvicorn uses). It does what the proxy's upstream needs and no more:

- one request at a time per connection (no pipelining); idle connections are reused last in,
  first out, and closed once they were idle for `keepalive` seconds;
- at most `limit` connections per pool, idle ones included; a request waits for a free one;
- requests go out as given: the raw target, the headers in their order, nothing added but the
  `Transfer-Encoding: chunked` framing of a body without a Content-Length;
- responses come back as received: status, raw headers, body bytes (never decompressed), with
  backpressure (the socket is not read while the consumer is behind);
- a connection is reused only after a response read to its end, a request body sent in full and
  keep-alive on both sides; in every other case it is closed;
- an idle connection that the origin closed (or half-closed) is never written to: a request
  finds it closed before sending a byte and goes out on a new connection, whatever its method;
- a reused connection that breaks before the first byte of the response (the origin closed it
  while the request was on its way) is retried once on a new one, for an idempotent request
  whose body (if any) can be sent again;
- waiting for a free connection is bounded (`acquire_timeout`) and is not the origin's fault:
  `PoolFull`, never an `OSError`.

Errors of the origin are `OSError`s, as the proxy's data path expects of a broken upstream:

    ConnectError          no connection: refused, unreachable, DNS, TLS, connect timeout
    ServerDisconnected    the origin closed the connection before the response ended
    InvalidResponse       the origin's bytes are not an HTTP/1.x response (or its status is
                          outside 100-599, or its head is longer than MAX_HEAD)
    ConnectionResetError  (and the other socket errors, as the socket reports them)
    TimeoutError          no body bytes for `read_timeout` seconds
    SendTimeout           (a TimeoutError) the origin took no request bytes for `send_timeout`
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

import aiohappyeyeballs
import httptools

__all__ = [
    "HAPPY_EYEBALLS_DELAY",
    "IDEMPOTENT_METHODS",
    "MAX_HEAD",
    "AddressSource",
    "ConnectError",
    "Connection",
    "InvalidResponse",
    "Pool",
    "PoolFull",
    "Response",
    "ResponseBody",
    "SendTimeout",
    "ServerDisconnected",
]

RawHeaders = tuple[tuple[bytes, bytes], ...]

# Unread response body above which the socket is no longer read until the consumer catches up.
HIGH_WATER = 256 * 1024
# A response whose status line and headers take more bytes than this is refused.
MAX_HEAD = 64 * 1024
# RFC 9110 section 9.2.2; only these are sent again after a stale keep-alive connection broke.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_BODY_STATUSES = frozenset({204, 304})
# RFC 8305's "Connection Attempt Delay": the next address is tried after this long without an
# answer from the one before (at once when it refuses).
HAPPY_EYEBALLS_DELAY = 0.25


class ConnectError(OSError):
    """No connection could be made. `os_error` is the socket's error, None for a timeout."""

    def __init__(self, reason: str, os_error: OSError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.os_error = os_error


class ServerDisconnected(ConnectionError):
    """The origin closed the connection before the response ended."""

    def __init__(self, message: str = "server closed the connection") -> None:
        super().__init__(message)


class InvalidResponse(ConnectionError):
    """What the origin sent is not a valid HTTP/1.x response."""


class SendTimeout(TimeoutError):
    """The origin took no request bytes for `send_timeout` seconds."""


class PoolFull(Exception):
    """Every connection of the pool stayed busy for `acquire_timeout` seconds. Not an error of
    the origin: nothing was sent to it."""


class _Closed(Exception):
    """The connection was found closed before a byte of the request was written."""


class AddressSource(Protocol):
    """Where a pool whose URL names a host finds its addresses (failover.resolver)."""

    def attach(self, pool: Pool) -> None: ...

    def addresses(self) -> tuple[str, ...]: ...

    async def resolve(self) -> tuple[str, ...]: ...

    def connected(self, address: str) -> None: ...


@runtime_checkable
class Replayable(Protocol):
    """A request body that can be sent again from its first byte (`can_replay`)."""

    @property
    def can_replay(self) -> bool: ...


class ResponseBody:
    """The response body as it arrives: `readany()` returns what is buffered (b"" at the end)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn

    async def readany(self) -> bytes:
        """The next bytes of the body (all that is buffered), b"" once it has ended.

        Raises what broke the response, or TimeoutError after `read_timeout` seconds without
        a byte."""
        conn = self._conn
        if conn is None:
            return b""
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait_for_body()

    def is_eof(self) -> bool:
        """True once the whole body has arrived and every byte of it was read."""
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    async def read(self) -> bytes:
        """The rest of the body."""
        parts: list[bytes] = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)


class Response:
    """An origin's response: call `release()` once it is read, or `close()` to abandon it."""

    __slots__ = ("content", "raw_headers", "status")

    def __init__(self, conn: Connection, status: int, raw_headers: RawHeaders) -> None:
        self.status = status
        self.raw_headers = raw_headers  # as received: order, case and repeats kept
        self.content = ResponseBody(conn)

    def release(self) -> None:
        """Hand the connection back to the pool if the response was read to its end (and both
        sides keep it alive); close it otherwise."""
        conn = self.content._conn
        if conn is not None:
            self.content._conn = None
            conn.finish(reuse=True)

    def close(self) -> None:
        """Close the connection, whatever was read."""
        conn = self.content._conn
        if conn is not None:
            self.content._conn = None
            conn.finish(reuse=False)

    def detach(self) -> tuple[asyncio.Transport, bytes] | None:
        """After a 101 to an upgrade request: take the connection out of its pool and return
        its transport (not being read) and the bytes that followed the 101's head; None if the
        origin closed it already."""
        conn = self.content._conn
        if conn is None:
            return None
        self.content._conn = None
        conn.active = False
        conn.pool._drop(conn)
        if conn.closed or conn.eof or conn.transport is None or conn.transport.is_closing():
            conn.close()
            return None
        return conn.transport, conn.upgraded


class Connection(asyncio.Protocol):
    """One connection to the origin and the state of the exchange it carries."""

    # Set by the one caller that sends an upgrade request (failover.websocket): a 101 is then
    # the final response, the connection stops being read, and `upgraded` holds what came
    # after the 101's head. Never reused afterwards.
    upgrade = False
    upgraded = b""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser_spent = False  # after a HEAD response (see on_headers_complete)
        self.lost: asyncio.Future[None] = loop.create_future()
        self.address: str | None = None  # the peer's IP, when the pool resolves its host
        self.closed = False  # connection_lost has run
        self.eof = False  # the origin half-closed it
        self.reused = False  # it served a response before the current one
        self.idle_since = 0.0
        self.in_idle_list = False
        # The exchange in progress.
        self.active = False
        self.is_head = False
        self.got_bytes = False  # a byte of the response has arrived
        self.head_bytes = 0  # bytes received before the final response headers ended
        # Set while a read could take the response head past MAX_HEAD: the parser callbacks
        # then count its bytes (`head_size`); a read that cannot costs no counting.
        self.count_head = False
        self.head_size = 0
        self.headers_waiter: asyncio.Future[Response] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.interim = False  # inside a 1xx response
        self.keep_alive = False
        self.until_eof = False  # the body ends when the connection does
        self.complete = False  # the whole response has arrived
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.reading_paused = False
        self.reader: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.drainer: asyncio.Future[None] | None = None
        self.sender: asyncio.Task[None] | None = None
        self.request_sent = False

    # -- the exchange ---------------------------------------------------------------------

    async def exchange(
        self,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        chunked: bool,
        is_head: bool,
        expires_at: float | None = None,
    ) -> Response:
        """Send the request; return once the final response headers are in (TimeoutError if
        they are not in by the loop time `expires_at`)."""
        if self.closed or self.eof or self.transport is None or self.transport.is_closing():
            raise _Closed()
        if self.parser_spent:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_spent = False
        self.active = True
        self.is_head = is_head
        self.got_bytes = False
        self.head_bytes = 0
        self.count_head = False
        self.headers = []
        self.headers_done = self.interim = self.complete = False
        self.keep_alive = self.until_eof = False
        self.error = None
        self.chunks = []
        self.buffered = 0
        self.request_sent = body is None
        waiter: asyncio.Future[Response] = self.loop.create_future()
        self.headers_waiter = waiter
        self.transport.write(head)
        if body is not None:
            self.sender = self.loop.create_task(self._send_body(body, chunked))
        if expires_at is None:
            return await waiter
        timer = self.loop.call_at(expires_at, _expire, waiter)  # one handle, not a Timeout
        try:
            return await waiter
        finally:
            timer.cancel()

    async def _send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if self.closed:
                    return  # connection_lost has told the waiting side
                if not chunk:
                    continue
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                if self.writing_paused and not self.closed:
                    await self._drain()
            if self.closed:
                return
            if chunked:
                transport.write(b"0\r\n\r\n")
            self.request_sent = True
        except Exception as exc:  # the body's source failed (e.g. the client went away)
            self.sender = None  # done: close() must not cancel this very task
            self.fail(exc)

    async def _drain(self) -> None:
        """Until the origin takes the buffered request bytes; SendTimeout after `send_timeout`."""
        timeout = self.pool.send_timeout
        while self.writing_paused and not self.closed:
            drainer = self.drainer = self.loop.create_future()
            timer = self.loop.call_later(timeout, _expire, drainer)
            try:
                await drainer
            except TimeoutError:
                raise SendTimeout(f"the origin took no request bytes for {timeout:g} s") from None
            finally:
                timer.cancel()

    def take(self) -> bytes:
        """Everything buffered, as one bytes object; reading resumes if it was paused."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    async def wait_for_body(self) -> None:
        """Until more body bytes, the end or an error; TimeoutError after `read_timeout` s."""
        waiter = self.reader = self.loop.create_future()
        timer = self.loop.call_later(self.pool.read_timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            raise TimeoutError(
                f"no response bytes for {self.pool.read_timeout:g} s from {self.pool.name}"
            ) from None
        finally:
            timer.cancel()
            self.reader = None

    def finish(self, reuse: bool) -> None:
        """The response is done with: back to the pool if it may be, else closed."""
        self.active = False
        self.headers_waiter = None
        sender, self.sender = self.sender, None
        if sender is not None and not sender.done():
            sender.cancel()
            reuse = False
        if (
            reuse
            and self.complete
            and self.keep_alive
            and self.request_sent
            and self.error is None
            and not self.closed
        ):
            self.chunks = []
            self.buffered = 0
            if self.reading_paused and self.transport is not None:
                self.reading_paused = False
                self.transport.resume_reading()
            self.reused = True
            self.pool._put(self)
        else:
            self.close()
            self.pool._drop(self)

    def fail(self, exc: BaseException) -> None:
        """The exchange is broken: report `exc` to whoever waits, unless the response was
        complete already, and close the connection."""
        self.keep_alive = False
        if not self.complete and self.error is None:
            self.error = exc
            waiter = self.headers_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            self._wake_reader()
        self.close()

    def close(self, abort: bool = False) -> None:
        """Close the connection; at once (abort) if asked or if unsent bytes are waiting."""
        sender, self.sender = self.sender, None
        if sender is not None and not sender.done():
            sender.cancel()
        transport = self.transport
        if transport is not None:
            if self.closed:  # asyncio's SSL transport fails on a buffer size query once lost
                transport.close()
            elif abort or transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _wake_reader(self) -> None:
        reader = self.reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # Bytes nobody asked for: the connection is out of step with the origin.
            self.keep_alive = False
            self.close()
            return
        self.got_bytes = True
        if not self.headers_done and self.head_bytes + len(data) > MAX_HEAD:
            self.count_head = True
            self.head_size = self.head_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgraded:
            if self.upgrade and self.headers_done and self.transport is not None:
                self.upgraded = data[upgraded.args[0] :]
                self.transport.pause_reading()  # the tunnel reads on
            else:
                self.fail(InvalidResponse("the origin switched protocols"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__  # what a callback of ours raised
            self.fail(cause if isinstance(cause, InvalidResponse) else InvalidResponse(str(exc)))
        except httptools.HttpParserError as exc:
            self.fail(InvalidResponse(str(exc) or type(exc).__name__))
        else:
            if not self.headers_done:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD:
                    self.fail(InvalidResponse(f"response headers longer than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool:
        # The origin half-closed: an idle connection leaves the pool at once, before a request
        # could be written to it; a response delimited by the end of the connection ends.
        self.eof = True
        self.pool._lost(self)
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete:
            if self.headers_done and self.until_eof and exc is None:
                self.complete = True  # a body delimited by the end of the connection
                self._wake_reader()
            elif exc is not None:
                self.fail(exc)
            elif self.headers_done:
                self.fail(ServerDisconnected("server closed the connection mid-response"))
            else:
                self.fail(ServerDisconnected())
        drainer = self.drainer
        if drainer is not None and not drainer.done():
            drainer.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)
        self.pool._lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drainer = self.drainer
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        if self.count_head:
            self.head_size += len(status) + 16

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if self.count_head:
            self.head_size += len(name) + len(value) + 4
            if self.head_size > MAX_HEAD:
                raise InvalidResponse(f"response headers longer than {MAX_HEAD} bytes")

    def on_headers_complete(self) -> None:
        if self.headers_done:
            raise InvalidResponse("a second response to one request")
        parser = self.parser
        status = parser.get_status_code()
        if not 100 <= status <= 599:
            raise InvalidResponse(f"invalid status {status:03d}")
        if status < 200 and not (status == 101 and self.upgrade):
            # 1xx interim response (100 Continue, 103 Early Hints): skipped. A 101 that no
            # upgrade asked for ends in HttpParserUpgrade, which fails the exchange.
            self.interim = True
            self.headers = []
            self.head_size = 0
            return
        self.headers_done = True
        headers = tuple(self.headers)
        self.keep_alive = parser.should_keep_alive()
        if self.is_head or status in _NO_BODY_STATUSES:
            # httptools cannot be told that a response has no body (llhttp's skip-body return
            # value is not passed through); the parser would wait for a HEAD response's
            # Content-Length bytes, so it ends here and a fresh one serves the next request.
            self.complete = True
            self.parser_spent = self.is_head
        elif not self.keep_alive:
            self.until_eof = not _delimited(headers)
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self, status, headers))

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.keep_alive = False  # body bytes after a bodiless response
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.complete:
            self.complete = True
            self._wake_reader()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _delimited(headers: RawHeaders) -> bool:
    """Whether the body's end is marked (Content-Length or chunked), not the connection's."""
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            return True
        if lower == b"transfer-encoding":
            chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
    return chunked


def _request_head(
    method: str, target: str, headers: Iterable[tuple[str, str]], has_body: bool
) -> tuple[bytes, bool]:
    """The request line and headers as bytes, and whether the body goes chunked."""
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    framed = not has_body  # a Content-Length or Transfer-Encoding was given
    chunked = False
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
        if not framed:
            lower = name.lower()
            if lower == "content-length":
                framed = True
            elif lower == "transfer-encoding":
                framed = chunked = True
    if not framed:
        lines.append("Transfer-Encoding: chunked\r\n")
        chunked = True
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError(f"CR or LF inside the request line or a header: {text!r}")
    try:
        return text.encode("latin-1"), chunked
    except UnicodeEncodeError:
        return text.encode(), chunked


class Pool:
    """Keep-alive connections to one origin (`url`: http(s)://host[:port][/prefix])."""

    def __init__(
        self,
        url: str,
        *,
        limit: int = 100,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        send_timeout: float = 30.0,
        acquire_timeout: float = 2.0,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        on_tls: Callable[[Any], None] | None = None,
        on_resend: Callable[[], None] | None = None,
        dns: AddressSource | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        tls = parts.scheme == "https"
        self.name = parts.netloc
        self.host = parts.hostname
        self.port = parts.port or (443 if tls else 80)
        self.prefix = parts.path.rstrip("/")  # put before each target by the caller
        self.ssl = (ssl_context or ssl.create_default_context()) if tls else None
        # TLS: the name sent as SNI and checked in the certificate (default: the url's host),
        # and who is told of each new connection's handshake (its `ssl_object`).
        self.server_hostname = server_hostname or self.host
        self.on_tls = on_tls if tls else None
        self.tls: Any = None  # the origin's TLS identity, set by upstream.py
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.send_timeout = send_timeout
        self.acquire_timeout = acquire_timeout
        self.keepalive = keepalive
        self.on_resend = on_resend
        self.connections_made = 0
        self.closed = False
        self._open = 0  # connections open or being opened, idle ones included
        self._idle: list[Connection] = []  # oldest first; reused from the end
        self._connections: set[Connection] = set()
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # A host name (not an IP literal) is resolved by `dns`; None: create_connection's own.
        self.dns = dns
        self._retiring: set[Connection] = set()  # busy connections to addresses gone from DNS
        if dns is not None:
            dns.attach(self)

    @property
    def idle(self) -> int:
        """Connections waiting in the pool for a request."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Connections carrying an exchange (or being opened for one)."""
        return self._open - len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection because the pool is at its limit."""
        return sum(not waiter.done() for waiter in self._waiters)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
    ) -> Response:
        """Send a request (`target` as is, headers exactly as given); return the response once
        its headers are in. The caller must `release()` or `close()` the response."""
        return await self.send(await self.acquire(), method, target, headers, body)

    async def acquire(self) -> Connection:
        """A connection for one request: idle, new, or the next one freed when the pool is at
        its limit (PoolFull after `acquire_timeout`). Hand it to `send`."""
        return self.idle_connection() or await self._acquire(asyncio.get_running_loop())

    def idle_connection(self) -> Connection | None:
        """An idle connection ready for a request, if the pool has one (no waiting)."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            conn.in_idle_list = False
            if conn.eof or conn.closed:
                self._drop(conn)  # closed by the origin; connection_lost has not run yet
                continue
            if conn.loop.time() - conn.idle_since < self.keepalive:
                return conn
            # The newest idle connection has expired, so have all the others.
            expired, idle[:] = [conn, *idle], []
            for stale in expired:
                stale.in_idle_list = False
                stale.close()
                self._drop(stale)
        return None

    async def send(
        self,
        conn: Connection,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterable[bytes] | None = None,
        expires_at: float | None = None,
    ) -> Response:
        """Send a request on `conn` (from `acquire`); return once the response headers are in,
        or raise TimeoutError at the loop time `expires_at` if one is given.

        A connection found closed before a byte was written is replaced by a new one, whatever
        the method; one that breaks before any response byte is replaced once for an idempotent
        request whose body can be sent again (the origin closed it while the request was on its
        way, and cannot have acted on it)."""
        head, chunked = _request_head(method, target, headers, body is not None)
        loop = conn.loop
        retried = False
        while True:
            try:
                return await conn.exchange(head, body, chunked, method == "HEAD", expires_at)
            except BaseException as exc:
                conn.active = False
                conn.headers_waiter = None
                conn.close()
                unsent = isinstance(exc, _Closed) and conn.reused
                stale = (
                    not retried
                    and conn.reused
                    and not conn.got_bytes
                    and isinstance(exc, OSError)
                    and not isinstance(exc, TimeoutError)
                    and method in IDEMPOTENT_METHODS
                    and (body is None or (isinstance(body, Replayable) and body.can_replay))
                )
                if not (unsent or stale):
                    self._drop(conn)
                    if isinstance(exc, _Closed):
                        raise ServerDisconnected() from None
                    raise
                retried = retried or stale
                self._connections.discard(conn)
            if self.on_resend is not None:
                self.on_resend()
            # The origin had closed the idle connection: the same slot, a new connection.
            upgrade = conn.upgrade
            try:
                if expires_at is None:
                    conn = await self._connect(loop)
                else:
                    async with asyncio.timeout_at(expires_at):
                        conn = await self._connect(loop)
            except BaseException:
                self._free_slot()
                raise
            conn.upgrade = upgrade

    async def close(self) -> None:
        """Close every connection, idle or in use; requests waiting for one fail."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectError("the connection pool was closed"))
        for conn in self._idle:
            conn.in_idle_list = False
        self._idle.clear()
        connections = list(self._connections)
        for conn in connections:
            conn.close(abort=True)
        pending = [conn.lost for conn in connections if not conn.lost.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)

    # -- connections ------------------------------------------------------------------------

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> Connection:
        """A new connection, or one handed over by another request (the idle ones are taken
        by `idle_connection`)."""
        if self.closed:
            raise ConnectError("the connection pool was closed")
        if self._open < self.limit:
            self._open += 1
        else:
            waiter: asyncio.Future[Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(self.acquire_timeout, _expire, waiter)
            try:
                handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Cancelled just after being handed a connection or a slot: pass it on.
                    passed = waiter.result()
                    if passed is None:
                        self._free_slot()
                    else:
                        self._put(passed)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolFull(
                        f"all {self.limit} connections to {self.name} stayed busy for "
                        f"{self.acquire_timeout:g} s"
                    ) from None
                raise
            finally:
                timer.cancel()
            if handed is not None:
                return handed
        try:
            return await self._connect(loop)
        except BaseException:
            self._free_slot()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.dns is None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self, loop),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.server_hostname if self.ssl is not None else None,
                    )
                else:
                    sock, address = await self._open_socket(self.dns)
                    _, conn = await loop.create_connection(
                        lambda: Connection(self, loop),
                        sock=sock,
                        ssl=self.ssl,
                        server_hostname=self.server_hostname if self.ssl is not None else None,
                    )
                    conn.address = address
        except TimeoutError:
            raise ConnectError("connect timed out") from None
        except ConnectError:
            raise
        except OSError as exc:
            raise ConnectError(str(exc), exc) from exc
        self.connections_made += 1
        if self.on_tls is not None and conn.transport is not None:
            self.on_tls(conn.transport.get_extra_info("ssl_object"))
        if self.closed:
            conn.close()
            raise ConnectError("the connection pool was closed")
        self._connections.add(conn)
        return conn

    async def _open_socket(self, dns: AddressSource) -> tuple[socket.socket, str]:
        """A socket connected to one of the host's addresses: Happy Eyeballs (RFC 8305), the
        families interleaved, the next address tried after HAPPY_EYEBALLS_DELAY or at once
        when one refuses; the caller's connect timeout bounds the whole."""
        addresses = dns.addresses() or await dns.resolve()
        port = self.port
        infos = [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (address, port),
            )
            for address in addresses
        ]
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
        )
        address = str(sock.getpeername()[0])
        if address != addresses[0]:
            dns.connected(address)
        return sock, address

    def forget(self, addresses: frozenset[str]) -> None:
        """DNS no longer lists `addresses`: close the idle connections to them at once, and
        the busy ones when their exchange ends."""
        keep: list[Connection] = []
        for conn in self._idle:
            if conn.address in addresses:
                conn.in_idle_list = False
                conn.close()
                self._drop(conn)
            else:
                keep.append(conn)
        self._idle[:] = keep
        self._retiring = {conn for conn in self._retiring if not conn.closed}
        self._retiring.update(
            conn
            for conn in self._connections
            if conn.address in addresses and not conn.in_idle_list
        )

    def _put(self, conn: Connection) -> None:
        """A connection ready for its next request: to the first waiter, else to the pool."""
        if self._retiring and conn in self._retiring:
            self._retiring.discard(conn)
            conn.close()
            self._drop(conn)
            return
        if self.closed:
            conn.close()
            self._drop(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = conn.loop.time()
        conn.in_idle_list = True
        self._idle.append(conn)
        if self._sweeper is None:
            self._arm_sweeper()

    def _drop(self, conn: Connection) -> None:
        """A connection is gone for good (closed by the caller): its slot is free."""
        self._connections.discard(conn)
        self._retiring.discard(conn)
        self._free_slot()

    def _lost(self, conn: Connection) -> None:
        """connection_lost: an idle connection that the origin closed leaves the pool."""
        if conn.in_idle_list:
            conn.in_idle_list = False
            self._idle.remove(conn)
            self._drop(conn)

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiter opens a connection in this slot
                return
        self._open -= 1

    def _arm_sweeper(self) -> None:
        if self._idle and not self.closed:
            loop = asyncio.get_running_loop()
            at = self._idle[0].idle_since + self.keepalive
            self._sweeper = loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive` seconds."""
        self._sweeper = None
        idle = self._idle
        oldest_kept = asyncio.get_running_loop().time() - self.keepalive
        count = 0
        while count < len(idle) and idle[count].idle_since <= oldest_kept:
            count += 1
        expired = idle[:count]
        del idle[:count]
        for conn in expired:
            conn.in_idle_list = False
            conn.close()
            self._drop(conn)
        self._arm_sweeper()
