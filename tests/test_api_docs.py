"""``/api/docs`` in a real Chromium: Swagger UI, served by the server itself, renders the
OpenAPI document, every operation of it, without a request leaving the server's origin."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fixtures.browser import LiveServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]


async def test_api_docs_page_renders_every_operation(
    browser_page: tuple[Any, Any], live_server: LiveServer, artifacts: Any
) -> None:
    page, log = browser_page
    async with aiohttp.ClientSession() as session, \
            session.get(live_server.url + "/api/openapi.json") as r:
        spec = await r.json()
    operations = sum(len(item) for item in spec["paths"].values())
    await page.goto(live_server.url + "/api/docs")
    await page.wait_for_selector(".opblock", state="visible", timeout=30_000)
    assert "CrowdCount" in await page.locator(".info .title").inner_text()
    assert await page.locator(".opblock").count() == operations
    # Open one operation: its query parameters, from the query model, are listed.
    counts = page.locator(".opblock-get", has_text="/api/streams/{id}/counts").first
    await counts.locator(".opblock-summary").click()
    await page.wait_for_selector(".parameters", state="visible")
    names = await counts.locator(".parameters .parameter__name").all_inner_texts()
    assert {n.split()[0].rstrip("*") for n in names} >= {"id", "since", "until", "step",
                                                          "limit", "zones"}
    await page.screenshot(path=str(artifacts / "api-docs.png"), full_page=False)
    assert log.errors == [], "\n".join([*log.errors, *log.requests])
    foreign = [u for u in log.requests if not u.startswith(live_server.url)
               and not u.startswith(("data:", "blob:"))]
    assert foreign == [], foreign
