"""A stream's floor calibration: people per square metre instead of per image cell.

``GET /api/streams/{id}/floor`` -> ``{"stream", "floor": {...} | null, "rms_error_px",
"max_error_px", "grid": [[[x, y], ...], ...], "levels": [five bounds], "zones": {name:
{"area_m2"}}}``: the calibration as it was put (or ``null``), how far the marked points are
from where the fitted homography puts them, a one-metre grid on the floor as frame polylines
(what the page draws over the live view), the level-of-service bands in force and each
zone's floor area (as of the last processed frame; ``null`` for a zone off the floor).

``PUT /api/streams/{id}/floor`` with a ``[streams.floor]`` table as JSON: ``{"image_points":
[[x, y], ...], "floor_points": [[x_m, y_m], ...], "frame_size": [w, h]}`` (or ``"width"`` and
``"depth"`` in metres instead of ``floor_points``, for four corners of a rectangle), and
optionally ``head_height``, ``max_range``, ``levels``. Checked exactly like the config file;
degenerate input (fewer than four points, three in a row, NaN, a rectangle of no size, a
horizon through the points) and a calibration that leaves one of the stream's zones off the
calibrated floor answer 400 with one line saying what to fix, and change nothing.

``DELETE /api/streams/{id}/floor`` makes the stream uncalibrated (saved too: a config file's
calibration stays off) and answers like ``GET``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from crowdcount.model.floor import FloorError
from crowdcount.streamer.config import FloorConfig
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    body_error,
    http_errors,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import Floor
from crowdcount.streamer.surface import StreamNotFound

_ID = {"id": "the stream's name"}


def floor_body(svc: Any, sid: str) -> dict[str, Any]:
    """The GET answer (the single box's and the cluster's services both have
    ``integrations.floor``)."""
    current = svc.integrations.floor(sid)
    if current is None:
        return {"stream": sid, "floor": None}
    floor = current.floor
    return {
        "stream": sid,
        "floor": current.config.model_dump(mode="json"),
        "rms_error_px": round(floor.rms_error_px, 3),
        "max_error_px": round(floor.max_error_px, 3),
        "grid": floor.grid(1.0),
        "levels": list(current.bands),
        "zones": {name: {"area_m2": area} for name, area in
                  current.zone_areas(svc.integrations.zones(sid)).items()},
    }


def parse_floor(data: dict[str, Any]) -> FloorConfig:
    """The body as a ``FloorConfig``, or ``ApiError(400)`` with one line."""
    try:
        return FloorConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "value_error" and not err["loc"]:  # the geometry's own message
            raise ApiError(400, str(err["ctx"]["error"])) from None
        raise ApiError(400, body_error(exc, FloorConfig)) from None


def _live(request: web.Request) -> str:
    svc = service_of(request)
    sid = request.match_info["id"]
    with http_errors({StreamNotFound: 404}):
        svc.get(sid)
    return sid


@operation(Operation("A stream's floor calibration", "floor",
                     {200: Reply("the calibration (floor null: none)", Floor),
                      **dict([error(404)])}, path_params=_ID))
async def get_floor(request: web.Request) -> web.Response:
    sid = _live(request)
    return web.json_response(floor_body(service_of(request), sid))


@operation(Operation(
    "Calibrate a stream's floor (saved)", "floor",
    {200: Reply("the calibration now in force", Floor),
     **dict([error(400, "a bad field, degenerate points, or a zone off the floor"),
             error(404), error(413), error(415)])},
    body=FloorConfig, path_params=_ID,
))
async def put_floor(request: web.Request) -> web.Response:
    sid = _live(request)
    svc = service_of(request)
    floor = parse_floor(await read_json_object(request))
    with http_errors({StreamNotFound: 404, FloorError: 400}):
        await svc.set_floor(sid, floor)
    return web.json_response(floor_body(svc, sid))


@operation(Operation("Remove a stream's floor calibration", "floor",
                     {200: Reply("uncalibrated (floor null)", Floor), **dict([error(404)])},
                     path_params=_ID))
async def delete_floor(request: web.Request) -> web.Response:
    sid = _live(request)
    svc = service_of(request)
    with http_errors({StreamNotFound: 404}):
        await svc.set_floor(sid, None)
    return web.json_response(floor_body(svc, sid))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/streams/{id}/floor", get_floor)
    r.add_put("/api/streams/{id}/floor", put_floor)
    r.add_delete("/api/streams/{id}/floor", delete_floor)
