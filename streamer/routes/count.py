"""``POST /api/count``: count the people in one uploaded image.

The image comes as the multipart field ``image`` (an HTML form, ``curl -F image=@x.jpg``)
or as the raw body (``curl --data-binary @x.jpg``). Checks run cheapest first: the
client's rate, the declared size, the size while reading, then the image header (pixel
count, before decoding), so an abusive request costs as little as possible.
"""

from __future__ import annotations

import math
from typing import Literal

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage
from pydantic import BaseModel, Field

from crowdcount.model.imageio import ImageError
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.ratelimit import RateLimiter
from crowdcount.streamer.routes.common import ApiError, parse_query, read_body, service_of
from crowdcount.streamer.routes.models import UploadCount
from crowdcount.streamer.upload import ModelUnavailable, UploadBusy

LIMITER = web.AppKey("upload_limiter", RateLimiter)


async def _read_image(request: web.Request, limit: int) -> tuple[bytes, str]:
    if request.content_type != "multipart/form-data":
        return await read_body(request, limit, "image"), "upload"
    declared = request.content_length
    if declared is not None and declared > limit + 64 * 1024:  # allow the multipart framing
        raise ApiError(413, f"upload is {declared} bytes; the limit is {limit} bytes")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "image":
                continue
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise ApiError(413, f"image is larger than the limit of {limit} bytes")
            return bytes(data), part.filename or "image"
    # aiohttp's errors for broken multipart: ValueError/AssertionError for the framing,
    # BadHttpMessage for a part's headers (a control character in a field name, found by
    # Schemathesis; it was a 500)
    except (ValueError, AssertionError, BadHttpMessage) as exc:
        why = "a part's headers are malformed" if isinstance(exc, BadHttpMessage) else exc
        raise ApiError(400, f"malformed multipart body: {str(why)[:200]}") from None
    raise ApiError(400, "multipart body has no 'image' field")


class CountQuery(BaseModel):
    overlay: bool = Field(False, description="add the heatmap picture (base64 PNG)")
    format: Literal["json", "png"] = Field(
        "json", description="png: answer with the overlay picture, the count in X-Count")


_IMAGE = {"type": "string", "contentMediaType": "application/octet-stream"}


@operation(Operation(
    "Count the people in one image", "uploads",
    {200: Reply("the count (X-Count holds it with format=png)", UploadCount,
                media={"image/png": {"type": "string"}}),
     **dict([error(400, "not an image, or a bad parameter"), error(413), error(429),
             error(503, "the upload model is busy or unavailable")])},
    query=CountQuery,
    raw_body={"application/octet-stream": _IMAGE, "image/jpeg": _IMAGE, "image/png": _IMAGE,
              "multipart/form-data": {"type": "object", "required": ["image"],
                                      "properties": {"image": _IMAGE}}},
    description="The image is the raw body or the multipart field `image`; at most "
                "server.max_upload_bytes, server.upload_rate_per_minute per client.",
))
async def count_image(request: web.Request) -> web.StreamResponse:
    """``?overlay=1``: add ``overlay_png`` (base64) to the JSON; ``?format=png``: answer
    with the overlay PNG itself and the count in the ``X-Count`` header."""
    svc = service_of(request)
    query = parse_query(CountQuery, request)
    fmt = query.format
    overlay = query.overlay or fmt == "png"
    wait = request.app[LIMITER].check(request.remote or "unknown")
    if wait:
        per_min = svc.config.server.upload_rate_per_minute
        raise ApiError(429, f"upload rate limit of {per_min} per minute reached; retry in "
                            f"{math.ceil(wait)} s", {"Retry-After": str(math.ceil(wait))})
    data, name = await _read_image(request, svc.config.server.max_upload_bytes)
    try:
        result = await svc.uploads.count(data, name, overlay=overlay)
    except ImageError as exc:
        raise ApiError(400, str(exc)) from None
    except UploadBusy as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
    except ModelUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    if fmt == "png":
        assert result.overlay_png is not None
        return web.Response(body=result.overlay_png, content_type="image/png",
                            headers={"X-Count": f"{result.count:.3f}"})
    return web.json_response(result.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/count", count_image)
