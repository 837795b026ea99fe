"""The client side of the front door: uvicorn's httptools protocol with the limits it lacks.

uvicorn 0.55 puts no bound on a request head (size, header count, time) and closes an idle
connection only after a response. `LimitedHttpToolsProtocol` adds, per connection:

- a byte budget for the request line and headers, checked before bytes reach the parser (a
  32 MiB header is cut after `max_header_bytes`, never held), and a header count: 431;
- `header_timeout` from the first byte of a head until it is complete: 408;
- `idle_timeout` on a connection with no request in progress (fresh, or kept alive): a quiet
  close;
- RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any with two, gets 400;
- `max_connections`: a connection past it gets 503 and is closed at once;
- the `failover.disconnect` extension in each request's scope: the app registers a callback
  with `scope["extensions"]["failover.disconnect"]["watch"](callback)`; it runs the moment
  the client's connection is lost while the request's response is not complete, and when it
  returns True the request's task is cancelled (ASGI 2.3 tells an app of a disconnect only
  when it calls `receive()`).
- the `failover.upgrade` extension, only in the scope of a request that asks to upgrade to
  WebSocket: `scope["extensions"]["failover.upgrade"]["accept"](head)` writes the 101 head,
  hands the connection over and returns its transport (not being read) with the bytes the
  client sent after its request; uvicorn's own WebSocket support stays off (`ws="none"`). A
  handshake answered otherwise closes the connection after the response.

A response's head is written together with its first body bytes when the app sends them in
the same turn of the event loop (one send() for a small response instead of two), else on the
loop's next turn (`_Cycle`).

Every cut is counted by reason and logged at most once a second (`ClosedConnections`). The
timers are `loop.call_later` handles: the header timer is armed only when a read leaves a
head incomplete, so a request that arrives in one read costs no timer at all.

Some methods below are copies of uvicorn's with a few lines added, which is why pyproject pins
uvicorn to the minor version they were written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from .config import LimitsConfig, ListenTLSConfig, Settings
from .tls import ListenerCerts

__all__ = [
    "DISCONNECT_EXTENSION",
    "UPGRADE_EXTENSION",
    "ClosedConnections",
    "HttpProtocolFactory",
    "LimitedHttpToolsProtocol",
    "WorkerCertificates",
    "connection_limit",
    "prepare_open_files",
    "raise_open_file_limit",
    "uvicorn_options",
]

logger = logging.getLogger("failover.listener")

# File descriptors kept aside for everything that is not a client connection (listening
# sockets, probes, log files, the config watcher).
FD_HEADROOM = 64
# The scope["extensions"] key under which a request can ask to hear of its client leaving.
DISCONNECT_EXTENSION = "failover.disconnect"
# The scope["extensions"] key present only in a WebSocket handshake's scope (see
# `LimitedHttpToolsProtocol._accept_upgrade`).
UPGRADE_EXTENSION = "failover.upgrade"
# After a refusal: how long the client may go on sending before the connection closes (what
# it sends is read and dropped).
LINGER = 2.0
_BENIGN = frozenset({"idle"})


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def connection_limit(max_connections: int, open_files: int | None = None) -> int:
    """How many client connections fit in the open file limit: each may need an upstream
    connection too, and some descriptors are kept aside."""
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, (open_files - FD_HEADROOM) // 2))


def prepare_open_files(limits: LimitsConfig) -> int:
    """At start-up: raise the open file limit, log it, and return how many client
    connections the listener will accept."""
    before, after = raise_open_file_limit()
    effective = connection_limit(limits.max_connections, after)
    raised = f" (raised from {before})" if after != before else ""
    logger.info("Open file limit: %s%s.", _figure(after), raised)
    if effective < limits.max_connections:
        # A warning when the operator asked for more; the default just follows the system.
        explicit = "max_connections" in limits.model_fields_set
        logger.log(
            logging.WARNING if explicit else logging.INFO,
            "limits.max_connections is %d, but the open file limit of %s holds only %d client "
            "connections (each may need an upstream connection too): accepting up to %d.",
            limits.max_connections,
            _figure(after),
            effective,
            effective,
        )
    return effective


def _figure(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class ClosedConnections:
    """Counts the client connections the listener cut, by reason; one log line at most once
    per `interval`, never a line per connection."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._report: asyncio.TimerHandle | None = None

    def add(self, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        self.counts[reason] += 1
        if self._report is None:
            self._report = loop.call_later(self.interval, self.report)

    def report(self) -> None:
        self._report = None
        counts, self.counts = self.counts, Counter()
        total = sum(counts.values())
        if not total:
            return
        detail = ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
        logger.log(
            logging.INFO if counts.keys() <= _BENIGN else logging.WARNING,
            "Closed %d client connection%s in the last second: %s.",
            total,
            "" if total == 1 else "s",
            detail,
        )


def error_response(
    status: int, reason: str, default_headers: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    """A complete plain-text response that closes the connection."""
    body = reason.encode("utf-8") + b"\n"
    parts = [STATUS_LINE[status]]
    for name, value in default_headers or ():
        parts += [name, b": ", value, b"\r\n"]
    parts.append(
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(body)
    )
    parts.append(body)
    return b"".join(parts)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head the listener refuses."""


_JOIN_LIMIT = 64 * 1024  # a head and a body up to this size are joined; larger, written as two


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle with `send` copied and changed in two ways:

    - a 304 may carry the Content-Length of the representation it stands for (RFC 9110
      section 8.6) without a body, as a HEAD may;
    - uvicorn runs two regular expressions over every response header (a fifth of the
      proxy's own CPU per request). What the proxy sends is what llhttp accepted from an
      origin (tokens for names; no control characters in values) or its own headers, so one
      check of the whole head remains: no CR or LF but those that end its lines (no header
      can be split into two, nor a response into two).

    And one more: the head is written together with the first body bytes, in one send() to
    the socket instead of two, when the body follows within the same turn of the event loop
    (a small response already read from the origin); otherwise the loop's next turn writes it
    on its own, so a streamed response's head is never held back."""

    loop: asyncio.AbstractEventLoop
    _head: bytes | None = None  # a head not written yet

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self.transport.is_closing():
            self.transport.write(head)

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()

        if self.disconnected:
            return

        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self.response_started = True
            self.waiting_for_100_continue = False

            status_code = message["status"]
            headers = message.get("headers", [])
            if self.default_headers:
                headers = self.default_headers + list(headers)

            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )

            content = [STATUS_LINE[status_code]]
            has_connection_close = False
            for name, value in headers:
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                content.extend([name, b": ", value, b"\r\n"])
            lines = (len(content) - 1) // 4 + 2  # the status line, the headers, the end
            if status_code == 304:
                self.expected_content_length = 0
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
                lines += 1
            if (
                self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)
            ):
                # Neither content-length nor transfer-encoding specified
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
                lines += 1
            content.append(b"\r\n")
            head = b"".join(content)
            if head.count(b"\n") != lines or head.count(b"\r") != lines:
                raise RuntimeError("Invalid HTTP header: a CR or LF inside a name or value.")
            self._head = head
            self.loop.call_soon(self._flush_head)

        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.body', but got '{message['type']}'."
                )
            body = message.get("body", b"")
            more_body = message.get("more_body", False)

            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                body = b""
            elif self.chunked_encoding:
                chunk = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
                if not more_body:
                    chunk.append(b"0\r\n\r\n")
                body = b"".join(chunk)
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= num_bytes
            pending = self._head
            if pending is not None:
                self._head = None
                if len(body) <= _JOIN_LIMIT:
                    self.transport.write(pending + body)
                else:
                    self.transport.writelines((pending, body))
            elif body:
                self.transport.write(body)

            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

        else:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits, head and idle timeouts, Host checks and
    a connection limit. The limits are class attributes, set by `HttpProtocolFactory`."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10_000
    closed: ClosedConnections  # one per factory: the counts of one listener

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.timeout_keep_alive = self.idle_timeout  # type: ignore[assignment]
        self._head_bytes = 0  # bytes of the head being read (not counted inside a body)
        self._in_head = False  # a request head has begun and is not complete yet
        self._in_body = False  # between the end of a head and the end of its message
        self._hosts = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False
        self._on_lost: Callable[[], bool] | None = None
        self._task: asyncio.Task[None] | None = None  # the request's
        self._lingering = False  # a refusal was sent: what the client still sends is dropped
        self._linger_timer: asyncio.TimerHandle | None = None
        self._upgrading = False  # the request in progress asks to upgrade to WebSocket
        self._upgraded = b""  # what the client sent after that request's head
        # ASGI extensions are dicts; this one holds the function to register with.
        self._extensions: dict[str, dict[object, object]] = {
            DISCONNECT_EXTENSION: {"watch": self._watch_disconnect}
        }

    def _watch_disconnect(self, callback: Callable[[], bool]) -> None:
        """The `failover.disconnect` extension: `callback` runs if the connection is lost
        before the response is complete; if it returns True, the request's task is
        cancelled."""
        self._on_lost = callback

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's, keeping the task for the disconnect extension.
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._task = task

    def on_response_complete(self) -> None:
        self._on_lost = None  # the response is out: a disconnect now cancels nothing
        super().on_response_complete()

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport
            transport.write(
                error_response(
                    503,
                    f"The proxy is at its limit of {self.max_connections} client connections.",
                    self.server_state.default_headers,
                )
            )
            transport.close()
            self.closed.add(self.loop, "over max_connections")
            return
        super().connection_made(transport)
        # A fresh connection is idle until its first byte (uvicorn waits forever).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.idle_timeout, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)
        on_lost, self._on_lost = self._on_lost, None
        task = self._task
        if on_lost is not None and on_lost() and task is not None and not task.done():
            task.cancel()

    def timeout_keep_alive_handler(self) -> None:
        """idle_timeout passed with no request in progress: close without a word."""
        self.timeout_keep_alive_task = None
        if self.transport.is_closing() or self._in_head or self._head_bytes:
            return  # a head is on its way: the header timer decides
        self.closed.add(self.loop, "idle")
        self.transport.close()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            reason = f"The request head did not arrive within {self.header_timeout:g} s."
            self._refuse(408, reason, "header timeout")
        else:  # stray bytes that never began a request
            self._refused = True
            self.closed.add(self.loop, "header timeout")
            self.transport.close()

    def _refuse(self, status: int, reason: str, why: str) -> None:
        """Answer `status` and close; or, while a response is still going out on this
        connection, let it finish and close after it."""
        self._refused = True
        self.closed.add(self.loop, why)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.more_body:  # its request is still arriving: nothing more can be said
                self.transport.close()
            else:
                cycle.keep_alive = False
                self.transport.pause_reading()
            return
        self.transport.write(error_response(status, reason, self.server_state.default_headers))
        self._linger()

    def _linger(self) -> None:
        """nginx's lingering close: after a refusal, half-close and drop what the client still
        sends for up to LINGER seconds, so that a client in the middle of sending reads the
        answer rather than a reset."""
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering = True
        self._linger_timer = self.loop.call_later(LINGER, transport.close)

    # -- reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after a refusal: dropped
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        if not self._in_body:
            size = self._head_bytes + len(data)
            if size > self.max_header_bytes:
                self._feed_within_budget(data)
                data = b""
            else:
                self._head_bytes = size
        if data:
            try:  # _feed, inlined: this is the path of every request
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                self._upgrade(data, upgrade.args[0])
            except httptools.HttpParserError:
                self._invalid()
        if self._header_timer is None and not self._refused:
            if not self._in_body and (self._in_head or self._head_bytes):
                self._header_timer = self.loop.call_later(
                    self.header_timeout, self._header_timed_out
                )
            elif (
                self.timeout_keep_alive_task is None
                and (self.cycle is None or self.cycle.response_complete)
                and not self.pipeline
            ):
                # Bytes that start nothing new (the rest of a body whose response is already
                # complete): the connection is still idle.
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.idle_timeout, self.timeout_keep_alive_handler
                )

    def _feed_within_budget(self, data: bytes) -> None:
        """Feed no more than the head's remaining byte budget; past it with the head still
        incomplete, refuse with 431. What follows a complete head is fed as usual."""
        while data:
            room = self.max_header_bytes - self._head_bytes
            self._head_bytes = self.max_header_bytes
            self._feed(data[:room])
            if self._refused or self.transport.is_closing():
                return
            if self._head_bytes == self.max_header_bytes:  # no head completed within budget
                reason = f"The request line and headers exceed {self.max_header_bytes} bytes."
                self._refuse(431, reason, "header too large")
                return
            data = data[room:]
            if self._in_body:
                self._feed(data)
                return
            if self._head_bytes + len(data) <= self.max_header_bytes:
                self._head_bytes += len(data)
                self._feed(data)
                return

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data, upgrade.args[0])
        except httptools.HttpParserError:
            self._invalid()

    def _upgrade(self, data: bytes, offset: int) -> None:
        """The parser stopped after a request that asks to upgrade. A WebSocket handshake
        waits for the app (`_accept_upgrade`) with reading paused; any other upgrade is
        ignored (RFC 9110 section 7.8), the request served as it is and parsing goes on."""
        rest = data[offset:]
        if self._upgrading:
            self._upgraded += rest
            self.transport.pause_reading()
        elif rest:
            self._feed(rest)

    def _accept_upgrade(
        self, head: bytes, tunnel: object
    ) -> tuple[asyncio.Transport, bytes, set[Any]]:
        """The `failover.upgrade` extension's `accept`: write the 101 `head`, stop serving
        HTTP on this connection and hand it over. Returns the transport (reading paused),
        what the client sent after its request, and uvicorn's set of connections, in which
        `tunnel` (an object with a `shutdown()` method) takes this protocol's place."""
        self.transport.write(head)
        self.connections.discard(self)
        self.connections.add(tunnel)  # type: ignore[arg-type]
        self._on_lost = None
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        cycle = self.cycle
        cycle.response_started = cycle.response_complete = True
        rest, self._upgraded = self._upgraded, b""
        return self.transport, rest, self.connections

    def _invalid(self) -> None:
        """The parser stopped: a limit refused the head, or the bytes are not HTTP."""
        if not self._refused:
            self._refuse(*(self._refusal or (400, "Invalid HTTP request.", "invalid request")))

    # -- parser callbacks (uvicorn's, with the counting added) -----------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._hosts = 0
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
            "extensions": self._extensions,
        }

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 section 5.5 excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"host":
            self._hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))
        if len(self.headers) > self.max_headers:
            reason = f"More than {self.max_headers} header fields."
            self._refusal = (431, reason, "too many headers")
            raise _Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        http_version = self.parser.get_http_version()
        if self._hosts != 1 and (self._hosts or http_version == "1.1"):
            reason = "More than one Host header." if self._hosts else "No Host header."
            self._refusal = (400, reason, "bad Host")
            raise _Refused
        method = self.parser.get_method()
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        upgrading = self._upgrading = (
            self.parser.should_upgrade() and self._get_upgrade() == b"websocket"
        )
        if upgrading:
            self.scope["extensions"] = {
                **self._extensions,
                UPGRADE_EXTENSION: {"accept": self._accept_upgrade},
            }
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        self.scope["query_string"] = parsed_url.query or b""
        if self.url[:1] != b"/" and parsed_url.host:
            # Absolute form (`GET http://host/path`): RFC 9112 section 3.2.2 says the target's
            # host replaces the Host header.
            host = parsed_url.host + (b":%d" % parsed_url.port if parsed_url.port else b"")
            self.headers[:] = [(n, host if n == b"host" else v) for n, v in self.headers]

        existing_cycle = self.cycle
        self.cycle = _Cycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive() and not upgrading,
            on_response=self.on_response_complete,
        )
        self.cycle.loop = self.loop
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:  # pipelined: queued until the response before it is complete
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_message_complete(self) -> None:
        self._in_body = False
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()


class HttpProtocolFactory:
    """What `uvicorn_config` passes as uvicorn's `http`: builds a `LimitedHttpToolsProtocol`
    per connection. It pickles as its limits alone, so that `--workers N` hands it to each
    worker process, where it builds its own protocol class and counters."""

    def __init__(self, limits: LimitsConfig, max_connections: int | None = None) -> None:
        self.limits = limits
        self.max_connections = (
            limits.max_connections if max_connections is None else max_connections
        )
        self.protocol: type[LimitedHttpToolsProtocol] = type(
            "LimitedHttpToolsProtocol",
            (LimitedHttpToolsProtocol,),
            {
                "max_header_bytes": limits.max_header_bytes,
                "max_headers": limits.max_headers,
                "header_timeout": limits.header_timeout,
                "idle_timeout": limits.idle_timeout,
                "max_connections": self.max_connections,
                "closed": ClosedConnections(),
            },
        )

    def __call__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> LimitedHttpToolsProtocol:
        return self.protocol(config, server_state, app_state, _loop)

    def __reduce__(self) -> tuple[type[HttpProtocolFactory], tuple[LimitsConfig, int]]:
        return (HttpProtocolFactory, (self.limits, self.max_connections))


def uvicorn_options(
    settings: Settings, app: Any, log_level: str = "info", workers: int = 1
) -> dict[str, Any]:
    """uvicorn's settings for the proxy: uvloop, httptools with the client limits
    (`limits:`, see failover.listener), no server-added headers."""
    limits = settings.limits
    options: dict[str, Any] = dict(
        app=app,
        host=settings.listen.host,
        port=settings.listen.port,
        loop="uvloop",
        http=HttpProtocolFactory(limits, connection_limit(limits.max_connections)),
        ws="none",
        lifespan="on",
        log_config=None,
        log_level=log_level,
        access_log=False,
        server_header=False,
        # uvicorn would otherwise take the client address from X-Forwarded-For sent by any
        # loopback peer; the proxy appends the real peer itself and admin.allow checks it.
        proxy_headers=False,
        date_header=False,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        # The listener's idle_timeout takes over uvicorn's keep-alive timeout.
        timeout_keep_alive=limits.idle_timeout,
    )
    if settings.listen.tls is not None:
        # HTTPS: one worker serves the App's certificates (its lifespan watches their
        # files); each of several workers loads and watches its own.
        context = getattr(app, "listener_context", None)
        options["ssl_context_factory"] = context or WorkerCertificates(settings.listen.tls)
    if workers > 1:
        options.update(workers=workers, factory=True)
    return options


class WorkerCertificates:
    """uvicorn's `ssl_context_factory` in each of several workers (it pickles as its
    settings): the worker's own `ListenerCerts`, watched by a task of its own, whose
    failures are logged."""

    def __init__(self, tls: ListenTLSConfig) -> None:
        self.tls = tls
        self.certs: ListenerCerts | None = None
        self.task: asyncio.Task[None] | None = None

    def __reduce__(self) -> tuple[type[WorkerCertificates], tuple[ListenTLSConfig]]:
        return (WorkerCertificates, (self.tls,))

    def __call__(self, config: Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        certs = self.certs = ListenerCerts(
            [(c.cert_file, c.key_file) for c in self.tls.certificates],
            self.tls.min_version,
            self.tls.alpn,
        )

        def failed(problem: str) -> None:
            logger.error("listen.tls: %s; still serving the previous certificates.", problem)

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                logger.error("The certificate watcher crashed.", exc_info=task.exception())

        with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch from
            self.task = asyncio.get_running_loop().create_task(
                certs.watch(lambda: logger.info("listen.tls: certificates reloaded."), failed)
            )
            self.task.add_done_callback(done)
        return certs.context
