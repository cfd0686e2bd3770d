"""``/api/streams``: the stream list, counts history, CSV export and live feeds.

History outlives streams (see ``streamer.store``): ``/counts`` and ``/counts.csv`` answer
for a live stream or for any id that has recorded counts (a removed camera's report still
works); 404 only when neither. Live feeds need a live stream.
"""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

from aiohttp import web

from crowdcount.streamer.config import StreamConfig
from crowdcount.streamer.feed import sse_response
from crowdcount.streamer.routes.common import (
    ApiError,
    field_number,
    field_str,
    query_flag,
    query_float,
    query_int,
    read_json_object,
    service_of,
)
from crowdcount.streamer.rtc import STREAM_ID_RE
from crowdcount.streamer.service import StreamConflict, StreamNotFound
from crowdcount.streamer.urls import validate_api_url

MAX_LIMIT = 100_000
EXPORT_CHUNK_ROWS = 5000


async def list_streams(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response({"streams": [e.to_dict() for e in svc.streams.values()]})


#: Per-stream options the API accepts: (lowest, highest, integer only).
OPTION_LIMITS: dict[str, tuple[float, float, bool]] = {
    "fps_limit": (0.1, 240, False),
    "max_side": (32, 8192, True),
    "stall_timeout": (0.1, 3600, False),
    "max_retries": (0, 1_000_000, True),
}


async def add_stream(request: web.Request) -> web.Response:
    """Body ``{"name", "url", "fps_limit"?, "max_side"?, "stall_timeout"?, "max_retries"?}``;
    rtsp/rtsps only."""
    svc = service_of(request)
    data = await read_json_object(request, {"name", "url", *OPTION_LIMITS})
    name = field_str(data, "name")
    assert name is not None
    if STREAM_ID_RE.fullmatch(name) is None:
        raise ApiError(400, f"field 'name' must be 1-64 letters, digits, '_', '.' or '-' "
                            f"starting with a letter or digit, got {name[:70]!r}")
    raw_url = field_str(data, "url")
    try:
        url = validate_api_url(raw_url)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    options = {}
    for key, (lo, hi, integer) in OPTION_LIMITS.items():
        value = field_number(data, key, lo=lo, hi=hi, integer=integer)
        if value is not None:
            options[key] = value if integer else float(value)
    stream = StreamConfig.model_validate({"name": name, "url": url, **options})
    try:
        entry = await svc.add_stream(stream, origin="api", persist=True)
    except StreamConflict as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(entry.to_dict(), status=201,
                             headers={"Location": f"/api/streams/{entry.id}"})


async def edit_stream(request: web.Request) -> web.Response:
    """``PATCH`` with ``{"url"?, "fps_limit"?, "max_side"?, "stall_timeout"?,
    "max_retries"?}``: the fields given replace the stream's (``null`` removes an option);
    the stream restarts with them. API streams only (409 for the others)."""
    svc = service_of(request)
    try:
        entry = svc.get(request.match_info["id"])
    except StreamNotFound as exc:
        raise ApiError(404, str(exc)) from None
    data = await read_json_object(request, {"url", *OPTION_LIMITS})
    url = entry.url
    if data.get("url") is not None:
        try:
            url = validate_api_url(field_str(data, "url"))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
    options = {k: v for k, v in entry.options.items() if k in OPTION_LIMITS}
    for key, (lo, hi, integer) in OPTION_LIMITS.items():
        if key not in data:
            continue
        value = field_number(data, key, lo=lo, hi=hi, integer=integer)
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value if integer else float(value)
    stream = StreamConfig.model_validate({"name": entry.id, "url": url, **options})
    try:
        entry = await svc.replace_stream(stream)
    except StreamNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except StreamConflict as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(entry.to_dict())


async def get_stream(request: web.Request) -> web.Response:
    try:
        entry = service_of(request).get(request.match_info["id"])
    except StreamNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return web.json_response(entry.to_dict())


async def delete_stream(request: web.Request) -> web.Response:
    try:
        await service_of(request).remove_stream(request.match_info["id"])
    except StreamNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except StreamConflict as exc:
        raise ApiError(409, str(exc)) from None
    return web.Response(status=204)


async def _known(request: web.Request) -> str:
    """The stream id if it is live or has history; 404 otherwise."""
    svc = service_of(request)
    sid = request.match_info["id"]
    if sid not in svc.streams and not await svc.has_history(sid):
        raise ApiError(404, f"no stream {sid!r} and no recorded counts for it")
    return sid


def _range(request: web.Request) -> tuple[float | None, float | None]:
    since, until = query_float(request, "since"), query_float(request, "until")
    if since is not None and until is not None and since >= until:
        raise ApiError(400, f"parameter 'since' ({since:g}) must be before 'until' ({until:g})")
    return since, until


async def counts(request: web.Request) -> web.Response:
    """``?since=&until=`` (unix seconds, [since, until)), ``step`` (seconds per bucket),
    ``limit`` (newest rows kept), ``zones=1`` (per-zone counts: raw, or with a step their
    mean, ``zones_min`` and ``zones_max``). Whole-second steps read the rollups."""
    since, until = _range(request)
    step = query_float(request, "step", positive=True)
    limit = query_int(request, "limit", 10_000, 1, MAX_LIMIT)
    with_zones = query_flag(request, "zones")
    sid = await _known(request)
    svc = service_of(request)
    rows = await asyncio.to_thread(
        svc.store.history.counts, sid, since, until, step, limit, with_zones=with_zones
    )
    return web.json_response({"stream": sid, "counts": rows})


async def counts_csv(request: web.Request) -> web.StreamResponse:
    """The raw rows as CSV (``t,count,smoothed``; floats written with ``repr`` so they read
    back exactly), streamed in chunks of ``EXPORT_CHUNK_ROWS``: memory stays flat however
    long the history, and each chunk is its own short query, so no read stays open while a
    slow client drains the response. With ``?step=``: the aggregated buckets of that range
    instead (what the page's history chart shows), one column per zone's mean."""
    since, until = _range(request)
    step = query_float(request, "step", positive=True)
    sid = await _known(request)
    history = service_of(request).store.history
    if step is not None:
        return await _aggregated_csv(sid, history, since, until, step)
    response = web.StreamResponse(
        headers={"Content-Disposition": f'attachment; filename="{sid}-counts.csv"'}
    )
    response.content_type = "text/csv"
    response.charset = "utf-8"
    await response.prepare(request)
    await response.write(b"t,count,smoothed\n")
    after: float | None = None
    while True:
        rows = await asyncio.to_thread(
            history.rows, sid, since, until, after=after, limit=EXPORT_CHUNK_ROWS
        )
        if rows:
            await response.write("".join(f"{t!r},{c!r},{s!r}\n" for t, c, s in rows).encode())
        if len(rows) < EXPORT_CHUNK_ROWS:
            break
        after = rows[-1][0]
    await response.write_eof()
    return response


async def _aggregated_csv(sid: str, history: Any, since: float | None, until: float | None,
                          step: float) -> web.Response:
    rows = await asyncio.to_thread(history.counts, sid, since, until, step, MAX_LIMIT,
                                   with_zones=True)
    zones = sorted({z for r in rows for z in r.get("zones", {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["t", "count", "min", "max", "smoothed", "n", *zones])
    for r in rows:
        writer.writerow([repr(r["t"]), repr(r["count"]), repr(r["min"]), repr(r["max"]),
                         repr(r["smoothed"]), r["n"],
                         *(repr(r["zones"][z]) if z in r.get("zones", {}) else "" for z in zones)])
    name = f"{sid}-counts-{step:g}s.csv"
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


MAX_FEED_STREAMS = 64


async def feed_all(request: web.Request) -> web.StreamResponse:
    """``?streams=a,b``: only those streams' counts (a page sends the ones it shows), and
    every alert; without it, every stream's."""
    only = None
    if "streams" in request.query:
        names = [n for n in request.query["streams"].split(",") if n]
        if len(names) > MAX_FEED_STREAMS:
            raise ApiError(400, f"parameter 'streams' names {len(names)} streams; "
                                f"at most {MAX_FEED_STREAMS}")
        bad = [n for n in names if STREAM_ID_RE.fullmatch(n) is None]
        if bad:
            raise ApiError(400, f"parameter 'streams': invalid stream id {bad[0][:70]!r}")
        only = frozenset(names)
    return await sse_response(request, service_of(request).feed, None, only=only)


async def feed_stream(request: web.Request) -> web.StreamResponse:
    svc = service_of(request)
    sid = request.match_info["id"]
    if sid not in svc.streams:
        raise ApiError(404, f"no stream {sid!r}")
    return await sse_response(request, svc.feed, sid)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/streams", list_streams)
    r.add_post("/api/streams", add_stream)
    r.add_get("/api/streams/{id}", get_stream)
    r.add_delete("/api/streams/{id}", delete_stream)
    r.add_patch("/api/streams/{id}", edit_stream)
    r.add_get("/api/streams/{id}/counts", counts)
    r.add_get("/api/streams/{id}/counts.csv", counts_csv)
    r.add_get("/api/streams/{id}/feed", feed_stream)
    r.add_get("/api/feed", feed_all)
