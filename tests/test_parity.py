"""Continuous parity: the pure comparison, the config checks, and end to end on loopback."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from failover.config import ConfigError, build_settings
from failover.events import Event
from failover.notify import pagerduty_message
from failover.origins import Flag
from failover.parity import Answer, Verdict, answer_of, compare, summarize

from .conftest import RunningProxy, origin_config, proxy_config, wait_for
from .helpers import PREFIX, get_metrics, get_status, metric, origin_in

JS = b"console.log('release 42');\n" * 40


def answer(body: bytes = JS, **changes: Any) -> Answer:
    values: dict[str, Any] = {
        "status": 200,
        "content_type": "application/javascript",
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    values.update(changes)
    return Answer(**values)


# -- the pure comparison ---------------------------------------------------------------------


def test_identical_answers_are_the_same() -> None:
    assert compare("/app.js", answer(), answer()).kind == "same"


def test_other_bytes_of_the_same_length_name_both_digests() -> None:
    other = JS.replace(b"42", b"41")
    verdict = compare("/app.js", answer(other), answer())
    assert verdict.kind == "different"
    mine, theirs = hashlib.sha256(other).hexdigest(), hashlib.sha256(JS).hexdigest()
    assert verdict.detail == f"/app.js: sha256 {mine[:8]}.. != reference {theirs[:8]}.."


def test_a_shorter_body_names_the_lengths() -> None:
    verdict = compare("/app.js", answer(b"x"), answer())
    assert verdict.kind == "different"
    assert f"length 1 != reference {len(JS)}" in verdict.detail


def test_another_status_is_named_first() -> None:
    verdict = compare("/app.js", answer(status=404), answer())
    assert verdict == Verdict("different", "/app.js: status 404 != reference 200")


def test_content_type_differs_but_spelling_does_not_count() -> None:
    verdict = compare("/a", answer(content_type="text/html"), answer())
    assert verdict.kind == "different"
    assert "content-type 'text/html' != reference 'application/javascript'" in verdict.detail
    mine = answer_of(200, [(b"Content-Type", b"text/html; charset=UTF-8")], JS)
    theirs = answer_of(200, [(b"content-type", b"text/html;charset=utf-8")], JS)
    assert compare("/a", mine, theirs).kind == "same"


def test_equal_strong_etags_count_as_the_same_body_weak_ones_do_not() -> None:
    strong = compare("/a", answer(b"one", etag='"v1"'), answer(b"two", etag='"v1"'))
    assert strong.kind == "same"
    weak_mine = answer_of(200, [(b"ETag", b'W/"v1"')], b"one")
    weak_theirs = answer_of(200, [(b"ETag", b'W/"v1"')], b"two")
    assert weak_mine.etag is None
    assert compare("/a", weak_mine, weak_theirs).kind == "different"


def test_too_large_is_a_finding_not_a_difference() -> None:
    big = answer_of(200, [], b"", too_large=True)
    verdict = compare("/big", big, answer())
    assert verdict.kind == "unknown"
    assert "too large to compare" in verdict.detail
    assert compare("/big", answer(), big).kind == "unknown"


def test_summarize_one_round_for_one_origin() -> None:
    same = Verdict("same", "/a: matches the reference")
    different = Verdict("different", "/b: status 500 != reference 200")
    unknown = Verdict("unknown", "/c: too large to compare (answer over the limit)")
    assert summarize([same, different, unknown], 3) == Verdict(
        "different", "/b: status 500 != reference 200"
    )
    assert summarize([same, same], 2).kind == "same"
    # A canary not judged (too large, or not fetched) keeps the flag as it is.
    assert summarize([same, unknown], 2).kind == "unknown"
    assert summarize([same], 2).kind == "unknown"


# -- config ------------------------------------------------------------------------------------


def pools_config(parity: dict[str, Any]) -> dict[str, Any]:
    return {
        "pools": {
            "site": {
                "origins": [
                    {"name": "cdn", "url": "http://127.0.0.1:1", "priority": 1},
                    {"name": "origin", "url": "http://127.0.0.1:2", "priority": 9},
                ],
                "parity": parity,
            }
        }
    }


def test_reference_must_be_an_origin_of_the_pool() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(pools_config({"canaries": ["/app.js"], "reference": "nope"}))
    assert "parity.reference: 'nope' is not an origin of the pool" in str(info.value)
    assert "cdn, origin" in str(info.value)
    settings = build_settings(pools_config({"canaries": ["/app.js"], "reference": "origin"}))
    parity = settings.pools["site"].parity
    assert parity is not None and parity.interval == 30.0 and parity.max_body == 8 << 20


def test_canaries_are_paths_and_parity_is_per_pool() -> None:
    with pytest.raises(ConfigError) as info:
        build_settings(pools_config({"canaries": ["app.js"], "reference": "origin"}))
    assert "'app.js' is not a path" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_settings(pools_config({"canaries": [], "reference": "origin"}))
    assert "at least one canary path" in str(info.value)
    data = pools_config({"canaries": ["/a"], "reference": "origin"})
    data["parity"] = data["pools"]["site"].pop("parity")
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    assert "set it in each pool" in str(info.value)


def test_the_single_pool_form_takes_parity_at_the_top() -> None:
    settings = build_settings(
        {
            "origins": [
                {"name": "cdn", "url": "http://127.0.0.1:1", "priority": 1},
                {"name": "origin", "url": "http://127.0.0.1:2", "priority": 9},
            ],
            "parity": {"canaries": ["/a"], "reference": "origin", "interval": "500ms"},
        }
    )
    parity = settings.pools["default"].parity
    assert parity is not None and parity.interval == 0.5
    with pytest.raises(ConfigError) as info:
        build_settings(
            {
                "origins": [{"name": "cdn", "url": "http://127.0.0.1:1"}],
                "parity": {"canaries": ["/a"], "reference": "origin"},
            }
        )
    assert "'origin' is not an origin of the pool" in str(info.value)


# -- end to end --------------------------------------------------------------------------------


class ContentOrigin:
    """A tiny origin on loopback serving `files` (changeable at run time) and /health."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.files: dict[str, tuple[bytes, str]] = {}
        self.canary_requests = 0
        self.hosts: list[str] = []
        self.runner: web.ServerRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.runner = web.ServerRunner(web.Server(self.handle))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.BaseRequest) -> web.Response:
        headers = {"X-Origin": self.name}
        if request.path == "/health":
            return web.Response(text="ok", headers=headers)
        if request.headers.get("User-Agent") == "failover-parity":
            self.canary_requests += 1
            self.hosts.append(request.headers.get("Host", ""))
        if request.path in self.files:
            body, content_type = self.files[request.path]
            headers["Content-Type"] = content_type
            return web.Response(body=body, headers=headers)
        return web.Response(text=self.name, headers=headers)


@pytest.fixture
async def content_origin() -> AsyncIterator[Callable[[str], Awaitable[ContentOrigin]]]:
    started: list[ContentOrigin] = []

    async def make(name: str) -> ContentOrigin:
        origin = ContentOrigin(name)
        origin.files["/app.js"] = (JS, "application/javascript")
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


Setup = tuple[RunningProxy, ContentOrigin, ContentOrigin, ContentOrigin]


@pytest.fixture
async def site(
    content_origin: Callable[[str], Awaitable[ContentOrigin]],
    make_proxy: Callable[..., Awaitable[RunningProxy]],
) -> Setup:
    cdn_a, cdn_b, server = (
        await content_origin("cdn-a"),
        await content_origin("cdn-b"),
        await content_origin("origin"),
    )
    config = proxy_config(
        origin_config("cdn-a", cdn_a.url, 1),
        origin_config("cdn-b", cdn_b.url, 2),
        origin_config("origin", server.url, 9),
        parity={"canaries": ["/app.js"], "reference": "origin", "interval": 0.2, "timeout": 1},
    )
    proxy = await make_proxy(config)
    await wait_for(lambda: cdn_a.canary_requests > 0 and server.canary_requests > 0)
    return proxy, cdn_a, cdn_b, server


def flags(proxy: RunningProxy, name: str) -> set[Flag]:
    return proxy.app.runtime.origins[name].flags


async def served_by(client: httpx.AsyncClient) -> str:
    response = await client.get("/page")
    assert response.status_code == 200, response.text
    return response.headers["x-failover-origin"]


async def test_an_origin_serving_other_bytes_is_diverged_and_returns_when_fixed(
    site: Setup,
) -> None:
    proxy, cdn_a, _, _ = site
    assert await served_by(proxy.client) == "cdn-a"
    assert Flag.DIVERGED not in flags(proxy, "cdn-a")

    # Clients keep asking while cdn-a starts serving a bad build: none of them sees an error.
    statuses: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            statuses.append((await proxy.client.get("/page")).status_code)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(traffic())
    try:
        bad = JS.replace(b"42", b"43")
        cdn_a.files["/app.js"] = (bad, "application/javascript")
        await wait_for(lambda: Flag.DIVERGED in flags(proxy, "cdn-a"), timeout=5)
        assert await served_by(proxy.client) == "cdn-b"

        status = await get_status(proxy)
        record = origin_in(status, "cdn-a")
        assert record is not None
        assert "diverged" in record["flags"] and record["usable"] is False
        mine, theirs = hashlib.sha256(bad).hexdigest()[:8], hashlib.sha256(JS).hexdigest()[:8]
        assert record["reason"] == f"/app.js: sha256 {mine}.. != reference {theirs}.."
        assert record["parity"] == record["reason"]
        text = await get_metrics(proxy.client)
        assert metric(text, "failover_origin_diverged", pool="default", origin="cdn-a") == 1.0
        assert metric(text, "failover_origin_diverged", pool="default", origin="cdn-b") == 0.0
        events = (await proxy.client.get(f"{PREFIX}/events")).json()["events"]
        diverged = [e for e in events if e["kind"] == "diverged"]
        assert diverged and diverged[0]["origin"] == "cdn-a"

        # The CDN is fixed: the flag clears and traffic returns (no hold-down in the test config).
        cdn_a.files["/app.js"] = (JS, "application/javascript")
        await wait_for(lambda: Flag.DIVERGED not in flags(proxy, "cdn-a"), timeout=5)
        await wait_for(lambda: proxy.app.runtime.origins["cdn-a"].usable, timeout=5)
        assert await served_by(proxy.client) == "cdn-a"
    finally:
        stop.set()
        await task
    assert statuses and set(statuses) == {200}
    events = (await proxy.client.get(f"{PREFIX}/events")).json()["events"]
    assert any(e["kind"] == "converged" and e["origin"] == "cdn-a" for e in events)
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_origin_diverged", pool="default", origin="cdn-a") == 0.0
    # Canary requests carry the origin's own Host header, as its proxied requests do.
    assert cdn_a.hosts[-1] == f"127.0.0.1:{cdn_a.port}"


async def test_content_type_and_length_differences_are_named(site: Setup) -> None:
    proxy, _, cdn_b, _ = site
    cdn_b.files["/app.js"] = (JS, "text/html")
    await wait_for(lambda: Flag.DIVERGED in flags(proxy, "cdn-b"), timeout=5)
    reason = proxy.app.runtime.origins["cdn-b"].reason
    assert reason == "/app.js: content-type 'text/html' != reference 'application/javascript'"
    del cdn_b.files["/app.js"]  # now answers its name, another body
    await wait_for(lambda: "length" in proxy.app.runtime.origins["cdn-b"].parity, timeout=5)
    assert Flag.DIVERGED not in flags(proxy, "cdn-a")


async def test_when_every_cdn_diverges_the_reference_takes_the_traffic(site: Setup) -> None:
    proxy, cdn_a, cdn_b, _ = site
    for cdn in (cdn_a, cdn_b):
        cdn.files["/app.js"] = (b"broken build", "application/javascript")
    await wait_for(
        lambda: all(Flag.DIVERGED in flags(proxy, n) for n in ("cdn-a", "cdn-b")), timeout=5
    )
    assert await served_by(proxy.client) == "origin"
    assert flags(proxy, "origin") == set()


async def test_a_reference_that_does_not_answer_changes_nothing(
    site: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, cdn_a, cdn_b, server = site
    await server.stop()
    # Both CDNs now serve other bytes, but there is nothing to judge them against.
    cdn_a.files["/app.js"] = (b"other", "application/javascript")
    cdn_b.files["/app.js"] = (b"other", "application/javascript")
    before = cdn_a.canary_requests
    await wait_for(lambda: cdn_a.canary_requests >= before + 3, timeout=5)
    assert Flag.DIVERGED not in flags(proxy, "cdn-a")
    assert Flag.DIVERGED not in flags(proxy, "cdn-b")
    assert await served_by(proxy.client) == "cdn-a"
    warnings = [r for r in caplog.records if "cannot judge parity" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not every round


async def test_an_origin_that_cannot_be_fetched_is_left_to_health_checks(
    site: Setup,
) -> None:
    proxy, cdn_a, _, server = site
    await cdn_a.stop()
    await wait_for(lambda: Flag.FAILED_CHECK in flags(proxy, "cdn-a"), timeout=5)
    before = server.canary_requests
    await wait_for(lambda: server.canary_requests >= before + 3, timeout=5)  # three rounds
    assert flags(proxy, "cdn-a") == {Flag.FAILED_CHECK}
    assert await served_by(proxy.client) == "cdn-b"


async def test_a_canary_over_the_limit_is_a_finding_not_a_crash(
    content_origin: Callable[[str], Awaitable[ContentOrigin]],
    make_proxy: Callable[..., Awaitable[RunningProxy]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cdn, server = await content_origin("cdn"), await content_origin("origin")
    cdn.files["/big"] = (b"a" * 5000, "application/octet-stream")
    server.files["/big"] = (b"b" * 5000, "application/octet-stream")
    proxy = await make_proxy(
        proxy_config(
            origin_config("cdn", cdn.url, 1),
            origin_config("origin", server.url, 9),
            parity={"canaries": ["/big"], "reference": "origin", "interval": 0.2, "max_body": 1000},
        )
    )
    await wait_for(lambda: cdn.canary_requests >= 3, timeout=5)
    assert Flag.DIVERGED not in flags(proxy, "cdn")
    assert any("too large to compare" in r.getMessage() for r in caplog.records)
    assert "parity default" in {t.get_name() for t in proxy.app.tasks}  # still running


async def test_a_reload_without_parity_clears_the_flag(site: Setup) -> None:
    proxy, cdn_a, cdn_b, server = site
    cdn_a.files["/app.js"] = (b"other", "application/javascript")
    await wait_for(lambda: Flag.DIVERGED in flags(proxy, "cdn-a"), timeout=5)
    config = proxy_config(
        origin_config("cdn-a", cdn_a.url, 1),
        origin_config("cdn-b", cdn_b.url, 2),
        origin_config("origin", server.url, 9),
        parity={"canaries": ["/app.js"], "reference": "origin", "interval": 0.2},
    )
    # A reload that keeps parity keeps the flag (the origin is still wrong) ...
    proxy.app.apply(build_settings(config))
    assert Flag.DIVERGED in flags(proxy, "cdn-a")
    assert list(proxy.app.parity) == ["default"]
    # ... and one without parity clears it: nothing watches for the fix any more.
    del config["parity"]
    proxy.app.apply(build_settings(config))
    assert Flag.DIVERGED not in flags(proxy, "cdn-a")
    assert proxy.app.parity == {}
    await wait_for(lambda: proxy.app.runtime.origins["cdn-a"].usable, timeout=5)


def test_pagerduty_pages_on_diverged_and_resolves_on_converged() -> None:
    down = Event(1.0, "diverged", "cdn-a", "healthy", "diverged", "/app.js: status 404", "www")
    message = pagerduty_message(down, "key", "proxy-1")
    assert message is not None and message["event_action"] == "trigger"
    assert message["dedup_key"] == "failover/www/cdn-a"
    up = Event(2.0, "converged", "cdn-a", "diverged", "healthy", "canaries match", "www")
    assert pagerduty_message(up, "key", "proxy-1") == {
        "routing_key": "key",
        "event_action": "resolve",
        "dedup_key": "failover/www/cdn-a",
    }
