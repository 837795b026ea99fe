"""What the proxy knows of one origin host name: its addresses, until when they are good, and
what to do when a lookup fails. Pure: the time is passed in, nothing here does I/O.

    pending   not looked up yet (or no answer so far)
    fresh     the last lookup answered; used until its TTL (clamped to min_ttl..max_ttl) ends,
              when the next lookup is due
    stale     the resolver failed (timeout, SERVFAIL, unreachable) after a good answer: that
              answer is still used, for up to `stale_ttl` past its expiry (RFC 8767)
    failed    the resolver failed and there is no answer young enough to use
    nxdomain  the name does not exist, or has no A or AAAA record: no address

After a failure the next lookup is due `min_ttl` later.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DnsEntry", "DnsLimits", "Update"]


@dataclass(frozen=True)
class DnsLimits:
    min_ttl: float = 5.0
    max_ttl: float = 300.0
    stale_ttl: float = 3600.0

    def clamp(self, ttl: float) -> float:
        return min(max(ttl, self.min_ttl), self.max_ttl)


@dataclass(frozen=True)
class Update:
    """What one lookup result changed. `event` is the event kind to emit, None for none."""

    event: str | None
    reason: str
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()


@dataclass
class DnsEntry:
    host: str
    addresses: tuple[str, ...] = ()
    state: str = "pending"
    reason: str = "not looked up yet"
    ttl: float = 0.0  # the clamped TTL of the last good answer
    expires_at: float = 0.0  # when the last good answer's TTL ends
    usable_until: float = 0.0  # when it may no longer be served, even stale
    next_lookup: float = 0.0

    def usable(self, now: float) -> tuple[str, ...]:
        """The addresses a new connection may use now (empty when there are none)."""
        if now < self.usable_until:
            return self.addresses
        return ()

    def answered(
        self, addresses: tuple[str, ...], ttl: float, now: float, limits: DnsLimits
    ) -> Update:
        """A lookup answered with `addresses` (not empty) and `ttl` seconds."""
        old_state, old = self.state, set(self.addresses)
        self.ttl = limits.clamp(ttl)
        self.addresses = addresses
        self.expires_at = self.next_lookup = now + self.ttl
        self.usable_until = self.expires_at + limits.stale_ttl
        self.state = "fresh"
        new = set(addresses)
        added, removed = frozenset(new - old), frozenset(old - new)
        listed = ", ".join(addresses)
        self.reason = f"{self.host} is {listed} (TTL {ttl:g} s)"
        event: str | None = None
        if old_state in ("stale", "failed", "nxdomain"):
            event = "dns-recovered"
        elif old and (added or removed):
            event = "dns-changed"
        if old and old != new:
            before = ", ".join(sorted(old))
            self.reason = f"{self.host} changed from {before} to {listed}"
        return Update(event, self.reason, added, removed)

    def failed(self, reason: str, now: float, limits: DnsLimits) -> Update:
        """A lookup failed for a reason other than the name not existing (timeout, SERVFAIL,
        unreachable): keep serving the last answer while it is young enough."""
        self.next_lookup = now + limits.min_ttl
        if self.addresses and now < self.usable_until:
            left = self.usable_until - now
            self.reason = (
                f"lookup of {self.host} failed ({reason}); serving the last answer "
                f"for up to {left:.0f} s more"
            )
            event = None if self.state == "stale" else "dns-stale"
            self.state = "stale"
            return Update(event, self.reason)
        removed = frozenset(self.addresses)
        self.addresses = ()
        self.usable_until = 0.0
        if removed:
            self.reason = (
                f"lookup of {self.host} failed ({reason}) and the last answer is older "
                f"than stale_ttl ({limits.stale_ttl:g} s)"
            )
        else:
            self.reason = f"lookup of {self.host} failed ({reason})"
        event = None if self.state == "failed" else "dns-failed"
        self.state = "failed"
        return Update(event, self.reason, removed=removed)

    def missing(self, reason: str, now: float, limits: DnsLimits) -> Update:
        """The name does not exist (NXDOMAIN) or has no address: nothing to connect to."""
        self.next_lookup = now + limits.min_ttl
        removed = frozenset(self.addresses)
        self.addresses = ()
        self.usable_until = 0.0
        self.reason = reason
        event = None if self.state == "nxdomain" else "dns-nxdomain"
        self.state = "nxdomain"
        return Update(event, reason, removed=removed)

    def status(self, now: float) -> dict[str, object]:
        """The entry as `status` shows it."""
        fresh = self.state == "fresh"
        return {
            "host": self.host,
            "state": self.state,
            "addresses": list(self.usable(now)),
            "ttl": round(self.ttl, 3) if self.ttl else None,
            "ttl_left": round(max(0.0, self.expires_at - now), 3) if fresh else 0.0,
            "stale_left": (
                round(max(0.0, self.usable_until - now), 3) if self.state == "stale" else None
            ),
            "next_lookup_in": round(max(0.0, self.next_lookup - now), 3),
            "reason": self.reason,
        }
