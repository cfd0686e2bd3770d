"""``/api/streams``: the stream list, counts history, CSV export and live feeds.

History outlives streams (see ``streamer.store``): ``/counts`` and ``/counts.csv`` answer
for a live stream or for any id that has recorded counts (a removed camera's report still
works); 404 only when neither. Live feeds need a live stream.

Both history routes default to the last ``DEFAULT_RANGE_S`` seconds (before ``until``, or
now) when ``since`` is not given: at ~2.6 million rows a day per 30 fps stream, "everything"
is never a sensible default. The JSON route is also bounded by ``limit`` rows (the newest
are kept); the CSV route streams any range asked for in constant memory.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from typing import Any

from aiohttp import web

from crowdcount.streamer.config import (
    STREAM_NAME_RE,
    StreamConfig,
    StreamName,
    StreamSettings,
)
from crowdcount.streamer.feed import sse_response
from crowdcount.streamer.routes.common import (
    ApiError,
    http_errors,
    parse_body,
    query_flag,
    query_float,
    query_int,
    query_range,
    read_json_object,
    service_of,
)
from crowdcount.streamer.service import StreamConflict, StreamNotFound
from crowdcount.streamer.urls import validate_api_url

MAX_LIMIT = 100_000
DEFAULT_RANGE_S = 86_400.0
EXPORT_CHUNK_ROWS = 5000


async def list_streams(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response({"streams": [e.to_dict() for e in svc.streams.values()]})


class AddStreamBody(StreamSettings):
    """``POST /api/streams``: a name and an rtsp/rtsps url (checked by ``validate_api_url``)
    plus the same per-stream settings, with the same bounds, as the config file."""

    name: StreamName
    url: str


async def add_stream(request: web.Request) -> web.Response:
    """Body ``{"name", "url", "fps_limit"?, "max_side"?, "stall_timeout"?, "max_retries"?}``;
    rtsp/rtsps only."""
    svc = service_of(request)
    body = parse_body(AddStreamBody, await read_json_object(request))
    with http_errors({ValueError: 400}):
        url = validate_api_url(body.url)
    settings = body.model_dump(exclude_unset=True, exclude={"name", "url"})
    stream = StreamConfig.model_validate({"name": body.name, "url": url, **settings})
    with http_errors({StreamConflict: 409}):
        entry = await svc.add_stream(stream, origin="api", persist=True)
    return web.json_response(entry.to_dict(), status=201,
                             headers={"Location": f"/api/streams/{entry.id}"})


#: What ``PATCH /api/streams/{id}`` may change (a stream's name is its id: never).
EDITABLE = frozenset({"url", *StreamSettings.model_fields})


async def edit_stream(request: web.Request) -> web.Response:
    """``PATCH`` with ``{"url"?, "fps_limit"?, "max_side"?, "stall_timeout"?,
    "max_retries"?}``: the fields given replace the stream's (``null`` removes an option);
    the stream restarts with them (``{"url": null}``: 400). API streams only (409 for the
    others)."""
    svc = service_of(request)
    with http_errors({StreamNotFound: 404}):
        entry = svc.get(request.match_info["id"])
    data = await read_json_object(request, set(EDITABLE))
    required = [k for k, v in data.items()
                if v is None and AddStreamBody.model_fields[k].is_required()]
    if required:  # a stream cannot be without its url: null is a mistake, not "unchanged"
        raise ApiError(400, f"field {required[0]!r} is required and cannot be null")
    # ``null`` removes an option (back to its default); the merged settings are then checked
    # by the same request model as a new stream's, so both accept exactly the same values.
    kept = {k: v for k, v in entry.options.items() if k in EDITABLE}
    merged = {**kept, **{k: v for k, v in data.items() if v is not None}}
    for key in [k for k, v in data.items() if v is None]:
        merged.pop(key, None)
    body = parse_body(AddStreamBody, {"name": entry.id, "url": entry.url, **merged})
    url = body.url
    if data.get("url") is not None:
        with http_errors({ValueError: 400}):
            url = validate_api_url(url)
    options = body.model_dump(exclude_unset=True, exclude={"name", "url"})
    stream = StreamConfig.model_validate({"name": entry.id, "url": url, **options})
    with http_errors({StreamNotFound: 404, StreamConflict: 409}):
        entry = await svc.replace_stream(stream)
    return web.json_response(entry.to_dict())


async def get_stream(request: web.Request) -> web.Response:
    with http_errors({StreamNotFound: 404}):
        entry = service_of(request).get(request.match_info["id"])
    return web.json_response(entry.to_dict())


async def delete_stream(request: web.Request) -> web.Response:
    with http_errors({StreamNotFound: 404, StreamConflict: 409}):
        await service_of(request).remove_stream(request.match_info["id"])
    return web.Response(status=204)


async def _known(request: web.Request) -> str:
    """The stream id if it is live or has history; 404 otherwise."""
    svc = service_of(request)
    sid = request.match_info["id"]
    if sid not in svc.streams and not await svc.has_history(sid):
        raise ApiError(404, f"no stream {sid!r} and no recorded counts for it")
    return sid


def _range(request: web.Request) -> tuple[float, float | None]:
    """``[since, until)`` from the query; ``since`` defaults to ``DEFAULT_RANGE_S`` before
    ``until`` (or now)."""
    since, until = query_range(request)
    if since is None:
        since = (time.time() if until is None else until) - DEFAULT_RANGE_S
    return since, until


async def counts(request: web.Request) -> web.Response:
    """``?since=&until=`` (unix seconds, [since, until); default: the last day),
    ``step`` (seconds per bucket), ``limit`` (newest rows kept), ``zones=1`` (per-zone counts:
    raw, or with a step their mean, ``zones_min`` and ``zones_max``). Whole-second steps read
    the rollups."""
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
        bad = [n for n in names if STREAM_NAME_RE.fullmatch(n) is None]
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
