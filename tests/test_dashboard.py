"""The dashboard (failover.dashboard): sent with a strict Content-Security-Policy, and in a real
browser it shows each pool's origins and follows a failover as it happens.

The browser test needs playwright (Python) and a Chromium at /usr/bin/chromium. Without them
it is skipped, unless FAILOVER_REQUIRE_BROWSER=1 asks for it to fail instead.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import RunningProxy, origin_config, proxy_config
from tests.helpers import PREFIX, two_origins_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 10_000


def unavailable(reason: str) -> NoReturn:
    """Skip for want of a browser, or fail when one is required."""
    if os.environ.get("FAILOVER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"FAILOVER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def require_browser() -> None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")


HOSTS = {"static": "static.example.com", "api": "api.example.com"}


def two_pools(origins: dict[str, Any]) -> dict[str, Any]:
    """Pools "static" and "api", each a primary and a secondary, routed by Host."""
    config = proxy_config()
    del config["origins"]
    config["pools"] = {
        pool: {
            "origins": [
                origin_config(f"{pool}-primary", origins[f"{pool}-primary"], 0),
                origin_config(f"{pool}-secondary", origins[f"{pool}-secondary"], 1),
            ]
        }
        for pool in ("static", "api")
    }
    config["routes"] = [{"host": HOSTS[pool], "pool": pool} for pool in ("static", "api")]
    return config


async def served_by(proxy: Any, pool: str) -> str:
    response = await proxy.client.get("/echo", headers={"Host": HOSTS[pool]})
    assert response.status_code == 200
    origin: str = response.headers["x-failover-origin"]
    return origin


async def test_the_dashboard_follows_a_failover_in_one_pool_of_two(
    make_origin: Any, make_proxy: Any
) -> None:
    require_browser()
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright, expect

    names = [f"{pool}-{role}" for pool in ("static", "api") for role in ("primary", "secondary")]
    origins = {name: await make_origin(name) for name in names}
    proxy = await make_proxy(two_pools(origins))
    for _ in range(3):
        assert await served_by(proxy, "static") == "static-primary"
        assert await served_by(proxy, "api") == "api-primary"

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        except PlaywrightError as exc:
            unavailable(f"Chromium at {CHROMIUM} does not start: {exc.message.splitlines()[0]}")
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            # Anything the Content-Security-Policy blocks shows up as a console error.
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            loaded = await page.goto(f"{proxy.url}/_failover/")
            assert loaded is not None
            headers = await loaded.all_headers()
            assert headers["content-security-policy"].startswith("default-src 'none'; ")
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"

            # One section per pool, in config order, each with its own origins.
            sections = page.locator("section.pool")
            static = page.locator('section[data-pool="static"]')
            api = page.locator('section[data-pool="api"]')
            await expect(sections).to_have_count(2, timeout=WAIT_MS)
            await expect(sections.locator("h2 .name")).to_have_text(["static", "api"])
            for section, pool in ((static, "static"), (api, "api")):
                await expect(section.locator("tbody tr")).to_have_count(2)
                for role in ("primary", "secondary"):
                    row = section.locator(f'tr[data-origin="{pool}-{role}"]')
                    await expect(row.locator(".state")).to_have_text("healthy", timeout=WAIT_MS)
                await expect(section.locator(".active b")).to_have_text(f"{pool}-primary")
                await expect(section.locator(f'tr[data-origin="{pool}-primary"]')).to_have_class(
                    re.compile(r"\btaking\b")
                )
                await expect(section.locator("h2 .ready")).to_have_text("ready", timeout=WAIT_MS)

            await origins["api-primary"].set_mode("refuse")

            # The api pool moves to its secondary; the static pool stays on its primary.
            await expect(api.locator(".active b")).to_have_text("api-secondary", timeout=WAIT_MS)
            await expect(api.locator('tr[data-origin="api-secondary"]')).to_have_class(
                re.compile(r"\btaking\b"), timeout=WAIT_MS
            )
            api_primary_state = api.locator('tr[data-origin="api-primary"] .state')
            await expect(api_primary_state).not_to_have_text("healthy", timeout=WAIT_MS)
            await expect(api_primary_state).to_have_class(re.compile(r"\bunusable\b"))
            await expect(api.locator("h2 .ready")).to_have_text("ready")
            await expect(static.locator(".active b")).to_have_text("static-primary")
            await expect(static.locator('tr[data-origin="static-primary"]')).to_have_class(
                re.compile(r"\btaking\b")
            )
            await expect(static.locator('tr[data-origin="static-primary"] .state')).to_have_text(
                "healthy"
            )
            # The timeline says which pool the move happened in.
            moved = page.locator("#events li", has_text="traffic-moved").first
            await expect(moved).to_contain_text("api-secondary", timeout=WAIT_MS)
            await expect(moved.locator(".tag")).to_have_text("api")
            await expect(moved).to_have_attribute("data-pool", "api")
            assert await served_by(proxy, "static") == "static-primary"
            assert await served_by(proxy, "api") == "api-secondary"
            assert problems == []

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # With both of its origins gone, the pool says so in the down style.
            await origins["api-secondary"].set_mode("refuse")
            await expect(api.locator(".active b")).to_have_text("no usable origin", timeout=WAIT_MS)
            await expect(api.locator(".active")).to_have_class(re.compile(r"\bdown\b"))
            await expect(api.locator("h2 .ready")).to_have_text("not ready", timeout=WAIT_MS)
            await expect(api.locator("h2 .ready")).to_have_class(re.compile(r"\bunusable\b"))
            await expect(static.locator(".active")).not_to_have_class(re.compile(r"\bdown\b"))
            await expect(static.locator("h2 .ready")).to_have_text("ready")
            assert problems == []
            await page.screenshot(path=str(ARTIFACTS / "dashboard-pool-down.png"), full_page=True)
        finally:
            await browser.close()


async def test_the_dashboard_is_sent_with_a_strict_content_security_policy(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(two_origins_config(primary, secondary))
    response = await proxy.client.get(f"{PREFIX}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = dict(
        part.strip().partition(" ")[::2]
        for part in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in response.headers["content-security-policy"]
    # Exactly the page's own inline script and style are allowed, by their hashes.
    for tag in ("script", "style"):
        inline = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, re.DOTALL)
        assert len(inline) == 1, tag
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        assert policy[f"{tag}-src"] == f"'sha256-{digest}'"
