"""The maintenance page (failover.pages) and the public status feed (failover.public).

Unit tests drive the page template and the status board with a fake clock; end-to-end tests
take every origin down behind the real proxy and read the page, status.json and the Atom feed
as a client would, and in headless Chromium (skipped without playwright and Chromium, unless
FAILOVER_REQUIRE_BROWSER=1).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from failover.config import ConfigError, build_settings
from failover.events import EventLog
from failover.faulty import FaultyOrigin
from failover.pages import MaintenancePage, wants_json
from failover.pool import Pool
from failover.public import StatusBoard, iso
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import (
    AUTH,
    PASS,
    PREFIX,
    REFUSED,
    TOKEN,
    FakeClock,
    make_settings,
    origin_dict,
    two_origins_config,
)
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, require_browser, unavailable

ATOM = "{http://www.w3.org/2005/Atom}"
SHIPPED_PAGE = Path(__file__).resolve().parents[1] / "config" / "maintenance.html"
TEMPLATE = (
    "<html><head><title>Down</title></head><body><h1>Back soon</h1>"
    '<p id="retry">{{retry_after}}</p><p id="notice">{{ notice }}</p>'
    '<time id="since" datetime="{{since}}">{{since}}</time></body></html>'
)
HOSTILE = '<script>window.hacked = 1</script> & "quotes"'


# -- the page template ----------------------------------------------------------------------


def test_the_page_fills_every_placeholder_and_escapes_the_values() -> None:
    page = MaintenancePage(TEMPLATE)
    body = page.html("4", "2026-12-02T20:00:00Z", HOSTILE).decode()
    assert "{{" not in body
    assert '<p id="retry">4</p>' in body
    assert '<time id="since" datetime="2026-12-02T20:00:00Z">2026-12-02T20:00:00Z</time>' in body
    assert "&lt;script&gt;window.hacked = 1&lt;/script&gt; &amp; &quot;quotes&quot;" in body
    assert "<script>" not in body


def test_a_page_without_placeholders_is_sent_as_it_is() -> None:
    assert MaintenancePage("<p>closed</p>").html("2", "x", "y") == b"<p>closed</p>"


def test_the_json_variant_carries_the_same_facts() -> None:
    body = json.loads(MaintenancePage.json(503, "4", "2026-12-02T20:00:00Z", ""))
    assert body == {
        "status": 503,
        "error": "Service Unavailable",
        "retry_after": 4,
        "since": "2026-12-02T20:00:00Z",
        "notice": None,
    }


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        (b"*/*", False),
        (b"application/json", True),
        (b"application/problem+json, */*;q=0.1", True),
        (b"text/html,application/xhtml+xml,application/json;q=0.9", False),
    ],
)
def test_json_goes_to_clients_that_ask_for_json_and_not_html(
    accept: bytes | None, expected: bool
) -> None:
    assert wants_json(accept) is expected


# -- the status board -----------------------------------------------------------------------


def board_on_one_pool() -> tuple[Pool, StatusBoard, FakeClock, Callable[[float], None]]:
    settings = make_settings(
        origin_dict("primary", 0),
        origin_dict("secondary", 1),
        failback={"hold_down": 0},
        health={"healthy_threshold": 1, "unhealthy_threshold": 1},
    )
    clock = FakeClock()
    wall = FakeClock(1_800_000_000.0)
    events = EventLog(wall)
    pool = Pool("default", settings.pools["default"], events, clock)
    board = StatusBoard(lambda: {"default": pool}, wall(), history=3)
    events.subscribe(board.observe)

    def tick(seconds: float) -> None:
        clock.advance(seconds)
        wall.advance(seconds)

    return pool, board, wall, tick


def status_of(board: StatusBoard) -> str:
    pools = board.status_json(False, 0.0)["pools"]
    assert len(pools) == 1
    status: str = pools[0]["status"]
    return status


def test_the_board_follows_a_pool_through_degraded_down_and_back() -> None:
    pool, board, wall, tick = board_on_one_pool()
    primary, secondary = pool.origins
    assert status_of(board) == "operational"
    assert board.since("default") is None

    tick(10)
    pool.engine.on_probe(primary, REFUSED)
    pool.engine.pick()
    assert status_of(board) == "degraded"
    assert board.since("default") == wall()
    started = wall()

    tick(5)
    pool.engine.on_probe(secondary, REFUSED)
    assert pool.engine.pick() is None
    assert status_of(board) == "down"
    assert board.status_json(False, 0.0)["status"] == "down"
    assert board.since("default") == wall()

    tick(20)
    pool.engine.on_probe(primary, PASS)
    pool.engine.pick()
    assert status_of(board) == "degraded"  # the secondary still fails its checks
    pool.engine.on_probe(secondary, PASS)
    pool.engine.pick()
    assert status_of(board) == "operational"
    assert board.since("default") is None

    # One incident: its worst state, its start and its end.
    assert len(board.incidents) == 1
    incident = board.incidents[0]
    assert (incident.status, incident.started, incident.ended) == ("down", started, wall())
    assert incident.origins == ["primary", "secondary"]


def test_a_lower_tier_serving_is_degraded_even_when_nothing_failed() -> None:
    pool, board, _, _ = board_on_one_pool()
    primary = pool.origins[0]
    pool.engine.override(primary, "drain", "ops")
    pool.engine.pick()
    assert status_of(board) == "degraded"
    pool.engine.override(primary, "enable", "ops")
    pool.engine.pick()
    assert status_of(board) == "operational"


def test_the_incident_history_is_bounded() -> None:
    pool, board, _, tick = board_on_one_pool()
    primary = pool.origins[0]
    for _ in range(5):
        tick(1)
        pool.engine.on_probe(primary, REFUSED)
        pool.engine.pick()
        tick(1)
        pool.engine.on_probe(primary, PASS)
        pool.engine.pick()
    assert len(board.incidents) == 3
    assert all(incident.ended is not None for incident in board.incidents)


def test_the_atom_feed_has_one_entry_per_incident_and_escapes_the_notice() -> None:
    pool, board, _, tick = board_on_one_pool()
    primary = pool.origins[0]
    for _ in range(2):
        tick(1)
        pool.engine.on_probe(primary, REFUSED)
        pool.engine.pick()
        tick(1)
        pool.engine.on_probe(primary, PASS)
        pool.engine.pick()
    tick(1)
    pool.engine.on_probe(primary, REFUSED)
    pool.engine.pick()
    board.set_notice(HOSTILE)
    feed = ElementTree.fromstring(board.atom("Status", "http://x/_status/incidents.atom", False, 0))
    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == 3
    titles = [e.findtext(f"{ATOM}title") for e in entries]
    assert titles == ["default: degraded (ongoing)", "default: degraded", "default: degraded"]
    assert len({e.findtext(f"{ATOM}id") for e in entries}) == 3
    content = entries[0].findtext(f"{ATOM}content") or ""
    assert f"Notice: {HOSTILE}" in content  # the parser gives back the text as set
    assert "primary" not in ElementTree.tostring(feed, encoding="unicode")


# -- config ---------------------------------------------------------------------------------


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_settings(data)
    return caught.value.problems


ORIGINS = [origin_dict("a")]


def test_a_missing_page_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.html"
    assert problems({"origins": ORIGINS, "pages": {"unavailable": str(missing)}}) == [
        f"pages.unavailable: {str(missing)!r} cannot be read: No such file or directory"
    ]


def test_all_down_page_needs_a_page() -> None:
    assert problems({"origins": ORIGINS, "all_down": "page"}) == [
        "all_down: 'page' needs pages.unavailable (an HTML file)"
    ]


def test_a_relative_page_path_is_found_next_to_the_config_file(tmp_path: Path) -> None:
    from failover.config import load_config

    (tmp_path / "down.html").write_text(TEMPLATE)
    config = tmp_path / "failover.yaml"
    config.write_text(
        "origins: [{name: a, url: 'http://127.0.0.1:9'}]\n"
        "all_down: page\npages: {unavailable: down.html}\n"
    )
    settings = load_config(config)
    assert settings.pages.unavailable == str(tmp_path / "down.html")


@pytest.mark.parametrize(
    ("prefix", "admin"),
    [("/_failover", "/_failover"), ("/_failover/status", "/_failover"), ("/_x", "/_x/admin")],
)
def test_the_public_prefix_may_not_collide_with_the_admin_prefix(prefix: str, admin: str) -> None:
    found = problems({"origins": ORIGINS, "public": {"prefix": prefix}, "admin": {"prefix": admin}})
    assert len(found) == 1
    assert found[0].startswith(f"public.prefix: {prefix!r} collides with admin.prefix {admin!r}")


def test_a_route_within_the_public_prefix_is_refused() -> None:
    found = problems(
        {
            "pools": {"www": {"origins": ORIGINS}},
            "routes": [{"pool": "www"}, {"path": "/_status/feed/", "pool": "www"}],
        }
    )
    assert found == [
        "routes[1].path: '/_status/feed/' lies within public.prefix '/_status', which the proxy "
        "answers itself; move the feed (public.prefix) or turn it off (public.enabled: false)"
    ]
    settings = build_settings(
        {
            "pools": {"www": {"origins": ORIGINS}},
            "routes": [{"path": "/_status/", "pool": "www"}],
            "public": {"enabled": False},
        }
    )
    assert settings.routes[0].path == "/_status/"


# -- end to end -----------------------------------------------------------------------------


def page_config(tmp_path: Path, primary: FaultyOrigin, secondary: FaultyOrigin) -> dict[str, Any]:
    page = tmp_path / "maintenance.html"
    page.write_text(TEMPLATE, encoding="utf-8")
    return two_origins_config(
        primary,
        secondary,
        all_down="page",
        pages={"unavailable": str(page)},
        admin={"token": TOKEN},
    )


async def pool_is(proxy: RunningProxy, status: str) -> None:
    async def reached() -> bool:
        response = await proxy.client.get("/_status/status.json")
        return bool(response.json()["pools"][0]["status"] == status)

    await wait_for(reached, timeout=5)


async def test_every_origin_down_answers_the_page_with_retry_after_and_since(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(page_config(tmp_path, primary, secondary))
    ok = await proxy.client.get("/echo")
    assert ok.status_code == 200 and "retry-after" not in ok.headers

    await primary.set_mode("refuse")
    await secondary.set_mode("refuse")
    await pool_is(proxy, "down")
    set_notice = await proxy.client.post(f"{PREFIX}/notice", json={"notice": HOSTILE}, headers=AUTH)
    assert set_notice.status_code == 200, set_notice.text

    response = await proxy.client.get("/echo", headers={"Accept": "text/html,*/*"})
    assert response.status_code == 503
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["retry-after"] == "1"  # the health interval (0.2 s), at least 1
    assert "&lt;script&gt;" in response.text and "<script>" not in response.text
    since = response.text.split('datetime="')[1].split('"')[0]
    when = datetime.datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
    assert proxy.app.wall_clock() - 30 < when <= proxy.app.wall_clock()
    assert "primary" not in response.text  # no origin names for users

    as_json = await proxy.client.get("/echo", headers={"Accept": "application/json"})
    assert as_json.status_code == 503
    assert as_json.headers["retry-after"] == "1"
    assert as_json.json() == {
        "status": 503,
        "error": "Service Unavailable",
        "retry_after": 1,
        "since": since,
        "notice": HOSTILE,
    }

    # An empty notice clears it.
    cleared = await proxy.client.post(f"{PREFIX}/notice", json={"notice": ""}, headers=AUTH)
    assert cleared.status_code == 200
    again = await proxy.client.get("/echo", headers={"Accept": "application/json"})
    assert again.json()["notice"] is None


async def test_a_request_no_origin_answered_gets_the_page_as_502(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = page_config(tmp_path, primary, secondary)
    config["all_down"] = "try-all"
    config["health"] = {"enabled": False}
    config["passive"] = {"enabled": False}
    proxy = await make_proxy(config)
    await primary.set_mode("refuse")
    await secondary.set_mode("refuse")
    response = await proxy.client.get("/echo")
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["retry-after"]
    assert "<h1>Back soon</h1>" in response.text


async def test_the_notice_needs_the_token_and_a_json_body(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(page_config(tmp_path, primary, secondary))
    url = f"{PREFIX}/notice"
    assert (await proxy.client.post(url, json={"notice": "x"})).status_code == 401
    bad = await proxy.client.post(url, content=b"notice=x", headers=AUTH)
    assert bad.status_code == 400
    assert "is not JSON" in bad.text
    wrong = await proxy.client.post(url, json={"text": "x"}, headers=AUTH)
    assert wrong.status_code == 400 and "'notice'" in wrong.text
    long = await proxy.client.post(url, json={"notice": "x" * 2001}, headers=AUTH)
    assert long.status_code == 400 and "at most 2000" in long.text
    nopool = await proxy.client.post(url, json={"notice": "x", "pool": "nope"}, headers=AUTH)
    assert nopool.status_code == 404 and "no pool named 'nope'" in nopool.text
    # The public prefix takes no writes at all.
    public = await proxy.client.post("/_status/notice", json={"notice": "x"}, headers=AUTH)
    assert public.status_code in (404, 405)
    assert proxy.app.board.notice == ""


async def test_the_public_feed_shows_states_and_incidents_without_internals(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(page_config(tmp_path, primary, secondary))
    status = (await proxy.client.get("/_status/status.json")).json()
    assert status["status"] == "operational"
    assert [p["name"] for p in status["pools"]] == ["default"]

    await primary.set_mode("refuse")
    await pool_is(proxy, "degraded")
    await primary.set_mode("ok")
    await pool_is(proxy, "operational")
    await primary.set_mode("refuse")
    await secondary.set_mode("refuse")
    await pool_is(proxy, "down")

    response = await proxy.client.get("/_status/status.json")
    assert response.headers["access-control-allow-origin"] == "*"
    for name in ("primary", "secondary", "127.0.0.1", "refused"):
        assert name not in response.text
    feed = await proxy.client.get("/_status/incidents.atom")
    assert feed.headers["content-type"] == "application/atom+xml; charset=utf-8"
    root = ElementTree.fromstring(feed.content)
    assert root.tag == f"{ATOM}feed"
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [
        "default: down (ongoing)",
        "default: degraded",
    ]
    ended = entries[1].findtext(f"{ATOM}content") or ""
    assert "Ended: " in ended
    assert "primary" not in feed.text
    missing = await proxy.client.get("/_status/secrets")
    assert missing.status_code == 404


async def test_show_origins_names_the_origins_that_are_out(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = two_origins_config(primary, secondary, public={"show_origins": True})
    proxy = await make_proxy(config)
    await primary.set_mode("refuse")
    await pool_is(proxy, "degraded")
    status = (await proxy.client.get("/_status/status.json")).json()
    assert status["pools"][0]["origins_out"] == ["primary"]
    feed = ElementTree.fromstring((await proxy.client.get("/_status/incidents.atom")).content)
    assert "Origins out: primary." in (feed.findtext(f"{ATOM}entry/{ATOM}content") or "")


async def test_the_board_and_notice_outlive_a_config_reload(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = page_config(tmp_path, primary, secondary)
    proxy = await make_proxy(config)
    await primary.set_mode("refuse")
    await pool_is(proxy, "degraded")
    await proxy.client.post(f"{PREFIX}/notice", json={"notice": "Investigating"}, headers=AUTH)
    (tmp_path / "maintenance.html").write_text("<p>new page {{notice}}</p>")
    proxy.app.apply(build_settings({**config, "retry": {"attempts": 3}}))
    status = (await proxy.client.get("/_status/status.json")).json()
    assert status["pools"][0]["status"] == "degraded"
    assert status["notice"] == "Investigating"
    assert len(proxy.app.board.incidents) == 1
    await secondary.set_mode("refuse")
    await pool_is(proxy, "down")
    response = await proxy.client.get("/echo")
    assert response.text == "<p>new page Investigating</p>"  # re-read on reload


async def test_without_a_page_the_proxy_still_answers_plain_text(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", primary, 0), all_down="503"))
    await primary.set_mode("refuse")
    await pool_is(proxy, "down")
    response = await proxy.client.get("/echo")
    assert response.status_code == 503
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("503 Service Unavailable: no origin is usable")


# -- in a browser ---------------------------------------------------------------------------


async def test_the_page_and_the_feed_in_chromium(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    require_browser()
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright, expect

    shipped = SHIPPED_PAGE
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    config = page_config(tmp_path, primary, secondary)
    config["pages"] = {"unavailable": str(shipped)}
    proxy = await make_proxy(config)
    await primary.set_mode("refuse")
    await secondary.set_mode("refuse")
    await pool_is(proxy, "down")
    notice = await proxy.client.post(f"{PREFIX}/notice", json={"notice": HOSTILE}, headers=AUTH)
    assert notice.status_code == 200

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        except PlaywrightError as exc:
            unavailable(f"Chromium at {CHROMIUM} does not start: {exc.message.splitlines()[0]}")
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            loaded = await page.goto(f"{proxy.url}/index.html")
            assert loaded is not None
            assert loaded.status == 503
            assert (await loaded.all_headers())["retry-after"] == "1"
            await expect(page).to_have_title("Temporarily unavailable")
            await expect(page.locator("h1")).to_have_text("We'll be back shortly")
            await expect(page.locator("#retry-after")).to_have_text("1")
            await expect(page.locator("#notice")).to_have_text(HOSTILE)  # as text, not markup
            assert await page.evaluate("window.hacked") is None
            assert await page.locator("script").count() == 0
            since = await page.locator("#since").get_attribute("datetime")
            assert since == iso(proxy.app.board.since("default") or 0)
            await expect(page.locator("#since")).to_have_text(since)
            await page.screenshot(path=str(tmp_path / "maintenance.png"))

            feed = await page.goto(f"{proxy.url}/_status/status.json")
            assert feed is not None and feed.status == 200
            status = json.loads(await feed.text())
            assert status["pools"][0]["status"] == "down"
            assert status["pools"][0]["notice"] == HOSTILE

            atom = await page.goto(f"{proxy.url}/_status/incidents.atom")
            assert atom is not None and atom.status == 200
            root = ElementTree.fromstring(await atom.body())
            entries = root.findall(f"{ATOM}entry")
            assert len(entries) == len(proxy.app.board.incidents) == 1
            assert entries[0].findtext(f"{ATOM}title") == "default: down (ongoing)"
            assert errors == []
        finally:
            await browser.close()
