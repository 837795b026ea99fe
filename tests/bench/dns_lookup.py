"""DNS lookup cost: dnspython's asyncio resolver against aiodns (c-ares), both asking the
loopback test server (tests/dns_server.py) for the A and AAAA records of one name.

Every lookup reaches the server (checked: two queries per lookup; the answers have TTL 0 so
that no library answers from a cache). Interleaved rounds; each round does LOOKUPS lookups
(one A and one AAAA query each, as the proxy's resolver does) with each library, one after
the other, and the medians are printed: wall time and process CPU per lookup, and that CPU
less the test server's own work (it runs in the same process and is timed on its thread),
which is the library's share. aiodns is optional (not a dependency of the project; `pip
install aiodns` to compare): without it only dnspython is measured.

    .venv/bin/python -m tests.bench.dns_lookup [lookups] [rounds]
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.asyncresolver
import dns.nameserver

from failover.resolver import DnsLookup
from tests.dns_server import DnsServer

NAME = "primary.test"


def dnspython_raw(server: DnsServer) -> Callable[[], Awaitable[None]]:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.cache = None

    async def lookup() -> None:
        a, aaaa = await asyncio.gather(
            resolver.resolve(NAME, "A", lifetime=2), resolver.resolve(NAME, "AAAA", lifetime=2)
        )
        assert a.rrset is not None and aaaa.rrset is not None

    return lookup


def failover_lookup(server: DnsServer) -> Callable[[], Awaitable[None]]:
    resolver = DnsLookup([server.nameserver], timeout=2.0)

    async def lookup() -> None:
        answer = await resolver.lookup(NAME)
        assert len(answer.addresses) == 2 and answer.ttl == 0

    return lookup


def aiodns_raw(server: DnsServer) -> Callable[[], Awaitable[None]] | None:
    try:
        aiodns: Any = importlib.import_module("aiodns")
    except ImportError:
        return None
    resolver = aiodns.DNSResolver(nameservers=[server.nameserver], timeout=2.0, tries=1)

    async def lookup() -> None:
        a, aaaa = await asyncio.gather(
            resolver.query_dns(NAME, "A"), resolver.query_dns(NAME, "AAAA")
        )
        assert a.answer and aaaa.answer

    return lookup


class TimedServer(DnsServer):
    """The test server, timing its own work (parsing queries, building answers)."""

    spent = 0.0

    def reply(self, data: bytes) -> bytes | None:
        start = time.thread_time()  # this thread's only: c-ares has a thread of its own
        try:
            return super().reply(data)
        finally:
            self.spent += time.thread_time() - start


async def measure(
    lookup: Callable[[], Awaitable[None]], count: int, server: TimedServer
) -> tuple[float, float, float]:
    """Seconds per lookup, `count` lookups one after the other: wall time, process CPU, and
    process CPU less the server's own work (the library's share)."""
    wall, cpu, spent = time.perf_counter(), time.process_time(), server.spent
    for _ in range(count):
        await lookup()
    used = time.process_time() - cpu
    return (
        (time.perf_counter() - wall) / count,
        used / count,
        (used - (server.spent - spent)) / count,
    )


async def main(lookups: int, rounds: int) -> None:
    server = TimedServer()
    await server.start()
    # TTL 0: c-ares keeps a query cache of its own (not to be turned off through aiodns), which
    # would answer repeated lookups without asking the server; it does not keep TTL-0 answers.
    server.set(NAME, a=["127.0.0.1"], aaaa=["::1"], ttl=0)
    candidates: dict[str, Callable[[], Awaitable[None]]] = {
        "dnspython 2 (asyncresolver)": dnspython_raw(server),
        "failover.resolver (dnspython)": failover_lookup(server),
    }
    c_ares = aiodns_raw(server)
    if c_ares is not None:
        candidates["aiodns (c-ares)"] = c_ares
    for lookup in candidates.values():  # warm up
        await measure(lookup, 20, server)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, lookup in candidates.items():
            before = server.total_queries
            results[name].append(await measure(lookup, lookups, server))
            asked = server.total_queries - before
            assert asked == 2 * lookups, f"{name}: {asked} queries for {lookups} lookups"
    await server.stop()
    print(f"{lookups} lookups (A + AAAA each) x {rounds} rounds, medians per lookup:")
    for name, figures in results.items():
        wall = statistics.median(f[0] for f in figures) * 1e6
        cpu = statistics.median(f[1] for f in figures) * 1e6
        own = statistics.median(f[2] for f in figures) * 1e6
        print(
            f"  {name:32s} wall {wall:6.0f} us   cpu {cpu:6.0f} us   less the server {own:6.0f} us"
        )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    asyncio.run(main(count, rounds))
