"""What the proxy does to headers, both ways. Pure: no I/O.

`request_headers` and `response_headers` drop hop-by-hop headers (RFC 9110 section 7.6.1, and
every header that Connection names), add X-Forwarded-* and Via, and rewrite Location.

Response header rewriting that keeps the client on the proxy:

`LocationRewriter` does what nginx's `proxy_redirect default` does. An origin that redirects
to its own absolute address (`Location: http://10.0.0.5:8080/login`) would send the client
straight past the proxy; in `Location`, `Content-Location` and `Refresh` the origin's own
address is put back to the scheme and Host the client used (`http://www.example.com/login`).

What counts as "the origin's own address": the scheme, host and port of the origin's URL (the
default port written or not, the host in any case), or the Host the proxy sends it (its
`host_header`) with the origin URL's scheme. The origin URL's path prefix is removed as well
(origin `http://o/prefix`: `http://o/prefix/a` -> `http://<client host>/a`); a URL on the same
host outside that prefix is not reachable through the proxy and is left alone, as nginx does.
Relative URLs (`/a`, `a`) and URLs to other hosts or in another scheme are never touched: a
redirect from `http://site/` to `https://site/` stays what it is. A scheme-relative URL
(`//o/a`) is rewritten to `//<client host>/a`.

The hot path: the caller compares each response header's lower-case name with
`LOCATION_HEADERS` (a set lookup) and calls `rewrite` only for those, so a response without
them costs nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "HOP_BY_HOP",
    "LOCATION_HEADERS",
    "LocationRewriter",
    "request_headers",
    "request_target",
    "response_headers",
]

# RFC 9110 section 7.6.1, plus Proxy-Connection (a non-standard relic).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers not passed on as they are: the hop-by-hop ones, Expect (the proxy answers
# 100-continue itself), Host (set per origin) and the ones the proxy writes itself.
_REQUEST_DROP = HOP_BY_HOP | {
    b"expect",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
}

LOCATION_HEADERS = frozenset({b"location", b"content-location", b"refresh"})

_DEFAULT_PORTS = {"http": 80, "https": 443}
# `Refresh: 5; url=http://...` (also `5;URL='...'`, `5, url=...` and `5; http://...`).
_REFRESH = re.compile(rb"""(\s*[0-9.]+\s*[;,]\s*(?:url\s*=\s*)?['"]?)([^'"\s]+)(.*)""", re.I | re.S)
_END_OF_HOST = frozenset(b"/?#")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _authorities(host: str, port: int, default_port: int) -> list[str]:
    """The ways `host:port` may be written in a URL: the default port may be left out."""
    host = _bracketed(host.lower())
    spelled = [f"{host}:{port}"]
    if port == default_port:
        spelled.append(host)
    return spelled


class LocationRewriter:
    """Rewrites one origin's absolute URLs in Location-type headers to the client's view.

    Built once per origin (and per config): `origin_url` is the origin's URL (`scheme://host
    [:port][/prefix]`), `host_headers` the Host values the proxy may send it (its configured
    `host_header`, a route's `host_header`). Do not pass the client's own Host here (when the
    origin's Host is the client's, its URLs already point at the proxy).
    """

    __slots__ = ("_absolute", "_prefix", "_relative")

    def __init__(self, origin_url: str, host_headers: Iterable[str] = ()) -> None:
        parts = urlsplit(origin_url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{origin_url!r} is not an http(s) URL")
        default_port = _DEFAULT_PORTS[scheme]
        authorities = _authorities(parts.hostname, parts.port or default_port, default_port)
        for value in host_headers:
            named = urlsplit(f"//{value.strip()}")
            if not named.hostname:
                continue
            try:
                port = named.port or default_port
            except ValueError:
                continue
            authorities.extend(_authorities(named.hostname, port, default_port))
        # Longest first, so that `host:8080` is tried before `host`.
        unique = sorted(set(authorities), key=len, reverse=True)
        self._absolute = tuple(f"{scheme}://{a}".encode() for a in unique)
        self._relative = tuple(f"//{a}".encode() for a in unique)
        self._prefix = parts.path.rstrip("/").encode()

    def rewrite(
        self,
        name: bytes,
        value: bytes,
        client_scheme: str,
        client_host: str | None,
        mount: str = "",
    ) -> bytes | None:
        """The header's new value, or None to keep it as it is.

        `name`: the header's name in lower case, one of `LOCATION_HEADERS`. `client_scheme`
        and `client_host`: the scheme and the Host header (port included) of the client's
        request; without a Host nothing is rewritten. `mount`: a path prefix the route stripped
        from the client's path (`Match.stripped`), put back in front of the path."""
        if not client_host:
            return None
        if name == b"refresh":
            found = _REFRESH.fullmatch(value)
            if found is None:
                return None
            url = self.rewrite_url(found.group(2), client_scheme, client_host, mount)
            if url is None:
                return None
            return found.group(1) + url + found.group(3)
        return self.rewrite_url(value, client_scheme, client_host, mount)

    def rewrite_url(
        self, value: bytes, client_scheme: str, client_host: str, mount: str = ""
    ) -> bytes | None:
        """One URL (a Location value), rewritten if it points at this origin; else None."""
        url = value.strip()
        if url[:1] == b"/":
            if url[1:2] != b"/":
                return None  # a path: already on the proxy
            candidates = self._relative
            head = b"//"
        else:
            candidates = self._absolute
            head = client_scheme.encode("latin-1") + b"://"
        lowered = url[:256].lower()
        for candidate in candidates:
            if lowered.startswith(candidate):
                end = len(candidate)
                if end == len(url) or url[end] in _END_OF_HOST:
                    break
        else:
            return None
        authority = candidate.partition(b"//")[2]
        if authority == client_host.lower().encode("latin-1"):
            # The URL already names the site the client asked for (an origin's host_header
            # is often the site's own name): its scheme stays, so that a redirect to https
            # is never turned back into http.
            head = candidate[: len(candidate) - len(authority)]
        rest = url[end:]
        prefix = self._prefix
        if prefix:
            if not rest.startswith(prefix):
                return None
            after = len(prefix)
            if after < len(rest) and rest[after] not in _END_OF_HOST:
                return None  # `/prefixed`, not `/prefix/...`
            rest = rest[after:]
        if mount:
            rest = mount.encode("latin-1") + (rest if rest[:1] == b"/" else b"/" + rest)
        elif rest[:1] != b"/":
            rest = b"/" + rest
        rewritten = head + client_host.encode("latin-1") + rest
        return None if rewritten == url else rewritten


# Response headers that `response_headers` looks at more closely.
_RESPONSE_SPECIAL = HOP_BY_HOP | LOCATION_HEADERS | {b"via", b"content-length"}


# Connection values that name no header: nothing more to drop (most responses say one).
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def request_headers(
    raw: list[tuple[bytes, bytes]],
    client_address: str | None,
    scheme: str,
    http_version: str,
    via_name: str,
) -> tuple[list[tuple[str, str]], str | None, int | None, bool]:
    """Headers to send upstream (Host comes per origin), the client's Host, the body's length
    (0 for none, None when chunked), whether an Idempotency-Key was sent."""
    drop = _REQUEST_DROP
    for name, value in raw:
        if name == b"connection" and value not in _PLAIN_CONNECTION:
            drop = drop | _connection_tokens(value)
    out: list[tuple[str, str]] = []
    client_host: str | None = None
    forwarded_for: list[str] = []
    via: list[str] = []
    length: int | None = 0
    idempotency_key = False
    for name, value in raw:
        if name in drop:
            if name == b"host":
                client_host = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                forwarded_for.append(value.decode("latin-1"))
            elif name == b"via":
                via.append(value.decode("latin-1"))
            elif name == b"transfer-encoding":
                length = None
            continue
        if name == b"content-length":
            if length is not None:  # the parser has checked that it is a number
                length = int(value)
        elif name == b"idempotency-key":
            idempotency_key = True
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    if client_address:
        forwarded_for.append(client_address)
    if forwarded_for:
        out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    out.append(("X-Forwarded-Proto", scheme))
    if client_host is not None:
        out.append(("X-Forwarded-Host", client_host))
    via.append(f"{http_version} {via_name}")
    out.append(("Via", ", ".join(via)))
    return out, client_host, length, idempotency_key


def response_headers(
    raw: Iterable[tuple[bytes, bytes]],
    status: int,
    via_header: bytes,
    rewriter: LocationRewriter | None,
    client_scheme: str,
    client_host: str | None,
    mount: str = "",
) -> list[tuple[bytes, bytes]]:
    """The origin's headers as the client gets them: names in lower case, hop-by-hop ones
    dropped, Via appended, Location rewritten (with a `rewriter`), a 204's Content-Length
    dropped (RFC 9110 section 8.6)."""
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()  # headers that Connection names: hop-by-hop as well
    via = b""
    for name, value in raw:
        lower = name.lower()
        if lower not in _RESPONSE_SPECIAL:  # most headers: one set look-up
            out.append((lower, value))
        elif lower in HOP_BY_HOP:
            if lower == b"connection" and value not in _PLAIN_CONNECTION:
                named |= _connection_tokens(value)
        elif lower == b"via":
            via += value + b", "
        elif lower in LOCATION_HEADERS:
            rewritten = None
            if rewriter is not None:
                rewritten = rewriter.rewrite(lower, value, client_scheme, client_host, mount)
            out.append((lower, value if rewritten is None else rewritten))
        elif status != 204:  # Content-Length: never on a 204 (RFC 9110 section 8.6)
            out.append((lower, value))
    named -= HOP_BY_HOP  # usually `Connection: keep-alive`: nothing more to drop
    if named:
        out = [pair for pair in out if pair[0] not in named]
    out.append((b"via", via + via_header))
    return out


def request_target(scope: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """The raw path and query as the client sent them, and the host of an absolute-form
    target (`http://host/path`, which RFC 9112 section 3.2.2 says wins over Host); None if
    the target is neither origin-form nor an http(s) URL."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        raw_path = quote(scope["path"]).encode()
    authority = None
    if not raw_path.startswith(b"/"):
        # Absolute form: its host chooses the site; the upstream is still the pool's origin.
        scheme, sep, rest = raw_path.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        host, _, path = rest.partition(b"/")
        authority = host.decode("latin-1") or None
        raw_path = b"/" + path
    query: bytes = scope.get("query_string", b"")
    if query:
        return raw_path.decode("latin-1") + "?" + query.decode("latin-1"), authority
    return raw_path.decode("latin-1"), authority
