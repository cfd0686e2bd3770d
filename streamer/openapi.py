"""The OpenAPI 3.1 document of the running app, built from the routes themselves.

Each handler carries an ``Operation`` (the ``operation`` decorator): its query model, its
JSON body model and its answers, all pydantic models the route itself uses (``parse_query``
and ``parse_body`` validate with the same classes) or that describe what it returns.
``build_spec`` walks ``app.router`` rather than a list of its own, so a route added without
an ``Operation`` fails ``tests/test_openapi.py``, and a parameter or a bound changed in a
model changes the document with it. Schemathesis then checks the live answers against it
(``tests/test_schemathesis.py``).

Why not a framework that generates this (aiohttp-apispec, aiohttp-pydantic): they want the
routes rewritten around their own views and validation; here the routes keep theirs and
only describe themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from crowdcount.streamer.version import VERSION

H = TypeVar("H", bound=Callable[..., Any])

REF = "#/components/schemas/{model}"
#: Whether the app asks for a bearer token (set by ``build_app``): the document then
#: requires the security scheme and lists 401 on every operation.
TOKEN_REQUIRED = web.AppKey("openapi_token_required", bool)


class ErrorBody(BaseModel):
    """Every error: one line naming the field or the problem."""

    error: str


@dataclass(frozen=True)
class Reply:
    """One documented answer. ``model`` for a JSON body; ``media`` (type -> JSON schema) for
    anything else (CSV, PNG, SSE, HTML)."""

    description: str
    model: type[BaseModel] | None = None
    media: Mapping[str, Mapping[str, Any]] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description (required)


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    #: a body that is not JSON (an image upload): media type -> JSON schema
    raw_body: Mapping[str, Mapping[str, Any]] | None = None
    description: str = ""
    #: path parameters -> description (their schema: a plain string)
    path_params: Mapping[str, str] = field(default_factory=dict)


def operation(op: Operation) -> Callable[[H], H]:
    """Attach ``op`` to a handler (read back by ``build_spec``)."""

    def mark(handler: H) -> H:
        handler.__dict__["openapi"] = op
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    op = getattr(handler, "openapi", None)
    return op if isinstance(op, Operation) else None


_ERRORS = {
    400: "bad input: the message names the parameter or field",
    401: "missing or wrong bearer token",
    403: "without a token: a Host that is not the server's, or a cross-origin change",
    404: "no such stream, rule or peer",
    409: "conflicts with the current state (name taken, config-file item, limit reached)",
    413: "body larger than the limit",
    414: "request target (path and query) longer than the limit",
    415: "body is not of the accepted media type",
    429: "rate limit reached; retry after Retry-After seconds",
    501: "not available on this kind of server (a cluster's API process)",
    503: "busy or at capacity; retry later",
}


def error(status: int, description: str | None = None) -> tuple[int, Reply]:
    """A documented error answer with the one error body."""
    headers = {"Retry-After": "seconds to wait"} if status == 429 else {}
    return status, Reply(description or _ERRORS.get(status, "error"), ErrorBody,
                         headers=headers)


def _route_path(route: web.AbstractRoute) -> str | None:
    info = route.resource.get_info() if route.resource is not None else {}
    if "formatter" in info:
        return str(info["formatter"])
    if "path" in info:
        return str(info["path"])
    return None  # a static folder (this app has none: its files go through handlers)


def registered_routes(app: web.Application) -> list[tuple[str, str, web.AbstractRoute]]:
    """(method, OpenAPI path, route) of every route the app serves. aiohttp's automatic HEAD
    beside each GET is left out: it is the GET without a body."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = _route_path(route)
        if path is not None:
            out.append((route.method.lower(), path, route))
    return out


def _query_parameters(model: type[BaseModel], schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        # A query value is absent or present, never null: optional is "not required".
        options = prop.get("anyOf")
        if options and any(o.get("type") == "null" for o in options):
            rest = [o for o in options if o.get("type") != "null"]
            prop.pop("anyOf")
            prop = {**prop, **rest[0]} if len(rest) == 1 else {**prop, "anyOf": rest}
            if prop.get("default", 0) is None:
                prop.pop("default")
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if description:
            param["description"] = description
        if prop.get("type") == "array":  # ?streams=a,b
            param["style"] = "form"
            param["explode"] = False
        params.append(param)
    return params


def build_spec(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``. Raises ``LookupError`` naming a route that has
    no ``Operation`` (every route is documented or the document is refused)."""
    token = app.get(TOKEN_REQUIRED, False)
    found: list[tuple[str, str, Operation]] = []
    for method, path, route in registered_routes(app):
        op = operation_of(route.handler)
        if op is None:
            raise LookupError(f"route {method.upper()} {path} has no OpenAPI operation")
        found.append((method, path, op))

    # One schema per model and mode: request bodies as the route validates them, answers as
    # they are serialized (pydantic names the two apart when they differ).
    keyed: set[tuple[type[BaseModel], Any]] = {(ErrorBody, "serialization")}
    for _, _, op in found:
        if op.body is not None:
            keyed.add((op.body, "validation"))
        keyed.update((r.model, "serialization") for r in op.replies.values()
                     if r.model is not None)
    refs, defs = models_json_schema(
        sorted(keyed, key=lambda k: (k[0].__name__, k[1])), ref_template=REF)
    schemas = dict(defs.get("$defs", {}))

    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in found:
        item: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                                "operationId": _operation_id(method, path)}
        if op.description:
            item["description"] = op.description
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "description": text,
             "schema": {"type": "string"}}
            for name, text in op.path_params.items()
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema(ref_template=REF)
            schemas.update(query_schema.pop("$defs", {}))
            params += _query_parameters(op.query, query_schema)
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": refs[(op.body, "validation")]}}}
        elif op.raw_body is not None:
            item["requestBody"] = {"required": True, "content": {
                media: {"schema": dict(schema)} for media, schema in op.raw_body.items()}}
        # What the middlewares answer before any handler (streamer.app, auth, origin).
        replies = dict(op.replies)
        replies.setdefault(*error(414))
        if token:
            replies.setdefault(*error(401))
        else:
            replies.setdefault(*error(403))
        item["responses"] = {
            str(status): _reply(reply, refs) for status, reply in sorted(replies.items())
        }
        paths.setdefault(path, {})[method] = item

    _array_lengths(schemas)
    _array_lengths(paths)
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "CrowdCount",
            "version": VERSION,
            "summary": "Real-time crowd counting: streams, counts history, live feeds, "
                       "zones, alerts and uploads.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "the server's token (--token, $CROWDCOUNT_TOKEN or "
                               "server.token); browsers open /?token=<token> once instead",
            }},
        },
    }
    if token:
        spec["security"] = [{"bearer": []}]
    return spec


def _array_lengths(tree: Any) -> None:
    """pydantic writes a tuple field's ``min_length``/``max_length`` as ``minLength`` and
    ``maxLength``, which JSON Schema applies to strings only: an array would be documented
    unbounded (Schemathesis found floor ``levels`` of one item, which the route refuses).
    They become ``minItems``/``maxItems`` here, in place."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "array":
                for length, items in (("minLength", "minItems"), ("maxLength", "maxItems")):
                    if length in node:
                        node.setdefault(items, node.pop(length))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _reply(reply: Reply, refs: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    content: dict[str, Any] = {}
    if reply.model is not None:
        content["application/json"] = {"schema": refs[(reply.model, "serialization")]}
    for media, schema in (reply.media or {}).items():
        content[media] = {"schema": dict(schema)}
    if content:
        out["content"] = content
    if reply.headers:
        out["headers"] = {name: {"description": text, "required": True,
                                 "schema": {"type": "string"}}
                          for name, text in reply.headers.items()}
    return out


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.replace(".", "_").split("/") if w]
    return "_".join([method, *words])
