"""The page, health, metrics and the heatmap's colour scale."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import web

from crowdcount.model.render import heat_legend
from crowdcount.streamer.metrics import CONTENT_TYPE
from crowdcount.streamer.routes.common import ApiError, service_of

WEB_DIR_KEY = web.AppKey("web_dir", Path)


async def health(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response({
        "status": "ok",
        "streams": len(svc.streams),
        "model": {"backend": svc.runtime.name, "path": svc.model_path},
        "uptime_s": round(svc.uptime_s, 3),
        # The server's clock: the page draws history on it, not on the browser's.
        "time": time.time(),
    })


async def metrics(request: web.Request) -> web.Response:
    body = service_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def heatmap(request: web.Request) -> web.Response:
    """The absolute colour scale every heatmap uses, for the page's legend."""
    return web.json_response(heat_legend())


async def index(request: web.Request) -> web.StreamResponse:
    page = request.app[WEB_DIR_KEY] / "index.html"
    if not page.is_file():
        raise ApiError(404, f"web page not installed ({page.name} missing)")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    """A file of the page's folder; 404 JSON for anything else (aiohttp's own static route
    answers a missing file with an empty ``application/octet-stream`` body). Paths that
    leave the folder, through ``..`` or a symlink, are missing files too."""
    rel = request.match_info["path"]
    base = request.app[WEB_DIR_KEY].resolve()
    try:
        target = (base / rel).resolve()
        found = target.is_relative_to(base) and target.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long
        found = False
    if not found:
        raise ApiError(404, f"not found: {request.method} /static/{rel[:100]}")
    return web.FileResponse(target)


def add_routes(app: web.Application, web_dir: Path) -> None:
    app[WEB_DIR_KEY] = web_dir
    app.router.add_get("/", index)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/heatmap", heatmap)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/static/{path:.*}", static_file)
