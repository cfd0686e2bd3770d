"""Where people gather: density maps accumulated per minute on a coarse grid (real SQLite),
and ``GET /api/streams/{id}/heatmap`` through the running service with the brightness
model, whose density is exactly where the picture is bright ("people at known places")."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from crowdcount.model.types import Frame, Result
from crowdcount.streamer.gathering import GRID_H, GRID_W, GatheringMap, resample_weights
from crowdcount.streamer.store import SQLiteStore
from tests.fixtures.models import expected_count
from tests.fixtures.waiting import wait_until

T0 = 1_700_000_040.0  # a minute boundary


def result(sid: str, t: float, density: np.ndarray) -> Result:
    h, w = density.shape
    frame = Frame(sid, 0, t, np.zeros((h * 8, w * 8, 3), np.uint8))
    return Result(frame, density.astype(np.float32), float(density.sum()), t)


def blob(cells: list[tuple[int, int, float]], shape=(60, 80)) -> np.ndarray:
    d = np.zeros(shape, np.float32)
    for r, c, v in cells:
        d[r, c] = v
    return d


def test_resampling_keeps_every_person() -> None:
    rng = np.random.default_rng(1)
    for h, w in ((60, 80), (32, 40), (17, 23), (135, 240)):
        d = rng.random((h, w)).astype(np.float32)
        g = resample_weights(h, GRID_H) @ d @ resample_weights(w, GRID_W).T
        assert g.shape == (GRID_H, GRID_W)
        assert abs(g.sum() - d.sum()) < 1e-3 * d.sum()


def test_people_at_known_places_make_exactly_those_cells_hot(tmp_path) -> None:
    db = tmp_path / "g.sqlite3"
    store = SQLiteStore(db)
    g = GatheringMap(store.gathering)
    # Minute 0: 5 people at density cell (10, 20) -> grid cell (5, 10) (80x60 -> 40x30).
    for k in range(30):
        g.on_result(result("cam", T0 + k, blob([(10, 20, 5.0)])))
    # Minutes 1 and 2: 3 people at (50, 71) -> grid cell (25, 35), and 1 at (0, 0).
    for k in range(120):
        g.on_result(result("cam", T0 + 60 + k, blob([(50, 71, 3.0), (0, 0, 1.0)])))
    # Another stream never leaks into this one.
    g.on_result(result("other", T0 + 5, blob([(30, 30, 9.0)])))

    first = g.heatmap("cam", T0, T0 + 60)
    assert first.frames == 30 and first.buckets == 1
    assert first.grid is not None
    hot = np.argwhere(first.grid > 0)
    assert hot.tolist() == [[5, 10]]
    assert abs(first.grid[5, 10] - 5.0) < 0.01  # 5 people there in every frame

    later = g.heatmap("cam", T0 + 60, T0 + 180)
    assert later.frames == 120 and later.buckets == 2  # the last minute is still open
    assert later.grid is not None
    assert sorted(map(tuple, np.argwhere(later.grid > 0).tolist())) == [(0, 0), (25, 35)]
    assert abs(later.grid[25, 35] - 3.0) < 0.01 and abs(later.grid[0, 0] - 1.0) < 0.01

    # The whole range: the frame-weighted mean, so the grid sums to the mean count.
    whole = g.heatmap("cam")
    assert whole.frames == 150
    expected_mean = (30 * 5.0 + 120 * 4.0) / 150
    assert whole.grid is not None and abs(whole.grid.sum() - expected_mean) < 0.01
    assert abs(whole.grid[5, 10] - 5.0 * 30 / 150) < 0.01
    assert g.heatmap("cam", T0 + 600, T0 + 660).grid is None  # nothing seen then

    # Closing writes the open minute; a new process reads the same answer from SQLite.
    g.close()
    store.close()
    store = SQLiteStore(db)
    again = GatheringMap(store.gathering)
    reread = again.heatmap("cam", T0 + 60, T0 + 180)
    assert reread.frames == 120 and reread.grid is not None
    assert np.allclose(reread.grid, later.grid, atol=0.005)
    # A restart within a minute adds a part to the minute already there.
    for k in range(10):
        again.on_result(result("cam", T0 + 170 + k, blob([(50, 71, 13.0)])))
    again.close()
    store.close()
    store = SQLiteStore(db)
    merged = GatheringMap(store.gathering).heatmap("cam", T0 + 120, T0 + 180)
    assert merged.frames == 70
    assert merged.grid is not None
    assert abs(merged.grid[25, 35] - (60 * 3.0 + 10 * 13.0) / 70) < 0.02
    stats = GatheringMap(store.gathering).stats()
    assert stats["rows"] == 5  # cam: 3 minutes (one in two parts), other: 1
    assert stats["bytes"] < 5 * GRID_W * GRID_H * 2  # float16, compressed
    store.close()


W, H = 320, 256
SQUARE = (slice(64, 128), slice(192, 256))  # rows 64..127, columns 192..255 of the frame


def scene() -> np.ndarray:
    """Black, with one bright square: the only place the brightness model sees people."""
    image = np.zeros((H, W, 3), np.uint8)
    image[SQUARE] = 255
    return image


async def test_heatmap_api_json_and_png(deploy) -> None:
    """On a single box and on a cluster (whose API process reads the grids its shards
    write) alike."""
    dep = await deploy()
    client = dep.client
    await dep.camera("plaza", lambda _i: scene(), size=(W, H))

    async def counted() -> dict[str, Any] | None:
        r = await client.get("/api/streams/plaza/heatmap", params={"format": "json"})
        assert r.status == 200, await r.text()
        body = await r.json()
        return body if body["frames"] >= 20 else None

    await wait_until(counted, what="20 frames in the map")
    body = await counted()
    assert body is not None
    assert (body["width"], body["height"]) == (GRID_W, GRID_H) and body["frames"] >= 20
    grid = np.array(body["grid"])
    # The square covers frame columns 192..255 of 320 -> grid columns 24..31 of 40, and
    # rows 64..127 of 256 -> grid rows 7.5..15 of 30: all the density is there.
    cols = slice(24, 32)
    rows = slice(7, 15)
    inside = grid[rows, cols].sum()
    assert inside > 0.999 * grid.sum()
    assert grid[8:15, 24:32].min() > 0.5 * grid.max()  # every cell wholly inside is hot
    assert abs(grid.sum() - expected_count(scene())) < 0.01 * expected_count(scene())

    r = await client.get("/api/streams/plaza/heatmap")
    assert r.status == 200 and r.content_type == "image/png"
    image = np.asarray(Image.open(io.BytesIO(await r.read())).convert("RGB")).astype(int)
    assert image.shape == (H, W, 3)  # drawn on the reference frame
    cy, cx = 96, 224
    r_, g_, b_ = image[cy, cx]
    assert r_ > g_ + 40 and r_ > b_ + 40, image[cy, cx]  # white square tinted red
    assert image[200, 40].tolist() == [0, 0, 0]  # nobody there: untouched black

    # A range with nothing in it, bad parameters, unknown streams.
    r = await client.get("/api/streams/plaza/heatmap",
                         params={"format": "json", "since": "1", "until": "2"})
    assert (await r.json())["grid"] is None
    for params, status in (({"format": "gif"}, 400), ({"since": "5", "until": "1"}, 400),
                           ({"since": "x"}, 400)):
        r = await client.get("/api/streams/plaza/heatmap", params=params)
        assert r.status == status and "error" in await r.json()
    assert (await client.get("/api/streams/ghost/heatmap")).status == 404

    # A removed stream keeps its map (and its picture).
    assert (await client.delete("/api/streams/plaza")).status == 204
    r = await client.get("/api/streams/plaza/heatmap", params={"format": "json"})
    assert r.status == 200 and (await r.json())["frames"] >= 20
    r = await client.get("/api/streams/plaza/heatmap")
    assert r.status == 200
