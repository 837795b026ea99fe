"""Stale-if-error: a bounded in-memory copy of recent GET 200 responses.

When every attempt fails, the proxy answers with the stored copy instead of the error (RFC
5861's `stale-if-error`). Responses are copied while they stream to the client (a tee, never
a buffer in front of it); a copy that grows past `max_object_bytes` is dropped. Pure: the
caller passes `now`.

How long a copy may be served: its `stale-if-error` window after its freshness lifetime
(`max-age`/`s-maxage`) when the origin gave one, else `stale.max_age`; never beyond
`stale.max_age`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import StaleConfig

__all__ = ["Entry", "StaleCache", "Tee"]

Headers = list[tuple[bytes, bytes]]

# Headers the proxy sets on each answer; a stale answer gets its own.
_PER_RESPONSE = frozenset({b"age", b"x-failover-attempts", b"x-failover-origin"})


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

    key: str
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
        self._entries: OrderedDict[str, list[Entry]] = OrderedDict()

    def begin(
        self,
        key: str,
        request_headers: Iterable[tuple[bytes, bytes]],
        headers: Headers,
        origin: bytes,
    ) -> Tee | None:
        """Start copying a GET 200 response, or None if it may not be stored."""
        directives = _directives(headers)
        if "no-store" in directives or "private" in directives:
            return None
        vary_names: list[bytes] = []
        for name, value in headers:
            if name == b"vary":
                vary_names.extend(v.strip().lower() for v in value.split(b",") if v.strip())
        if b"*" in vary_names:
            return None
        max_age = self.config.max_age
        window = _seconds(directives.get("stale-if-error"))
        if window is not None:
            fresh = _seconds(directives.get("s-maxage") or directives.get("max-age")) or 0.0
            servable = min(max_age, fresh + window)
        else:
            servable = max_age
        if servable <= 0:
            return None
        sent = dict(request_headers)
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
        self, key: str, request_headers: Iterable[tuple[bytes, bytes]], now: float
    ) -> Entry | None:
        """A copy that may still be served for this request, or None."""
        variants = self._entries.get(key)
        if not variants:
            return None
        sent = dict(request_headers)
        for entry in variants:
            matches = all(sent.get(name) == value for name, value in entry.vary)
            if matches and now - entry.stored_at <= entry.servable_for:
                self._entries.move_to_end(key)
                return entry
        return None
