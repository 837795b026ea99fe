"""Many sites through one proxy, end to end: pools and routes with real origins and the real
proxy on loopback. Each pool fails over on its own, the router picks the most specific route,
each pool keeps its own timeouts, Location headers keep the client on the proxy, a reload adds
and removes pools under load, and the single-pool config files still mean what they meant."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from failover.config import (
    DEFAULT_POOL,
    ConfigError,
    RouteConfig,
    build_settings,
    load_config,
    read_yaml,
)
from failover.events import EventLog
from failover.faulty import FaultyOrigin
from failover.runtime import build_runtime
from tests.conftest import RunningProxy, origin_config, wait_for
from tests.helpers import connect, metric, read_response, write_yaml
from tests.test_cli import failover_each
from tests.test_proxy import raw_request

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/_failover"
SITES = ("www", "static", "api")

# config/failover.yaml as it was before pools (the single-pool form), kept verbatim: the file
# an operator wrote for an earlier release must still load and mean the same.
OLD_FAILOVER_YAML = """\
listen:
  host: 0.0.0.0
  port: 8080

origins:
  - name: cdn-a
    url: https://origin-a.example.com
    priority: 0
    host_header: www.example.com
    health:
      path: /healthz
  - name: cdn-b
    url: https://origin-b.example.com
    priority: 1
    host_header: www.example.com
    health:
      path: /healthz

health:
  interval: 2s
  timeout: 1s
  healthy_threshold: 2
  unhealthy_threshold: 2
  expect_status: "200-399"

passive:
  consecutive_failures: 3
  error_rate: 0.5
  window: 10s
  min_requests: 10
  ejection_time: 30s
  max_ejection_time: 5m

failback:
  hold_down: 30s
  flap_window: 1m
  max_hold_down: 5m

retry:
  attempts: 2
  on: [connect-failure, reset, timeout, 502, 503, 504]
  methods: [GET, HEAD, OPTIONS, PUT, DELETE]
  max_buffered_body: 1048576

timeouts:
  connect: 2s
  first_byte: 10s
  idle: 60s

admin:
  prefix: /_failover
  allow: [127.0.0.0/8, "::1/128", 10.0.0.0/8]
"""


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_failover_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs here mean what they say: no FAILOVER_ variable of the caller's applies."""
    for variable in list(os.environ):
        if variable.startswith("FAILOVER_"):
            monkeypatch.delenv(variable)


def sites_config(
    pools: dict[str, dict[str, Any]], routes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A pools config for tests: fast probes, short timeouts, no hold-down (as proxy_config)."""
    config: dict[str, Any] = {
        "pools": pools,
        "health": {"path": "/health", "interval": 0.2, "timeout": 0.5, "startup_grace": 2},
        "failback": {"hold_down": 0},
        "timeouts": {"connect": 1.0, "first_byte": 2.0},
    }
    if routes is not None:
        config["routes"] = routes
    return config


def pool_of(*origins: dict[str, Any], **blocks: Any) -> dict[str, Any]:
    return {"origins": list(origins), **blocks}


async def get(proxy: RunningProxy, host: str, path: str = "/echo") -> httpx.Response:
    return await proxy.client.get(path, headers={"Host": host})


async def served_by(proxy: RunningProxy, host: str, path: str = "/echo") -> str:
    response = await get(proxy, host, path)
    assert response.status_code == 200, f"{host}{path}: {response.status_code} {response.text}"
    return response.headers["x-failover-origin"]


async def get_status(proxy: RunningProxy) -> dict[str, Any]:
    response = await proxy.client.get(f"{PREFIX}/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def pools_in(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {pool["name"]: pool for pool in status["pools"]}


async def readyz(proxy: RunningProxy, query: str = "") -> httpx.Response:
    return await proxy.client.get(f"{PREFIX}/readyz{query}")


async def wait_ready(proxy: RunningProxy) -> None:
    async def ready() -> bool:
        return (await readyz(proxy)).status_code == 200

    await wait_for(ready, timeout=5)


async def metrics_text(proxy: RunningProxy) -> str:
    response = await proxy.client.get(f"{PREFIX}/metrics")
    assert response.status_code == 200, response.text
    return response.text


async def events_of(proxy: RunningProxy, kind: str) -> list[dict[str, Any]]:
    response = await proxy.client.get(f"{PREFIX}/events?limit=500")
    assert response.status_code == 200, response.text
    return [event for event in response.json()["events"] if event["kind"] == kind]


# --- 1. each pool fails over on its own --------------------------------------------------------


async def test_each_pool_fails_over_on_its_own(make_origin: Any, make_proxy: Any) -> None:
    origins: dict[str, FaultyOrigin] = {}
    pools: dict[str, dict[str, Any]] = {}
    for site in SITES:
        for tier in ("a", "b"):
            origins[f"{site}-{tier}"] = await make_origin(f"{site}-{tier}")
        pools[site] = pool_of(
            origin_config(f"{site}-a", origins[f"{site}-a"], 0),
            origin_config(f"{site}-b", origins[f"{site}-b"], 1),
        )
    routes = [{"host": f"{site}.example.com", "pool": site} for site in SITES]
    proxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)
    for site in SITES:
        assert await served_by(proxy, f"{site}.example.com") == f"{site}-a"

    await origins["static-a"].set_mode("http5xx")
    seen: list[tuple[str, str]] = []

    async def static_moved() -> bool:
        # Clients keep getting 200 while the pool moves: a 503 is retried on static-b.
        for site in SITES:
            seen.append((site, await served_by(proxy, f"{site}.example.com")))
        active: str | None = pools_in(await get_status(proxy))["static"]["active"]
        return active == "static-b"

    await wait_for(static_moved, timeout=5)
    assert {origin for site, origin in seen if site != "static"} == {"www-a", "api-a"}

    for _ in range(3):
        assert await served_by(proxy, "www.example.com") == "www-a"
        assert await served_by(proxy, "static.example.com") == "static-b"
        assert await served_by(proxy, "api.example.com") == "api-a"

    status = await get_status(proxy)
    assert {name: pool["active"] for name, pool in pools_in(status).items()} == {
        "www": "www-a",
        "static": "static-b",
        "api": "api-a",
    }
    assert "active" not in status  # only the single-pool form has one answer
    assert status["ready"] is True
    assert {name: pool["ready"] for name, pool in pools_in(status).items()} == dict.fromkeys(
        SITES, True
    )
    flat = {o["name"]: (o["pool"], o["state"]) for o in status["origins"]}
    assert flat["static-a"][0] == "static" and flat["static-a"][1] != "healthy"
    assert {name: entry for name, entry in flat.items() if name != "static-a"} == {
        "www-a": ("www", "healthy"),
        "www-b": ("www", "healthy"),
        "static-b": ("static", "healthy"),
        "api-a": ("api", "healthy"),
        "api-b": ("api", "healthy"),
    }
    # The other pools' secondaries never saw a request.
    assert origins["www-b"].stats.requests == 0
    assert origins["api-b"].stats.requests == 0

    text = await metrics_text(proxy)
    moves = metric(
        text,
        "failover_failovers_total",
        pool="static",
        from_origin="static-a",
        to_origin="static-b",
    )
    assert moves is not None and moves >= 1
    assert metric(text, "failover_failovers_total", pool="www") is None
    assert metric(text, "failover_failovers_total", pool="api") is None
    assert metric(text, "failover_origin_active", pool="static", origin="static-b") == 1.0
    assert metric(text, "failover_origin_active", pool="www", origin="www-a") == 1.0
    assert metric(text, "failover_origin_up", pool="static", origin="static-a") == 0.0
    served = metric(text, "failover_requests_total", pool="api", origin="api-a", code="200")
    assert served is not None and served >= 4

    moved = await events_of(proxy, "traffic-moved")
    assert moved and {event["pool"] for event in moved} == {"static"}
    assert moved[0]["old"] == "static-a" and moved[0]["new"] == "static-b"


# --- 2. routing precedence ---------------------------------------------------------------------

ROUTES_LEAST_SPECIFIC_FIRST: list[dict[str, Any]] = [
    {"pool": "fallback"},
    {"host": "*.example.com", "pool": "wild"},
    {"host": "*.eu.example.com", "pool": "eu"},
    {"host": "www.example.com", "path": "/api/", "pool": "api"},
    {"host": "www.example.com", "path": "/api/v2/", "pool": "v2"},
    {"host": "www.example.com", "pool": "www"},
    {"host": "shop.example.com", "path": "/cart/", "pool": "www"},
    {"host": "www.example.com", "path": "/strip/", "strip_prefix": True, "pool": "api"},
    {"host": "backend.example.com", "host_header": "origin.internal", "pool": "www"},
]
ROUTED_POOLS = ("fallback", "wild", "eu", "api", "v2", "www")


@pytest.fixture
async def routed(
    make_origin: Any, make_proxy: Any
) -> AsyncIterator[tuple[RunningProxy, FaultyOrigin]]:
    """One origin behind six pools (the origin's name in each pool is the pool's name, so
    X-Failover-Origin tells which pool answered); the routes listed least specific first."""
    origin = await make_origin("shared")
    pools = {name: pool_of(origin_config(name, origin, 0)) for name in ROUTED_POOLS}
    proxy = await make_proxy(sites_config(pools, ROUTES_LEAST_SPECIFIC_FIRST))
    await wait_ready(proxy)
    yield proxy, origin


@pytest.mark.parametrize(
    ("host", "path", "pool"),
    [
        ("www.example.com", "/echo", "www"),  # exact beats wildcard and catch-all
        ("WWW.Example.COM:8443", "/echo", "www"),  # case and port do not matter
        ("www.example.com.", "/echo", "www"),  # nor a trailing dot
        ("img.example.com", "/echo", "wild"),
        ("a.b.example.com", "/echo", "wild"),
        ("x.eu.example.com", "/echo", "eu"),  # the longer wildcard suffix wins
        ("example.com", "/echo", "fallback"),  # *.example.com is not example.com
        ("other.org:80", "/echo", "fallback"),
        ("www.example.com", "/api/echo", "api"),
        ("www.example.com", "/api", "api"),
        ("www.example.com", "/api?q=1", "api"),
        ("www.example.com", "/apix", "www"),  # segment-aware: /api/ is not /apix
        ("www.example.com", "/api/v2/echo", "v2"),  # the longest prefix wins
        ("www.example.com", "/api/v2x", "api"),
        ("shop.example.com", "/cart/echo", "www"),
        ("shop.example.com", "/echo", "wild"),  # no path of the exact host: next host tried
    ],
)
async def test_the_most_specific_route_wins_whatever_the_file_order(
    routed: tuple[RunningProxy, FaultyOrigin], host: str, path: str, pool: str
) -> None:
    proxy, _ = routed
    assert await served_by(proxy, host, path) == pool


async def test_strip_prefix_sends_the_path_without_the_prefix(
    routed: tuple[RunningProxy, FaultyOrigin],
) -> None:
    proxy, origin = routed
    response = await get(proxy, "www.example.com", "/strip/echo?q=1")
    assert response.status_code == 200, response.text
    assert response.headers["x-failover-origin"] == "api"
    assert response.json()["path"] == "/echo?q=1"

    for sent, received in (("/strip", "/"), ("/strip/", "/"), ("/strip?a=b", "/?a=b")):
        response = await get(proxy, "www.example.com", sent)
        assert response.status_code == 200, response.text
        assert response.headers["x-failover-origin"] == "api"
        assert origin.stats.last_request is not None
        assert origin.stats.last_request.path == received, sent


async def test_a_route_host_header_is_the_host_the_origin_sees(
    routed: tuple[RunningProxy, FaultyOrigin],
) -> None:
    proxy, origin = routed
    response = await get(proxy, "backend.example.com:8080", "/echo")
    assert response.status_code == 200, response.text
    headers = {name.lower(): value for name, value in response.json()["headers"]}
    assert headers["host"] == "origin.internal"
    assert headers["x-forwarded-host"] == "backend.example.com:8080"

    # Without one, the origin gets its own Host, as before pools.
    response = await get(proxy, "www.example.com", "/echo")
    headers = {name.lower(): value for name, value in response.json()["headers"]}
    assert headers["host"] == f"127.0.0.1:{origin.port}"


# --- 3. no route ------------------------------------------------------------------------------


async def test_an_unknown_host_without_catch_all_gets_404_naming_it(
    make_origin: Any, make_proxy: Any
) -> None:
    www = await make_origin("www-a")
    static = await make_origin("static-a")
    pools = {
        "www": pool_of(origin_config("www-a", www, 0)),
        "static": pool_of(origin_config("static-a", static, 0)),
    }
    routes = [
        {"host": "www.example.com", "pool": "www"},
        {"host": "static.example.com", "path": "/img/", "pool": "static"},
    ]
    proxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)

    response = await get(proxy, "nowhere.example.net:8080", "/echo")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert "nowhere.example.net" in response.text
    assert response.text.count("\n") == 1  # one plain line

    # A known host whose paths do not match is no site either.
    response = await get(proxy, "static.example.com", "/css/site.css")
    assert response.status_code == 404
    assert "static.example.com" in response.text

    assert www.stats.requests == 0 and static.stats.requests == 0
    assert await served_by(proxy, "www.example.com") == "www-a"
    assert await served_by(proxy, "static.example.com", "/img/echo") == "static-a"
    text = await metrics_text(proxy)
    assert metric(text, "failover_requests_total", pool="-", code="404") == 2.0


@pytest.fixture
async def two_sites(make_origin: Any, make_proxy: Any) -> RunningProxy:
    """Two pools, a.example.com and b.example.com, and no catch-all."""
    a = await make_origin("a-1")
    b = await make_origin("b-1")
    pools = {"a": pool_of(origin_config("a-1", a, 0)), "b": pool_of(origin_config("b-1", b, 0))}
    routes = [{"host": "a.example.com", "pool": "a"}, {"host": "b.example.com", "pool": "b"}]
    proxy: RunningProxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)
    return proxy


async def test_a_request_without_host_gets_a_404_that_says_so(two_sites: RunningProxy) -> None:
    async with connect(two_sites.port) as (reader, writer):
        writer.write(b"GET /echo HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
        response = await read_response(reader)
    assert response.status == 404
    assert b"None" not in response.body
    assert b"no Host" in response.body


async def test_an_absolute_form_target_is_routed_by_its_own_host(two_sites: RunningProxy) -> None:
    response = await raw_request(
        two_sites, "GET", "http://a.example.com/echo", [("Host", "b.example.com")]
    )
    assert response.status == 200
    assert response.get("x-failover-origin") == "a-1"


# --- 4. per-pool timeouts ----------------------------------------------------------------------


async def test_each_pool_has_its_own_first_byte_timeout(make_origin: Any, make_proxy: Any) -> None:
    origin = await make_origin("slow-site")
    pools = {
        "patient": pool_of(origin_config("patient", origin, 0), timeouts={"first_byte": "5s"}),
        "hasty": pool_of(origin_config("hasty", origin, 0), timeouts={"first_byte": "1s"}),
    }
    routes = [
        {"host": "patient.example.com", "pool": "patient"},
        {"host": "hasty.example.com", "pool": "hasty"},
    ]
    proxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)
    loop = asyncio.get_running_loop()

    async def timed(host: str) -> tuple[httpx.Response, float]:
        started = loop.time()
        response = await get(proxy, host, "/delay/2.5")
        return response, loop.time() - started

    (patient, patient_took), (hasty, hasty_took) = await asyncio.gather(
        timed("patient.example.com"), timed("hasty.example.com")
    )
    # Over the top-level first_byte (2 s) and within the pool's own (5 s).
    assert patient.status_code == 200, patient.text
    assert patient.headers["x-failover-origin"] == "patient"
    assert patient_took >= 2.5
    assert hasty.status_code == 504, hasty.text
    assert "hasty" in hasty.text
    assert hasty.headers["x-failover-attempts"] == "hasty;timeout"
    assert 1.0 <= hasty_took < 2.0


# --- 5. Location rewriting ---------------------------------------------------------------------


class RedirectingOrigin:
    """A raw HTTP/1.1 origin that redirects, mostly to its own absolute address (what an
    origin behind a proxy should not do, and many do)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def answer(self, target: str) -> bytes:
        me = self.url
        headers = {
            "/self": [f"Location: {me}/next"],
            "/elsewhere": ["Location: http://elsewhere.example.org/next"],
            "/relative": ["Location: /next"],
            "/routed": ["Location: http://site.internal/next"],  # a route's host_header
            "/named": [
                "Location: http://cdn.internal/next",  # its host_header counts as its own
                f"Content-Location: {me}/doc",
                f"Refresh: 0; url={me}/later",
            ],
        }.get(target)
        if headers is None:  # /health and anything else
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        head = "\r\n".join(["HTTP/1.1 302 Found", *headers, "Content-Length: 0"])
        return f"{head}\r\n\r\n".encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode("latin-1")
                if target != "/health":
                    self.targets.append(target)
                writer.write(self.answer(target))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def redirecting() -> AsyncIterator[RedirectingOrigin]:
    origin = RedirectingOrigin()
    await origin.start()
    yield origin
    await origin.stop()


async def test_location_pointing_at_the_origin_comes_back_to_the_proxy(
    redirecting: RedirectingOrigin, make_proxy: Any
) -> None:
    def origin(name: str) -> dict[str, Any]:
        return {"name": name, "url": redirecting.url, "host_header": "cdn.internal"}

    pools = {
        "site": pool_of(origin("rewritten")),
        "legacy": pool_of(origin("as-sent"), proxy={"rewrite_location": False}),
    }
    routes: list[dict[str, Any]] = [
        {"host": "www.example.com", "pool": "site"},
        {"host": "www.example.com", "path": "/app/", "strip_prefix": True, "pool": "site"},
        {"host": "legacy.example.com", "pool": "legacy"},
        {"host": "api.example.com", "host_header": "site.internal", "pool": "site"},
    ]
    proxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)

    async def fetch(host: str, target: str) -> dict[str, str]:
        response = await raw_request(proxy, "GET", target, [("Host", host)])
        assert response.status == 302, response
        return {name.lower(): value for name, value in response.headers}

    client_host = "www.example.com:8080"
    headers = await fetch(client_host, "/self")
    assert headers["location"] == f"http://{client_host}/next"
    headers = await fetch(client_host, "/named")
    assert headers["location"] == f"http://{client_host}/next"
    assert headers["content-location"] == f"http://{client_host}/doc"
    assert headers["refresh"] == f"0; url=http://{client_host}/later"
    # A stripped prefix is put back in front of the path.
    headers = await fetch(client_host, "/app/self")
    assert headers["location"] == f"http://{client_host}/app/next"
    # The Host a route sends upstream counts as the origin's own too.
    headers = await fetch("api.example.com", "/routed")
    assert headers["location"] == "http://api.example.com/next"
    # Other hosts and relative paths are left alone.
    headers = await fetch(client_host, "/elsewhere")
    assert headers["location"] == "http://elsewhere.example.org/next"
    headers = await fetch(client_host, "/relative")
    assert headers["location"] == "/next"

    # Off for the pool that says so.
    headers = await fetch("legacy.example.com", "/self")
    assert headers["location"] == f"{redirecting.url}/next"
    headers = await fetch("legacy.example.com", "/named")
    assert headers["location"] == "http://cdn.internal/next"
    assert headers["content-location"] == f"{redirecting.url}/doc"
    assert headers["x-failover-origin"] == "as-sent"

    assert "/self" in redirecting.targets  # /app/self reached the origin stripped
    assert not any(target.startswith("/app") for target in redirecting.targets)


def test_an_https_redirect_to_the_site_itself_is_left_alone() -> None:
    # As config/failover.yaml has it: an https CDN that expects Host www.example.com, behind a
    # TLS terminator (the proxy itself listens on plain http).
    settings = load_config(ROOT / "config" / "failover.yaml")
    runtime = build_runtime(settings, EventLog(lambda: 0.0), lambda: 0.0)
    rewriters = runtime.pools["www"].rewriters
    assert rewriters is not None
    rewritten = rewriters["www-fastly"].rewrite(
        b"location", b"https://www.example.com/login", "http", "www.example.com"
    )
    assert rewritten is None  # it already names the site; only the scheme could change


# --- 6. reload adds and removes a pool under load ----------------------------------------------


async def test_a_reload_adds_and_removes_a_pool_under_load(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    kept = await make_origin("kept-a")
    added = await make_origin("added-a")
    config = sites_config(
        {"kept": pool_of(origin_config("kept-a", kept, 0))},
        [{"host": "kept.example.com", "pool": "kept"}],
    )
    with_added = copy.deepcopy(config)
    with_added["pools"]["added"] = pool_of(origin_config("added-a", added, 0))
    with_added["routes"].append({"host": "added.example.com", "pool": "added"})
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    proxy = await make_proxy(config, config_path=path)
    await wait_ready(proxy)
    assert (await get(proxy, "added.example.com")).status_code == 404

    loop = asyncio.get_running_loop()
    responses: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client(number: int) -> None:
        deadline = loop.time() + 10  # a hard bound, whatever happens to the reloads
        async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as http:
            for i in range(10_000):
                if stop.is_set() or loop.time() > deadline:
                    return
                response = await http.get(
                    f"/bytes/256?client={number}&i={i}", headers={"Host": "kept.example.com"}
                )
                responses.append(
                    (response.status_code, response.headers.get("x-failover-origin", "-"))
                )

    async def added_answers(status: int) -> bool:
        return (await get(proxy, "added.example.com")).status_code == status

    clients = [asyncio.create_task(client(n)) for n in range(6)]
    try:
        await wait_for(lambda: len(responses) >= 40, timeout=5)
        before = next(o for o in (await get_status(proxy))["origins"] if o["name"] == "kept-a")

        write_yaml(path, with_added)
        await wait_for(lambda: added_answers(200), timeout=5)
        assert await served_by(proxy, "added.example.com") == "added-a"
        status = await get_status(proxy)
        assert list(pools_in(status)) == ["kept", "added"]
        assert status["last_reload"]["result"] == "ok"
        after = next(o for o in status["origins"] if o["name"] == "kept-a")
        # The kept pool's origin keeps its check record across the reload.
        assert after["check"]["consecutive_passes"] >= before["check"]["consecutive_passes"]
        served = len(responses)
        await wait_for(lambda: len(responses) >= served + 40, timeout=5)

        write_yaml(path, config)
        await wait_for(lambda: added_answers(404), timeout=5)
        assert list(pools_in(await get_status(proxy))) == ["kept"]
        served = len(responses)
        await wait_for(lambda: len(responses) >= served + 40, timeout=5)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert len(responses) >= 120
    assert [code for code, _ in responses if code != 200] == []
    assert {origin for _, origin in responses} == {"kept-a"}
    reloads = [event["reason"] for event in await events_of(proxy, "config-reloaded")]
    assert reloads == [
        "config file changed: 1 pool, 1 origin, removed pools added, removed origins added-a",
        "config file changed: 2 pools, 2 origins, added pools added, added origins added-a",
    ]


# --- 7. the single-pool config files -----------------------------------------------------------


def kubernetes_config() -> dict[str, Any]:
    documents = list(yaml.safe_load_all((ROOT / "config" / "kubernetes.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    data: dict[str, Any] = yaml.safe_load(config_map["data"]["failover.yaml"])
    return data


@pytest.mark.parametrize("name", ["minimal.yaml", "failover.yaml before pools", "kubernetes.yaml"])
def test_single_pool_config_files_still_load_as_one_default_pool(name: str, tmp_path: Path) -> None:
    if name == "minimal.yaml":
        settings = load_config(ROOT / "config" / "minimal.yaml")
    elif name == "kubernetes.yaml":
        settings = build_settings(kubernetes_config())
    else:
        path = tmp_path / "failover.yaml"
        path.write_text(OLD_FAILOVER_YAML, encoding="utf-8")
        settings = build_settings(read_yaml(path))
    assert list(settings.pools) == [DEFAULT_POOL]
    assert settings.routes == [RouteConfig(pool=DEFAULT_POOL)]
    pool = settings.pools[DEFAULT_POOL]
    assert pool.origins == settings.origins
    # Every top-level block keeps its meaning: the pool has exactly the top-level values.
    for block in ("health", "passive", "failback", "retry", "timeouts", "stale"):
        assert getattr(pool, block) == getattr(settings, block), block
    assert pool.all_down == settings.all_down
    assert pool.proxy.rewrite_location is True

    runtime = build_runtime(settings, EventLog(lambda: 0.0), lambda: 0.0)
    for host in ("www.example.com", "anything.example.org:8080", None):
        match = runtime.router.match(host, "/any/path?q=1")
        assert match is not None and match.pool == DEFAULT_POOL
        assert match.path == "/any/path?q=1"
    assert [o.pool_name for o in runtime.origins.values()] == [DEFAULT_POOL] * len(settings.origins)


def test_the_old_failover_yaml_keeps_its_values(tmp_path: Path) -> None:
    path = tmp_path / "failover.yaml"
    path.write_text(OLD_FAILOVER_YAML, encoding="utf-8")
    pool = build_settings(read_yaml(path)).pools[DEFAULT_POOL]
    assert [(o.name, o.priority, o.host_header) for o in pool.origins] == [
        ("cdn-a", 0, "www.example.com"),
        ("cdn-b", 1, "www.example.com"),
    ]
    assert pool.failback.hold_down == 30.0
    assert pool.passive.max_ejection_time == 300.0
    assert pool.timeouts.first_byte == 10.0
    assert pool.health_for(pool.origins[0]).path == "/healthz"


async def test_minimal_yaml_serves_every_host_and_fails_over_as_before(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = read_yaml(ROOT / "config" / "minimal.yaml")
    # The shipped file, pointed at the test's origins, with the tests' fast probes.
    assert [o["name"] for o in config["origins"]] == ["primary", "secondary"]
    config["origins"][0]["url"] = primary.url
    config["origins"][1]["url"] = secondary.url
    config["health"] = {"path": "/health", "interval": 0.2, "timeout": 0.5, "startup_grace": 2}
    config["failback"] = {"hold_down": 0}
    proxy = await make_proxy(config)
    await wait_ready(proxy)

    for host in ("www.example.com", "127.0.0.1", "anything.example.org:8443"):
        assert await served_by(proxy, host) == "primary"
    status = await get_status(proxy)
    assert status["active"] == "primary"
    assert [(p["name"], p["active"]) for p in status["pools"]] == [("default", "primary")]
    body = (await readyz(proxy)).json()
    assert body["pools"] == {"default": True}
    assert body["origins"] == {"primary": "healthy", "secondary": "healthy"}

    await primary.set_mode("refuse")
    assert await served_by(proxy, "www.example.com") == "secondary"

    async def moved() -> bool:
        active: str | None = (await get_status(proxy))["active"]
        return active == "secondary"

    await wait_for(moved, timeout=5)
    text = await metrics_text(proxy)
    moves = metric(
        text,
        "failover_failovers_total",
        pool="default",
        from_origin="primary",
        to_origin="secondary",
    )
    assert moves is not None and moves >= 1
    assert {event["pool"] for event in await events_of(proxy, "origin-down")} == {"default"}


# --- 8. check ----------------------------------------------------------------------------------

GOOD_POOLS = """\
pools:
  www:
    origins:
      - {name: www-a, url: "http://127.0.0.1:9001"}
      - {name: www-b, url: "http://127.0.0.1:9002", priority: 1}
  static:
    origins:
      - {name: static-a, url: "http://127.0.0.1:9003"}
routes:
  - {host: www.example.com, pool: www}
  - {host: "*.example.com", path: /img/, pool: static}
  - {pool: www}
"""
POOL_A = "  a:\n    origins: [{name: a-1, url: 'http://127.0.0.1:9001'}]\n"
POOL_B = "  b:\n    origins: [{name: b-1, url: 'http://127.0.0.1:9002'}]\n"
BAD_POOLS = {
    "unknown pool": (
        f"pools:\n{POOL_A}{POOL_B}routes:\n  - {{host: a.example.com, pool: nope}}\n",
        "routes[0].pool: 'nope' is not a pool (expected one of 'a', 'b')",
    ),
    "same host and path": (
        f"pools:\n{POOL_A}{POOL_B}routes:\n"
        "  - {host: a.example.com, path: /x/, pool: a}\n"
        "  - {host: A.example.com, path: /x, pool: b}\n",
        "routes[1]: same host and path as routes[0] ('A.example.com', '/x')",
    ),
    "pool without origins": (
        f"pools:\n{POOL_A}  b:\n    origins: []\n",
        "pools.b.origins: at least one origin is required",
    ),
    "origin name in two pools": (
        f"pools:\n{POOL_A}  b:\n    origins: [{{name: a-1, url: 'http://127.0.0.1:9002'}}]\n",
        "pools: duplicate origin name 'a-1' (pools a and b)",
    ),
    "bad wildcard": (
        f"pools:\n{POOL_A}{POOL_B}routes:\n"
        "  - {host: '*example.com', pool: a}\n"
        "  - {host: 'www.*.com', pool: b}\n",
        "routes[0].host: '*example.com' is not a wildcard of the form '*.suffix'\n"
        "routes[1].host: 'www.*.com' is not a wildcard of the form '*.suffix'",
    ),
}


def test_check_prints_the_pools_and_each_problem_on_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_POOLS, encoding="utf-8")
    paths = {}
    for name, (text, _) in BAD_POOLS.items():
        paths[name] = tmp_path / f"{name.replace(' ', '-')}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    results = failover_each(
        ["check", str(good)], *(["check", str(path)] for path in paths.values()), cwd=tmp_path
    )

    ok = results[0]
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (
        f"{good}: ok; 2 pools, 3 routes\n"
        "  pool www: www-a (priority 0), www-b (priority 1)\n"
        "  pool static: static-a (priority 0)\n"
    )
    assert ok.stderr == ""
    for (name, (_, expected)), result in zip(BAD_POOLS.items(), results[1:], strict=True):
        assert result.returncode == 2, name
        assert "Traceback" not in result.stderr, name
        assert result.stderr.splitlines() == expected.splitlines(), name
        assert result.stdout == "", name


def test_check_names_every_pool_and_route_problem_in_one_round() -> None:
    data = yaml.safe_load(
        f"pools:\n{POOL_A}  b:\n    origins: []\n"
        "routes:\n  - {host: a.example.com, pool: nope}\n  - {host: '*example.com', pool: a}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build_settings(data)
    assert sorted(caught.value.problems) == [
        "pools.b.origins: at least one origin is required",
        "routes[0].pool: 'nope' is not a pool (expected one of 'a', 'b')",
        "routes[1].host: '*example.com' is not a wildcard of the form '*.suffix'",
    ]


# --- 9. readiness per pool ---------------------------------------------------------------------


async def test_readyz_is_per_pool_and_503_while_a_pool_has_no_usable_origin(
    make_origin: Any, make_proxy: Any
) -> None:
    a = await make_origin("a-1")
    b = await make_origin("b-1")
    pools = {"a": pool_of(origin_config("a-1", a, 0)), "b": pool_of(origin_config("b-1", b, 0))}
    routes = [{"host": "a.example.com", "pool": "a"}, {"host": "b.example.com", "pool": "b"}]
    proxy = await make_proxy(sites_config(pools, routes))
    await wait_ready(proxy)
    response = await readyz(proxy)
    assert response.json() == {
        "ready": True,
        "pools": {"a": True, "b": True},
        "origins": {"a-1": "healthy", "b-1": "healthy"},
    }

    await b.set_mode("refuse")

    async def not_ready() -> bool:
        return (await readyz(proxy)).status_code == 503

    await wait_for(not_ready, timeout=5)
    body = (await readyz(proxy)).json()
    assert body["ready"] is False
    assert body["pools"] == {"a": True, "b": False}
    assert body["origins"]["a-1"] == "healthy" and body["origins"]["b-1"] != "healthy"

    one = await readyz(proxy, "?pool=a")
    assert one.status_code == 200
    assert one.json() == {"ready": True, "pools": {"a": True}, "origins": {"a-1": "healthy"}}
    other = await readyz(proxy, "?pool=b")
    assert other.status_code == 503
    assert other.json()["pools"] == {"b": False}
    assert list(other.json()["origins"]) == ["b-1"]
    unknown = await readyz(proxy, "?pool=nope")
    assert unknown.status_code == 404
    assert "'nope'" in unknown.text and "a, b" in unknown.text

    # Pool a keeps serving while pool b has nothing.
    assert await served_by(proxy, "a.example.com") == "a-1"
    down = [e for e in await events_of(proxy, "origin-down") if e["origin"] == "b-1"]
    assert down and {e["pool"] for e in down} == {"b"}

    await b.set_mode("ok")
    await wait_ready(proxy)
    assert (await readyz(proxy, "?pool=b")).status_code == 200


def test_the_shipped_example_config_has_two_sites_on_two_cdns_each() -> None:
    settings = load_config(ROOT / "config" / "failover.yaml")
    assert len(settings.pools) >= 2
    for name, config in settings.pools.items():
        assert len(config.origins) >= 2, name
        assert len({o.priority for o in config.origins}) >= 2, name  # a primary and a secondary
    runtime = build_runtime(settings, EventLog(lambda: 0.0), lambda: 0.0)
    hosts = {route.host for route in settings.routes if route.host is not None}
    assert len(hosts) >= 2
    for host in hosts:
        assert runtime.router.match(host, "/") is not None, host
    # What its comments say about the routes.
    for host, path, pool, sent in [
        ("www.example.com", "/index.html", "www", "/index.html"),
        ("Example.com:443", "/", "www", "/"),
        ("static.example.com", "/api/x", "static", "/api/x"),
        ("www.example.com", "/api/users?q=1", "api", "/users?q=1"),
        ("www.example.com", "/apix", "www", "/apix"),
    ]:
        match = runtime.router.match(host, path)
        assert match is not None and (match.pool, match.path) == (pool, sent), (host, path)
    assert runtime.router.match("other.example.org", "/") is None
    assert settings.pools["static"].timeouts.first_byte == 30.0
    assert settings.pools["www"].timeouts.first_byte == 10.0
