"""Heatmap colours: one absolute scale (people per output cell) for every picture, the same
function for the live video, uploads and the CLI, and a legend that matches it."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from crowdcount.model.render import (
    HEAT_CAP,
    annotate,
    colorize,
    counted_overlay,
    heat_legend,
    overlay,
)
from crowdcount.model.runtime import Runtime
from crowdcount.model.types import Frame, Result

ROOT = Path(__file__).resolve().parents[1]


def red_share(rgb: np.ndarray) -> float:
    """Share of pixels in the red end of Jet (what a viewer reads as "packed")."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return float(np.mean((r > 120) & (g < 90) & (b < 60)))


def blob(shape: tuple[int, int], centre: tuple[int, int], mass: float = 1.0,
         sigma: float = 0.7) -> np.ndarray:
    """One person as the model draws one: a small Gaussian of ``mass`` people."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((y - centre[0]) ** 2 + (x - centre[1]) ** 2) / (2 * sigma**2))
    return (mass * g / g.sum()).astype(np.float32)


GREY = np.full((480, 640, 3), 128, np.uint8)


def test_empty_frame_has_no_heat_at_all() -> None:
    empty = np.zeros((60, 80), np.float32)
    assert np.array_equal(overlay(GREY, empty), GREY)  # untinted
    assert red_share(colorize(empty, (640, 480))) == 0


def test_one_person_is_not_red_and_a_packed_crowd_is() -> None:
    lone = blob((60, 80), (30, 40))
    assert 0.3 < lone.max() < 0.6  # like one person from the bundled model
    # Per-frame normalisation painted this person's centre as red as any crowd.
    assert red_share(colorize(lone, (640, 480))) == 0
    # A person in every cell of a 20x40-cell patch (heads touching at this scale).
    packed = sum(blob((60, 80), (y, x)) for y in range(20, 40) for x in range(20, 60))
    assert packed[22:38, 22:58].min() > 0.95 * HEAT_CAP
    assert red_share(colorize(packed, (640, 480))) > 0.1
    blended = overlay(GREY, packed).astype(int)  # over the frame: tinted red, not pure
    assert np.mean(blended[..., 0] - np.maximum(blended[..., 1], blended[..., 2]) > 40) > 0.1


def test_a_cell_has_the_same_colour_whatever_else_is_in_the_frame() -> None:
    quiet = np.zeros((60, 80), np.float32)
    quiet[10, 10] = 0.4
    busy = quiet.copy()
    busy[40, 60] = 3.0  # a packed spot elsewhere must not change the quiet cell's colour
    a, b = colorize(quiet, (80, 60)), colorize(busy, (80, 60))
    assert np.array_equal(a[10, 10], b[10, 10])
    assert not np.array_equal(b[10, 10], b[40, 60])


def test_legend_stops_are_the_colours_drawn() -> None:
    legend = heat_legend()
    assert legend["max"] == HEAT_CAP and legend["unit"] == "people per output cell"
    assert [s["value"] for s in legend["stops"]][:: len(legend["stops"]) - 1] == [0, HEAT_CAP]
    for stop in legend["stops"]:
        rgb = colorize(np.full((1, 1), stop["value"], np.float32), (1, 1))[0, 0]
        assert stop["color"] == "#{:02x}{:02x}{:02x}".format(*map(int, rgb))


async def test_page_legend_api_serves_the_same_scale(serve) -> None:
    client = await serve()
    r = await client.get("/api/heatmap")
    assert r.status == 200 and await r.json() == heat_legend()


def test_cli_upload_and_live_video_share_one_rendering(tmp_path, brightness_model) -> None:
    """The CLI's overlay file is counted_overlay() of the model's map, byte for byte, and the
    live annotated frame's heat is overlay() of the same map."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (240, 320, 3)).astype(np.uint8)
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    cv2.imwrite(str(src), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    run = subprocess.run([sys.executable, "-m", "crowdcount.streamer.cli", "count", str(src),
                          "--model", str(brightness_model), "--overlay", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    (density,) = Runtime.open(brightness_model).predict([image])
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, counted_overlay(image, density))
    result = Result(Frame("cam", 0, 0.0, image), density, float(density.sum()), 0.0)
    live = annotate(result)
    heat = overlay(image, density)
    assert np.array_equal(live[-40:], heat[-40:])  # below the text band: the same heat


async def test_upload_overlay_is_counted_overlay(serve, brightness_model) -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, (256, 320, 3)).astype(np.uint8)
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    client = await serve()
    r = await client.post("/api/count?overlay=1", data=png)
    assert r.status == 200
    body = await r.json()
    got = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png"]), np.uint8),
                       cv2.IMREAD_COLOR)
    (density,) = Runtime.open(brightness_model).predict([image])
    want = counted_overlay(image, density)
    assert np.array_equal(cv2.cvtColor(got, cv2.COLOR_BGR2RGB), want)


@pytest.mark.shared
def test_real_sparse_scene_stays_cool_and_a_packed_one_turns_red(shared: Path) -> None:
    """The bundled model on a Mall frame (~30 people spread over a shop floor) and on a
    packed ShanghaiTech A picture (hundreds of people)."""
    mall = shared / "data" / "mall" / "frames" / "seq_000001.jpg"
    packed = sorted((shared / "data" / "shanghaitech_a" / "train_data" / "images").glob("*.jpg"))
    if not mall.is_file() or not packed:
        pytest.skip("Mall frames or ShanghaiTech A images not found")
    runtime = Runtime.open()
    shares = {}
    for name, path in (("mall", mall), ("packed", packed[0])):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        (density,) = runtime.predict([image], max_side=640)
        shares[name] = (float(density.sum()), red_share(colorize(density, (640, 480))))
    print(f"\n(count, red share): {shares}")
    assert shares["mall"][1] == 0, shares
    assert shares["packed"][0] > 100 and shares["packed"][1] > 0.001, shares
