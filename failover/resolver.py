"""Origin host names, resolved by the proxy itself (dnspython's asyncio resolver).

One `HostAddresses` per host name, shared by every connection pool whose origin URL names it.
Its lookup runs in the background: first when a pool needs a connection to the name, then
again whenever the answer's TTL (clamped to `dns.min_ttl`..`dns.max_ttl`) runs out. A new
connection only reads the cached answer (`HostAddresses.addresses`); the request path never
waits for a lookup, except for the very first connection to a name.

When the resolver fails (timeout, SERVFAIL, unreachable), the last good answer is served for up
to `dns.stale_ttl` past its expiry (RFC 8767); NXDOMAIN, or a name without A and AAAA records,
leaves the name without addresses. The decisions are in `dnscache.DnsEntry` (pure).

Why dnspython rather than aiodns (c-ares): see tests/bench/dns_lookup.py and the README's DNS
section. c-ares opens its sockets in C, out of reach of the test suite's loopback-only socket
guard; dnspython's go through Python's socket module; its errors tell NXDOMAIN, SERVFAIL and
timeouts apart; and a lookup costs about 2 ms of CPU once per TTL per name, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from . import h1
from .config import DnsConfig, parse_nameserver
from .dnscache import DnsEntry, DnsLimits, Update

__all__ = ["Answer", "DnsFailure", "DnsLookup", "HostAddresses", "Resolver"]

logger = logging.getLogger("failover.dns")

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]  # IPv6 first, then IPv4, as the server listed them
    ttl: float  # the lowest TTL of the records used (CNAMEs on the way included)


class DnsFailure(Exception):
    """A lookup gave no address. `kind`: nxdomain, no-address (the name has no A or AAAA
    record), servfail, timeout, unreachable, error. `missing` is True for the first two: the
    name itself has no address, as opposed to the resolver failing."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason

    @property
    def missing(self) -> bool:
        return self.kind in ("nxdomain", "no-address")


class DnsLookup:
    """A and AAAA lookups of one name at a time, through `nameservers` ("IP[:PORT]") or, when
    none are given, the system's (/etc/resolv.conf, read at the first lookup)."""

    def __init__(self, nameservers: list[str], timeout: float) -> None:
        self.nameservers = list(nameservers)
        self.timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _make(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self.nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                servers: list[str | dns.nameserver.Nameserver] = []
                for item in self.nameservers:
                    address, port = parse_nameserver(item)
                    servers.append(dns.nameserver.Do53Nameserver(address, port))
                resolver.nameservers = servers
            else:
                try:
                    resolver = dns.asyncresolver.Resolver()
                except (OSError, dns.exception.DNSException) as exc:
                    raise DnsFailure(
                        "error", f"no system resolver configuration ({exc}); set dns.nameservers"
                    ) from None
            resolver.cache = None  # the proxy keeps its own, with its own TTL rules
            resolver.lifetime = self.timeout
            resolver.timeout = self.timeout / 2  # each server twice within the lifetime
            self._resolver = resolver
        return self._resolver

    async def lookup(self, host: str) -> Answer:
        """`host`'s addresses; DnsFailure when there are none."""
        resolver = self._make()
        try:
            async with asyncio.timeout(self.timeout * 1.5):  # dnspython overshoots a little
                results = await asyncio.gather(
                    resolver.resolve(host, "AAAA", raise_on_no_answer=False),
                    resolver.resolve(host, "A", raise_on_no_answer=False),
                    return_exceptions=True,
                )
        except TimeoutError:
            raise DnsFailure("timeout", f"timeout: no answer within {self.timeout:g} s") from None
        addresses: list[str] = []
        ttls: list[float] = []
        failures: list[DnsFailure] = []
        for result in results:
            if isinstance(result, BaseException):
                failures.append(_failure(result, self.timeout))
            elif result.rrset is not None:
                addresses.extend(record.to_text() for record in result.rrset)
                # Through a CNAME chain: the lowest TTL along it.
                ttls.append(float(result.chaining_result.minimum_ttl))
        if addresses:
            return Answer(tuple(addresses), min(ttls))
        for failure in failures:
            if failure.kind == "nxdomain":
                raise failure
        if failures:
            raise failures[0]
        raise DnsFailure("no-address", f"{host} has no A or AAAA record")


def _failure(exc: BaseException, timeout: float) -> DnsFailure:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return DnsFailure("nxdomain", "the name does not exist (NXDOMAIN)")
    if isinstance(exc, dns.exception.Timeout):
        return DnsFailure("timeout", f"timeout: no answer within {timeout:g} s")
    if isinstance(exc, dns.resolver.NoNameservers):
        answers = {str(error[3]) for error in exc.kwargs.get("errors", [])}
        if "SERVFAIL" in answers:
            return DnsFailure("servfail", "the nameserver answered SERVFAIL")
        text = "; ".join(sorted(answers)) or "no nameserver answered"
        return DnsFailure("unreachable", text)
    if isinstance(exc, OSError):
        return DnsFailure("unreachable", exc.strerror or str(exc))
    if isinstance(exc, dns.exception.DNSException):
        return DnsFailure("error", str(exc) or type(exc).__name__)
    if isinstance(exc, Exception):
        return DnsFailure("error", f"{type(exc).__name__}: {exc}")
    raise exc  # CancelledError and the like


class HostAddresses:
    """One host name's addresses, shared by the connection pools of the origins that name it
    (it is the `h1.AddressSource` of those pools)."""

    def __init__(self, host: str, resolver: Resolver) -> None:
        self.host = host
        self.resolver = resolver
        self.entry = DnsEntry(host)
        self.pools: weakref.WeakSet[h1.Pool] = weakref.WeakSet()
        self.task: asyncio.Task[None] | None = None
        self.waiters: list[asyncio.Future[None]] = []

    def attach(self, pool: h1.Pool) -> None:
        self.pools.add(pool)

    def addresses(self) -> tuple[str, ...]:
        """The addresses a new connection may use now (empty when there are none); starts
        the background lookups of the name if they are not running."""
        task = self.task
        if task is None or task.done():
            self.resolver.start(self)
        entry = self.entry
        addresses = entry.usable(self.resolver.clock())
        if addresses and entry.state == "stale":
            self.resolver.served_stale(self)
        return addresses

    async def resolve(self) -> tuple[str, ...]:
        """The addresses, after waiting for the first lookup if there was none yet;
        `h1.ConnectError` naming the reason when there are none."""
        addresses = self.addresses()
        if not addresses and self.entry.state == "pending":
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            addresses = self.addresses()
        if not addresses:
            raise h1.ConnectError(f"DNS: {self.entry.reason}")
        return addresses

    def connected(self, address: str) -> None:
        """A connection to `address` worked: try it first next time."""
        addresses = self.entry.addresses
        if addresses and addresses[0] != address and address in addresses:
            self.entry.addresses = (address, *(a for a in addresses if a != address))

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Resolver:
    """Every host name the proxy resolves, and their background lookups.

    `spawn` starts an owned task (the app's: cancelled on shutdown, crashes logged);
    `on_update` hears of each change worth an event (dns-changed, dns-stale, dns-failed,
    dns-nxdomain, dns-recovered)."""

    def __init__(
        self,
        config: DnsConfig,
        clock: Callable[[], float],
        spawn: Spawn,
        on_update: Callable[[HostAddresses, Update], None] | None = None,
        count: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.spawn = spawn
        self.on_update = on_update
        self.count = count  # (what, host, detail): lookup, failure, stale
        self.hosts: dict[str, HostAddresses] = {}
        self.config = config
        self.limits = DnsLimits(config.min_ttl, config.max_ttl, config.stale_ttl)
        self.lookup = DnsLookup(config.nameservers, config.timeout)
        self.stopped = False

    def stop(self) -> None:
        """Shutting down: no lookup starts any more (the running ones are the spawner's to
        cancel); connections keep what the cache has."""
        self.stopped = True

    def configure(self, config: DnsConfig) -> None:
        """A reloaded `dns:` block: new limits now, a new resolver if the servers changed."""
        if config == self.config:
            return
        self.config = config
        self.limits = DnsLimits(config.min_ttl, config.max_ttl, config.stale_ttl)
        self.lookup = DnsLookup(config.nameservers, config.timeout)

    def host(self, name: str) -> HostAddresses:
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = HostAddresses(name, self)
        return host

    def start(self, host: HostAddresses) -> None:
        """Start the background lookups of `host` (not of a name dropped by `retain`: a
        retired pool keeps its last answer)."""
        if self.stopped or self.hosts.get(host.host) is not host:
            return
        if host.task is None or host.task.done():
            host.task = self.spawn(self._run(host), f"dns {host.host}")

    def retain(self, names: Iterable[str]) -> None:
        """Stop looking up the names no origin uses any more."""
        keep = set(names)
        for name in list(self.hosts):
            if name not in keep:
                host = self.hosts.pop(name)
                if host.task is not None:
                    host.task.cancel()

    def served_stale(self, host: HostAddresses) -> None:
        if self.count is not None:
            self.count("stale", host.host, "")

    async def _run(self, host: HostAddresses) -> None:
        while True:
            await self.refresh(host)
            await asyncio.sleep(max(0.0, host.entry.next_lookup - self.clock()))

    async def refresh(self, host: HostAddresses) -> Update:
        """One lookup of `host` and what it changed."""
        if self.count is not None:
            self.count("lookup", host.host, "")
        entry, limits = host.entry, self.limits
        try:
            answer = await self.lookup.lookup(host.host)
        except DnsFailure as exc:
            failure = exc
        except Exception as exc:  # a bug or a library surprise: logged, and the loop goes on
            logger.exception("DNS lookup of %s failed unexpectedly.", host.host)
            failure = DnsFailure("error", f"{type(exc).__name__}: {exc}")
        else:
            update = entry.answered(answer.addresses, answer.ttl, self.clock(), limits)
            return self._applied(host, update)
        if self.count is not None:
            self.count("failure", host.host, failure.kind)
        now = self.clock()
        if failure.missing:
            update = entry.missing(f"{host.host}: {failure.reason}", now, limits)
        else:
            update = entry.failed(failure.reason, now, limits)
        return self._applied(host, update)

    def _applied(self, host: HostAddresses, update: Update) -> Update:
        host._wake()
        if update.removed:
            for pool in list(host.pools):
                pool.forget(update.removed)
        if update.event is not None and self.on_update is not None:
            self.on_update(host, update)
        return update
