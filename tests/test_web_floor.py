"""The floor calibration UI in real Chromium: a user marks four floor corners on the live
video, ticks "rectangle", gives its size and saves; the server has the calibration in video
pixels, the card says it is calibrated with its reprojection error, zone densities and
levels appear beside the zone counts, and bad input shows the server's one-line reason
while leaving the calibration as it was."""

from __future__ import annotations

import pytest

from crowdcount.model.zones import Zone
from crowdcount.streamer.config import StreamConfig
from tests.fixtures.browser import serve_app
from tests.fixtures.waiting import wait_until
from tests.test_web import CARD, assert_clean, open_page, wait_card

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
]

#: A floor rectangle in the 320x240 clip, in perspective (far edge shorter).
CORNERS = [(40, 220), (280, 220), (230, 60), (90, 60)]


async def test_user_calibrates_the_floor_and_sees_zone_densities(
    browser_page, tmp_path, brightness_model, artifacts, h264_clip
) -> None:
    from crowdcount.model.runtime import Runtime
    from crowdcount.streamer.config import parse_config

    page, log = browser_page
    config = parse_config({
        "server": {"database": str(tmp_path / "counts.sqlite3")},
        "model": {"path": str(brightness_model), "backend": "onnx", "threads": 1},
    })
    async with serve_app(config, Runtime.open(brightness_model, threads=1)) as server:
        svc = server.service
        await svc.add_stream(StreamConfig(name="clip", url=str(h264_clip), loop=True),
                             origin="api")
        await svc.set_zones("clip", [Zone("mid", ((100, 120), (220, 120), (220, 200),
                                                  (100, 200)))])
        await open_page(page, server)
        await wait_card(page, lambda c: c["id"] == "clip" and c["width"] > 0
                        and c["time"] > 0.5, 20, "the clip's annotated video")
        card = page.locator(f'{CARD}[data-stream-id="clip"]')
        status = card.locator('[data-testid="floor-status"]')
        await card.get_by_role("button", name="Calibrate the floor of clip").click()
        assert "Not calibrated" in await status.text_content()
        overlay = card.locator('[data-testid="floor-overlay"]')
        await overlay.wait_for(state="visible")
        async def video_rect() -> dict:
            """The card's letterbox, once the video has a picture (it may be reconnecting on
            a loaded machine, when it has none)."""
            handle = await page.wait_for_function(
                "() => window.crowdcount.cards.get('clip').videoRect()")
            return await handle.json_value()

        async def click(points: list[tuple[int, int]]) -> None:
            # Video pixels -> page pixels through the card's letterbox maths, measured now.
            # A video that is reconnecting (a loaded machine) has no size: wait for it.
            await overlay.scroll_into_view_if_needed()  # typing in the panel scrolls the page
            rect = await video_rect()
            box = await overlay.bounding_box()
            assert box is not None
            for x, y in points:
                await page.mouse.click(box["x"] + rect["x"] + x * rect["scale"],
                                       box["y"] + rect["y"] + y * rect["scale"])

        # Three points and a rectangle: refused with the server's reason, nothing saved.
        await click(CORNERS[:3])
        assert await overlay.get_attribute("data-points") == "3"
        await card.get_by_test_id("floor-rect").check()
        await card.get_by_test_id("floor-width").fill("4")
        await card.get_by_test_id("floor-depth").fill("6")
        await card.get_by_test_id("floor-head").fill("0")
        await card.get_by_role("button", name="Save floor").click()
        error = card.get_by_test_id("floor-error")
        await error.wait_for(state="visible")
        assert "a rectangle has 4 corners, got 3" in await error.text_content()
        assert svc.integrations.floor("clip") is None

        await click(CORNERS[3:])
        assert await overlay.get_attribute("data-points") == "4"
        await page.screenshot(path=str(artifacts / "web-floor-marking.png"), full_page=True)
        await card.get_by_role("button", name="Save floor").click()
        await page.wait_for_function(
            "() => document.querySelector('[data-stream-id=clip] [data-testid=floor-status]')"
            ".textContent.startsWith('Calibrated') || !document.querySelector("
            "'[data-stream-id=clip] [data-testid=floor-error]').textContent.includes('got 3')")
        assert await error.is_hidden(), await error.text_content()
        await wait_until(lambda: svc.integrations.floor("clip") is not None, 5, "the floor")
        current = svc.integrations.floor("clip")
        assert current is not None
        rect = await video_rect()
        tolerance = 1.5 / rect["scale"] + 0.2
        for (x, y), (fx, fy) in zip(CORNERS, current.config.image_points, strict=True):
            assert abs(fx - x) <= tolerance and abs(fy - y) <= tolerance
        assert (current.config.width, current.config.depth) == (4.0, 6.0)
        await page.wait_for_function(
            "() => document.querySelector('[data-stream-id=clip] [data-testid=floor-status]')"
            ".textContent.startsWith('Calibrated')")
        assert "px" in await status.text_content()

        # The zone's density and level beside its count, as the feed reports them.
        density = card.locator('[data-testid="zone-item"][data-zone="mid"] '
                               '[data-testid="zone-density"]')
        await page.wait_for_function(
            "() => document.querySelector('[data-zone=mid] [data-testid=zone-density]')"
            "?.dataset.level")
        level = await density.get_attribute("data-level")
        value = float(await density.get_attribute("data-value") or "nan")
        assert level in tuple("ABCDEF") and value > 0
        assert "/m²" in await density.text_content()
        await page.screenshot(path=str(artifacts / "web-floor-calibrated.png"), full_page=True)

        # The gathering map per m2 of floor, then top-down on the floor.
        await card.locator('[data-testid="gathering-toggle"]').click()
        panel = page.locator('[data-testid="gathering-panel"]')
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=gathering-panel]')?.dataset.loaded")
        image = panel.locator('[data-testid="gathering-image"]')
        for choice, needle in (("m2", "unit=m2"), ("floor", "view=floor")):
            before = await panel.get_attribute("data-loaded")
            await panel.get_by_test_id("gathering-unit").select_option(choice)
            await page.wait_for_function(
                "(b) => document.querySelector('[data-testid=gathering-panel]').dataset.loaded"
                " !== b", arg=before)
            assert needle in (await image.get_attribute("src") or "")
            assert await page.evaluate(
                "() => document.querySelector('[data-testid=gathering-image]').naturalWidth") > 0
        assert "per m² of floor" in await panel.get_by_test_id("gathering-stats").text_content()
        await page.screenshot(path=str(artifacts / "web-floor-top-down.png"), full_page=True)
        # A rule on the zone's density, made in the rule editor, raises (it is ~3 /m2).
        rules = page.locator('[data-testid="rules-panel"]')
        await rules.get_by_label("Rule name").fill("packed")
        await rules.get_by_label("Stream").select_option("clip")
        await rules.get_by_label("Count of").focus()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=rule-zone] option')]"
            ".some(o => o.value === 'mid')")
        await rules.get_by_label("Count of").select_option("mid")
        await rules.get_by_label("Watch").select_option("density")
        await rules.get_by_label("Alert above").fill("1")
        await rules.get_by_label("Clear below").fill("0.5")
        await rules.locator('[data-testid="rule-save"]').click()
        await wait_until(lambda: svc.integrations.engine.is_active("packed"), 10, "the raise")
        rule = next(r for r in svc.integrations.rules if r.name == "packed")
        assert (rule.zone, rule.metric) == ("mid", "density")
        row = rules.locator('[data-testid="rule-row"][data-name="packed"]')
        assert "people/m²" in await row.text_content()

        # The one console error is the browser reporting the refused save (its 400).
        assert [e for e in log.errors if "400 (Bad Request)" not in e] == []
        assert len(log.errors) == 1
        log.errors.clear()
        assert_clean(log, server)
