"""The web page in a real Chromium against the real app (brightness model, loopback only).

What is checked is what a user sees: the annotated video actually playing (frames decoded,
``currentTime`` advancing), the count number, the chart filling from history and the live
feed, the upload result, the error messages. Screenshots go to ``test-artifacts/``.

The fake webcam is the y4m clip of ``tests/fixtures/browser.py``; the brightness model's
count is a known function of the picture, so "count > 0" and equality with the API's own
answer are meaningful assertions, not just "some text appeared".
"""

from __future__ import annotations

import asyncio
import io
import math
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from crowdcount.streamer.config import StreamConfig
from tests.fixtures.browser import LiveServer, PageLog, serve_app, server_config
from tests.fixtures.waiting import wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]

CARD = '[data-testid="stream-card"]'

# One snapshot of every card, as the tests read them.
CARDS_JS = """() => [...document.querySelectorAll('[data-testid=stream-card]')].map(c => {
  const v = c.querySelector('[data-testid=stream-video]');
  const count = c.querySelector('[data-testid=stream-count]');
  return {
    id: c.dataset.streamId, state: c.dataset.state,
    badge: c.querySelector('[data-testid=stream-state]').textContent,
    width: v.videoWidth, height: v.videoHeight, time: v.currentTime,
    paused: v.paused, ready: v.readyState,
    count: count.dataset.value === undefined ? null : Number(count.dataset.value),
    countText: count.textContent,
    points: Number(c.querySelector('[data-testid=stream-chart]').dataset.points),
    note: c.querySelector('[data-testid=video-note]').textContent,
    error: c.querySelector('[data-testid=stream-error]').textContent,
  };
})"""


async def cards(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate(CARDS_JS)


async def wait_card(page: Any, check: Any, timeout: float = 20.0, what: str = "") -> dict:
    """Poll the cards until ``check(card)`` holds for one of them; returns that card."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = await cards(page)
        for card in seen:
            if check(card):
                return card
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; cards: {seen}")


async def remove_card(card: Any) -> None:
    """Remove, then confirm in the card (removal always asks first)."""
    await card.locator('[data-testid="stream-remove"]').click()
    await card.locator('[data-testid="remove-yes"]').click()


async def open_page(page: Any, server: LiveServer, path: str = "/") -> None:
    await page.goto(server.url + path)
    await page.wait_for_function("() => window.crowdcount !== undefined")


def assert_clean(log: PageLog, server: LiveServer) -> None:
    """No console errors or page exceptions, and no request left the server's origin."""
    assert log.errors == [], "\n".join(log.errors)
    foreign = [u for u in log.requests
               if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert foreign == [], foreign


async def test_page_loads_without_console_errors(browser_page, live_server, artifacts) -> None:
    page, log = browser_page
    await open_page(page, live_server)
    await page.wait_for_selector('[data-testid="empty"]', state="visible")
    await page.wait_for_timeout(2500)  # at least one /api/streams poll and the SSE open
    for testid in ("add-name", "add-url", "upload-input"):
        label = await page.evaluate(
            f"() => document.querySelector('[data-testid={testid}]').labels[0].textContent"
        )
        assert label.strip(), f"{testid} has no label"
    assert await page.get_by_role("button", name="Use my camera").is_enabled()
    # The heatmap legend is the server's colour scale (model/render.py), stop for stop.
    from crowdcount.model.render import heat_legend

    await page.wait_for_selector('[data-testid="heat-legend"]', state="visible")
    ticks = await page.locator('[data-testid="heat-ticks"] span').all_text_contents()
    assert ticks == ["0", "0.5", "1+"]
    bar = await page.evaluate(
        "() => document.querySelector('[data-testid=heat-bar]').style.backgroundImage")
    shown = [tuple(map(int, m)) for m in re.findall(r"rgb\((\d+), (\d+), (\d+)\)", bar)]
    assert shown == [tuple(int(s["color"][i : i + 2], 16) for i in (1, 3, 5))
                     for s in heat_legend()["stops"]]
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await page.screenshot(path=str(artifacts / "web-empty-phone.png"), full_page=True)
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"page scrolls sideways on a phone ({width}px wide)"
    assert_clean(log, live_server)


async def test_use_my_camera_shows_annotated_stream_and_live_counts(
    browser_page, live_server, artifacts
) -> None:
    page, log = browser_page
    svc = live_server.service
    await open_page(page, live_server)
    started = time.monotonic()
    await page.get_by_role("button", name="Use my camera").click()

    card = await wait_card(page, lambda c: c["width"] > 0, 30, "the annotated video")
    first_frame_s = time.monotonic() - started
    sid = card["id"]
    assert sid in svc.streams and svc.streams[sid].kind == "webrtc"
    # maintain-resolution: the fake camera's 640x480 arrives and comes back at that size
    assert (card["width"], card["height"]) == (640, 480), card

    t0 = card["time"]
    card = await wait_card(page, lambda c: c["id"] == sid and c["time"] > t0 + 1.0, 15,
                           "currentTime to advance")
    assert not card["paused"]
    card = await wait_card(page, lambda c: c["id"] == sid and (c["count"] or 0) > 0, 15,
                           "a live count")
    # The camera picture is lit everywhere: hundreds to thousands of "people".
    assert 500 < card["count"] < 4800, card
    assert card["state"] == "running" and card["note"] == "", card
    assert await page.locator('[data-testid="empty"]').is_hidden()
    status = svc.streams[sid].source.status
    assert status.frames_out > 0 and status.last_count > 500

    # The chart fills from the SSE feed.
    points = card["points"]
    card = await wait_card(page, lambda c: c["id"] == sid and c["points"] >= points + 5, 10,
                           "the chart to receive feed items")
    print(f"\nuse my camera: first annotated frame after {first_frame_s:.2f} s, "
          f"count {card['countText']}, chart points {card['points']}")
    await page.screenshot(path=str(artifacts / "web-camera.png"), full_page=True)
    assert_clean(log, live_server)

    # Leaving the page hangs up: the server drops the peer and the stream.
    await page.goto("about:blank")
    await wait_until(lambda: svc.peers.peer_count == 0 and sid not in svc.streams, 10,
                     f"the server to drop the peer (peers: {svc.peers.stats()})")


async def test_removing_my_camera_closes_the_connection(browser_page, live_server) -> None:
    page, log = browser_page
    svc = live_server.service
    await open_page(page, live_server)
    await page.get_by_role("button", name="Use my camera").click()
    card = await wait_card(page, lambda c: c["width"] > 0, 30, "the annotated video")
    await remove_card(page.locator(CARD))
    await wait_until(lambda: svc.peers.peer_count == 0 and card["id"] not in svc.streams, 10,
                     f"the peer to close (peers: {svc.peers.stats()})")
    assert await page.locator(CARD).count() == 0
    live = await page.evaluate(
        "() => [...window.crowdcount.cards.values()].filter(c => c.pc).length"
    )
    assert live == 0
    assert_clean(log, live_server)


async def test_server_stream_plays_in_view_mode(
    browser_page, live_server, artifacts, h264_clip
) -> None:
    page, log = browser_page
    svc = live_server.service
    await open_page(page, live_server)
    await page.wait_for_selector('[data-testid="empty"]', state="visible")

    # Added server-side while the page is open: the 2 s poll must pick it up.
    stream = StreamConfig(name="clip", url=str(h264_clip), loop=True)
    await svc.add_stream(stream, origin="api")
    card = await wait_card(page, lambda c: c["id"] == "clip" and c["width"] > 0, 20,
                           "the clip's annotated video")
    assert (card["width"], card["height"]) == (320, 240)
    assert [p.mode for p in svc.peers.peers()] == ["view"]
    t0 = card["time"]
    card = await wait_card(page, lambda c: c["id"] == "clip" and c["time"] > t0 + 1.0, 15,
                           "currentTime to advance")
    card = await wait_card(page, lambda c: c["id"] == "clip" and (c["count"] or 0) > 0
                           and c["badge"] == "running", 15, "a count and the running badge")
    points = card["points"]
    await wait_card(page, lambda c: c["id"] == "clip" and c["points"] >= points + 5, 10,
                    "the chart to grow")

    # A second page loads the same chart from /counts history right away.
    page2 = await page.context.new_page()
    await open_page(page2, live_server)
    again = await wait_card(page2, lambda c: c["id"] == "clip" and c["points"] > 0, 10,
                            "the chart history on a fresh page")
    print(f"\nview mode: fresh page's chart starts with {again['points']} points")
    await page2.close()
    await page.screenshot(path=str(artifacts / "web-view-mode.png"), full_page=True)

    # Remove: the API stream goes, the viewer's peer is closed.
    await remove_card(page.locator(f'{CARD}[data-stream-id="clip"]'))
    await wait_until(lambda: "clip" not in svc.streams and svc.peers.peer_count == 0, 10,
                     "the stream and its viewer to go")
    assert_clean(log, live_server)


async def test_failed_stream_shows_its_error(browser_page, live_server, tmp_path) -> None:
    page, log = browser_page
    svc = live_server.service
    await open_page(page, live_server)
    missing = tmp_path / "no-such-clip.mp4"
    await svc.add_stream(StreamConfig(name="broken", url=str(missing)), origin="api")
    card = await wait_card(page, lambda c: c["id"] == "broken" and c["badge"] == "failed", 20,
                           "the failed badge")
    error = svc.streams["broken"].source.status.last_error
    assert error and card["error"] == error, card
    log.errors[:] = [e for e in log.errors if "404" not in e]  # the refused viewer offers
    assert_clean(log, live_server)


async def test_image_upload_shows_count_and_overlay(
    browser_page, live_server, artifacts
) -> None:
    page, log = browser_page
    await open_page(page, live_server)
    rng = np.random.default_rng(7)
    image = np.zeros((240, 320, 3), np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, 290)), int(rng.integers(0, 210))
        image[y : y + 30, x : x + 30] = rng.integers(120, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    png = buf.getvalue()

    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("image", png, filename="crowd.png", content_type="image/png")
        async with http.post(f"{live_server.url}/api/count?overlay=1", data=form) as resp:
            assert resp.status == 200
            expected = await resp.json()

    await page.set_input_files('[data-testid="upload-input"]',
                               files=[{"name": "crowd.png", "mimeType": "image/png",
                                       "buffer": png}])
    await page.wait_for_selector('[data-testid="upload-result"]', state="visible")
    value = await page.get_attribute('[data-testid="upload-count"]', "data-value")
    assert float(value) == pytest.approx(expected["count"], rel=1e-9)
    assert expected["count"] > 0
    shown = await page.text_content('[data-testid="upload-count"]')
    count = expected["count"]  # the page shows one decimal below 100, whole numbers above
    assert shown == (f"{count:.1f}" if count < 100 else str(math.floor(count + 0.5)))
    size = await page.evaluate(
        "() => { const i = document.querySelector('[data-testid=upload-overlay]');"
        " return [i.complete, i.naturalWidth, i.naturalHeight]; }"
    )
    assert size == [True, expected["width"], expected["height"]]
    await page.locator('[data-testid="upload-panel"]').screenshot(
        path=str(artifacts / "web-upload.png"))
    assert_clean(log, live_server)


async def test_bad_rtsp_url_shows_the_api_error(browser_page, live_server) -> None:
    page, log = browser_page
    await open_page(page, live_server)
    body = {"name": "lobby", "url": "http://camera.invalid/stream"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{live_server.url}/api/streams", json=body) as resp,
    ):
        assert resp.status == 400
        message = (await resp.json())["error"]

    await page.get_by_label("Camera name").fill(body["name"])
    await page.get_by_label("RTSP URL").fill(body["url"])
    await page.get_by_role("button", name="Add RTSP camera").click()
    error = page.locator('[data-testid="add-error"]')
    await error.wait_for(state="visible")
    assert await error.text_content() == message
    assert "has scheme 'http'; the API accepts only rtsp:// and rtsps://" in message
    assert await page.locator(CARD).count() == 0
    assert live_server.service.streams == {}
    # The browser logs the 400 itself; nothing else may be in the console.
    log.errors[:] = [e for e in log.errors if "status of 400" not in e]
    assert_clean(log, live_server)


async def test_unreachable_rtsp_camera_shows_reconnecting_with_its_error(
    browser_page, live_server, artifacts
) -> None:
    """Added through the form: the card appears at once and shows the source's retries."""
    import socket

    page, log = browser_page
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await open_page(page, live_server)
    await page.get_by_label("Camera name").fill("door")
    await page.get_by_label("RTSP URL").fill(f"rtsp://127.0.0.1:{port}/cam")
    await page.get_by_role("button", name="Add RTSP camera").click()
    card = await wait_card(
        page, lambda c: c["id"] == "door" and c["badge"] == "reconnecting"
        and c["error"] != "", 20, "the reconnecting badge with the last error")
    assert await page.locator('[data-testid="add-error"]').is_hidden()
    assert await page.get_by_label("RTSP URL").input_value() == ""  # the form was reset
    status = live_server.service.streams["door"].source.status
    assert card["error"] == status.last_error
    await page.locator(f'{CARD}[data-stream-id="door"]').screenshot(
        path=str(artifacts / "web-reconnecting.png"))
    await remove_card(page.locator(f'{CARD}[data-stream-id="door"]'))
    await wait_until(lambda: "door" not in live_server.service.streams, 10, "the removal")
    assert_clean(log, live_server)


async def test_token_protected_server(browser_page, tmp_path, brightness_model) -> None:
    """With a token, /?token= sets the session cookie; polling and the SSE feed work."""
    from crowdcount.model.runtime import Runtime

    page, log = browser_page
    config = server_config(tmp_path, brightness_model, token="s3cret-token")
    runtime = Runtime.open(brightness_model, threads=1)
    async with serve_app(config, runtime) as server:
        await server.service.add_stream(
            StreamConfig(name="gate", url=str(_still_clip(tmp_path)), loop=True),
            origin="api")
        await page.goto(f"{server.url}/?token=s3cret-token")
        await page.wait_for_function("() => window.crowdcount !== undefined")
        assert "token" not in page.url  # the server redirected it away
        card = await wait_card(page, lambda c: c["id"] == "gate" and c["points"] > 3, 20,
                               "counts through the feed with the session cookie")
        assert card["count"] is not None
        assert_clean(log, server)
        await page.goto("about:blank")


def _still_clip(folder: Path) -> Path:
    from tests.fixtures.media import write_clip

    return write_clip(folder / "gate.mp4", 160, 128, 10, 2.0)


async def test_page_assets_make_no_external_requests() -> None:
    """No CDN, no fonts, no analytics: every URL in the page's files is same-origin."""
    root = Path(__file__).resolve().parents[1] / "web"
    names = sorted(p.name for p in root.iterdir() if p.suffix in (".html", ".js", ".css"))
    assert {"index.html", "app.js", "api.js", "card.js", "style.css"} <= set(names)
    for name in names:
        text = (root / name).read_text()
        assert "http://" not in text and "https://" not in text, name
        assert "//cdn" not in text and "@import" not in text, name


async def test_user_draws_a_zone_and_sees_its_count_and_alert(
    browser_page, tmp_path, brightness_model, artifacts, h264_clip
) -> None:
    """Zones button, four clicks on the live video, a name, Save: the server has the zone
    (in video pixels), the card shows its live count, and a threshold on it raises an
    alert that appears in the alert list."""
    from crowdcount.model.runtime import Runtime
    from crowdcount.streamer.config import parse_config

    page, log = browser_page
    config = parse_config({
        "server": {"database": str(tmp_path / "counts.sqlite3")},
        "model": {"path": str(brightness_model), "backend": "onnx", "threads": 1},
        # The clip's dark background alone counts ~40 in the zone drawn below.
        "thresholds": [{"name": "middle-busy", "stream": "clip", "zone": "middle",
                        "above": 20, "below": 5}],
    })
    async with serve_app(config, Runtime.open(brightness_model, threads=1)) as server:
        svc = server.service
        await svc.add_stream(StreamConfig(name="clip", url=str(h264_clip), loop=True),
                             origin="api")
        await open_page(page, server)
        await wait_card(page, lambda c: c["id"] == "clip" and c["width"] > 0
                        and c["time"] > 0.5, 20, "the clip's annotated video")
        card = page.locator(f'{CARD}[data-stream-id="clip"]')
        await card.get_by_role("button", name="Draw zones on clip").click()
        overlay = card.locator('[data-testid="zone-overlay"]')
        await overlay.wait_for(state="visible")

        # Video pixels -> page pixels, through the card's own letterbox maths.
        rect = await page.evaluate(
            "() => window.crowdcount.cards.get('clip').videoRect()")
        box = await overlay.bounding_box()
        corners = [(40, 30), (280, 30), (280, 210), (40, 210)]
        for x, y in corners:
            await page.mouse.click(box["x"] + rect["x"] + x * rect["scale"],
                                   box["y"] + rect["y"] + y * rect["scale"])
        assert await overlay.get_attribute("data-points") == "4"
        await card.get_by_role("button", name="Finish zone").click()
        await card.get_by_label("Zone name").fill("middle")
        await page.screenshot(path=str(artifacts / "web-zones-drawing.png"), full_page=True)
        await card.get_by_role("button", name="Save zone").click()

        # The server has it, in the video's pixels (one CSS px is 1/scale video px).
        await wait_until(lambda: bool(svc.integrations.zones("clip")), 5, "the zone saved")
        (zone,) = svc.integrations.zones("clip")
        assert zone.name == "middle"
        tolerance = 1.5 / rect["scale"] + 0.2
        for (x, y), (zx, zy) in zip(corners, zone.points, strict=True):
            assert abs(zx - x) <= tolerance and abs(zy - y) <= tolerance, zone.points
        async with aiohttp.ClientSession() as http, http.get(
            f"{server.url}/api/streams/clip/zones"
        ) as r:
            body = await r.json()
        assert [z["name"] for z in body["zones"]] == ["middle"]
        # Saved, so the zone comes back after a restart (zones are kept for every stream kind).
        assert svc.settings.zones()["clip"][0]["name"] == "middle"

        # Its live count next to the card, from the feed, matching the server's last one.
        item = card.locator('[data-testid="zone-item"][data-zone="middle"]')
        count = item.locator('[data-testid="zone-count"]')
        deadline = time.monotonic() + 15
        while await count.get_attribute("data-value") is None:
            assert time.monotonic() < deadline, "no zone count on the page"
            await asyncio.sleep(0.2)
        value = float(await count.get_attribute("data-value"))
        assert 20 < value < 200, value

        # The threshold on the new zone raises; the alert list shows it live.
        alert = page.locator('[data-testid="alert-item"][data-rule="middle-busy"]')
        await alert.wait_for(state="visible", timeout=10_000)
        assert await alert.get_attribute("data-active") == "1"
        assert await card.get_attribute("data-alert") == "1"
        await page.wait_for_timeout(1500)  # a few annotated frames with the zone drawn
        await page.screenshot(path=str(artifacts / "web-zones.png"), full_page=True)
        assert_clean(log, server)
        await page.goto("about:blank")
