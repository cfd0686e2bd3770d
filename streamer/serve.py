"""``crowdcount serve``: run the HTTP service.

Only ``argparse`` is imported when the command line is built; aiohttp, the pipeline and the
model are imported when ``serve`` actually runs, so other sub-commands pay nothing and
``serve`` itself never imports TensorFlow.

Logging is quiet by default (WARNING) and structured as one ``key=value`` line per event,
which both people and log shippers read without a parser of ours. ``web.run_app`` handles
SIGINT and SIGTERM: the server stops accepting, ends feeds and peers, stops the sources
and the inference thread, commits the queued counts, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from crowdcount.model.errors import UserError

LEVELS = ("debug", "info", "warning", "error")


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..."``; messages already in key=value form are
    appended as they are."""

    def format(self, record: logging.LogRecord) -> str:
        from crowdcount.streamer.urls import mask_text

        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = mask_text(record.getMessage())  # whatever a library quoted: no credentials
        if "=" not in msg.split(" ", 1)[0]:
            msg = "msg=" + _quote(msg)
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} " \
               f"logger={record.name} {msg}"
        if record.exc_info:
            line += " exc=" + _quote(mask_text(self.formatException(record.exc_info)))
        return line


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line over ``MAX_HTTP_LINE``, a
    broken header) with a full traceback, at error level. That is the client's mistake, not
    the server's: one warning line without the traceback, so tracebacks in the log keep
    meaning a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # The class only: the message quotes the request, which may hold a token.
            record.msg = "event=bad_http_request status=%d reason=%s"
            record.args = (exc.code, type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in server_log.filters):
        server_log.addFilter(ClientErrorFilter())
    if level != "debug":  # aiortc/aioice are chatty at INFO
        for name in ("aiortc", "aioice", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _stream_arg(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name.strip(), url.strip()


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the counting service (HTTP API, page, streams)")
    p.add_argument("--config", type=Path, help="TOML config file (see streamer/config.py)")
    p.add_argument("--host", help="listen address (default 127.0.0.1, or the config's)")
    p.add_argument("--port", type=int, help="listen port (default 8080, or the config's)")
    p.add_argument("--model", type=Path, help="model file (default: the bundled model)")
    p.add_argument("--backend", choices=["openvino", "onnx", "tflite", "keras"],
                   help="inference runtime (default: openvino where installed, else onnx)")
    p.add_argument("--database",
                   help="SQLite file for counts and streams; with --cluster, the cluster's "
                        "PostgreSQL database (postgresql://user@host/db)")
    p.add_argument("--cluster", metavar="RAY_ADDRESS",
                   help="serve the API of a Ray cluster whose shards run the cameras "
                        "(host:port of its head, or 'auto'); needs a postgresql:// --database")
    p.add_argument("--shards", type=int,
                   help="with --cluster: number of shards (fixed for the deployment; default 8)")
    p.add_argument("--token", help="bearer token required by the API, page and /metrics; "
                                   "prefer $CROWDCOUNT_TOKEN (a flag shows in ps); order: "
                                   "--token, then $CROWDCOUNT_TOKEN, then server.token")
    p.add_argument("--tls-cert", type=Path, metavar="PEM",
                   help="serve https with this certificate (chain); needs --tls-key")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.add_argument("--stream", action="append", default=[], type=_stream_arg,
                   metavar="NAME=URL",
                   help="add a stream (repeatable): rtsp://..., a video file, /dev/videoN or "
                        "webcam:N")
    p.add_argument("--store-rate", type=float,
                   help="store at most this many counts per second per stream "
                        "(default: every processed frame)")
    p.add_argument("--log-level", choices=LEVELS, default="warning")
    p.set_defaults(run=run_serve)


def load(args: argparse.Namespace) -> Any:
    """The config file (or defaults) with the command-line overrides applied and validated
    again, so a ``--host 0.0.0.0`` without a token is refused like a config file's. The
    token stays where it was given: ``--token`` travels to the checks beside the config
    (``resolve_token`` orders flag, environment and file), not into it."""
    from crowdcount.streamer.config import Config, load_config, parse_config

    config = load_config(args.config, args.token) if args.config else Config.default()
    # JSON mode gives the lists and strings the strict models want back (not tuples, Paths).
    data = config.model_dump(mode="json", exclude_none=True)
    server, model = data["server"], data["model"]
    database = args.database
    postgres = database is not None and database.startswith(("postgresql://", "postgres://"))
    if args.cluster is not None or args.shards is not None:
        cluster = data.get("cluster") or {}
        if args.cluster is not None:
            cluster["address"] = args.cluster
        if postgres:
            cluster["database"] = database
        elif database is not None:
            raise UserError("--cluster needs a PostgreSQL --database (postgresql://...)")
        if args.shards is not None:
            cluster["shards"] = args.shards
        if "database" not in cluster:
            raise UserError("--cluster needs --database postgresql://... (or [cluster] "
                             "database in the config file)")
        data["cluster"] = cluster
        database = None
    elif postgres and not data.get("cluster"):
        raise UserError("a PostgreSQL --database is the store of a cluster: add --cluster")
    elif postgres:
        data["cluster"]["database"] = database
        database = None
    for key, value in (("host", args.host), ("port", args.port), ("database", database),
                       ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)):
        if value is not None:
            server[key] = str(value) if isinstance(value, Path) else value
    if args.model is not None:
        model["path"] = str(args.model)
    if args.backend is not None:
        model["backend"] = args.backend
    streams = list(data.get("streams", ()))
    for name, url in args.stream:
        streams.append({"name": name, "url": url})
    data["streams"] = streams
    return parse_config(data, "command line", token=args.token)


def run_serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    config = load(args)
    from aiohttp import web

    from crowdcount.streamer.app import build_app
    from crowdcount.streamer.tls import server_ssl_context

    server = config.server
    ssl_context = None
    if server.tls_cert is not None and server.tls_key is not None:
        ssl_context = server_ssl_context(server.tls_cert, server.tls_key)
    app = build_app(config, store_rate=args.store_rate, token=args.token)
    host, port = server.host, server.port
    scheme = "https" if ssl_context is not None else "http"
    log = logging.getLogger(__name__)

    async def announce(_app: web.Application) -> None:
        log.info("event=listening url=%s://%s:%d/", scheme, host, port)

    app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, print=None, access_log=None, ssl_context=ssl_context,
                shutdown_timeout=5.0, handle_signals=True)
    return 0
