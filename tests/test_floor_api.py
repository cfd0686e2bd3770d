"""Floor calibration through the HTTP service and density in every output: a real aiohttp
server, the brightness model (a white frame is one person per 8x8 cell), SQLite in
tmp_path, synthetic sources."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from crowdcount.model.floor import FRUIN_WALKWAY, Floor, level_of_service
from crowdcount.model.zones import zone_mask
from crowdcount.streamer.sources.synthetic import SyntheticSource
from tests.fixtures.app import service
from tests.fixtures.waiting import wait_until
from tests.test_zones_api import metric_values, sse_items

W, H = 320, 256
SHAPE = (H // 8, W // 8)
#: A floor rectangle 4 m wide and 6 m deep, seen in perspective.
CORNERS = [[60, 230], [260, 230], [210, 90], [110, 90]]
FLOOR = {"image_points": CORNERS, "width": 4, "depth": 6, "frame_size": [W, H],
         "head_height": 0}
NEAR = [[80, 200], [240, 200], [230, 160], [90, 160]]
FAR = [[120, 110], [200, 110], [200, 95], [120, 95]]


async def add_white(client: TestClient, sid: str, level: list[int] | None = None
                    ) -> SyntheticSource:
    lv = level or [255]
    source = SyntheticSource(sid, W, H, fps=20.0,
                             render=lambda _i: np.full((H, W, 3), lv[0], np.uint8))
    await service(client).add_source(source, url="synthetic", kind="synthetic",
                                     origin="api")  # type: ignore[arg-type]
    return source


async def put(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    r = await client.put(path, json=body)
    return r.status, await r.json()


def expected(points: list[list[int]], count: float) -> tuple[float, float]:
    """(area m2, people/m2) the service must report for a zone, from the geometry core."""
    floor = Floor.from_rectangle(CORNERS, 4, 6, (W, H))
    area = floor.zone_area([tuple(p) for p in points], (W, H), SHAPE)
    return area, count / area


async def test_floor_put_get_delete_and_density_in_the_feed(deploy) -> None:
    """On a single box and a cluster alike (``tests/fixtures/deployments.py``)."""
    dep = await deploy()
    client = dep.client
    await dep.camera("hall", lambda _i: np.full((H, W, 3), 255, np.uint8), size=(W, H))
    r = await client.get("/api/streams/hall/floor")
    assert r.status == 200 and (await r.json()) == {"stream": "hall", "floor": None}

    status, body = await put(client, "/api/streams/hall/floor", FLOOR)
    assert status == 200, body
    assert body["rms_error_px"] < 1e-3
    assert body["floor"]["width"] == 4 and body["levels"] == list(FRUIN_WALKWAY)
    assert len(body["grid"]) >= 8  # a one-metre grid: 5 lines across, 7 along, and margins
    assert (await (await client.get("/api/streams/hall/floor")).json())["floor"] == body["floor"]

    status, body = await put(client, "/api/streams/hall/zones",
                             {"zones": [{"name": "near", "points": NEAR},
                                        {"name": "far", "points": FAR}]})
    assert status == 200, body

    items = await sse_items(client, "/api/streams/hall/feed",
                            lambda its: any("floor" in i for i in its))
    item = next(i for i in items if "floor" in i)
    for name, pts in (("near", NEAR), ("far", FAR)):
        area, per_m2 = expected(pts, item["zones"][name])
        got = item["floor"][name]
        assert got["area_m2"] == pytest.approx(area, rel=1e-6)
        assert got["per_m2"] == pytest.approx(per_m2, rel=1e-6)
        assert got["level"] == level_of_service(per_m2)
    # One person per image cell in both zones, but a far cell is more floor: on the floor
    # the far zone is the sparser one.
    assert item["floor"]["far"]["per_m2"] < item["floor"]["near"]["per_m2"] / 2

    # Zone areas in GET (from the last frame), and the Prometheus series (per-zone series
    # are a single box's: a cluster's API process exports its cameras' status).
    got = await (await client.get("/api/streams/hall/floor")).json()
    assert got["zones"]["near"]["area_m2"] == pytest.approx(expected(NEAR, 1)[0])
    if dep.kind == "box":
        text = await (await client.get("/metrics")).text()
        values = metric_values(text)
        key = 'crowdcount_zone_people_per_square_meter{stream="hall",zone="near"}'
        assert values[key] > 0
        assert values['crowdcount_zone_floor_area_square_meters{stream="hall",zone="near"}'] \
            == pytest.approx(expected(NEAR, 1)[0])
        assert 1 <= values['crowdcount_zone_level_of_service{stream="hall",zone="far"}'] <= 6

    r = await client.delete("/api/streams/hall/floor")
    assert r.status == 200 and (await r.json())["floor"] is None
    assert (await (await client.get("/api/streams/hall/floor")).json())["floor"] is None
    # Where it is counted too: the feed's counts carry no densities any more.
    await sse_items(client, "/api/streams/hall/feed",
                    lambda its: bool(its) and "count" in its[-1] and "floor" not in its[-1])


async def test_history_and_csv_carry_mean_and_peak_density(serve) -> None:
    client = await serve()
    await add_white(client, "hall")
    await put(client, "/api/streams/hall/floor", FLOOR)
    await put(client, "/api/streams/hall/zones", {"zones": [{"name": "near", "points": NEAR}]})
    svc = service(client)
    # Two rows in one second, long ago (a bucket of their own), with different zone counts:
    # the bucket's mean and peak differ.
    t0 = 1_000_000.0
    svc.store.history.add("hall", t0 + 0.1, 10, 10, {"near": 2.0})
    svc.store.history.add("hall", t0 + 0.6, 12, 11, {"near": 6.0})
    svc.store.flush()
    area = expected(NEAR, 1)[0]
    r = await client.get(f"/api/streams/hall/counts?since={t0}&until={t0 + 1}&step=1&zones=1")
    bucket = (await r.json())["counts"][0]
    assert bucket["density"]["near"] == pytest.approx(4.0 / area)
    assert bucket["density_max"]["near"] == pytest.approx(6.0 / area)
    r = await client.get(f"/api/streams/hall/counts.csv?since={t0}&until={t0 + 1}&step=1")
    header, row = (await r.text()).strip().splitlines()
    cols = header.split(",")
    assert cols[-2:] == ["near per m2", "near peak per m2"]
    values = dict(zip(cols, row.split(","), strict=True))
    assert float(values["near per m2"]) == pytest.approx(4.0 / area)
    assert float(values["near peak per m2"]) == pytest.approx(6.0 / area)


@pytest.mark.parametrize(("change", "needle"), [
    ({"image_points": CORNERS[:3]}, "a rectangle has 4 corners, got 3"),
    ({"image_points": [[10, 10], [20, 20], [30, 30], [40, 40]]}, "lie on one line"),
    ({"image_points": [[60, 230], [260, 230], [210, float("nan")], [110, 90]]}, "finite"),
    ({"width": 0}, "width and depth > 0"),
    ({"depth": -2}, "width and depth > 0"),
    ({"width": None, "depth": None}, "give floor_points"),
    ({"floor_points": [[0, 0], [1, 0], [1, 1], [0, 1]]}, "not both"),
    ({"frame_size": [0, 256]}, "frame_size"),
    ({"levels": [1, 2, 3]}, "levels"),
    ({"tilt": 3}, "unknown field 'tilt'"),
    ({"image_points": "x"}, "image_points"),
])
async def test_bad_floor_is_400_one_line_and_changes_nothing(serve, change, needle) -> None:
    client = await serve()
    await add_white(client, "hall")
    status, _ = await put(client, "/api/streams/hall/floor", FLOOR)
    assert status == 200
    before = await (await client.get("/api/streams/hall/floor")).json()
    body = {k: v for k, v in {**FLOOR, **change}.items() if v is not None}
    status, answer = await put(client, "/api/streams/hall/floor", body)
    assert status == 400, answer
    assert needle in answer["error"] and "\n" not in answer["error"]
    assert await (await client.get("/api/streams/hall/floor")).json() == before


async def test_zone_off_the_calibrated_floor_is_refused(deploy) -> None:
    dep = await deploy()
    client = dep.client
    await dep.camera("hall", lambda _i: np.full((H, W, 3), 255, np.uint8), size=(W, H))
    # A camera whose horizon is in the frame: the rectangle's far edge is much shorter.
    steep = {**FLOOR, "image_points": [[40, 250], [280, 250], [175, 60], [145, 60]]}
    status, body = await put(client, "/api/streams/hall/floor", steep)
    assert status == 200, body
    sky = [[100, 5], [220, 5], [220, 30], [100, 30]]
    status, body = await put(client, "/api/streams/hall/zones",
                             {"zones": [{"name": "sky", "points": sky}]})
    assert status == 400 and "beyond the calibrated floor" in body["error"], body
    assert (await (await client.get("/api/streams/hall/zones")).json())["zones"] == []
    # And the other way round: zones first, then a calibration that leaves one off.
    status, _ = await put(client, "/api/streams/hall/floor", FLOOR)
    status, _ = await put(client, "/api/streams/hall/zones",
                          {"zones": [{"name": "sky", "points": sky}]})
    assert status == 200
    status, body = await put(client, "/api/streams/hall/floor", steep)
    assert status == 400 and "zone 'sky'" in body["error"], body
    assert (await (await client.get("/api/streams/hall/floor")).json())["floor"]["image_points"] \
        == [[float(x), float(y)] for x, y in CORNERS]


async def test_floor_of_a_missing_stream_is_404(deploy) -> None:
    client = (await deploy()).client
    for method in ("get", "put", "delete"):
        r = await getattr(client, method)("/api/streams/nope/floor", json=FLOOR)
        assert r.status == 404 and "nope" in (await r.json())["error"]


async def test_floor_comes_back_after_a_restart_and_in_the_config(serve) -> None:
    client = await serve()
    r = await client.post("/api/streams", json={"name": "door", "url": "rtsp://127.0.0.1:9/x"})
    assert r.status == 201, await r.text()
    status, body = await put(client, "/api/streams/door/floor", FLOOR)
    assert status == 200, body
    # In the settings (its one record, as zones), not in the camera's saved options.
    saved = service(client).store.settings.stream_settings("floor")["door"]
    assert saved["width"] == 4
    assert "floor" not in service(client).store.streams.get("door")["options"]
    await client.close()
    client2 = await serve()
    got = await (await client2.get("/api/streams/door/floor")).json()
    assert got["floor"]["width"] == 4 and got["floor"]["depth"] == 6

    # A config-file stream with [streams.floor] is calibrated from the start.
    client3 = await serve(streams=[{"name": "cfg", "url": "webcam:0", "floor": FLOOR}],
                          database=str(service(client2).config.server.database) + ".2")
    svc3 = service(client3)
    assert svc3.integrations.floor("cfg") is not None


async def test_density_rule_raises_on_people_per_m2(serve) -> None:
    client = await serve()
    level = [255]
    await add_white(client, "hall", level)
    await put(client, "/api/streams/hall/floor", FLOOR)
    await put(client, "/api/streams/hall/zones", {"zones": [{"name": "near", "points": NEAR}]})
    r = await client.post("/api/alerts/rules", json={
        "name": "packed", "stream": "hall", "zone": "near", "metric": "density",
        "above": 0.5, "below": 0.2})
    assert r.status == 201, await r.text()
    assert (await r.json())["metric"] == "density"
    svc = service(client)
    # A white frame is one person per 8x8 cell: the near zone is well over 0.5 people/m2.
    cells = float(zone_mask([tuple(p) for p in NEAR], (W, H), SHAPE).sum())
    assert expected(NEAR, cells)[1] > 1.0
    await wait_until(lambda: svc.integrations.engine.is_active("packed"))
    rule = await (await client.get("/api/alerts/rules/packed")).json()
    assert rule["metric"] == "density" and rule["active"] is True
    # A level rule: refused without a zone, like the config file.
    r = await client.post("/api/alerts/rules", json={
        "name": "lvl", "stream": "hall", "metric": "level", "above": 4, "below": 3})
    assert r.status == 400 and "needs a zone" in (await r.json())["error"]
    # The metric survives a restart (kept beside the saved rule).
    await client.close()
    client2 = await serve()
    got = await (await client2.get("/api/alerts/rules/packed")).json()
    assert got["metric"] == "density"


async def test_gathering_map_per_m2_and_top_down(serve) -> None:
    client = await serve()
    await add_white(client, "hall")
    await add_white(client, "plain")
    await put(client, "/api/streams/hall/floor", FLOOR)
    svc = service(client)
    assert svc.gathering is not None
    await wait_until(lambda: svc.gathering.heatmap("hall").frames > 0)  # type: ignore[union-attr]
    cell = await (await client.get("/api/streams/hall/heatmap?format=json")).json()
    m2 = await (await client.get("/api/streams/hall/heatmap?format=json&unit=m2")).json()
    assert (cell["unit"], m2["unit"]) == ("people/cell", "people/m2")
    # Per m2 = per cell / the cell's floor area; off-floor cells are null.
    floor = Floor.from_rectangle(CORNERS, 4, 6, (W, H), head_height=0)
    areas = floor.cell_areas((W, H), (len(cell["grid"]), len(cell["grid"][0])))
    for r in (0, 10, 29):
        for c in (0, 20, 39):
            want = cell["grid"][r][c] / areas[r, c]
            assert m2["grid"][r][c] == pytest.approx(want, rel=1e-3, abs=1e-3)
    # A white frame is uniform per cell, so per m2 the near rows are the dense ones.
    assert m2["grid"][29][20] > 3 * m2["grid"][5][20]
    for query in ("unit=m2", "view=floor"):
        r = await client.get(f"/api/streams/hall/heatmap?{query}")
        assert r.status == 200 and r.content_type == "image/png"
        r = await client.get(f"/api/streams/plain/heatmap?{query}")
        assert r.status == 409 and "no floor calibration" in (await r.json())["error"]
    r = await client.get("/api/streams/hall/heatmap?unit=ft2")
    assert r.status == 400


def test_config_density_rule_needs_a_calibrated_stream(make_config) -> None:
    from crowdcount.streamer.config import ConfigError

    rule = {"name": "packed", "stream": "cam", "zone": "door", "metric": "density",
            "above": 2, "below": 1}
    zone = {"name": "door", "points": NEAR}
    with pytest.raises(ConfigError, match="needs a floor-calibrated stream"):
        make_config(streams=[{"name": "cam", "url": "webcam:0", "zones": [zone]}],
                    thresholds=[rule])
    config = make_config(streams=[{"name": "cam", "url": "webcam:0", "zones": [zone],
                                   "floor": FLOOR}], thresholds=[rule])
    assert config.thresholds[0].metric == "density"
    with pytest.raises(ConfigError, match="zone 'door': point"):  # a zone off the floor
        make_config(streams=[{"name": "cam", "url": "webcam:0",
                              "zones": [{"name": "door", "points": [[0, 0], [50, 0], [0, 50]]}],
                              "floor": {**FLOOR, "image_points": [[40, 250], [280, 250],
                                                                  [175, 60], [145, 60]]}}])
