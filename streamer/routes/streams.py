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
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic.fields import FieldInfo

from crowdcount.streamer.config import (
    STREAM_NAME_RE,
    StreamConfig,
    StreamName,
    StreamSettings,
    UrlStr,
)
from crowdcount.streamer.feed import sse_response
from crowdcount.streamer.limits import MAX_URL_LENGTH
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    RangeQuery,
    http_errors,
    parse_body,
    parse_query,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import Counts, Stream, StreamList
from crowdcount.streamer.service import StreamConflict, StreamNotFound
from crowdcount.streamer.urls import validate_api_url

MAX_LIMIT = 100_000
DEFAULT_RANGE_S = 86_400.0
EXPORT_CHUNK_ROWS = 5000


_ID = {"id": "the stream's name"}
#: One Server-Sent Event, as clients (and Schemathesis) parse the stream.
_SSE = {"text/event-stream": {
    "type": "object",
    "description": "Never ends by itself. One `data:` line of JSON per event: a count item "
                   "`{stream, t, count, smoothed, zones?}` per processed frame, or an alert "
                   "event marked `\"type\": \"alert\"`; `: keepalive` comments in quiet "
                   "times.",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}}


@operation(Operation("List the streams with their status", "streams",
                     {200: Reply("every live stream", StreamList)}))
async def list_streams(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response({"streams": [e.to_dict() for e in svc.streams.values()]})


class AddStreamBody(StreamSettings):
    """``POST /api/streams``: a name and an rtsp/rtsps url (checked by ``validate_api_url``)
    plus the same per-stream settings, with the same bounds, as the config file."""

    name: StreamName
    #: the API opens network cameras only (``validate_api_url`` words the refusals)
    url: Annotated[UrlStr, WithJsonSchema({
        "type": "string",
        "pattern": "^[Rr][Tt][Ss][Pp][Ss]?://[^\\x00-\\x20\\x7f/?#]+[^\\x00-\\x20\\x7f]*$",
        "maxLength": MAX_URL_LENGTH,
        "description": "rtsp:// or rtsps:// url with a host (credentials are masked in "
                       "every answer); files and devices only from the config file",
        "examples": ["rtsp://user:secret@127.0.0.1:8554/stream1"],
    })]


def _optional(f: FieldInfo) -> Any:
    """``f``'s type with its bounds, optional: ``null`` too unless ``f`` is required in a
    new stream (a stream cannot be without its url)."""
    kind: Any = f.annotation
    if f.metadata:
        kind = Annotated[(kind, *f.metadata)]
    if f.is_required():  # may be left out, never null: no null default in the document
        return Annotated[kind, Field(json_schema_extra=_no_default)]
    return kind | None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


_EDIT_FIELDS: dict[str, Any] = {name: (_optional(f), None)
                                for name, f in AddStreamBody.model_fields.items()
                                if name != "name"}
EditStreamBody = create_model(
    "EditStreamBody",
    __config__=ConfigDict(extra="forbid", strict=True),
    __doc__="The fields given replace the stream's; null removes an option.",
    **_EDIT_FIELDS,
)


@operation(Operation(
    "Add an RTSP camera", "streams",
    {201: Reply("added, counting, and saved for restarts", Stream,
                headers={"Location": "the new stream's path"}),
     **dict([error(400), error(409, "the name is taken, or max_streams is reached"),
             error(413), error(415)])},
    body=AddStreamBody,
))
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


@operation(Operation(
    "Edit an API stream (it restarts with the same id, history, zones and rules)", "streams",
    {200: Reply("the stream as it now runs", Stream),
     **dict([error(400), error(404), error(409, "a config-file or browser stream"),
             error(413), error(415)])},
    body=EditStreamBody, path_params=_ID,
))
async def edit_stream(request: web.Request) -> web.Response:
    """``PATCH`` with ``{"url"?, "fps_limit"?, "max_side"?, "stall_timeout"?,
    "max_retries"?}``: the fields given replace the stream's (``null`` removes an option);
    the stream restarts with them (``{"url": null}``: 400). API streams only (409 for the
    others)."""
    svc = service_of(request)
    data = await read_json_object(request)  # a body past the decoder's bounds: 400 first
    with http_errors({StreamNotFound: 404}):
        entry = svc.get(request.match_info["id"])
    if entry.origin != "api":  # before its settings are checked against its url's kind
        raise ApiError(409, str(StreamConflict.not_editable(entry.id, entry.origin, "edit")))
    required = [k for k, v in data.items() if v is None and k in AddStreamBody.model_fields
                and AddStreamBody.model_fields[k].is_required()]
    if required:  # a stream cannot be without its url: null is a mistake, not "unchanged"
        raise ApiError(400, f"field {required[0]!r} is required and cannot be null")
    parse_body(EditStreamBody, data)  # field names and types, as documented
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


@operation(Operation("One stream with its status", "streams",
                     {200: Reply("the stream", Stream), **dict([error(404)])}, path_params=_ID))
async def get_stream(request: web.Request) -> web.Response:
    with http_errors({StreamNotFound: 404}):
        entry = service_of(request).get(request.match_info["id"])
    return web.json_response(entry.to_dict())


@operation(Operation(
    "Remove an API stream (its history stays)", "streams",
    {204: Reply("removed"), **dict([error(404), error(409, "a config-file stream")])},
    path_params=_ID,
))
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


def _range(query: RangeQuery) -> tuple[float, float | None]:
    """``[since, until)``; ``since`` defaults to ``DEFAULT_RANGE_S`` before ``until`` (or
    now)."""
    since, until = query.since, query.until
    if since is None:
        since = (time.time() if until is None else until) - DEFAULT_RANGE_S
    return since, until


Step = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class CsvQuery(RangeQuery):
    """Without ``since``: the day before ``until`` (or now)."""

    step: Step | None = Field(None, description="seconds per bucket: aggregated rows")


class CountsQuery(CsvQuery):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = Field(
        10_000, description="rows at most (the newest are kept)")
    zones: bool = Field(False, description="per-zone counts too")


@operation(Operation(
    "Counts history (raw, or aggregated per step)", "history",
    {200: Reply("rows oldest first", Counts),
     **dict([error(400), error(404, "no such stream and no recorded counts")])},
    query=CountsQuery, path_params=_ID,
    description="Answers for live streams and for removed ones that left history.",
))
async def counts(request: web.Request) -> web.Response:
    """``?since=&until=`` (unix seconds, [since, until); default: the last day),
    ``step`` (seconds per bucket), ``limit`` (newest rows kept), ``zones=1`` (per-zone counts:
    raw, or with a step their mean, ``zones_min`` and ``zones_max``; on a floor-calibrated
    stream also ``density`` and, with a step, ``density_max`` in people/m2). Whole-second
    steps read the rollups."""
    query = parse_query(CountsQuery, request)
    since, until = _range(query)
    sid = await _known(request)
    svc = service_of(request)
    rows = await asyncio.to_thread(
        svc.store.history.counts, sid, since, until, query.step, query.limit,
        with_zones=query.zones,
    )
    if query.zones:
        add_density(rows, zone_areas(svc, sid))
    return web.json_response({"stream": sid, "counts": rows})


def zone_areas(svc: Any, sid: str) -> dict[str, float]:
    """The floor area (m2) of each zone of a floor-calibrated stream (none otherwise)."""
    current = svc.integrations.floor(sid)
    if current is None:
        return {}
    areas = current.zone_areas(svc.integrations.zones(sid))
    return {name: a for name, a in areas.items() if a}


def add_density(rows: list[dict[str, Any]], areas: dict[str, float]) -> None:
    """People per m2 of each zone beside its counts: ``"density"`` (from a raw row's count
    or a bucket's mean) and, for buckets, ``"density_max"`` (the peak, from the rollups'
    max). Computed here from the zones' areas now, so the store keeps counts only; a history
    from before the zones or the calibration last changed is read with today's areas."""
    if not areas:
        return
    for row in rows:
        for src, dst in (("zones", "density"), ("zones_max", "density_max")):
            values = row.get(src)
            if values:
                row[dst] = {z: v / areas[z] for z, v in values.items() if z in areas}



@operation(Operation(
    "Counts history as CSV, streamed", "history",
    {200: Reply("`t,count,smoothed` rows, or with step the aggregated buckets "
                "(`t,count,min,max,smoothed,n,<zone>...`)",
                media={"text/csv": {"type": "string"}},
                headers={"Content-Disposition": "attachment; filename=..."}),
     **dict([error(400), error(404, "no such stream and no recorded counts")])},
    query=CsvQuery, path_params=_ID,
))
async def counts_csv(request: web.Request) -> web.StreamResponse:
    """The raw rows as CSV (``t,count,smoothed``; floats written with ``repr`` so they read
    back exactly), streamed in chunks of ``EXPORT_CHUNK_ROWS``: memory stays flat however
    long the history, and each chunk is its own short query, so no read stays open while a
    slow client drains the response. With ``?step=``: the aggregated buckets of that range
    instead (what the page's history chart shows), one column per zone's mean."""
    query = parse_query(CsvQuery, request)
    since, until = _range(query)
    step = query.step
    sid = await _known(request)
    history = service_of(request).store.history
    if step is not None:
        return await _aggregated_csv(sid, history, since, until, step,
                                     zone_areas(service_of(request), sid))
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
                          step: float, areas: dict[str, float]) -> web.Response:
    """One column per zone's mean count; on a floor-calibrated stream also
    ``<zone> per m2`` (mean density) and ``<zone> peak per m2`` per zone with an area."""
    rows = await asyncio.to_thread(history.counts, sid, since, until, step, MAX_LIMIT,
                                   with_zones=True)
    add_density(rows, areas)
    zones = sorted({z for r in rows for z in r.get("zones", {})})
    dense = [z for z in zones if z in areas]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["t", "count", "min", "max", "smoothed", "n", *zones,
                     *(h for z in dense for h in (f"{z} per m2", f"{z} peak per m2"))])

    def cell(r: dict[str, Any], key: str, z: str) -> str:
        return repr(r[key][z]) if z in r.get(key, {}) else ""

    for r in rows:
        writer.writerow([repr(r["t"]), repr(r["count"]), repr(r["min"]), repr(r["max"]),
                         repr(r["smoothed"]), r["n"], *(cell(r, "zones", z) for z in zones),
                         *(c for z in dense
                           for c in (cell(r, "density", z), cell(r, "density_max", z)))])
    name = f"{sid}-counts-{step:g}s.csv"
    return web.Response(text=out.getvalue(), content_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


MAX_FEED_STREAMS = 64


def _names(value: Any) -> Any:
    """``a,b`` -> ``["a", "b"]`` (empty items are ignored: ``a,,b``, a trailing comma)."""
    if isinstance(value, str):
        names = [n for n in value.split(",") if n]
        if len(names) > MAX_FEED_STREAMS:
            raise ValueError(f"names {len(names)} streams; at most {MAX_FEED_STREAMS}")
        bad = [n for n in names if STREAM_NAME_RE.fullmatch(n) is None]
        if bad:
            raise ValueError(f"invalid stream id {bad[0][:70]!r}")
        return names
    return value


class FeedQuery(BaseModel):
    streams: Annotated[list[StreamName], BeforeValidator(_names),
                       Field(max_length=MAX_FEED_STREAMS)] | None = Field(
        None, description="only these streams' counts (comma-separated); alerts of every "
                          "stream still come")


@operation(Operation(
    "Live counts and alerts of every stream (Server-Sent Events)", "live",
    {200: Reply("an endless event stream", media=_SSE), **dict([error(400)])},
    query=FeedQuery,
))
async def feed_all(request: web.Request) -> web.StreamResponse:
    """``?streams=a,b``: only those streams' counts (a page sends the ones it shows), and
    every alert; without it, every stream's."""
    query = parse_query(FeedQuery, request)
    only = None if query.streams is None else frozenset(query.streams)
    return await sse_response(request, service_of(request).feed, None, only=only)


@operation(Operation(
    "Live counts and alerts of one stream (Server-Sent Events)", "live",
    {200: Reply("an endless event stream", media=_SSE), **dict([error(404)])},
    path_params=_ID,
))
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
