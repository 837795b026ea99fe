"""The dashboard in a real browser: it shows the origins and follows a failover as it happens.

Needs playwright (Python) and a Chromium at /usr/bin/chromium. Without them the test is
skipped, unless FAILOVER_REQUIRE_BROWSER=1 asks for it to fail instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import origin_config, proxy_config

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


async def test_the_dashboard_follows_a_failover(make_origin: Any, make_proxy: Any) -> None:
    require_browser()
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright, expect

    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        proxy_config(origin_config("primary", primary, 0), origin_config("secondary", secondary, 1))
    )
    for _ in range(5):
        response = await proxy.client.get("/echo")
        assert response.headers["x-failover-origin"] == "primary"

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

            rows = page.locator("#origins tbody tr")
            primary_row = page.locator('#origins tr[data-origin="primary"]')
            secondary_row = page.locator('#origins tr[data-origin="secondary"]')
            await expect(rows).to_have_count(2, timeout=WAIT_MS)
            await expect(primary_row).to_contain_text("healthy")
            await expect(secondary_row).to_contain_text("healthy")
            await expect(page.locator("#active-name")).to_have_text("primary")
            await expect(primary_row).to_have_class(re.compile(r"\btaking\b"))

            await primary.set_mode("refuse")

            await expect(page.locator("#active-name")).to_have_text("secondary", timeout=WAIT_MS)
            await expect(secondary_row).to_have_class(re.compile(r"\btaking\b"), timeout=WAIT_MS)
            await expect(primary_row.locator(".state")).not_to_have_text("healthy", timeout=WAIT_MS)
            await expect(primary_row.locator(".state")).to_have_class(re.compile(r"\bunusable\b"))
            await expect(page.locator("#events li").first).to_contain_text(
                "primary", timeout=WAIT_MS
            )
            await expect(
                page.locator("#events li", has_text="traffic-moved").first
            ).to_contain_text("primary")
            assert problems == []

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            await browser.close()
