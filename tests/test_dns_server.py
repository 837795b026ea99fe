"""The loopback DNS server the DNS tests control (tests/dns_server.py), asked with dnspython:
each kind of answer it gives, as other test modules rely on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.asyncresolver
import dns.nameserver
import pytest

from failover.resolver import DnsFailure, DnsLookup
from tests.dns_server import DnsServer


@pytest.fixture
async def server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    await server.stop()


def resolver(server: DnsServer) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.host, server.port)]
    resolver.cache = None
    resolver.lifetime = 1.0
    return resolver


async def test_a_aaaa_ns_and_cname_answers_with_their_ttl(server: DnsServer) -> None:
    server.set("cdn.test", a=["127.0.0.1", "127.0.0.2"], aaaa=["::1"], ttl=30)
    server.set("www.test", cname="cdn.test", ttl=5)
    server.set("zone.test", ns=["ns1.provider.test", "ns2.provider.test"])
    ask = resolver(server)
    a = await ask.resolve("cdn.test", "A")
    assert sorted(r.to_text() for r in a) == ["127.0.0.1", "127.0.0.2"] and a.rrset is not None
    assert a.rrset.ttl == 30
    assert [r.to_text() for r in await ask.resolve("cdn.test", "AAAA")] == ["::1"]
    www = await ask.resolve("www.test", "A")
    assert str(www.canonical_name) == "cdn.test."
    assert www.chaining_result.minimum_ttl == 5
    cname = await ask.resolve("www.test", "CNAME")
    assert [r.to_text() for r in cname] == ["cdn.test."]
    ns = await ask.resolve("zone.test", "NS")
    assert sorted(r.to_text() for r in ns) == ["ns1.provider.test.", "ns2.provider.test."]
    assert server.queries["cdn.test", "A"] == 1 and server.count("www.test") == 2


async def test_failures_nxdomain_servfail_silence_and_empty_answers(server: DnsServer) -> None:
    server.set("cdn.test", a=["127.0.0.1"])
    lookup = DnsLookup([server.nameserver], timeout=0.3)
    with pytest.raises(DnsFailure) as info:
        await lookup.lookup("unknown.test")
    assert info.value.kind == "nxdomain"
    server.fail("cdn.test", "servfail")
    with pytest.raises(DnsFailure) as info:
        await lookup.lookup("cdn.test")
    assert info.value.kind == "servfail"
    server.fail("cdn.test", "drop")
    with pytest.raises(DnsFailure) as info:
        await lookup.lookup("cdn.test")
    assert info.value.kind == "timeout"
    server.fail("cdn.test", None)
    answer = await lookup.lookup("cdn.test")
    assert answer.addresses == ("127.0.0.1",)  # no AAAA: NOERROR with an empty answer
    server.silent = True
    with pytest.raises(DnsFailure) as info:
        await lookup.lookup("cdn.test")
    assert info.value.kind == "timeout"
    server.silent = False
    server.set("bare.test", ns=["ns1.provider.test"])
    with pytest.raises(DnsFailure) as info:
        await lookup.lookup("bare.test")
    assert info.value.kind == "no-address" and info.value.missing


async def test_a_cname_answer_takes_the_lowest_ttl_on_the_way(server: DnsServer) -> None:
    server.set("cdn.test", a=["127.0.0.1"], ttl=300)
    server.set("www.test", cname="cdn.test", ttl=7)
    answer = await DnsLookup([server.nameserver], timeout=1.0).lookup("www.test")
    assert (answer.addresses, answer.ttl) == (("127.0.0.1",), 7.0)


def test_the_nameserver_string_has_the_port() -> None:
    assert DnsServer("127.0.0.1", 5353).nameserver == "127.0.0.1:5353"
    assert DnsServer("::1", 5353).nameserver == "[::1]:5353"
