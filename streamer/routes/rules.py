"""Alert rules through the API: thresholds with hysteresis, created, edited and deleted.

``GET /api/alerts/rules?stream=`` -> ``{"rules": [{"name", "stream", "zone", "above",
"below", "for_seconds", "metric", "origin": "config"|"api", "active"}]}``

``POST /api/alerts/rules`` ``{"name", "stream", "zone"?, "above", "below", "for_seconds"?,
"metric"?}`` (``metric``: ``count``, or a zone's ``density`` per m2 or ``level`` A=1..F=6)
-> 201 and the rule; ``PUT /api/alerts/rules/{name}`` (same body, ``name`` optional) replaces
it; ``DELETE`` -> 204. A body is checked like a ``[[thresholds]]`` table of the config file
(so ``below`` must be under ``above``), the stream must be live (400 otherwise) and a zone
must be one of its zones; past ``MAX_ALERT_RULES`` rules, 409. Config-file rules are
listed but answer 409 to changes. Changing or deleting a rule clears its active alert
(recorded as cleared with reason ``rule_changed``).
"""

from __future__ import annotations

from typing import Any, Optional

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError, create_model

from crowdcount.streamer.alerts import ThresholdRule
from crowdcount.streamer.config import StreamName, ThresholdConfig, to_config_error
from crowdcount.streamer.openapi import Operation, Reply, error, operation
from crowdcount.streamer.routes.common import (
    ApiError,
    http_errors,
    parse_query,
    read_json_object,
    service_of,
)
from crowdcount.streamer.routes.models import Rule, Rules
from crowdcount.streamer.rules import RuleConflict, RuleNotFound
from crowdcount.streamer.surface import RulesView

FIELDS = set(ThresholdConfig.model_fields)

#: ``PUT``: a ``[[thresholds]]`` table whose ``name`` may be left out (it is the path's).
_OPTIONAL_NAME: dict[str, Any] = {"name": (Optional[StreamName], None)}  # noqa: UP045
ReplaceRuleBody = create_model(
    "ReplaceRuleBody", __base__=ThresholdConfig, **_OPTIONAL_NAME,
    __doc__="A [[thresholds]] table; name may be left out (it is the path's).",
)


class RulesQuery(BaseModel):
    stream: StreamName | None = Field(None, description="only this stream's rules")


_NAME = {"name": "the rule's name"}


def _book(request: web.Request) -> RulesView:
    return service_of(request).rules


def parse_rule(data: dict[str, Any]) -> ThresholdRule:
    try:
        cfg = ThresholdConfig.model_validate(data)
    except ValidationError as exc:
        err = to_config_error(exc, "request")
        raise ApiError(400, f"{err.path}: {err.problem}" if err.path else err.problem) from None
    return ThresholdRule(cfg.name, cfg.stream, cfg.zone, cfg.above, cfg.below, cfg.for_seconds,
                         cfg.metric)


async def _put(request: web.Request, rule: ThresholdRule, create: bool) -> dict[str, Any]:
    with http_errors({RuleNotFound: 404, RuleConflict: 409, ValueError: 400}):
        return await _book(request).put(rule, create=create)


@operation(Operation("Alert rules (the config file's and the API's)", "alerts",
                     {200: Reply("the rules", Rules), **dict([error(400)])},
                     query=RulesQuery))
async def list_rules(request: web.Request) -> web.Response:
    stream = parse_query(RulesQuery, request).stream
    return web.json_response({"rules": _book(request).list(stream)})


@operation(Operation("One alert rule", "alerts",
                     {200: Reply("the rule", Rule), **dict([error(404)])},
                     path_params=_NAME))
async def get_rule(request: web.Request) -> web.Response:
    with http_errors({RuleNotFound: 404}):
        return web.json_response(_book(request).get(request.match_info["name"]))


@operation(Operation(
    "Create an alert rule (saved)", "alerts",
    {201: Reply("created", Rule, headers={"Location": "the rule's path"}),
     **dict([error(400, "a bad field, below not under above, or a zone the stream lacks"),
             error(409, "the name is taken"), error(413), error(415)])},
    body=ThresholdConfig,
))
async def create_rule(request: web.Request) -> web.Response:
    rule = parse_rule(await read_json_object(request, FIELDS))
    body = await _put(request, rule, create=True)
    return web.json_response(body, status=201,
                             headers={"Location": f"/api/alerts/rules/{rule.name}"})


@operation(Operation(
    "Replace an API alert rule (its active alert is cleared)", "alerts",
    {200: Reply("the rule now in force", Rule),
     **dict([error(400), error(404), error(409, "a config-file rule"), error(413),
             error(415)])},
    body=ReplaceRuleBody, path_params=_NAME,
))
async def replace_rule(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    data = await read_json_object(request, FIELDS)
    if data.setdefault("name", name) != name:
        raise ApiError(400, f"field 'name' ({data['name']!r}) differs from the rule in the "
                            f"path ({name!r}); rules cannot be renamed, create a new one")
    return web.json_response(await _put(request, parse_rule(data), create=False))


@operation(Operation(
    "Delete an API alert rule", "alerts",
    {204: Reply("deleted"),
     **dict([error(404), error(409, "a config-file rule")])},
    path_params=_NAME,
))
async def delete_rule(request: web.Request) -> web.Response:
    with http_errors({RuleNotFound: 404, RuleConflict: 409}):
        await _book(request).delete(request.match_info["name"])
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/alerts/rules", list_rules)
    r.add_post("/api/alerts/rules", create_rule)
    r.add_get("/api/alerts/rules/{name}", get_rule)
    r.add_put("/api/alerts/rules/{name}", replace_rule)
    r.add_delete("/api/alerts/rules/{name}", delete_rule)
