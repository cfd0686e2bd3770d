"""``/api/streams/{id}/calibration``: fit the model to a stream's camera from frames the
user marks on the page (``streamer.calibration`` has the why).

* ``POST .../calibration/frames`` ``{}`` or ``{"recent": k}`` captures one of the stream's
  last ``limits.RECENT_FRAMES`` counted frames (0: the newest) at the camera's size, with
  the model's count and density, and saves it: 201 with the frame. 409 when the stream has
  produced no frame yet, or already keeps ``limits.MAX_MARKED_FRAMES_PER_STREAM``.
* ``GET .../calibration/frames``: the frames, oldest first; ``GET .../frames/{fid}/image``
  the JPEG, ``.../density`` the model's density as a faint transparent PNG of the same
  size; ``PUT .../frames/{fid}/marks`` ``{"points": [[x, y], ...]}`` (``[]``: nobody) or
  ``{"count": n}``; ``DELETE .../frames/{fid}``.
* ``POST .../calibration`` ``{}`` or ``{"time_budget": s}`` starts a calibration from the
  marked frames (202; 409 when one runs or fewer than 5 are marked); ``GET`` its state,
  progress and result, and the calibration in force; ``DELETE`` goes back to the shared
  model (404 when there is no calibration).

Every bound is ``streamer.limits``'; bodies go through ``decode_json`` (``read_json_object``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel

from crowdcount.streamer.calibration import (
    CalibrationDesk,
    FrameNotFound,
    MarksError,
    NoCalibration,
)
from crowdcount.streamer.limits import (
    MAX_CALIBRATION_BUDGET_S,
    MAX_MARKS_PER_FRAME,
    MAX_THUMBNAIL_WIDTH,
    MIN_CALIBRATION_BUDGET_S,
    RECENT_FRAMES,
)
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    http_errors,
    parse_body,
    parse_query,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import CalibrationStatus, MarkedFrame, MarkedFrames
from crowdcount.streamer.rtc import PeerLimitReached
from crowdcount.streamer.surface import ServiceSurface, StreamConflict, StreamNotFound
from crowdcount.training.calibrate import DEFAULT_TIME_BUDGET

_FRAME_ID = re.compile(r"[0-9a-f]{16}")
_ID = {"id": "the stream's name"}
_FRAME = {**_ID, "fid": "the marked frame's id"}
_ERRORS: dict[type[Exception], int] = {
    StreamNotFound: 404, FrameNotFound: 404, NoCalibration: 404, MarksError: 400,
    StreamConflict: 409, PeerLimitReached: 503}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _whole(value: Any) -> Any:
    """``3.0`` is the integer 3 in JSON (and in JSON Schema): taken as such, where strict
    mode would refuse a float; ``3.5`` still is refused."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


class CaptureBody(_Body):
    """Which recent frame to capture."""

    recent: Annotated[int, Field(ge=0, le=RECENT_FRAMES - 1), BeforeValidator(_whole)] = Field(
        0, description="0: the newest counted frame; 1 the one before, ...")


_Coordinate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_Point = Annotated[list[_Coordinate], Field(min_length=2, max_length=2)]


class PointMarks(_Body):
    """Every head as ``[x, y]`` pixels of the frame (inside it); ``[]``: nobody there."""

    points: Annotated[list[_Point], Field(max_length=MAX_MARKS_PER_FRAME)]


class CountMarks(_Body):
    """The frame's true count, typed (when marking every head is too slow)."""

    count: Annotated[float, Field(ge=0, le=MAX_MARKS_PER_FRAME, allow_inf_nan=False)]


class MarksBody(RootModel[PointMarks | CountMarks]):
    """Points or a count, not both."""


class CalibrateBody(_Body):
    time_budget: Annotated[float, Field(ge=MIN_CALIBRATION_BUDGET_S,
                                        le=MAX_CALIBRATION_BUDGET_S, allow_inf_nan=False)] = (
        Field(DEFAULT_TIME_BUDGET, description="at most this many seconds of "
                                                 "loading, features and training; its steps "
                                                 "are fixed and a slower machine stops short "
                                                 "of them"))


def _stream(request: web.Request) -> tuple[ServiceSurface, str]:
    """The service and the live stream's id (404 otherwise)."""
    svc = service_of(request)
    sid = request.match_info["id"]
    with http_errors({StreamNotFound: 404}):
        svc.get(sid)
    return svc, sid


def _frame_id(request: web.Request, sid: str) -> str:
    fid = request.match_info["fid"]
    if _FRAME_ID.fullmatch(fid) is None:
        raise ApiError(404, f"stream {sid!r} has no marked frame {fid[:40]!r}")
    return fid


async def _object(request: web.Request) -> dict[str, Any]:
    """The JSON object body, or ``{}`` when there is none (``POST`` without a body)."""
    if not request.body_exists:
        return {}
    return await read_json_object(request)


@operation(Operation(
    "Capture a recent frame of the stream for calibration", "calibration",
    {201: Reply("the frame, saved unmarked", MarkedFrame),
     **dict([error(400), error(404), error(409, "no frame yet, or the stream keeps the most "
                                                "marked frames it may"),
             error(413), error(415), error(503, "the camera's shard is unavailable")])},
    body=CaptureBody, path_params=_ID))
async def capture_frame(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    body = parse_body(CaptureBody, await _object(request))
    with http_errors(_ERRORS):
        frame = await svc.calibration.capture(sid, body.recent)
    return web.json_response(frame, status=201)


@operation(Operation("The stream's marked frames", "calibration",
                     {200: Reply("oldest first", MarkedFrames), **dict([error(404)])},
                     path_params=_ID))
async def list_frames(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    return web.json_response({"frames": await svc.calibration.frames(sid)})


class ImageQuery(BaseModel):
    width: int | None = Field(
        None, ge=16, le=MAX_THUMBNAIL_WIDTH,
        description="a thumbnail this many pixels wide (the height follows; never wider "
                    "than the frame)")


@operation(Operation(
    "A marked frame's picture", "calibration",
    {200: Reply("the frame at the camera's size, or as wide as asked",
                media={"image/jpeg": {"type": "string"}}),
     **dict([error(400, "a width that is not a whole number from 16 to "
                        f"{MAX_THUMBNAIL_WIDTH}"), error(404)])},
    query=ImageQuery, path_params=_FRAME))
async def frame_image(request: web.Request) -> web.Response:
    width = parse_query(ImageQuery, request).width
    return await _frame_picture(
        request, lambda desk, sid, fid: desk.image(sid, fid, width), "image/jpeg")


@operation(Operation(
    "The model's density on a marked frame", "calibration",
    {200: Reply("a transparent PNG of the frame's size, coloured and opaque where the model "
                "put people", media={"image/png": {"type": "string"}}),
     **dict([error(404)])}, path_params=_FRAME))
async def frame_density(request: web.Request) -> web.Response:
    return await _frame_picture(request, CalibrationDesk.density, "image/png")


async def _frame_picture(
    request: web.Request,
    read: Callable[[CalibrationDesk, str, str], Awaitable[bytes]],
    content_type: str,
) -> web.Response:
    """A marked frame's picture or its density overlay: both are stored when the frame is
    captured and never change, so the browser may keep them for an hour."""
    svc, sid = _stream(request)
    fid = _frame_id(request, sid)
    with http_errors(_ERRORS):
        body = await read(svc.calibration, sid, fid)
    return web.Response(body=body, content_type=content_type,
                        headers={"Cache-Control": "private, max-age=3600"})


def parse_marks(data: dict[str, Any]) -> dict[str, Any]:
    """Points or a count (400 naming the problem); whether they fit the frame is the
    desk's to check."""
    if set(data) == {"points"}:
        return parse_body(PointMarks, data).model_dump()
    if set(data) == {"count"}:
        return parse_body(CountMarks, data).model_dump()
    given = ", ".join(repr(k[:40]) for k in sorted(data)) or "none"
    raise ApiError(400, f"give either 'points' or 'count' (got {given})")


@operation(Operation(
    "Mark a frame: its heads, or its count", "calibration",
    {200: Reply("the frame with its marks", MarkedFrame),
     **dict([error(400, "a point outside the frame, not a number, too many, or the wrong "
                        "shape"), error(404), error(413), error(415)])},
    body=MarksBody, path_params=_FRAME))
async def put_marks(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    fid = _frame_id(request, sid)
    marks = parse_marks(await read_json_object(request))
    with http_errors(_ERRORS):
        frame = await svc.calibration.set_marks(sid, fid, marks)
    return web.json_response(frame)


@operation(Operation("Delete a marked frame", "calibration",
                     {204: Reply("deleted"), **dict([error(404)])}, path_params=_FRAME))
async def delete_frame(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    fid = _frame_id(request, sid)
    with http_errors(_ERRORS):
        await svc.calibration.delete_frame(sid, fid)
    return web.Response(status=204)


@operation(Operation(
    "Calibrate the stream from its marked frames", "calibration",
    {202: Reply("started: poll GET for its progress", CalibrationStatus),
     **dict([error(400), error(404), error(409, "one is running, or fewer than 5 frames are "
                                                "marked"), error(413), error(415)])},
    body=CalibrateBody, path_params=_ID,
    description="Runs in a subprocess at the lowest priority, so the other streams keep "
                "counting. The stream switches to its own model when the guard keeps it "
                "(state done), and keeps its model when not (state refused)."))
async def start_calibration(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    body = parse_body(CalibrateBody, await _object(request))
    with http_errors(_ERRORS):
        status = await svc.calibration.start(sid, body.time_budget)
    return web.json_response(status, status=202)


@operation(Operation("The stream's calibration: the last run and the one in force",
                     "calibration",
                     {200: Reply("state idle: never calibrated here", CalibrationStatus),
                      **dict([error(404)])}, path_params=_ID))
async def calibration_status(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    return web.json_response(await svc.calibration.status(sid))


@operation(Operation("Revert the stream to the shared model", "calibration",
                     {200: Reply("the status, with model null", CalibrationStatus),
                      **dict([error(404, "no such stream, or it has no calibration")])},
                     path_params=_ID))
async def revert_calibration(request: web.Request) -> web.Response:
    svc, sid = _stream(request)
    with http_errors(_ERRORS):
        status = await svc.calibration.revert(sid)
    return web.json_response(status)


def add_routes(app: web.Application) -> None:
    r = app.router
    base = "/api/streams/{id}/calibration"
    r.add_post(f"{base}/frames", capture_frame)
    r.add_get(f"{base}/frames", list_frames)
    r.add_get(f"{base}/frames/{{fid}}/image", frame_image)
    r.add_get(f"{base}/frames/{{fid}}/density", frame_density)
    r.add_put(f"{base}/frames/{{fid}}/marks", put_marks)
    r.add_delete(f"{base}/frames/{{fid}}", delete_frame)
    r.add_post(base, start_calibration)
    r.add_get(base, calibration_status)
    r.add_delete(base, revert_calibration)
