"""The API describing itself: ``GET /api/openapi.json`` and the page ``GET /api/docs``.

The page is Swagger UI from the ``swagger-ui-py`` package's static files, served by this
server (``/api/docs/static/``), so it needs no CDN. Only the files are used (found with
``importlib.util.find_spec``, without importing the package, whose Python side is a set of
framework adapters this server does not need).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from aiohttp import web

from crowdcount.streamer.openapi import Operation, Reply, build_spec, error, operation
from crowdcount.streamer.routes.common import ApiError
from crowdcount.streamer.routes.system import WEB_DIR_KEY, file_response

SPEC_CACHE = web.AppKey("openapi_spec_cache", dict)


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's built files, or ``None`` when the package is missing."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@operation(Operation(
    "This document", "system",
    {200: Reply("OpenAPI 3.1", media={"application/json": {"type": "object"}})},
))
async def openapi_json(request: web.Request) -> web.Response:
    cache: dict[str, Any] = request.app[SPEC_CACHE]
    if "spec" not in cache:  # the routes are fixed once the app runs
        cache["spec"] = build_spec(request.app)
    return web.json_response(cache["spec"])


@operation(Operation(
    "This document, rendered (Swagger UI)", "system",
    {200: Reply("the page", media={"text/html": {"type": "string"}}),
     **dict([error(404, "Swagger UI is not installed (pip install swagger-ui-py)")])},
))
async def docs_page(request: web.Request) -> web.StreamResponse:
    page = request.app[WEB_DIR_KEY] / "api-docs.html"
    if swagger_ui_dir() is None or not page.is_file():
        raise ApiError(404, "the API page needs Swagger UI's files: pip install swagger-ui-py")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


@operation(Operation(
    "Swagger UI's files (for /api/docs)", "system",
    {200: Reply("the file", media={"*/*": {}}), **dict([error(404)])},
    path_params={"path": "a file of Swagger UI"},
))
async def swagger_file(request: web.Request) -> web.StreamResponse:
    folder = swagger_ui_dir()
    if folder is None:
        raise ApiError(404, "Swagger UI is not installed (pip install swagger-ui-py)")
    return file_response(request, folder)


def add_routes(app: web.Application) -> None:
    app[SPEC_CACHE] = {}
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/api/docs", docs_page)
    app.router.add_get("/api/docs/static/{path:.*}", swagger_file)
