"""What every route shares: the app keys, JSON errors and strict parameter parsing.

Why strict: a client that sends ``"limit": "10"`` or ``?step=abc`` has a bug it should
hear about, with the name of the field, rather than a default silently applied or a 500.
Every error leaves the server as ``{"error": "<one line>"}`` with a 4xx status.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Self, TypeVar

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from crowdcount.streamer.config import STREAM_NAME_RE, STREAM_NAME_RULE, to_config_error
from crowdcount.streamer.limits import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_JSON_NUMBER_CHARS,
    MAX_JSON_STRING_CHARS,
)
from crowdcount.streamer.surface import ServiceSurface

M = TypeVar("M", bound=BaseModel)

#: The single-process ``Service`` or a cluster's ``ClusterService``: routes see only the
#: surface both implement.
SERVICE: web.AppKey[ServiceSurface] = web.AppKey("service")
JSON_TYPE = "application/json"
_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into a JSON response."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.headers = headers or {}


@contextmanager
def http_errors(statuses: Mapping[type[Exception], int]) -> Iterator[None]:
    """Answer the errors a client can cause (a missing stream, a name taken, a bad value)
    with their status, the first type in ``statuses`` that matches; any other error is a
    bug and propagates (a 500 with its traceback in the log)."""
    try:
        yield
    except tuple(statuses) as exc:
        status = next(s for kind, s in statuses.items() if isinstance(exc, kind))
        raise ApiError(status, str(exc)) from None


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": " ".join(message.split())}, status=status,
                             headers=headers)


def service_of(request: web.Request) -> ServiceSurface:
    return request.app[SERVICE]


async def read_body(request: web.Request, limit: int, what: str = "body") -> bytes:
    """The raw body, refusing (413) anything over ``limit`` bytes before or while reading."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, f"{what} is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{what} is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Refused(ValueError):
    """A JSON value over a bound, raised from inside the decoder's hooks."""


def _bounded_int(text: str) -> int:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} digits; at most {MAX_JSON_NUMBER_CHARS} "
                       "characters per number")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters; at most "
                       f"{MAX_JSON_NUMBER_CHARS} per number")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text!r} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON (numbers must be finite)")


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_float=_bounded_float,
                            parse_constant=_no_constant)


def _check_tree(value: Any) -> None:
    """Depth and string bounds of a decoded body, walked without recursion (exact type
    checks: the decoder makes only dict, list, str, int, float, bool and None)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if type(item) is dict:
            children: Any = [*item.keys(), *item.values()]
        elif type(item) is list:
            children = item
        else:
            children, depth = (item,), depth - 1  # a scalar: only strings need a look
        for child in children:
            kind = type(child)
            if kind is str:
                if len(child) > MAX_JSON_STRING_CHARS:
                    raise _Refused(f"a string of {len(child)} characters; at most "
                                   f"{MAX_JSON_STRING_CHARS}")
                if _SURROGATE.search(child):
                    raise _Refused("a string with an unpaired surrogate escape "
                                   "(\\ud800-\\udfff); text must be valid Unicode")
            elif kind is dict or kind is list:
                if depth >= MAX_JSON_DEPTH:
                    raise _Refused(f"nesting deeper than {MAX_JSON_DEPTH} levels")
                stack.append((child, depth + 1))


def decode_json(raw: bytes) -> Any:
    """THE decoder of every JSON request body: UTF-8 only, numbers of at most
    ``MAX_JSON_NUMBER_CHARS`` characters and finite (no ``NaN``/``Infinity``), nesting at
    most ``MAX_JSON_DEPTH``, strings at most ``MAX_JSON_STRING_CHARS`` and valid Unicode
    (no lone surrogates, which no encoder can write back). Anything else is ``ApiError(400)``.

    Why here and not per route: Python's ``json`` alone turns a 5,000-digit integer into a
    ``ValueError`` (quadratic conversion, refused by the interpreter), 50,000 nested ``[``
    into a ``RecursionError`` and ``"\\udc80"`` into a string that fails later, in the store
    or the log: three 500s. Routes and request models only ever see bounded values.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text") from None
    try:
        data = _DECODER.decode(text)
        _check_tree(data)
    except _Refused as exc:
        raise ApiError(400, f"JSON body refused: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"JSON body refused: nesting deeper than {MAX_JSON_DEPTH} "
                            "levels") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}") from None
    return data


async def read_json_object(
    request: web.Request, allowed: set[str] | None = None
) -> dict[str, Any]:
    """A JSON object body (400 otherwise, 413 if big, 415 unless sent as
    ``application/json``) whose keys are all in ``allowed``, if given (a body parsed with
    ``parse_body`` leaves that to its model).

    Why 415: a web page on any origin may POST ``text/plain`` (or a form) without asking
    the server first (no CORS preflight); ``application/json`` it may not. Refusing other
    types keeps pages the operator visits from driving a server that has no token."""
    raw = await read_body(request, MAX_JSON_BYTES, "JSON body")
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    if request.content_type != JSON_TYPE:
        raise ApiError(415, f"request body must be sent as Content-Type: {JSON_TYPE}, not "
                            f"{request.headers.get('Content-Type', 'none')[:60]!r}")
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, f"expected a JSON object, got {_json_type(data)}")
    if allowed is not None and (unknown := sorted(set(data) - allowed)):
        raise ApiError(400, f"unknown field {unknown[0][:64]!r}; allowed: "
                            f"{', '.join(sorted(allowed))}")
    return data


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "a value")


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """``data`` validated by a pydantic request model (strict, unknown keys refused), or
    ``ApiError(400)`` with one line naming the field: request models reuse the config's
    field types, so the API and the config file accept exactly the same values."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, body_error(exc, model)) from None


#: pydantic error types that mean "wrong JSON type", in the words a client developer uses.
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


def body_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first problem as one line: ``field 'fps_limit' must be a number, got a string``."""
    err = exc.errors(include_url=False)[0]
    cfg_err = to_config_error(exc, "request")
    key = cfg_err.path or "body"
    kind = err["type"]
    value = err.get("input")
    if kind == "missing":
        return f"field {key!r} is required"
    if kind == "extra_forbidden":
        return f"unknown field {key!r}; allowed: {', '.join(sorted(model.model_fields))}"
    if kind in _TYPE_WORDS:
        return f"field {key!r} must be {_TYPE_WORDS[kind]}, got {_json_type(value)}"
    if kind == "string_too_long":
        return (f"field {key!r} is {len(value)} characters; at most "
                f"{err['ctx']['max_length']} are allowed")
    if kind == "string_pattern_mismatch" and err["ctx"].get("pattern") == STREAM_NAME_RE.pattern:
        return f"field {key!r} must be {STREAM_NAME_RULE}, got {str(value)[:70]!r}"
    msg = str(err["msg"])
    if msg.startswith("Input should be "):  # bounds: "must be less than or equal to 240"
        return f"field {key!r} must be {msg.removeprefix('Input should be ')}, got {value!r:.40}"
    return f"field {key!r}: {cfg_err.problem}"


def parse_query(model: type[M], request: web.Request) -> M:
    """The query string validated by ``model`` (lax: query values are text, so ``"10"`` is
    the number 10 here), or ``ApiError(400)`` naming the parameter. Parameters the model
    does not name are ignored (cache busters, the page's ``token``); one it names is given
    once, with a value (found by Schemathesis: ``?since=`` meant "no since", which the
    document does not say), except for a flag, where ``?zones`` alone means on, and a list,
    where ``?streams=`` is the empty list. The OpenAPI document lists
    the same model's fields as the route's parameters (``streamer.openapi``)."""
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        given = request.query.getall(name, [])
        if len(given) > 1:  # which one was meant? (found by Schemathesis: the first won)
            raise ApiError(400, f"parameter {name!r} is given {len(given)} times; give it once")
        if not given:
            continue
        text = given[0]
        if text == "" and field.annotation in _FLAGS:  # ?zones alone: on
            data[name] = True
        elif text == "" and not _is_list(field.annotation):  # (?streams= : the empty list)
            raise ApiError(400, f"parameter {name!r} is empty; give a value or leave it out")
        else:
            data[name] = text
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, query_error(exc)) from None


_FLAGS: tuple[Any, ...] = (bool, bool | None)


def _is_list(annotation: Any) -> bool:
    """Whether a query field is a comma-separated list (``list[...]``, maybe optional)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    for option in typing.get_args(annotation) if union else (annotation,):
        if typing.get_origin(option) is typing.Annotated:
            option = typing.get_args(option)[0]
        if typing.get_origin(option) is list:
            return True
    return False


def query_error(exc: ValidationError) -> str:
    """One line: ``parameter 'step' must be a number, got 'abc'``."""
    err = exc.errors(include_url=False)[0]
    kind = err["type"]
    if not err["loc"]:  # a rule across parameters (a model validator)
        return str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][0])
    got = f", got {str(err.get('input'))[:40]!r}"
    if kind in ("float_parsing", "float_type"):
        return f"parameter {name!r} must be a number{got}"
    if kind == "finite_number":
        return f"parameter {name!r} must be finite{got}"
    if kind in ("int_parsing", "int_from_float", "int_type", "int_parsing_size"):
        return f"parameter {name!r} must be an integer{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"parameter {name!r} must be 1 or 0{got}"
    if kind == "value_error":
        return f"parameter {name!r}: {str(err['msg']).removeprefix('Value error, ')}"
    if kind == "string_pattern_mismatch" and err["ctx"].get("pattern") == STREAM_NAME_RE.pattern:
        return f"parameter {name!r} must be {STREAM_NAME_RULE}{got}"
    msg = str(err["msg"])
    if msg.startswith("Input should be "):
        return f"parameter {name!r} must be {msg.removeprefix('Input should be ')}{got}"
    return f"parameter {name!r}: {msg[:1].lower()}{msg[1:]}{got}"


def _no_inf(value: Any) -> Any:
    """Refuse ``inf``/``nan`` spelt any way (pydantic's lax float reads them)."""
    if isinstance(value, str) and not math.isfinite(_float_or_zero(value)):
        raise ValueError(f"must be finite, got {value[:40]!r}")
    return value


def _float_or_zero(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # not a number at all: the float validator words that error


#: A finite number of seconds since the epoch (``?since=``, ``?until=``).
Seconds = Annotated[float, BeforeValidator(_no_inf), Field(allow_inf_nan=False)]


class RangeQuery(BaseModel):
    """``?since=&until=``: unix seconds, ``[since, until)``, each optional."""

    since: Seconds | None = Field(None, description="start of the range (unix seconds, included)")
    until: Seconds | None = Field(None, description="end of the range (unix seconds, excluded)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"parameter 'since' ({self.since:g}) must be before 'until' "
                             f"({self.until:g})")
        return self
