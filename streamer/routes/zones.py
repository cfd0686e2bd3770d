"""Zones of a live stream and the alert list.

``GET /api/streams/{id}/zones`` -> ``{"stream", "zones": [{"name", "points"}], "persisted"}``

``PUT /api/streams/{id}/zones`` with ``{"zones": [{"name", "points": [[x, y], ...]}, ...]}``
replaces the stream's zones (``[]`` removes them) and answers like ``GET``. Points are the
stream's frame pixels. Each zone is validated like a ``[[streams.zones]]`` table of the config
file, so the 400 names the zone and the problem. Zones are saved for every kind of stream
(``streamer.saved``) and come back after a restart; on a config-file stream they replace
the file's zones from then on. On a floor-calibrated stream a zone reaching beyond the
calibrated floor (towards the horizon) is refused (400).

``GET /api/alerts?stream=&since=&until=&active=&limit=`` -> ``{"alerts": [...]}``, newest
first: the stored alerts, with the live peak and value of those still active (the store is
written behind, so an alert raised a moment ago is included from the engine).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crowdcount.model.floor import FloorError
from crowdcount.model.zones import Zone, check_unique_names
from crowdcount.streamer.config import StreamName, ZoneConfig, check_zones_on_floor, to_config_error
from crowdcount.streamer.limits import MAX_ZONES_PER_STREAM as MAX_ZONES
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    RangeQuery,
    http_errors,
    parse_query,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import Alerts, Zones
from crowdcount.streamer.surface import ServiceSurface, StreamNotFound, StreamView

MAX_ALERTS = 10_000


class ZonesBody(BaseModel):
    """``PUT`` body: the stream's new zones (``[]`` removes them). ``parse_zones`` checks
    each item with ``ZoneConfig``, the config file's ``[[streams.zones]]`` model."""

    model_config = ConfigDict(extra="forbid", strict=True)
    zones: Annotated[list[ZoneConfig], Field(max_length=MAX_ZONES)]


class AlertsQuery(RangeQuery):
    stream: StreamName | None = Field(None, description="only this stream's alerts")
    active: bool | None = Field(None, description="only active (1) or cleared (0) alerts")
    limit: Annotated[int, Field(ge=1, le=MAX_ALERTS)] = Field(
        100, description="alerts at most (the newest)")


def _entry(svc: ServiceSurface, request: web.Request) -> StreamView:
    with http_errors({StreamNotFound: 404}):
        return svc.get(request.match_info["id"])


def _zones_body(svc: ServiceSurface, entry: StreamView) -> dict[str, Any]:
    return {
        "stream": entry.id,
        "zones": [z.to_dict() for z in svc.integrations.zones(entry.id)],
        "persisted": True,
    }


def parse_zones(value: Any) -> list[Zone]:
    """``[{"name", "points"}, ...]`` from a request, or ``ApiError(400)`` naming the problem."""
    if not isinstance(value, list):
        raise ApiError(400, "field 'zones' must be a list of {\"name\", \"points\"} objects")
    if len(value) > MAX_ZONES:
        raise ApiError(400, f"at most {MAX_ZONES} zones per stream, got {len(value)}")
    zones: list[Zone] = []
    for i, raw in enumerate(value):
        try:
            cfg = ZoneConfig.model_validate(raw)
            check_unique_names([*(z.name for z in zones), cfg.name])
        except ValidationError as exc:
            raise ApiError(400, _zone_error(exc, i)) from None
        except ValueError as exc:
            raise ApiError(400, f"zones[{i}]: {exc}") from None
        zones.append(Zone(cfg.name, cfg.points))
    return zones


def _zone_error(exc: ValidationError, index: int) -> str:
    """One line such as ``zones[1].points: needs at least 3 items, has 2``."""
    err = to_config_error(exc, "request")
    path = f"zones[{index}]" + (f".{err.path}" if err.path else "")
    return f"{path}: {err.problem}"


_ID = {"id": "the stream's name"}


@operation(Operation("A stream's zones", "zones",
                     {200: Reply("its zones", Zones), **dict([error(404)])}, path_params=_ID))
async def get_zones(request: web.Request) -> web.Response:
    svc = service_of(request)
    return web.json_response(_zones_body(svc, _entry(svc, request)))


@operation(Operation(
    "Replace a stream's zones (saved; they come back after a restart)", "zones",
    {200: Reply("the zones now in force", Zones),
     **dict([error(400), error(404), error(413), error(415)])},
    body=ZonesBody, path_params=_ID,
))
async def put_zones(request: web.Request) -> web.Response:
    svc = service_of(request)
    entry = _entry(svc, request)
    data = await read_json_object(request, {"zones"})
    if "zones" not in data:
        raise ApiError(400, "field 'zones' is required (use [] to remove every zone)")
    zones = parse_zones(data["zones"])
    current = svc.integrations.floor(entry.id)
    if current is not None:
        with http_errors({FloorError: 400}):
            check_zones_on_floor(current.floor, zones)
    if svc.streams.get(entry.id) is not entry:  # removed while the body was read
        raise ApiError(404, f"no stream {entry.id!r}")
    await svc.set_zones(entry.id, zones)
    return web.json_response(_zones_body(svc, entry))


def _merge_live(
    rows: list[dict[str, Any]], live: list[dict[str, Any]],
    stream: str | None, until: float | None, active: bool | None,
) -> list[dict[str, Any]]:
    """Stored alerts with the engine's active ones folded in (live peak and value)."""
    by_key = {(a["stream"], a["name"], a["raised_at"]): a for a in live}
    out = []
    for row in rows:
        item = {**row, "active": row["cleared_at"] is None}
        a = by_key.pop((row["stream"], row["rule"], row["raised_at"]), None)
        if a is not None and row["cleared_at"] is None:  # still open: the live numbers
            item["peak"] = max(row["peak"], a["peak"])
            item["value"] = a["value"]
        out.append(item)
    if active is not False:
        # Raised but not committed to the store yet (an open alert overlaps any 'since').
        for a in by_key.values():
            if stream is not None and a["stream"] != stream:
                continue
            if until is not None and a["raised_at"] >= until:
                continue
            out.append({
                "id": None, "stream": a["stream"], "zone": a["zone"], "rule": a["name"],
                "raised_at": a["raised_at"], "cleared_at": None, "peak": a["peak"],
                "active": True, "value": a["value"],
            })
    out.sort(key=lambda r: r["raised_at"], reverse=True)
    return out


@operation(Operation(
    "Alerts, newest first (stored, and the live ones)", "alerts",
    {200: Reply("the alerts", Alerts), **dict([error(400)])}, query=AlertsQuery,
))
async def list_alerts(request: web.Request) -> web.Response:
    svc = service_of(request)
    query = parse_query(AlertsQuery, request)
    stream, since, until, active, limit = (query.stream, query.since, query.until,
                                           query.active, query.limit)
    rows = await asyncio.to_thread(svc.store.alerts.query, stream, since, until, active, limit)
    alerts = _merge_live([dict(r) for r in rows], svc.integrations.active_alerts(), stream,
                         until, active)
    return web.json_response({"alerts": alerts[:limit]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/streams/{id}/zones", get_zones)
    r.add_put("/api/streams/{id}/zones", put_zones)
    r.add_get("/api/alerts", list_alerts)
