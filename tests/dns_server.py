"""A DNS server on loopback that tests control: what each name answers, with which TTL, and
when it answers SERVFAIL, NXDOMAIN or nothing at all.

    server = DnsServer()
    await server.start()                    # UDP on 127.0.0.1, a free port
    server.set("primary.test", a=["127.0.0.1"], aaaa=["::1"], ttl=1)
    server.set("www.test", cname="primary.test")
    server.set("zone.test", ns=["ns1.provider.test"])
    server.fail("primary.test", "servfail")  # or "nxdomain", "drop" (silence)
    server.silent = True                    # drop every query
    server.queries["primary.test", "A"]     # how many A queries for the name came in
    server.times("primary.test", "A")       # when they came in (time.monotonic())
    config = {"dns": {"nameservers": [server.nameserver]}}

A name the server was never told about answers NXDOMAIN; a known name without records of the
asked type answers NOERROR with an empty answer. A CNAME is followed to its target's records
when the server knows the target. Queries are counted whatever the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "Failure", "Records", "running_dns_server"]

Failure = Literal["servfail", "nxdomain", "drop"]


@dataclass
class Records:
    """What one name answers."""

    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    cname: str | None = None
    ns: list[str] = field(default_factory=list)
    ttl: int = 60
    failure: Failure | None = None


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self.server.reply(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """An authoritative-looking DNS server over UDP whose answers the test sets."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.names: dict[str, Records] = {}
        self.silent = False  # drop every query (a resolver outage by timeout)
        self.queries: Counter[tuple[str, str]] = Counter()
        self.log: list[tuple[float, str, str]] = []  # (time.monotonic(), name, type)
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def nameserver(self) -> str:
        """The server as `dns.nameservers` takes it: "IP:PORT" (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def total_queries(self) -> int:
        return sum(self.queries.values())

    def count(self, name: str) -> int:
        """Queries for `name`, of any type."""
        key = _key(name)
        return sum(n for (qname, _), n in self.queries.items() if qname == key)

    def times(self, name: str, qtype: str = "A") -> list[float]:
        """When the queries of `qtype` for `name` came in (time.monotonic())."""
        key = _key(name)
        return [at for at, qname, kind in self.log if qname == key and kind == qtype]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def set(
        self,
        name: str,
        *,
        a: list[str] | None = None,
        aaaa: list[str] | None = None,
        cname: str | None = None,
        ns: list[str] | None = None,
        ttl: int = 60,
    ) -> None:
        """Replace what `name` answers (and clear a failure set for it)."""
        self.names[_key(name)] = Records(a or [], aaaa or [], cname, ns or [], ttl)

    def fail(self, name: str, failure: Failure | None) -> None:
        """Make `name` answer SERVFAIL, NXDOMAIN or nothing; None answers its records again."""
        key = _key(name)
        records = self.names.setdefault(key, Records())
        records.failure = failure

    def remove(self, name: str) -> None:
        """Forget `name`: it answers NXDOMAIN."""
        self.names.pop(_key(name), None)

    # -- answering --------------------------------------------------------------------------

    def reply(self, data: bytes) -> bytes | None:
        """The wire-format answer to one query, None to stay silent."""
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        if not query.question:
            return None
        question = query.question[0]
        qname = _key(question.name.to_text())
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[qname, qtype] += 1
        self.log.append((time.monotonic(), qname, qtype))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = self.names.get(qname)
        if records is not None and records.failure == "drop":
            return None
        if records is not None and records.failure == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if records is None or records.failure == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        name = qname
        seen: set[str] = set()
        while records is not None and records.cname and question.rdtype != dns.rdatatype.CNAME:
            if name in seen:
                break
            seen.add(name)
            response.answer.append(
                dns.rrset.from_text(name + ".", records.ttl, "IN", "CNAME", records.cname + ".")
            )
            name = _key(records.cname)
            records = self.names.get(name)
        if records is None:
            return response.to_wire()
        values: list[str] = []
        if question.rdtype == dns.rdatatype.A:
            values = records.a
        elif question.rdtype == dns.rdatatype.AAAA:
            values = records.aaaa
        elif question.rdtype == dns.rdatatype.NS:
            values = [value.rstrip(".") + "." for value in records.ns]
        elif question.rdtype == dns.rdatatype.CNAME and records.cname:
            values = [records.cname.rstrip(".") + "."]
        if values:
            response.answer.append(
                dns.rrset.from_text_list(name + ".", records.ttl, "IN", qtype, values)
            )
        return response.to_wire()


@contextlib.asynccontextmanager
async def running_dns_server(host: str = "127.0.0.1") -> AsyncIterator[DnsServer]:
    """A started DnsServer, stopped on the way out."""
    server = DnsServer(host)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
