"""Stale-if-error: a bounded in-memory copy of recent GET 200 responses.

When every attempt fails, the proxy answers with the stored copy instead of the error (RFC
5861's `stale-if-error`). Responses are copied while they stream to the client (a tee, never
a buffer in front of it); a copy that grows past `max_object_bytes` is dropped. Pure: the
caller passes `now`.

The copies are served to any client, so this is a shared cache (RFC 9111 section 3.5). Never
stored: a response with `Set-Cookie`, `Vary: *`, or Cache-Control `no-store`, `private` or
`no-cache`; a response to a request with `Authorization` unless Cache-Control says `public`,
`s-maxage` or `must-revalidate`. A copy is keyed by scheme, Host (case-insensitive) and target,
and by the request headers its `Vary` names.

How long a copy may be served: its `stale-if-error` window after its freshness lifetime
(`max-age`/`s-maxage`) when the origin gave one; else, with `must-revalidate`,
`proxy-revalidate` or `s-maxage` (which forbid serving it stale), its freshness lifetime;
else `stale.max_age`. Never beyond `stale.max_age`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import StaleConfig

__all__ = ["Entry", "Key", "StaleCache", "Tee"]

Headers = list[tuple[bytes, bytes]]
Key = tuple[str, str, str]  # scheme, Host in lower case, target: a tuple, so none can collide

# Headers the proxy sets on each answer; a stale answer gets its own.
_PER_RESPONSE = frozenset({b"age", b"x-failover-attempts", b"x-failover-origin"})
# Cache-Control directives that forbid a shared cache to keep the response at all.
_NEVER_STORED = frozenset({"no-store", "private", "no-cache"})
# Directives that let a shared cache keep a response to a request with Authorization.
_SHARED_DESPITE_AUTHORIZATION = frozenset({"public", "s-maxage", "must-revalidate"})
# Directives that forbid serving the response once stale (unless stale-if-error says so).
_NOT_SERVED_STALE = frozenset({"must-revalidate", "proxy-revalidate", "s-maxage"})


@dataclass
class Entry:
    headers: Headers  # as sent to the client, without per-response headers
    body: bytes
    stored_at: float
    servable_for: float  # seconds after stored_at
    origin: bytes
    vary: tuple[tuple[bytes, bytes | None], ...] = ()


@dataclass
class Tee:
    """A response being copied as it streams; `add` returns False once it is too large."""

    key: Key
    headers: Headers
    servable_for: float
    origin: bytes
    vary: tuple[tuple[bytes, bytes | None], ...]
    limit: int
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, chunk: bytes) -> bool:
        self.size += len(chunk)
        if self.size > self.limit:
            self.chunks.clear()
            return False
        self.chunks.append(chunk)
        return True


def _directives(headers: Headers) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        if name == b"cache-control":
            for part in value.decode("latin-1").split(","):
                key, _, arg = part.strip().partition("=")
                if key:
                    found[key.lower()] = arg.strip().strip('"')
    return found


def _fields(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Request header fields by (lower-case) name; repeated fields joined as one list."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        found[name] = found[name] + b", " + value if name in found else value
    return found


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return max(0.0, float(int(text)))
    except ValueError:
        return None


class StaleCache:
    def __init__(self, config: StaleConfig) -> None:
        self.config = config
        self.size = 0
        self._entries: OrderedDict[Key, list[Entry]] = OrderedDict()

    @staticmethod
    def key(scheme: str, host: str | None, target: str) -> Key:
        """The key of a request: scheme, Host compared case-insensitively, target."""
        return (scheme, (host or "").lower(), target)

    def begin(
        self,
        key: Key,
        request_headers: Iterable[tuple[bytes, bytes]],
        headers: Headers,
        origin: bytes,
    ) -> Tee | None:
        """Start copying a GET 200 response, or None if it may not be stored."""
        directives = _directives(headers)
        if not _NEVER_STORED.isdisjoint(directives):
            return None
        sent = _fields(request_headers)
        if b"authorization" in sent and _SHARED_DESPITE_AUTHORIZATION.isdisjoint(directives):
            return None
        vary_names: list[bytes] = []
        for name, value in headers:
            if name == b"set-cookie":
                return None
            if name == b"vary":
                vary_names.extend(v.strip().lower() for v in value.split(b",") if v.strip())
        if b"*" in vary_names:
            return None
        max_age = self.config.max_age
        fresh = _seconds(directives.get("s-maxage") or directives.get("max-age")) or 0.0
        window = _seconds(directives.get("stale-if-error"))
        if window is not None:
            servable = min(max_age, fresh + window)
        elif not _NOT_SERVED_STALE.isdisjoint(directives):
            servable = min(max_age, fresh)
        else:
            servable = max_age
        if servable <= 0:
            return None
        vary = tuple((name, sent.get(name)) for name in vary_names)
        kept = [(n, v) for n, v in headers if n not in _PER_RESPONSE]
        limit = min(self.config.max_object_bytes, self.config.max_bytes)
        return Tee(key, kept, servable, origin, vary, limit)

    def finish(self, tee: Tee, now: float) -> None:
        """Store a copy whose whole body was seen."""
        entry = Entry(
            tee.headers, b"".join(tee.chunks), now, tee.servable_for, tee.origin, tee.vary
        )
        old = self._entries.pop(tee.key, [])
        variants = [e for e in old if e.vary != entry.vary]
        self.size -= sum(len(e.body) for e in old) - sum(len(e.body) for e in variants)
        variants.append(entry)
        self._entries[tee.key] = variants
        self.size += len(entry.body)
        while self.size > self.config.max_bytes and self._entries:
            _, evicted = self._entries.popitem(last=False)
            self.size -= sum(len(e.body) for e in evicted)

    def lookup(
        self, key: Key, request_headers: Iterable[tuple[bytes, bytes]], now: float
    ) -> Entry | None:
        """A copy that may still be served for this request, or None."""
        variants = self._entries.get(key)
        if not variants:
            return None
        sent = _fields(request_headers)
        for entry in variants:
            matches = all(sent.get(name) == value for name, value in entry.vary)
            if matches and now - entry.stored_at <= entry.servable_for:
                self._entries.move_to_end(key)
                return entry
        return None
