"""``GET /api/streams/{id}/heatmap?since=&until=&format=png|json``: where people gathered.

PNG (the default): the stream's reference frame (its newest picture) with the mean density
of the range drawn over it in the Jet colours, red at the hottest cell. JSON: the raw grid
(``streamer.gathering.Heatmap.to_dict``): mean people per cell, rows top to bottom, with the
frames and buckets behind it; ``grid`` is ``null`` when nothing was seen in the range.
Like the counts history, it answers for removed streams that left data; 404 otherwise.

``unit=cell`` (the default) maps people per grid cell, which perspective distorts (far
cells cover more floor, so the far end looks crowded); ``unit=m2`` on a floor-calibrated
stream maps people per square metre of floor instead (each cell's people over its floor
area; cells beyond the calibrated floor are left out: ``null`` in JSON, untinted in PNG),
and ``view=floor`` draws that density top-down on the floor plane (north = the floor's +y),
with the people kept (the warped map holds the same people as the calibrated cells).
Every PNG says in its corner which it shows. Both need a calibration: 409 otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import cv2
import numpy as np
from aiohttp import web
from pydantic import Field

from crowdcount.model.floor import Floor
from crowdcount.model.render import FLOOR_HEAT_UNIT, HEAT_UNIT, draw_label
from crowdcount.streamer.gathering import GRID_H, GRID_W, render_floor_view, render_overlay
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import ApiError, RangeQuery, parse_query, service_of
from crowdcount.streamer.routes.models import HeatmapGrid


class HeatmapQuery(RangeQuery):
    format: Literal["png", "json"] = Field(
        "png", description="png: the picture with the heat over it; json: the raw grid")
    unit: Literal["cell", "m2"] = Field(
        "cell", description="cell: people per grid cell; m2: people per m² of floor (needs "
                            "the stream's floor calibration)")
    view: Literal["camera", "floor"] = Field(
        "camera", description="camera: over the camera's picture; floor: a top-down view of "
                              "the calibrated floor")


HEATMAP = Operation(
    "Where people gathered over a range", "history",
    {200: Reply("the picture (X-Frames: frames averaged; X-Peak-Cell) or the grid",
                HeatmapGrid, media={"image/png": {"type": "string"}}),
     **dict([error(400), error(404, "no such stream and no gathering data for it"),
             error(409, "unit=m2 or view=floor on a stream without a floor calibration")])},
    query=HeatmapQuery, path_params={"id": "the stream's name"},
)


@operation(HEATMAP)
async def heatmap(request: web.Request) -> web.Response:
    svc = service_of(request)
    sid = request.match_info["id"]
    query = parse_query(HeatmapQuery, request)
    since, until, fmt, unit, view = (query.since, query.until, query.format, query.unit,
                                     query.view)
    floor: Floor | None = None
    if unit == "m2" or view == "floor":
        current = svc.integrations.floor(sid)
        if current is None:
            raise ApiError(409, f"stream {sid!r} has no floor calibration (PUT "
                                f"/api/streams/{sid}/floor); use unit=cell")
        floor = current.floor
    gathering = svc.gathering
    if sid not in svc.streams and not await asyncio.to_thread(gathering.has_data, sid):
        raise ApiError(404, f"no stream {sid!r} and no gathering data for it")
    result = await asyncio.to_thread(gathering.heatmap, sid, since, until)
    size = floor.frame_size if floor is not None else (GRID_W, GRID_H)
    if fmt == "json":
        body: dict[str, Any] = {**result.to_dict(), "since": since, "until": until,
                                "bucket_seconds": gathering.bucket_seconds,
                                "unit": "people/m2" if floor is not None else "people/cell"}
        if floor is not None and result.grid is not None:
            per_m2 = floor.per_m2(result.grid, size)
            body["grid"] = [[None if np.isnan(v) else round(float(v), 4) for v in row]
                            for row in per_m2]
            body["peak_cell"] = round(float(np.nanmax(per_m2)), 4)
        return web.json_response(body)

    def png() -> bytes:
        reference = gathering.reference(sid)
        if view == "floor":
            assert floor is not None
            image = render_floor_view(floor, result, size)
        elif floor is not None:
            image = render_overlay(reference, result, floor=floor)
        else:
            image = render_overlay(reference, result)
        unit_label = FLOOR_HEAT_UNIT if floor is not None else HEAT_UNIT
        image = draw_label(image, [unit_label])
        ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return data.tobytes()

    data = await asyncio.to_thread(png)
    headers = {"Cache-Control": "no-cache", "X-Frames": str(result.frames)}
    if result.grid is not None:
        headers["X-Peak-Cell"] = f"{float(result.grid.max()):.4f}"
    return web.Response(body=data, content_type="image/png", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/streams/{id}/heatmap", heatmap)
