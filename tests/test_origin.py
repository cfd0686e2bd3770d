"""Web pages cannot drive a server that has no token: real Chromium, real pages.

An attacker's page is served on another loopback port (another origin, the same machine,
as any site the operator visits would be). It tries what a browser lets any page do
without asking: ``fetch`` with ``text/plain`` (no CORS preflight), a ``no-cors`` multipart
upload, an HTML form post, and a JSON ``fetch`` (which needs a preflight the server never
grants). Then a DNS-rebinding page: Chromium resolves ``rebind.test`` to 127.0.0.1
(``--host-resolver-rules``), so to the browser the server *is* that page's origin, and only
the ``Host`` check stands between it and the API. Every attempt must leave the server as
it was: no rule, no stream, nothing read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from crowdcount.model.runtime import Runtime
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.browser import launch_chromium, serve_app, server_config

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

REBIND_HOST = "rebind.test"
RULE = {"name": "from-a-page", "stream": "cam", "above": 5, "below": 1}


@pytest_asyncio.fixture(loop_scope="session")
async def attacker() -> AsyncIterator[str]:
    """An empty page on its own loopback port: the attacker's origin."""
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>a site</title><p>hello</p>",
                            content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def server(tmp_path: Path, brightness_model: Path) -> AsyncIterator[Any]:
    runtime = Runtime.open(brightness_model, "onnx", threads=1)
    async with serve_app(server_config(tmp_path, brightness_model), runtime) as live:
        source = SyntheticSource("cam", 320, 256, fps=5,
                                 render=lambda _i: np.full((256, 320, 3), 90, np.uint8))
        await live.service.add_source(source, url="synthetic", kind="synthetic")
        yield live


@pytest_asyncio.fixture(loop_scope="session")
async def rebinding_chromium() -> AsyncIterator[Any]:
    """Chromium that resolves ``rebind.test`` to 127.0.0.1, as a rebinding DNS server would
    after the page loaded."""
    async with launch_chromium(f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1") as browser:
        yield browser


def _unchanged(server: Any) -> None:
    svc = server.service
    assert svc.rules.list() == [], svc.rules.list()
    assert list(svc.streams) == ["cam"]


async def test_a_cross_origin_page_cannot_change_anything(browser_page, attacker: str,
                                                          server: Any) -> None:
    page, _log = browser_page
    answers: dict[str, int] = {}
    page.on("response", lambda r: answers.__setitem__(f"{r.request.method} {r.url}",
                                                      r.status))
    await page.goto(attacker + "/")
    target = server.url
    results = await page.evaluate("""async ([target, rule]) => {
      const out = {};
      const attempt = async (name, url, init) => {
        try {
          const r = await fetch(url, init);
          out[name] = r.type === "opaque" ? "opaque" : r.status;
        } catch (e) { out[name] = "blocked: " + e.name; }
      };
      // No preflight for these: the browser sends them, the server must refuse them.
      await attempt("text/plain rule", target + "/api/alerts/rules", {method: "POST",
        mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify(rule)});
      await attempt("text/plain stream", target + "/api/streams", {method: "POST",
        mode: "no-cors", headers: {"Content-Type": "text/plain"},
        body: JSON.stringify({name: "evil", url: "rtsp://127.0.0.1:9/x"})});
      const form = new FormData();
      form.append("image", new Blob([new Uint8Array(64)]), "x.png");
      await attempt("multipart upload", target + "/api/count", {method: "POST",
        mode: "no-cors", body: form});
      // A preflight first: the server grants none (no CORS headers), so it never happens.
      await attempt("json rule", target + "/api/alerts/rules", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(rule)});
      await attempt("delete stream", target + "/api/streams/cam", {method: "DELETE"});
      // Reading: the browser withholds cross-origin answers without CORS headers.
      await attempt("read streams", target + "/api/streams", {});
      return out;
    }""", [target, RULE])
    print(f"\npage results: {json.dumps(results)}\nserver answers: {json.dumps(answers)}")
    for name in ("text/plain rule", "text/plain stream", "multipart upload"):
        assert results[name] == "opaque", (name, results)
    for name in ("json rule", "delete stream", "read streams"):
        assert str(results[name]).startswith("blocked"), (name, results)
    # What the server answered to the requests that reached it: 403, the origin check.
    for path in ("/api/alerts/rules", "/api/streams", "/api/count"):
        assert answers[f"POST {target}{path}"] == 403, answers

    # A form post (navigation: no fetch at all) fares no better.
    await page.set_content(f"""<form method="post" enctype="text/plain"
        action="{target}/api/alerts/rules"><input name='{{"name": "f", "x": "' value='"}}'>
        </form>""")
    async with page.expect_navigation():
        await page.evaluate("() => document.forms[0].submit()")
    assert "allowed_origins" in (await page.content())
    _unchanged(server)


async def test_a_rebinding_page_cannot_read_or_write(rebinding_chromium, server: Any) -> None:
    port = server.url.rsplit(":", 1)[1]
    context = await rebinding_chromium.new_context()
    page = await context.new_page()
    try:
        response = await page.goto(f"http://{REBIND_HOST}:{port}/")
        assert response is not None and response.status == 403
        body = json.loads(await response.text())
        assert "allowed_hosts" in body["error"]
        # Same origin as far as the browser knows: fetch may read, if the server answered.
        results = await page.evaluate("""async () => {
          const read = await fetch("/api/streams");
          const write = await fetch("/api/alerts/rules", {method: "POST",
            headers: {"Content-Type": "application/json"},
            body: JSON.stringify({name: "rebound", stream: "cam", above: 5, below: 1})});
          return {read: read.status, readBody: await read.text(), write: write.status};
        }""")
        assert results["read"] == 403 and results["write"] == 403, results
        assert "cam" not in results["readBody"]
    finally:
        await context.close()
    _unchanged(server)


async def test_the_servers_own_page_still_works(browser_page, server: Any) -> None:
    """The same checks let the server's own page through (same origin, its own Host)."""
    page, log = browser_page
    await page.goto(server.url + "/")
    status = await page.evaluate("""async (rule) => {
      const r = await fetch("/api/alerts/rules", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(rule)});
      return r.status;
    }""", RULE)
    assert status == 201
    await server.service.rules.delete(RULE["name"])
    assert log.errors == []
