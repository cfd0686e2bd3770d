"""The page's operator views in a real Chromium against the real app (brightness model):
history over a range, the gathering map, the alert rule editor, adding/editing/removing
streams, and cards that stop costing anything while nobody looks at them.

Screenshots of the history, gathering map and alert editor go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crowdcount.model.runtime import Runtime
from crowdcount.streamer.config import parse_config
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.browser import LiveServer, serve_app
from tests.fixtures.waiting import wait_until
from tests.test_web import CARD, assert_clean, open_page, remove_card

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]

W, H = 320, 256
SQUARE = (slice(64, 128), slice(192, 256))


def scene() -> np.ndarray:
    """A dim floor, a bright square (a big group) and a fainter patch (a small one): the
    brightness model's people are exactly there."""
    floor = np.linspace(0, 14, H, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(floor, (H, W, 3)).astype(np.uint8).copy()
    image[SQUARE] = 255
    image[160:210, 40:110] = 120
    return image


def config(tmp_path: Path, model: Path, **tables: Any) -> Any:
    return parse_config({
        "server": {"database": str(tmp_path / "counts.sqlite3")},
        "model": {"path": str(model), "backend": "onnx", "threads": 1},
        **tables,
    })


async def add_synthetic(server: LiveServer, sid: str, fps: float = 10,
                        origin: str = "api") -> SyntheticSource:
    source = SyntheticSource(sid, W, H, fps=fps, render=lambda _i: scene())
    await server.service.add_source(source, url="synthetic", kind="synthetic",
                                    origin=origin)  # type: ignore[arg-type]
    return source


def card(sid: str) -> str:
    return f'{CARD}[data-stream-id="{sid}"]'


async def test_history_range_picker_zones_csv_on_the_server_clock(
    browser_page, tmp_path, brightness_model, artifacts
) -> None:
    page, log = browser_page
    runtime = Runtime.open(brightness_model, threads=1)
    async with serve_app(config(tmp_path, brightness_model), runtime) as server:
        svc = server.service
        await add_synthetic(server, "plaza")
        # A week of history, one row a minute, with two zones: busy days, quiet nights.
        now = time.time()
        for k in range(7 * 24 * 60):
            t = now - 7 * 86400 + 60 * k
            hour = time.localtime(t).tm_hour + time.localtime(t).tm_min / 60
            busy = 2 + 28 * max(0.0, math.sin((hour - 8) / 12 * math.pi)) + (k % 7)
            svc.store.history.add("plaza", t, busy, busy,
                                  {"door": 0.4 * busy, "queue": 0.25 * busy + (k % 3)})
        await asyncio.to_thread(svc.store.flush)

        # The browser's clock is three days ahead: ranges must follow the server's.
        await page.add_init_script(
            "{ const real = Date.now; Date.now = () => real() + 3 * 86400e3; }")
        await open_page(page, server)
        await page.locator(card("plaza")).locator('[data-testid="history-toggle"]').click()
        panel = page.locator('[data-testid="history-panel"]')
        await panel.wait_for(state="visible")
        chart = panel.locator('[data-testid="history-chart"]')
        await page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=history-chart]')"
            ".dataset.points) > 0")
        href = await panel.locator('[data-testid="history-csv"]').get_attribute("href")
        params = dict(p.split("=") for p in href.split("?")[1].split("&"))
        assert float(params["until"]) == pytest.approx(time.time(), abs=30)
        assert float(params["until"]) - float(params["since"]) == pytest.approx(3600, abs=1)
        assert params["step"] == "5"

        await panel.get_by_role("button", name="Last week").click()
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=history-range]').dataset.range"
            " === 'week' && Number(document.querySelector('[data-testid=history-chart]')"
            ".dataset.points) > 500")
        points = int(await chart.get_attribute("data-points"))
        assert await chart.get_attribute("data-series") == "3"  # the total and two zones
        href = await panel.locator('[data-testid="history-csv"]').get_attribute("href")
        params = dict(p.split("=") for p in href.split("?")[1].split("&"))
        assert params["step"] == "600"
        api_points = svc.store.history.counts("plaza", float(params["since"]),
                                              float(params["until"]), 600, 100_000)
        assert points == len(api_points)
        legend = await panel.locator('[data-testid="legend-zone"]').all_text_contents()
        assert legend == ["Zone door", "Zone queue"]
        # The CSV link serves exactly the rows the chart shows, zone column included.
        csv_text = await page.evaluate("async (h) => (await fetch(h)).text()", href)
        lines = csv_text.strip().splitlines()
        assert lines[0] == "t,count,min,max,smoothed,n,door,queue"
        assert len(lines) - 1 == points
        status = await panel.locator('[data-testid="history-status"]').text_content()
        assert "one per 10 min" in status and "server time" in status

        # Custom range: two days ago, for six hours.
        await panel.get_by_role("button", name="Custom").click()
        start = time.localtime(now - 2 * 86400)
        end = time.localtime(now - 2 * 86400 + 6 * 3600)
        await panel.locator('[data-testid="range-from"]').fill(
            time.strftime("%Y-%m-%dT%H:%M", start))
        await panel.locator('[data-testid="range-to"]').fill(time.strftime("%Y-%m-%dT%H:%M", end))
        await panel.locator('[data-testid="range-apply"]').click()
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=history-range]').dataset.range"
            " === 'custom'")
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=history-status]').textContent"
            ".includes('one per 30 s')")
        href = await panel.locator('[data-testid="history-csv"]').get_attribute("href")
        params = dict(p.split("=") for p in href.split("?")[1].split("&"))
        assert float(params["until"]) - float(params["since"]) == pytest.approx(6 * 3600, abs=60)
        rows = svc.store.history.counts("plaza", float(params["since"]), float(params["until"]),
                                        30, 100_000)
        peak = max(r["max"] for r in rows)
        status = await panel.locator('[data-testid="history-status"]').text_content()
        assert f"peak {peak:.1f}" in status, (status, peak)
        await panel.get_by_role("button", name="Last week").click()
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=history-range]').dataset.range"
            " === 'week'")
        await page.wait_for_timeout(300)  # one animation frame for the canvas
        await panel.screenshot(path=str(artifacts / "history.png"))
        assert_clean(log, server)


async def test_gathering_map_shows_where_people_were(
    browser_page, tmp_path, brightness_model, artifacts
) -> None:
    page, log = browser_page
    runtime = Runtime.open(brightness_model, threads=1)
    async with serve_app(config(tmp_path, brightness_model), runtime) as server:
        source = await add_synthetic(server, "plaza")
        await wait_until(lambda: source.status.frames_out >= 10, what="frames")
        await open_page(page, server)
        await page.locator(card("plaza")).locator('[data-testid="gathering-toggle"]').click()
        panel = page.locator('[data-testid="gathering-panel"]')
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=gathering-panel]')?.dataset.loaded")
        assert int(await panel.get_attribute("data-frames")) >= 10
        # Read the picture back: the square (where the "people" are) is tinted red, the
        # empty floor left black.
        pixels = await page.evaluate("""() => {
          const img = document.querySelector('[data-testid=gathering-image]');
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
          const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
          return {w: img.naturalWidth, h: img.naturalHeight, hot: at(224, 96),
                  warm: at(75, 185), cold: at(300, 20)};
        }""")
        assert (pixels["w"], pixels["h"]) == (W, H)
        r, g, b = pixels["hot"]
        assert r > g + 40 and r > b + 40, pixels
        assert max(pixels["cold"]) < 30, pixels  # the empty floor stays dark
        assert pixels["warm"] != [120, 120, 120] and pixels["warm"] != pixels["hot"], pixels
        stats = await panel.locator('[data-testid="gathering-stats"]').text_content()
        assert "frames" in stats and "people" in stats
        await panel.get_by_role("button", name="Last day").click()
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=gathering-range]').dataset.range"
            " === 'day'")
        await panel.screenshot(path=str(artifacts / "gathering.png"))
        assert_clean(log, server)


async def test_alert_rule_editor(browser_page, tmp_path, brightness_model, artifacts) -> None:
    page, log = browser_page
    runtime = Runtime.open(brightness_model, threads=1)
    cfg = config(tmp_path, brightness_model, thresholds=[
        {"name": "from-file", "stream": "plaza", "above": 1e6, "below": 1}])
    async with serve_app(cfg, runtime) as server:
        svc = server.service
        await add_synthetic(server, "plaza")
        await open_page(page, server)
        rules = page.locator('[data-testid="rules-panel"]')
        row = rules.locator('[data-testid="rule-row"][data-name="from-file"]')
        await row.wait_for()
        assert await row.locator('[data-testid="rule-edit"]').count() == 0  # read-only
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=rule-stream] option')]"
            ".some(o => o.value === 'plaza')")

        # The square counts ~64 people: a rule over 10 raises at once.
        await rules.get_by_label("Rule name").fill("crowded")
        await rules.get_by_label("Stream").select_option("plaza")
        await rules.get_by_label("Alert above").fill("10")
        await rules.get_by_label("Clear below").fill("20")
        await rules.locator('[data-testid="rule-save"]').click()
        error = rules.locator('[data-testid="rule-error"]')
        await error.wait_for(state="visible")
        assert "below (20) must be less than above (10)" in await error.text_content()
        await rules.get_by_label("Clear below").fill("5")
        await rules.locator('[data-testid="rule-save"]').click()
        new = rules.locator('[data-testid="rule-row"][data-name="crowded"]')
        await new.wait_for()
        await wait_until(lambda: svc.integrations.engine.is_active("crowded"), what="raise")
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=rule-row][data-name=crowded]')"
            "?.dataset.active === 'true'")
        await rules.screenshot(path=str(artifacts / "alert-editor.png"))

        # Edit: a threshold the crowd is under clears the alert.
        await new.locator('[data-testid="rule-edit"]').click()
        assert await rules.get_by_label("Rule name").input_value() == "crowded"
        await rules.get_by_label("Alert above").fill("1000")
        await rules.get_by_label("Clear below").fill("900")
        await rules.get_by_label("For (s)").fill("2")
        await rules.locator('[data-testid="rule-save"]').click()
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=rule-row][data-name=crowded]')"
            "?.textContent.includes('over 1000 for 2 s')")
        rule = next(r for r in svc.integrations.rules if r.name == "crowded")
        assert (rule.above, rule.below, rule.for_seconds) == (1000, 900, 2)
        assert not svc.integrations.engine.is_active("crowded")

        await new.locator('[data-testid="rule-delete"]').click()
        await new.wait_for(state="detached")
        assert [r.name for r in svc.integrations.rules] == ["from-file"]
        log.errors[:] = [e for e in log.errors if "400 (Bad Request)" not in e]  # on purpose
        assert_clean(log, server)


async def test_add_with_options_edit_and_confirmed_removal(
    browser_page, tmp_path, brightness_model, h264_clip
) -> None:
    page, log = browser_page
    runtime = Runtime.open(brightness_model, threads=1)
    cfg = config(tmp_path, brightness_model,
                 streams=[{"name": "lobby", "url": str(h264_clip), "loop": True}])
    async with serve_app(cfg, runtime) as server:
        svc = server.service
        await open_page(page, server)
        await page.get_by_label("Camera name").fill("door")
        await page.get_by_label("RTSP URL").fill("rtsp://127.0.0.1:9/cam")
        await page.locator('[data-testid="add-options"] summary').click()
        await page.get_by_label("Max frames/s").fill("5")
        await page.get_by_label("Max side (px)").fill("320")
        await page.get_by_role("button", name="Add RTSP camera").click()
        await wait_until(lambda: "door" in svc.streams, what="the stream")
        assert svc.streams["door"].options == {"fps_limit": 5.0, "max_side": 320}

        door = page.locator(card("door"))
        await door.locator('[data-testid="edit-toggle"]').click()
        form = door.locator('[data-testid="edit-form"]')
        await form.wait_for(state="visible")
        assert await form.get_by_label("Frames/s limit").input_value() == "5"
        await form.get_by_label("Frames/s limit").fill("2")
        await form.get_by_label("Size limit (px)").fill("")
        await form.get_by_role("button", name="Save").click()
        await wait_until(lambda: svc.streams.get("door") is not None
                         and svc.streams["door"].options == {"fps_limit": 2.0}, what="edit")
        await form.wait_for(state="hidden")
        assert svc.store.streams.get("door")["options"] == {"fps_limit": 2.0}

        # The config-file stream has neither Remove nor Edit.
        lobby = page.locator(card("lobby"))
        await page.wait_for_function(
            "() => document.querySelector('[data-stream-id=lobby]')?.dataset.origin"
            " === 'config'")
        assert await lobby.locator('[data-testid="stream-remove"]').is_hidden()
        assert await lobby.locator('[data-testid="edit-toggle"]').is_hidden()

        # Removal asks first; "Keep" keeps it.
        await door.locator('[data-testid="stream-remove"]').click()
        question = door.locator('[data-testid="remove-question"]')
        assert "Remove door?" in await question.text_content()
        await door.locator('[data-testid="remove-no"]').click()
        assert await door.locator('[data-testid="remove-confirm"]').is_hidden()
        assert "door" in svc.streams
        await remove_card(door)
        await wait_until(lambda: "door" not in svc.streams, what="the removal")
        assert_clean(log, server)


async def test_hidden_cards_hang_up_and_the_feed_follows_what_is_shown(
    browser_page, tmp_path, brightness_model
) -> None:
    page, log = browser_page
    runtime = Runtime.open(brightness_model, threads=1)
    async with serve_app(config(tmp_path, brightness_model), runtime) as server:
        svc = server.service
        for sid in ("a1", "a2", "a3"):
            await add_synthetic(server, sid, fps=5)
        await page.set_viewport_size({"width": 420, "height": 640})  # one card in sight
        await open_page(page, server)

        def viewers() -> set[str]:
            return {p.stream_id for p in svc.peers.peers() if p.mode == "view"}

        feeds = svc.feed._subs  # the live subscriptions: key None = page feeds

        def page_feed_streams() -> list[frozenset[str] | None]:
            return [s.only for s in feeds.get(None, ())]

        await wait_until(lambda: viewers() == {"a1"}, 20, "only a1 to be viewed")
        await wait_until(lambda: page_feed_streams() == [frozenset({"a1"})], 10,
                         "the feed to carry only a1")
        video = await page.locator(card("a3")).get_attribute("data-onscreen")
        assert video == "false"
        assert await page.locator(card("a3")).locator(
            '[data-testid="stream-media"]').get_attribute("data-video") == "paused"

        # Scrolling to the last card: it connects, the first hangs up.
        await page.locator(card("a3")).scroll_into_view_if_needed()
        await wait_until(lambda: "a3" in viewers() and "a1" not in viewers(), 20,
                         "a3 viewed instead of a1")
        shown = await page.evaluate(
            "() => [...document.querySelectorAll('[data-onscreen=true]')]"
            ".map(c => c.dataset.streamId).sort()")
        assert "a3" in shown and "a1" not in shown
        await wait_until(lambda: viewers() == set(shown), 20, "exactly the shown cards viewed")
        await wait_until(lambda: page_feed_streams() == [frozenset(shown)], 10, "feed shown")
        await page.wait_for_function(
            "() => document.querySelector('[data-stream-id=a3] video').videoWidth > 0")

        # The tab hidden: no view, no feed. Shown again: both come back by themselves.
        set_visibility = """(state) => {
          Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
          Object.defineProperty(document, 'hidden', {value: state === 'hidden',
                                                     configurable: true});
          document.dispatchEvent(new Event('visibilitychange'));
        }"""
        await page.evaluate(set_visibility, "hidden")
        await wait_until(lambda: not viewers() and not page_feed_streams(), 10,
                         "views and feed closed while hidden")
        await page.evaluate(set_visibility, "visible")
        await wait_until(lambda: viewers() == set(shown)
                         and page_feed_streams() == [frozenset(shown)], 20, "resumed")
        log.errors[:] = [e for e in log.errors if "404" not in e]  # a hung-up peer's DELETE
        assert_clean(log, server)
