"""The aiohttp application: ``build_app(config)`` wires the ``Service`` to the routes.

Routes live in ``streamer.routes.*``; this module holds what spans them: the refusal to
serve beyond loopback without a token, the token middleware, the middleware that turns
every error into ``{"error": "..."}`` JSON, and the two-phase shutdown (``on_shutdown``
ends SSE feeds and WebRTC peers so ``run_app`` is not kept waiting on long-lived
responses; ``on_cleanup`` stops sources and inference, then flushes and closes the store).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from crowdcount.model.bundled import default_model
from crowdcount.model.runtime import Runtime
from crowdcount.streamer.auth import Handler, token_middleware
from crowdcount.streamer.config import Config, resolve_token
from crowdcount.streamer.limits import MAX_HTTP_LINE, MAX_JSON_BYTES, MAX_REQUEST_TARGET
from crowdcount.streamer.openapi import TOKEN_REQUIRED
from crowdcount.streamer.origin import browser_guard
from crowdcount.streamer.ratelimit import RateLimiter
from crowdcount.streamer.routes import (
    calibration,
    count,
    docs,
    floor,
    gathering,
    rtc,
    rules,
    streams,
    system,
    zones,
)
from crowdcount.streamer.routes.common import SERVICE, ApiError, json_error
from crowdcount.streamer.service import Service
from crowdcount.streamer.surface import ServiceSurface
from crowdcount.streamer.upload import UploadCounter
from crowdcount.web import ASSETS_DIR

log = logging.getLogger(__name__)

WEB_DIR = ASSETS_DIR


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as one-line JSON with its status; unexpected ones as a logged 500."""
    if len(request.raw_path) > MAX_REQUEST_TARGET:
        return json_error(414, f"request target is {len(request.raw_path)} bytes; the limit "
                               f"is {MAX_REQUEST_TARGET}")
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"not found: {request.method} {request.path}"
        elif exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            message = f"method {request.method} not allowed on {request.path}; allowed: {allowed}"
        else:
            message = exc.text or exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return json_error(exc.status, message, headers)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("event=handler_error method=%s path=%s", request.method, request.path)
        return json_error(500, "internal server error (logged)")


def build_app(
    config: Config,
    runtime: Runtime | None = None,
    *,
    upload_counter: UploadCounter | None = None,
    store_rate: float | None = None,
    web_dir: Path = WEB_DIR,
    token: str | None = None,
) -> web.Application:
    """The application for ``config``. Raises ``ValueError`` when the server would be
    reachable from other machines without a token, and whatever opening the model or the
    database raises (one-line messages the CLI prints).

    ``runtime`` (tests, benchmarks) replaces the one opened from ``config.model``; uploads
    always get their own (see ``streamer.upload``). ``token`` is a ``--token`` flag; the
    token in force is ``resolve_token``'s (flag, then ``$CROWDCOUNT_TOKEN``, then the config).
    """
    token = resolve_token(config.server.token, token)
    problem = config.server.exposure_problem(token)
    if problem:
        raise ValueError(problem)
    service: ServiceSurface
    if config.cluster is not None:
        # The cameras run on the cluster's shards: this process opens no model for them.
        from crowdcount.streamer.cluster.service import ClusterService

        service = ClusterService(config)
    else:
        model_path = str(config.model.path or default_model(config.model.backend))
        if runtime is None:
            runtime = Runtime.open(config.model.path, config.model.backend,
                                   threads=config.model.threads)
        service = Service(config, runtime, model_path=model_path, store_rate=store_rate,
                          upload_counter=upload_counter)

    middlewares: list[Middleware] = [json_errors]
    # With a token, the token is the protection; without one, Host and Origin checks keep
    # web pages the operator visits from using the server (streamer/origin.py).
    middlewares.append(token_middleware(token) if token else browser_guard(config.server))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=max(config.server.max_upload_bytes, MAX_JSON_BYTES) + 64 * 1024,
        # Lines up to MAX_HTTP_LINE are parsed, so that one over MAX_REQUEST_TARGET is
        # refused by json_errors in JSON rather than by the HTTP parser in text.
        handler_args={"max_line_size": MAX_HTTP_LINE, "max_field_size": MAX_HTTP_LINE},
    )
    app[SERVICE] = service
    app[TOKEN_REQUIRED] = bool(token)
    app[count.LIMITER] = RateLimiter(config.server.upload_rate_per_minute)
    add_routes(app, web_dir)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def add_routes(app: web.Application, web_dir: Path = WEB_DIR) -> None:
    """Every route of the API on ``app``: the one list, used by ``build_app`` and by
    ``scripts/api_reference.py`` (which documents the routes without opening a service)."""
    system.add_routes(app, web_dir)
    docs.add_routes(app)
    streams.add_routes(app)
    count.add_routes(app)
    rtc.add_routes(app)
    zones.add_routes(app)
    floor.add_routes(app)
    rules.add_routes(app)
    gathering.add_routes(app)
    calibration.add_routes(app)


async def _startup(app: web.Application) -> None:
    await app[SERVICE].start()
    log.info("event=started streams=%d", len(app[SERVICE].streams))


async def _shutdown(app: web.Application) -> None:
    await app[SERVICE].shutdown()


async def _cleanup(app: web.Application) -> None:
    await app[SERVICE].close()
    log.info("event=stopped")
