"""The page, health, metrics and the heatmap's colour scale."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from crowdcount.model.render import heat_legend
from crowdcount.streamer.metrics import CONTENT_TYPE
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import ApiError, service_of
from crowdcount.streamer.routes.models import Health, HeatLegend
from crowdcount.streamer.version import VERSION

WEB_DIR_KEY = web.AppKey("web_dir", Path)


@operation(Operation(
    "Health, version, model and the server's clock", "system",
    {200: Reply("the server is up", Health)},
))
async def health(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response({
        "status": "ok",
        "version": VERSION,
        "streams": len(svc.streams),
        "model": {"backend": svc.runtime.name, "path": svc.model_path},
        "uptime_s": round(svc.uptime_s, 3),
        # The server's clock: the page draws history on it, not on the browser's.
        "time": time.time(),
    })


@operation(Operation(
    "Prometheus metrics", "system",
    {200: Reply("the text exposition format", media={"text/plain": {"type": "string"}})},
    description="Per stream (and zone): people, frame rates, drops, reconnects, latencies, "
                "alerts; see the Integrations page of the docs.",
))
async def metrics(request: web.Request) -> web.Response:
    body = service_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@operation(Operation(
    "The heatmap colour scale", "system",
    {200: Reply("people per output cell, blue to red", HeatLegend)},
))
async def heatmap(request: web.Request) -> web.Response:
    """The absolute colour scale every heatmap uses, for the page's legend."""
    return web.json_response(heat_legend())


@operation(Operation(
    "The live page", "page",
    {200: Reply("the page", media={"text/html": {"type": "string"}}),
     303: Reply("with ?token=: sets the session cookie and redirects to /"),
     **dict([error(404, "the page is not installed")])},
))
async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[WEB_DIR_KEY] / "index.html"
    if not page.is_file():
        raise ApiError(404, f"web page not installed ({page.name} missing)")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def file_response(request: web.Request, folder: Path) -> web.FileResponse:
    """The file ``{path}`` of ``folder``; 404 JSON for anything else (aiohttp's own static
    route answers a missing file with an empty ``application/octet-stream`` body). Paths
    that leave the folder, through ``..`` or a symlink, are missing files too."""
    rel = request.match_info["path"]
    base = folder.resolve()
    try:
        target = (base / rel).resolve()
        found = target.is_relative_to(base) and target.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long
        found = False
    if not found:
        raise ApiError(404, f"not found: {request.method} {request.path[:100]}")
    return web.FileResponse(target)


@operation(Operation(
    "The page's scripts, styles and pictures", "page",
    {200: Reply("the file", media={"*/*": {}}), **dict([error(404)])},
    path_params={"path": "a file of the page"},
))
async def static_file(request: web.Request) -> web.StreamResponse:
    return file_response(request, request.app[WEB_DIR_KEY])


def add_routes(app: web.Application, web_dir: Path) -> None:
    app[WEB_DIR_KEY] = web_dir
    app.router.add_get("/", index)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/heatmap", heatmap)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/static/{path:.*}", static_file)
