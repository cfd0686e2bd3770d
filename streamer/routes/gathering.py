"""``GET /api/streams/{id}/heatmap?since=&until=&format=png|json``: where people gathered.

PNG (the default): the stream's reference frame (its newest picture) with the mean density
of the range drawn over it in the Jet colours, red at the hottest cell. JSON: the raw grid
(``streamer.gathering.Heatmap.to_dict``): mean people per cell, rows top to bottom, with the
frames and buckets behind it; ``grid`` is ``null`` when nothing was seen in the range.
Like the counts history, it answers for removed streams that left data; 404 otherwise.
"""

from __future__ import annotations

import asyncio

import cv2
from aiohttp import web

from crowdcount.streamer.gathering import render_overlay
from crowdcount.streamer.routes.common import ApiError, query_range, service_of


async def heatmap(request: web.Request) -> web.Response:
    svc = service_of(request)
    sid = request.match_info["id"]
    since, until = query_range(request)
    fmt = request.query.get("format", "png")
    if fmt not in ("png", "json"):
        raise ApiError(400, f"parameter 'format' must be png or json, got {fmt[:20]!r}")
    gathering = svc.gathering
    if sid not in svc.streams and not await asyncio.to_thread(gathering.has_data, sid):
        raise ApiError(404, f"no stream {sid!r} and no gathering data for it")
    result = await asyncio.to_thread(gathering.heatmap, sid, since, until)
    if fmt == "json":
        return web.json_response({**result.to_dict(), "since": since, "until": until,
                                  "bucket_seconds": gathering.bucket_seconds})

    def png() -> bytes:
        image = render_overlay(gathering.reference(sid), result)
        ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding failed")
        return data.tobytes()

    body = await asyncio.to_thread(png)
    headers = {"Cache-Control": "no-cache", "X-Frames": str(result.frames)}
    if result.grid is not None:
        headers["X-Peak-Cell"] = f"{float(result.grid.max()):.4f}"
    return web.Response(body=body, content_type="image/png", headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/streams/{id}/heatmap", heatmap)
