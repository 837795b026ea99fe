"""DNS owned by the proxy, end to end: a DNS server on loopback that the tests control
(tests/dns_server.py), origins on 127.0.0.1, 127.0.0.2 and ::1, and the real proxy.

Test names (primary.test) are answered only by that server, through `dns.nameservers`; the
`no_system_dns` guard fails any test that hands a host name to the system's getaddrinfo."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from failover import h1
from failover.config import ConfigError, build_settings
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.dns_server import DnsServer
from tests.helpers import NO_HEALTH, NO_PASSIVE, get_metrics, get_status, metric, origin_in

# 127.0.0.2 is loopback too (all of 127/8 is, on Linux): the origins an answer moves between.
pytestmark = pytest.mark.allow_hosts(["127.0.0.0/8", "::1"])

NAME = "primary.test"


@pytest.fixture(autouse=True)
def no_system_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse to pass a host name to the system resolver: only IP literals get through."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else host
        if text is not None and text != "localhost":
            try:
                socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
            except OSError:
                raise AssertionError(f"{text!r} was passed to the system resolver") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    await server.stop()


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class NamedOrigin:
    """An HTTP origin that answers every request with its name; `close` makes it close each
    connection after one response (so that each request needs a new upstream connection)."""

    name: str
    host: str
    port: int = 0
    close: bool = False
    requests: int = 0
    open: int = 0
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"GET /health"):
                    self.requests += 1
                body = self.name.encode()
                close = b"Connection: close\r\n" if self.close else b""
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Origin: %s\r\n%s\r\n%s"
                    % (len(body), body, close, body)
                )
                await writer.drain()
                if self.close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


MakeNamed = Callable[..., Awaitable[NamedOrigin]]


@pytest.fixture
async def named_origin() -> AsyncIterator[MakeNamed]:
    started: list[NamedOrigin] = []

    async def make(name: str, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> NamedOrigin:
        origin = NamedOrigin(name, host, port, **kw)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


async def pair_on_one_port(make: MakeNamed, **kw: Any) -> tuple[NamedOrigin, NamedOrigin]:
    """Origins `one` on 127.0.0.1 and `two` on 127.0.0.2, on the same port."""
    for _ in range(20):
        one = await make("one", "127.0.0.1", **kw)
        try:
            two = await make("two", "127.0.0.2", one.port, **kw)
        except OSError:
            await one.stop()
            continue
        return one, two
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


def dns_block(server: DnsServer, **extra: Any) -> dict[str, Any]:
    # The timeout leaves room for a loaded machine: the server shares the proxy's event loop.
    return {"nameservers": [server.nameserver], "min_ttl": 0.1, "timeout": 1.0, **extra}


async def served_by(proxy: RunningProxy) -> str:
    response = await proxy.client.get("/")
    assert response.status_code == 200, response.text
    return response.text


def dns_status(status: dict[str, Any], name: str) -> dict[str, Any]:
    record = origin_in(status, name)
    assert record is not None and record["dns"] is not None
    dns: dict[str, Any] = record["dns"]
    return dns


async def test_ttl_is_honoured_and_a_changed_answer_is_followed(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    one, two = await pair_on_one_port(named_origin)
    dns_server.set(NAME, a=["127.0.0.1"], ttl=1)
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", f"http://{NAME}:{one.port}", 0),
            health=NO_HEALTH,
            passive=NO_PASSIVE,
            dns=dns_block(dns_server),
        )
    )
    assert await served_by(proxy) == "one"
    dns = dns_status(await get_status(proxy), "primary")
    assert dns["addresses"] == ["127.0.0.1"] and dns["state"] == "fresh"
    assert 0 < dns["ttl_left"] <= 1 and dns["ttl"] == 1
    assert one.open == 1  # the keep-alive connection, idle in the proxy's pool

    dns_server.set(NAME, a=["127.0.0.2"], ttl=1)
    await wait_for(lambda: len(dns_server.times(NAME)) >= 2, timeout=3)
    first, second = dns_server.times(NAME)[:2]
    assert 0.9 <= second - first <= 1.6  # asked again when the TTL ran out, not before
    # The idle connection to the address that left the answer is closed; new ones go to .2.
    await wait_for(lambda: one.open == 0, timeout=2)
    assert await served_by(proxy) == "two"
    assert (one.requests, two.requests) == (1, 1)
    dns = dns_status(await get_status(proxy), "primary")
    assert dns["addresses"] == ["127.0.0.2"]
    events = (await proxy.client.get("/_failover/events")).json()["events"]
    changed = [e for e in events if e["kind"] == "dns-changed"]
    assert changed and "127.0.0.1" in changed[0]["reason"] and "127.0.0.2" in changed[0]["reason"]
    assert (
        metric(await get_metrics(proxy.client), "failover_dns_lookups_total", host=NAME) or 0
    ) >= 2


@pytest.mark.parametrize("outage", ["drop", "servfail"])
async def test_resolver_outage_serves_the_last_answer(
    outage: str, dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    origin = await named_origin("one", close=True)  # every request needs a new connection
    dns_server.set(NAME, a=["127.0.0.1"], ttl=1)
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", f"http://{NAME}:{origin.port}", 0),
            dns=dns_block(dns_server, min_ttl=0.2, stale_ttl=60),
            health={"timeout": 2},
        )
    )
    assert await served_by(proxy) == "one"
    if outage == "drop":
        dns_server.silent = True
    else:
        dns_server.fail(NAME, "servfail")
    statuses: list[int] = []

    async def stale_served() -> bool:
        statuses.append((await proxy.client.get("/")).status_code)
        dns = dns_status(await get_status(proxy), "primary")
        return dns["state"] == "stale" and len(dns_server.times(NAME)) >= 3

    await wait_for(stale_served, timeout=8)
    for _ in range(10):  # new connections, each from the stale answer
        statuses.append((await proxy.client.get("/")).status_code)
    assert set(statuses) == {200}
    status = await get_status(proxy)
    record = origin_in(status, "primary")
    assert record is not None and record["state"] == "healthy"
    dns = dns_status(status, "primary")
    assert dns["addresses"] == ["127.0.0.1"] and 50 < dns["stale_left"] <= 61
    reason = "timeout" if outage == "drop" else "servfail"
    assert reason.upper() in dns["reason"].upper()
    text = await get_metrics(proxy.client)
    assert (metric(text, "failover_dns_stale_answers_total", host=NAME) or 0) >= 10
    assert (metric(text, "failover_dns_failures_total", host=NAME, reason=reason) or 0) >= 1
    events = (await proxy.client.get("/_failover/events")).json()["events"]
    assert [e["origin"] for e in events if e["kind"] == "dns-stale"] == ["primary"]

    # The resolver comes back: the answer is fresh again, with an event.
    dns_server.silent = False
    dns_server.fail(NAME, None)

    async def fresh() -> bool:
        state: str = dns_status(await get_status(proxy), "primary")["state"]
        return state == "fresh"

    await wait_for(fresh, timeout=5)
    events = (await proxy.client.get("/_failover/events")).json()["events"]
    assert any(e["kind"] == "dns-recovered" for e in events)


async def test_nxdomain_fails_over_and_the_name_coming_back_fails_back(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    primary = await named_origin("primary")
    secondary = await named_origin("secondary")
    dns_server.set(NAME, a=["127.0.0.1"], ttl=1)
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", f"http://{NAME}:{primary.port}", 0),
            origin_config("secondary", f"http://127.0.0.1:{secondary.port}", 1),
            dns=dns_block(dns_server, min_ttl=0.2),
            health={"timeout": 2},
        )
    )

    async def primary_serves() -> bool:
        return await served_by(proxy) == "primary"

    await wait_for(primary_serves, timeout=5)
    dns_server.remove(NAME)
    statuses: list[int] = []

    async def failed_over() -> bool:
        response = await proxy.client.get("/")
        statuses.append(response.status_code)
        return response.text == "secondary"

    await wait_for(failed_over, timeout=5)
    record = origin_in(await get_status(proxy), "primary")
    assert record is not None and "failed-check" in record["flags"]
    assert "NXDOMAIN" in record["reason"] and NAME in record["reason"]
    assert record["dns"]["state"] == "nxdomain" and record["dns"]["addresses"] == []
    assert set(statuses) == {200}
    text = await get_metrics(proxy.client)
    assert (metric(text, "failover_dns_failures_total", host=NAME, reason="nxdomain") or 0) >= 1

    dns_server.set(NAME, a=["127.0.0.1"], ttl=1)

    await wait_for(primary_serves, timeout=6)


async def test_every_address_is_tried_within_the_connect_timeout(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    origin = await named_origin("one", close=True)
    # ::1 and 127.0.0.3 refuse (nothing listens there on that port); 127.0.0.1 answers.
    dns_server.set(NAME, a=["127.0.0.3", "127.0.0.1"], aaaa=["::1"] if has_ipv6() else [])
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", f"http://{NAME}:{origin.port}", 0),
            dns=dns_block(dns_server),
            passive={"consecutive_failures": 1},
            health={"timeout": 2},
        )
    )
    for _ in range(5):
        assert await served_by(proxy) == "one"
    record = origin_in(await get_status(proxy), "primary")
    assert record is not None and record["state"] == "healthy"
    assert record["passive"]["consecutive_failures"] == 0
    assert sorted(record["dns"]["addresses"]) == sorted(
        ["127.0.0.3", "127.0.0.1", *(["::1"] if has_ipv6() else [])]
    )
    # The address that answered is tried first from then on.
    assert record["dns"]["addresses"][0] == "127.0.0.1"


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
async def test_an_ipv6_only_name_is_reached_over_ipv6(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    origin = await named_origin("six", host="::1")
    dns_server.set(NAME, aaaa=["::1"])
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", f"http://{NAME}:{origin.port}", 0),
            dns=dns_block(dns_server),
            health={"timeout": 2},
        )
    )
    assert await served_by(proxy) == "six"


async def test_an_ip_literal_origin_never_reaches_the_resolver(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    origin = await named_origin("one")
    proxy: RunningProxy = await make_proxy(
        proxy_config(origin_config("primary", f"http://127.0.0.1:{origin.port}", 0))
    )
    assert await served_by(proxy) == "one"
    record = origin_in(await get_status(proxy), "primary")
    assert record is not None and record["dns"] is None
    assert proxy.app.resolver.hosts == {} and dns_server.total_queries == 0


async def test_a_name_that_does_not_exist_from_the_start_is_named(
    dns_server: DnsServer, make_proxy: Callable[..., Any]
) -> None:
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", "http://missing.test:80", 0),
            health=NO_HEALTH,
            passive=NO_PASSIVE,
            dns=dns_block(dns_server),
        )
    )
    response = await proxy.client.get("/")
    assert response.status_code == 502
    record = origin_in(await get_status(proxy), "primary")
    assert record is not None and "failed-check" in record["flags"]
    assert record["reason"] == "DNS: missing.test: the name does not exist (NXDOMAIN)"


async def test_a_reload_stops_the_lookups_of_a_name_no_longer_used(
    dns_server: DnsServer, named_origin: MakeNamed, make_proxy: Callable[..., Any]
) -> None:
    origin = await named_origin("one")
    dns_server.set(NAME, a=["127.0.0.1"], ttl=1)
    config = proxy_config(
        origin_config("primary", f"http://{NAME}:{origin.port}", 0),
        dns=dns_block(dns_server),
        health={"timeout": 2},
    )
    proxy: RunningProxy = await make_proxy(config)
    assert await served_by(proxy) == "one"
    task = proxy.app.resolver.hosts[NAME].task
    assert task is not None and not task.done()
    config["origins"] = [origin_config("primary", f"http://127.0.0.1:{origin.port}", 0)]
    proxy.app.apply(build_settings(config))
    await wait_for(task.done, timeout=2)
    assert task.cancelled() and proxy.app.resolver.hosts == {}


@pytest.mark.parametrize(
    ("dns", "problem"),
    [
        ({"nameservers": ["ns1.example.com"]}, "'ns1.example.com' is not a nameserver"),
        ({"nameservers": ["127.0.0.1:99999"]}, "port outside 1-65535"),
        ({"min_ttl": 10, "max_ttl": 5}, "max_ttl (5 s) is shorter than min_ttl (10 s)"),
        ({"stale_ttl": -1}, "stale_ttl"),
    ],
)
def test_bad_dns_settings_are_named(dns: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_settings({"origins": [{"name": "a", "url": "http://127.0.0.1:1"}], "dns": dns})
    assert problem in str(info.value)


def test_dns_defaults() -> None:
    settings = build_settings({"origins": [{"name": "a", "url": "http://127.0.0.1:1"}]})
    assert settings.dns.nameservers == []
    assert (settings.dns.min_ttl, settings.dns.max_ttl, settings.dns.stale_ttl) == (5, 300, 3600)
    nameservers = ["127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"]
    settings = build_settings(
        {
            "origins": [{"name": "a", "url": "http://127.0.0.1:1"}],
            "dns": {"nameservers": nameservers},
        }
    )
    assert settings.dns.nameservers == nameservers


# -- the pool's side: h1.Pool with an address source -----------------------------------------


@dataclass
class FixedAddresses:
    """An `h1.AddressSource` with a fixed answer (the resolver's part is tested above)."""

    answer: tuple[str, ...]
    first: list[str] = field(default_factory=list)

    def attach(self, pool: h1.Pool) -> None:
        pass

    def addresses(self) -> tuple[str, ...]:
        return self.answer

    async def resolve(self) -> tuple[str, ...]:
        if not self.answer:
            raise h1.ConnectError("DNS: primary.test: the name does not exist (NXDOMAIN)")
        return self.answer

    def connected(self, address: str) -> None:
        self.first.append(address)


async def test_the_pool_connects_to_an_address_that_answers_and_says_which(
    named_origin: MakeNamed,
) -> None:
    origin = await named_origin("one")
    source = FixedAddresses(("127.0.0.3", "127.0.0.1"))
    pool = h1.Pool(f"http://{NAME}:{origin.port}", dns=source, connect_timeout=1)
    try:
        response = await pool.request("GET", "/", [("Host", NAME)])
        assert await response.content.read() == b"one"
        response.release()
        assert source.first == ["127.0.0.1"]
        assert pool.idle == 1 and pool._idle[0].address == "127.0.0.1"
    finally:
        await pool.close()


async def test_a_busy_connection_to_a_removed_address_is_closed_when_its_response_ends(
    named_origin: MakeNamed,
) -> None:
    origin = await named_origin("one")
    pool = h1.Pool(f"http://{NAME}:{origin.port}", dns=FixedAddresses(("127.0.0.1",)))
    try:
        response = await pool.request("GET", "/", [("Host", NAME)])
        pool.forget(frozenset({"127.0.0.1"}))  # while the response is being read
        assert await response.content.read() == b"one"
        response.release()
        assert pool.idle == 0
        await wait_for(lambda: origin.open == 0, timeout=2)
        # An idle connection to a removed address is closed at once.
        response = await pool.request("GET", "/", [("Host", NAME)])
        await response.content.read()
        response.release()
        assert pool.idle == 1
        pool.forget(frozenset({"127.0.0.2"}))
        assert pool.idle == 1
        pool.forget(frozenset({"127.0.0.1"}))
        assert pool.idle == 0
        await wait_for(lambda: origin.open == 0, timeout=2)
    finally:
        await pool.close()


async def test_a_name_without_addresses_fails_the_connect_with_the_reason() -> None:
    pool = h1.Pool(f"http://{NAME}:80", dns=FixedAddresses(()))
    try:
        with pytest.raises(h1.ConnectError) as info:
            await pool.request("GET", "/", [("Host", NAME)])
        assert info.value.reason == "DNS: primary.test: the name does not exist (NXDOMAIN)"
        assert pool.in_use == 0
    finally:
        await pool.close()
